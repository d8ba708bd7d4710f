//! The model runtime actor: one dedicated thread owns the ONNX sessions (a
//! [`StageRunner`] for this node's layer range) and works through a bounded job queue.
//!
//! The thread is one of tokio's blocking threads, so the tokio runtime's shutdown waits for it:
//! it finishes the job in hand, drops its sessions and ends when the node is cancelled or
//! every handle is gone. A detached thread could still be inside ONNX Runtime (loading a new
//! plan's stage, say) while the process exited, and crashed there.
//!
//! Everything else holds a cloneable [`RuntimeHandle`] and awaits a `oneshot` reply, so the
//! async tasks never block on inference and the queue bound is the backpressure: when
//! [`JOB_QUEUE`] jobs wait, senders wait too. Jobs run in arrival order, so a `Load` for a new
//! plan finishes before the activations that follow it.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_model::{Manifest, RuntimeConfig, StageInput, StageOutput, StageRunner};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::power::{self, SpeedWatch};

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
    /// Wall time of the shards (of the whole batch when it ran in one).
    pub compute: Duration,
    /// Sessions in the model call that computed it (1: alone).
    pub batch: usize,
}

enum Job {
    Load {
        layers: Range<usize>,
        reply: oneshot::Sender<Result<(), RuntimeError>>,
    },
    Run(RunJob),
    Drop {
        session: u64,
    },
}

/// A cloneable handle to the runtime thread.
#[derive(Debug, Clone)]
pub struct RuntimeHandle {
    tx: mpsc::Sender<Job>,
    /// The model directory and the files of each planner layer (to tell whether a range is on
    /// disk before loading it).
    files: Arc<(PathBuf, Vec<Vec<String>>)>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Load { layers, .. } => write!(f, "Load({layers:?})"),
            Job::Run(j) => write!(f, "Run({}@{})", j.session, j.position),
            Job::Drop { session } => write!(f, "Drop({session})"),
        }
    }
}

impl RuntimeHandle {
    /// Starts the runtime thread for the model in `dir` (nothing is loaded until
    /// [`RuntimeHandle::load`]); it stops once `stop` is cancelled and the jobs queued before
    /// that are done. Must be called within a tokio runtime.
    pub fn spawn(
        dir: PathBuf,
        manifest: Manifest,
        config: RuntimeConfig,
        max_batch: usize,
        speed: Option<Arc<SpeedWatch>>,
        stop: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(JOB_QUEUE);
        // The handles cannot be relied on to close the queue (the pipeline and its node refer
        // to each other), so the thread also stops when the tokio runtime shuts down with the
        // node still running: this task, dropped then, holds the guard.
        let stop = stop.child_token();
        let guard = stop.clone().drop_guard();
        tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await
        });
        let files = Arc::new((
            dir.clone(),
            manifest.layers.iter().map(|l| l.files.clone()).collect(),
        ));
        tokio::task::spawn_blocking(move || run(dir, manifest, config, max_batch, speed, rx, stop));
        RuntimeHandle { tx, files }
    }

    /// Whether every file of planner layers `layers` is on disk (a node that joined without
    /// the model fetches them first: `crate::layers`).
    pub fn on_disk(&self, layers: &Range<usize>) -> bool {
        let (dir, files) = &*self.files;
        layers.clone().all(|l| {
            files
                .get(l)
                .is_some_and(|f| f.iter().all(|name| dir.join(name).is_file()))
        })
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
    /// must be `layers` (a stale job after a re-plan is refused, not run on other layers). A
    /// position below the cached length rolls the cache back to it first (a speculative
    /// step's rejected drafts); a head returns the logits of the last `outputs` positions
    /// ([`StageRunner::run_verify`]).
    pub async fn run(
        &self,
        layers: Range<usize>,
        session: u64,
        position: usize,
        input: StageInput,
        outputs: usize,
    ) -> Result<Computed, RuntimeError> {
        self.ask(|reply| {
            Job::Run(RunJob {
                layers,
                session,
                position,
                input,
                outputs,
                reply,
            })
        })
        .await
    }

    /// Frees a session's K/V cache (best effort: dropped when the queue is full).
    pub fn drop_session(&self, session: u64) {
        let _ = self.tx.try_send(Job::Drop { session });
    }
}

/// The thread's loop: one job at a time until `stop` or every handle is gone, except that
/// decode steps of different sessions waiting together run as one batch (up to `max_batch`;
/// [`StageRunner::run_batch`]): after taking a step the thread takes every job already
/// queued behind it, runs the batchable steps together, then the rest in arrival order. Jobs
/// still queued at the stop are dropped, so their senders see [`RuntimeError::Stopped`].
fn run(
    dir: PathBuf,
    manifest: Manifest,
    config: RuntimeConfig,
    max_batch: usize,
    speed: Option<Arc<SpeedWatch>>,
    mut rx: mpsc::Receiver<Job>,
    stop: CancellationToken,
) {
    // Dropped when the loop ends: the sessions are released on this thread, before the
    // runtime's shutdown returns.
    let mut runner: Option<StageRunner> = None;
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        let next = match pending.pop_front() {
            Some(job) => Some(job),
            None => futures::executor::block_on(async {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => None,
                    job = rx.recv() => job,
                }
            }),
        };
        let Some(job) = next else { break };
        if stop.is_cancelled() {
            break;
        }
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
            Job::Run(first) => {
                let batch = match runner.as_ref() {
                    Some(r) if max_batch > 1 && first.batchable(r) => {
                        gather(first, r, max_batch, &mut rx, &mut pending)
                    }
                    _ => vec![first],
                };
                if batch.len() > 1
                    && let Some(r) = runner.as_mut()
                {
                    run_batch(r, batch);
                } else {
                    for job in batch {
                        run_one(runner.as_mut(), job, speed.as_deref());
                    }
                }
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

/// A step to run: on the stage that must be `layers`, `input` for `session` from cache
/// position `position`, with the logits of the last `outputs` positions.
struct RunJob {
    layers: Range<usize>,
    session: u64,
    position: usize,
    input: StageInput,
    outputs: usize,
    reply: oneshot::Sender<Result<Computed, RuntimeError>>,
}

impl RunJob {
    /// Whether this step may join a batch on `r`: the loaded layers, one output, a step that
    /// extends its session by one position.
    fn batchable(&self, r: &StageRunner) -> bool {
        r.layers() == self.layers
            && self.outputs == 1
            && r.batchable(self.session, self.position, &self.input)
    }
}

/// `first` and the batchable steps of other sessions already waiting (in `pending`, then in
/// the queue), at most `max` in all; every other job taken stays in `pending`, in order.
fn gather(
    first: RunJob,
    r: &StageRunner,
    max: usize,
    rx: &mut mpsc::Receiver<Job>,
    pending: &mut VecDeque<Job>,
) -> Vec<RunJob> {
    let mut batch = vec![first];
    let mut rest: VecDeque<Job> = VecDeque::new();
    while batch.len() < max {
        let job = match pending.pop_front() {
            Some(j) => j,
            None => match rx.try_recv() {
                Ok(j) => j,
                Err(_) => break,
            },
        };
        match job {
            Job::Run(j) => {
                let fresh = batch.iter().all(|b| b.session != j.session);
                if fresh && j.batchable(r) {
                    batch.push(j);
                    continue;
                }
                rest.push_back(Job::Run(j));
                if !fresh {
                    // A later step of a session in the batch waits for it.
                    break;
                }
            }
            other => {
                // A load or drop keeps its place after the steps before it.
                rest.push_back(other);
                break;
            }
        }
    }
    rest.append(pending);
    *pending = rest;
    batch
}

/// Runs one step alone; a single-position decode step's CPU time goes to the speed watch.
/// (A test's throttle knob, `power::test_slowdown`, stretches every step on the CPU.)
fn run_one(runner: Option<&mut StageRunner>, job: RunJob, speed: Option<&SpeedWatch>) {
    let result = match runner {
        None => Err(RuntimeError::NotLoaded),
        Some(r) if r.layers() != job.layers => Err(RuntimeError::WrongRange {
            loaded: r.layers(),
            wanted: job.layers,
        }),
        Some(r) => {
            let t = Instant::now();
            let (thread, process) = (power::thread_cpu(), power::process_cpu());
            let decode = job.outputs == 1 && positions(&job.input) == 1;
            let (layers, position) = (job.layers.clone(), job.position);
            let result = r.run_verify(job.session, job.position, job.input, job.outputs);
            power::stretch(
                power::process_cpu().saturating_sub(process),
                power::test_slowdown(),
            );
            if let (Some(w), true, true) = (speed, decode, result.is_ok()) {
                let cost = power::StepCost {
                    thread_s: power::thread_cpu().saturating_sub(thread).as_secs_f64(),
                    process_s: power::process_cpu().saturating_sub(process).as_secs_f64(),
                };
                w.record(&layers, position, cost);
            }
            result
                .map(|output| Computed {
                    output,
                    compute: t.elapsed(),
                    batch: 1,
                })
                .map_err(RuntimeError::from)
        }
    };
    let _ = job.reply.send(result);
}

/// Positions a step's input carries.
fn positions(input: &StageInput) -> usize {
    match input {
        StageInput::Tokens(t) => t.len(),
        StageInput::Hidden(a) => a.shape.get(1).copied().unwrap_or(0),
    }
}

/// Runs batchable steps together; each gets its own output and the batch's time.
fn run_batch(r: &mut StageRunner, batch: Vec<RunJob>) {
    let t = Instant::now();
    let (jobs, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|j| ((j.session, j.position, j.input), j.reply))
        .unzip();
    let n = jobs.len();
    let cpu = power::process_cpu();
    let result = r.run_batch(&jobs);
    power::stretch(
        power::process_cpu().saturating_sub(cpu),
        power::test_slowdown(),
    );
    match result {
        Ok(outputs) => {
            let compute = t.elapsed();
            for (output, reply) in outputs.into_iter().zip(replies) {
                let _ = reply.send(Ok(Computed {
                    output,
                    compute,
                    batch: n,
                }));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, sessions = n, "a batched step failed");
            let msg = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(RuntimeError::Model(shoal_model::Error::BadInput(
                    msg.clone(),
                ))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synth(dir: &std::path::Path) -> (PathBuf, Manifest) {
        let out = dir.join("model");
        shoal_model::synth::synth(&shoal_model::synth::SynthOptions::default(), &out, false)
            .expect("synthesise the test model");
        let manifest = Manifest::load(&out).expect("manifest");
        (out, manifest)
    }

    #[test]
    fn cancelling_the_node_stops_the_thread_and_fails_later_jobs() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, manifest) = synth(tmp.path());
        let all = 0..manifest.planner_layers();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let stop = CancellationToken::new();
            let h = RuntimeHandle::spawn(
                dir,
                manifest,
                RuntimeConfig::default(),
                8,
                None,
                stop.clone(),
            );
            h.load(all.clone()).await.expect("loads before the stop");
            stop.cancel();
            let after = tokio::time::timeout(Duration::from_secs(30), h.load(all)).await;
            assert!(
                matches!(after, Ok(Err(RuntimeError::Stopped))),
                "a job after the stop fails: {after:?}"
            );
        });
    }

    #[test]
    fn the_tokio_runtime_shutdown_waits_for_the_thread_even_with_a_handle_left() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, manifest) = synth(tmp.path());
        let all = 0..manifest.planner_layers();
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        // Runs in its own thread so a hang fails the test instead of stalling it.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let left = rt.block_on(async {
                let h = RuntimeHandle::spawn(
                    dir,
                    manifest,
                    RuntimeConfig::default(),
                    8,
                    None,
                    CancellationToken::new(),
                );
                h.load(all).await.expect("loads");
                h
            });
            // The node was never cancelled and a handle outlives the runtime.
            drop(rt);
            let _ = done_tx.send(left.tx.is_closed());
        });
        let closed = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the runtime's shutdown returned");
        assert!(
            closed,
            "the runtime thread had ended when the shutdown returned"
        );
    }
}
