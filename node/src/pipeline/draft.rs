//! The draft model of speculative decoding: a small model (same vocabulary as the served
//! one) that runs whole on the origin's own runtime thread and proposes the next tokens of a
//! generation, one position at a time, with a K/V cache per generation that follows the
//! history and rolls back past rejected drafts.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use shoal_model::{Manifest, RuntimeConfig, Sampler, StageInput, StageOutput};
use tokio_util::sync::CancellationToken;

use super::runtime::{RuntimeError, RuntimeHandle};

/// A draft model's distribution at each proposed token (`None` for greedy proposals).
pub(crate) type Proposal = Option<Vec<Vec<(u32, f32)>>>;

/// The draft model and what each generation has fed it.
pub(crate) struct DraftModel {
    runtime: RuntimeHandle,
    layers: Range<usize>,
    /// Set once the layers are loaded (the first proposal loads them).
    loaded: AtomicBool,
    /// Per draft session: the tokens whose positions its cache holds.
    fed: Mutex<HashMap<u64, Vec<u32>>>,
}

impl std::fmt::Debug for DraftModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraftModel")
            .field("layers", &self.layers)
            .finish()
    }
}

impl DraftModel {
    /// Starts the draft model in `dir` on its own runtime thread; its vocabulary must be
    /// `vocab` (the served model's), or the drafts would be other tokens.
    pub(crate) fn start(
        dir: &Path,
        config: RuntimeConfig,
        vocab: usize,
        max_batch: usize,
        cancel: CancellationToken,
    ) -> Result<Self, shoal_model::Error> {
        let manifest = Manifest::load(dir)?;
        if manifest.dims.vocab != vocab {
            return Err(shoal_model::Error::Manifest(format!(
                "draft model {} has a vocabulary of {}, the served model {vocab}",
                manifest.name, manifest.dims.vocab
            )));
        }
        let layers = 0..manifest.planner_layers();
        let runtime =
            RuntimeHandle::spawn(dir.to_path_buf(), manifest, config, max_batch, None, cancel);
        Ok(DraftModel {
            runtime,
            layers,
            loaded: AtomicBool::new(false),
            fed: Mutex::new(HashMap::new()),
        })
    }

    fn fed(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<u32>>> {
        self.fed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Up to `k` tokens continuing `history`: greedy when `sampler` is `None`, else drawn from
    /// the draft model's distribution under the sampler's settings (returned with them, for
    /// the acceptance rule). The session's cache keeps the longest prefix it shares with
    /// `history` and computes the rest.
    pub(crate) async fn propose(
        &self,
        session: u64,
        history: &[u32],
        k: usize,
        mut sampler: Option<&mut Sampler>,
    ) -> Result<(Vec<u32>, Proposal), RuntimeError> {
        if history.is_empty() || k == 0 {
            return Ok((Vec::new(), None));
        }
        // Jobs run in order, so the runs below find the layers.
        if !self.loaded.load(Ordering::Acquire) {
            self.runtime.load(self.layers.clone()).await?;
            self.loaded.store(true, Ordering::Release);
        }
        let mut fed = self.fed().remove(&session).unwrap_or_default();
        let common = fed
            .iter()
            .zip(history)
            .take_while(|(a, b)| a == b)
            .count()
            .min(history.len() - 1);
        fed.truncate(common);
        let mut input = history[common..].to_vec();
        let mut position = common;
        let mut tokens = Vec::with_capacity(k);
        let mut proposal = sampler.as_ref().map(|_| Vec::with_capacity(k));
        let result = loop {
            let out = self
                .runtime
                .run(
                    self.layers.clone(),
                    session,
                    position,
                    StageInput::Tokens(input.clone()),
                    1,
                )
                .await;
            let logits = match out {
                Ok(c) => match c.output {
                    StageOutput::Logits(l) => l.data,
                    StageOutput::Hidden(_) => {
                        break Err(RuntimeError::Model(shoal_model::Error::BadInput(
                            "the draft model returned hidden states".into(),
                        )));
                    }
                },
                Err(e) => break Err(e),
            };
            position += input.len();
            fed.extend_from_slice(&input);
            let next = match sampler.as_deref_mut() {
                None => shoal_model::argmax(&logits),
                Some(s) => {
                    let q = s.distribution(&logits);
                    let t = s.draw(&q);
                    if let Some(p) = proposal.as_mut() {
                        p.push(q);
                    }
                    t
                }
            };
            tokens.push(next);
            if tokens.len() >= k {
                break Ok(());
            }
            input = vec![next];
        };
        match result {
            Ok(()) => {
                self.fed().insert(session, fed);
                Ok((tokens, proposal))
            }
            Err(e) => {
                self.runtime.drop_session(session);
                Err(e)
            }
        }
    }

    /// Frees a generation's draft cache.
    pub(crate) fn end(&self, session: u64) {
        if self.fed().remove(&session).is_some() {
            self.runtime.drop_session(session);
        }
    }
}
