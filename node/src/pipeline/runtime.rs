//! The model runtime actor: one dedicated OS thread owns the ONNX sessions (a
//! [`StageRunner`] for this node's layer range) and works through a bounded job queue.
//!
//! Everything else holds a cloneable [`RuntimeHandle`] and awaits a `oneshot` reply, so the
//! async tasks never block on inference and the queue bound is the backpressure: when
//! [`JOB_QUEUE`] jobs wait, senders wait too. Jobs run in arrival order, so a `Load` for a new
//! plan finishes before the activations that follow it.

use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_model::{Manifest, RuntimeConfig, StageInput, StageOutput, StageRunner};
use tokio::sync::{mpsc, oneshot};

/// Jobs that may wait for the runtime thread.
pub const JOB_QUEUE: usize = 32;

/// Errors of the runtime actor.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime thread has stopped.
    #[error("the model runtime has stopped")]
    Stopped,
    /// No layers are loaded (no plan gives this node a stage yet).
    #[error("no layers loaded")]
    NotLoaded,
    /// The loaded range is not the one the job was meant for.
    #[error("layers {loaded:?} loaded, job is for {wanted:?}")]
    WrongRange {
        /// What is loaded.
        loaded: Range<usize>,
        /// What the job expected.
        wanted: Range<usize>,
    },
    /// The model runtime failed.
    #[error(transparent)]
    Model(#[from] shoal_model::Error),
}

/// A finished step: the output and the time the shards took.
#[derive(Debug)]
pub struct Computed {
    /// Hidden states or logits.
    pub output: StageOutput,
    /// Wall time of the shards.
    pub compute: Duration,
}

enum Job {
    Load {
        layers: Range<usize>,
        reply: oneshot::Sender<Result<(), RuntimeError>>,
    },
    Run {
        layers: Range<usize>,
        session: u64,
        position: usize,
        input: StageInput,
        reply: oneshot::Sender<Result<Computed, RuntimeError>>,
    },
    Drop {
        session: u64,
    },
}

/// A cloneable handle to the runtime thread.
#[derive(Debug, Clone)]
pub struct RuntimeHandle {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Load { layers, .. } => write!(f, "Load({layers:?})"),
            Job::Run {
                session, position, ..
            } => write!(f, "Run({session}@{position})"),
            Job::Drop { session } => write!(f, "Drop({session})"),
        }
    }
}

impl RuntimeHandle {
    /// Starts the runtime thread for the model in `dir` (nothing is loaded until
    /// [`RuntimeHandle::load`]).
    pub fn spawn(dir: PathBuf, manifest: Manifest, config: RuntimeConfig) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(JOB_QUEUE);
        std::thread::Builder::new()
            .name("shoal-runtime".into())
            .spawn(move || run(dir, manifest, config, rx))?;
        Ok(RuntimeHandle { tx })
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, RuntimeError>>) -> Job,
    ) -> Result<T, RuntimeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)?
    }

    /// Loads planner layers `layers` (a no-op when they are loaded already); drops all
    /// sessions when the range changes.
    pub async fn load(&self, layers: Range<usize>) -> Result<(), RuntimeError> {
        self.ask(|reply| Job::Load { layers, reply }).await
    }

    /// Runs `input` for `session` starting at cache position `position` on the stage that
    /// must be `layers` (a stale job after a re-plan is refused, not run on other layers).
    pub async fn run(
        &self,
        layers: Range<usize>,
        session: u64,
        position: usize,
        input: StageInput,
    ) -> Result<Computed, RuntimeError> {
        self.ask(|reply| Job::Run {
            layers,
            session,
            position,
            input,
            reply,
        })
        .await
    }

    /// Frees a session's K/V cache (best effort: dropped when the queue is full).
    pub fn drop_session(&self, session: u64) {
        let _ = self.tx.try_send(Job::Drop { session });
    }
}

/// The thread's loop: one job at a time until every handle is gone.
fn run(dir: PathBuf, manifest: Manifest, config: RuntimeConfig, mut rx: mpsc::Receiver<Job>) {
    let mut runner: Option<StageRunner> = None;
    while let Some(job) = rx.blocking_recv() {
        match job {
            Job::Load { layers, reply } => {
                let loaded = runner.as_ref().map(|r| r.layers());
                let result = if loaded.as_ref() == Some(&layers) {
                    Ok(())
                } else {
                    runner = None;
                    StageRunner::load(&dir, &manifest, layers, &config)
                        .map(|r| runner = Some(r))
                        .map_err(RuntimeError::from)
                };
                let _ = reply.send(result);
            }
            Job::Run {
                layers,
                session,
                position,
                input,
                reply,
            } => {
                let result = match runner.as_mut() {
                    None => Err(RuntimeError::NotLoaded),
                    Some(r) if r.layers() != layers => Err(RuntimeError::WrongRange {
                        loaded: r.layers(),
                        wanted: layers,
                    }),
                    Some(r) => {
                        let t = Instant::now();
                        r.run_at(session, position, input)
                            .map(|output| Computed {
                                output,
                                compute: t.elapsed(),
                            })
                            .map_err(RuntimeError::from)
                    }
                };
                let _ = reply.send(result);
            }
            Job::Drop { session } => {
                if let Some(r) = runner.as_mut() {
                    r.drop_session(session);
                    r.evict_idle(Instant::now());
                }
            }
        }
    }
}
