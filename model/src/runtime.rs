//! Runs a contiguous range of planner layers with a KV cache per generation session.
//!
//! [`StageRunner`] owns the loaded shards of planner layers `[a, b)` (0 = embedding,
//! `1..=n` = decoder layers, `n + 1` = head) and a table of sessions. Each
//! [`StageRunner::run`] takes token ids (when the range starts at the embedding) or hidden
//! states, runs the shards in order, extends every layer's cache, and returns hidden states or
//! (when the range ends at the head) logits. Positions and the attention mask are derived from
//! the session's cached length, so every stage of a pipeline agrees without sending them.
//!
//! Two backends: ONNX Runtime ([`ort_backend`], loaded dynamically, see [`ort_lib`]) and tract
//! ([`tract_backend`], pure Rust), picked automatically by [`BackendChoice::Auto`].

mod batch;
pub mod calibrate;
mod dequant;
mod ort_backend;
pub mod ort_lib;
mod sessions;
mod tract_backend;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::{LayerKind, Manifest};
use crate::quant::WeightDtype;
use ort_backend::{OrtKv, OrtLog, OrtShard};
use sessions::SessionTable;
use tract_backend::{TractKv, TractShard};

/// Which inference engine runs the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// ONNX Runtime when its library is found, tract otherwise (with a log line).
    #[default]
    Auto,
    /// ONNX Runtime; an error if the library is missing.
    Ort,
    /// tract, the pure-Rust engine.
    Tract,
}

/// The engine actually in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// ONNX Runtime.
    Ort,
    /// tract.
    Tract,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Ort => "onnxruntime",
            Backend::Tract => "tract",
        })
    }
}

/// Settings of a [`StageRunner`].
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Engine choice (default auto).
    pub backend: BackendChoice,
    /// Path of the ONNX Runtime library, tried after `ORT_DYLIB_PATH` (default none).
    pub ort_dylib_path: Option<PathBuf>,
    /// Threads of ONNX Runtime's process-wide pool; 0 = one per core (default 0). Only the
    /// first runner of a process sets it.
    pub threads: usize,
    /// Most sessions held at once (default 64).
    pub max_sessions: usize,
    /// A session unused this long may be evicted (default 600 s).
    pub idle_timeout: Duration,
    /// Return logits for every input position instead of the last only (default false).
    pub all_logits: bool,
    /// Log ONNX Runtime's sessions at verbose level into [`StageRunner::ort_log`] (a
    /// diagnostic; default false).
    pub capture_ort_log: bool,
    /// Write ONNX Runtime's per-node profile of every session into this folder (one JSON file
    /// per shard, written when the runner is dropped; read by [`crate::bench::ort_profile`]).
    /// A diagnostic; default none.
    pub ort_profile: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            backend: BackendChoice::Auto,
            ort_dylib_path: None,
            threads: 0,
            max_sessions: 64,
            idle_timeout: Duration::from_secs(600),
            all_logits: false,
            capture_ort_log: false,
            ort_profile: None,
        }
    }
}

impl RuntimeConfig {
    /// Resolves [`BackendChoice`] to an engine, logging when auto falls back to tract.
    pub fn resolve_backend(&self) -> Result<Backend> {
        match self.backend {
            BackendChoice::Tract => Ok(Backend::Tract),
            BackendChoice::Ort => {
                ort_lib::environment(self.ort_dylib_path.as_deref(), self.threads)
                    .map(|_| Backend::Ort)
            }
            BackendChoice::Auto => {
                match ort_lib::environment(self.ort_dylib_path.as_deref(), self.threads) {
                    Ok(_) => Ok(Backend::Ort),
                    Err(e) => {
                        tracing::warn!("{e}; using the built-in tract backend (slower)");
                        Ok(Backend::Tract)
                    }
                }
            }
        }
    }
}

/// An f32 tensor as it travels between stages: shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct Activation {
    /// Shape, outermost first (`[B,S,H]` for hidden states, `[B,S,V]` for logits).
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

impl Activation {
    /// Checks that `data` fills `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::BadInput(format!(
                "shape {shape:?} holds {n} values, got {}",
                data.len()
            )));
        }
        Ok(Activation { shape, data })
    }

    /// Raw little-endian bytes of the values (for the wire).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.data.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Rebuilds an activation from its shape and little-endian bytes.
    pub fn from_le_bytes(shape: Vec<usize>, bytes: &[u8]) -> Result<Self> {
        if !bytes.len().is_multiple_of(4) {
            return Err(Error::BadInput(format!(
                "{} bytes is not a whole number of f32",
                bytes.len()
            )));
        }
        let data = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Activation::new(shape, data)
    }

    /// Keeps only the last position of a `[1,S,X]` tensor.
    pub fn last_position(&self) -> Result<Activation> {
        self.last_positions(1)
    }

    /// Keeps only the last `n` positions of a `[1,S,X]` tensor (`1 <= n <= S`).
    pub fn last_positions(&self, n: usize) -> Result<Activation> {
        let [1, s, x] = self.shape[..] else {
            return Err(Error::BadInput(format!(
                "expected [1,S,X], got {:?}",
                self.shape
            )));
        };
        if n == 0 || n > s {
            return Err(Error::BadInput(format!(
                "cannot keep the last {n} of {s} positions"
            )));
        }
        Activation::new(vec![1, n, x], self.data[(s - n) * x..].to_vec())
    }
}

/// What a stage receives.
#[derive(Debug, Clone, PartialEq)]
pub enum StageInput {
    /// New token ids (the range starts at the embedding).
    Tokens(Vec<u32>),
    /// Hidden states `[1,S,H]` from the previous stage.
    Hidden(Activation),
}

/// What a stage returns.
#[derive(Debug, Clone, PartialEq)]
pub enum StageOutput {
    /// Hidden states `[1,S,H]` for the next stage.
    Hidden(Activation),
    /// Logits `[1,1,V]` (or `[1,S,V]` with `all_logits`).
    Logits(Activation),
}

enum Shard {
    Ort(OrtShard),
    Tract(TractShard),
}

enum Kv {
    Ort(Option<OrtKv>),
    Tract(Option<TractKv>),
}

impl Kv {
    fn truncate(&mut self, keep: usize) -> Result<()> {
        match self {
            Kv::Ort(Some(kv)) => kv.truncate(keep),
            Kv::Tract(Some(kv)) => kv.truncate(keep),
            Kv::Ort(None) | Kv::Tract(None) => Ok(()),
        }
    }
}

/// The first `keep` positions of a `[1, heads, len, head_dim]` cache tensor.
pub(crate) fn keep_positions(
    shape: &[usize],
    data: &[f32],
    keep: usize,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let [1, heads, len, dim] = shape[..] else {
        return Err(Error::BadInput(format!("cache of shape {shape:?}")));
    };
    if keep > len || data.len() != heads * len * dim {
        return Err(Error::BadInput(format!(
            "cannot keep {keep} positions of a cache of shape {shape:?}"
        )));
    }
    let mut out = Vec::with_capacity(heads * keep * dim);
    for h in 0..heads {
        let at = h * len * dim;
        out.extend_from_slice(&data[at..at + keep * dim]);
    }
    Ok((vec![1, heads, keep, dim], out))
}

/// Hidden states inside a stage: kept in the engine's own value between shards, copied to the
/// host only at the stage's edges.
pub(crate) enum Hidden {
    /// On the host (from the network, or to slice).
    Host(Activation),
    /// An ONNX Runtime value.
    Ort(ort::value::DynValue),
    /// A tract value.
    Tract(tract_onnx::prelude::TValue),
}

impl Hidden {
    fn into_host(self) -> Result<Activation> {
        match self {
            Hidden::Host(a) => Ok(a),
            Hidden::Ort(v) => ort_backend::host(&v),
            Hidden::Tract(t) => tract_backend::host(&t),
        }
    }
}

struct SessionState {
    len: usize,
    kv: Vec<Kv>,
}

/// The shards of planner layers `[a, b)` and their per-session KV caches.
pub struct StageRunner {
    layers: Range<usize>,
    kinds: Vec<LayerKind>,
    shards: Vec<Shard>,
    backend: Backend,
    hidden: usize,
    vocab: usize,
    kv_shape: (usize, usize),
    all_logits: bool,
    sessions: SessionTable<SessionState>,
    ort_log: Option<OrtLog>,
}

impl Drop for StageRunner {
    /// Drops the shards (their sessions' prepacked weights are most of a runner's memory),
    /// then hands the freed heap back to the operating system, as a load does: otherwise a
    /// node that drops a stage keeps its pages resident until the next load.
    fn drop(&mut self) {
        self.shards.clear();
        crate::heap::release_free_heap();
    }
}

impl std::fmt::Debug for StageRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageRunner")
            .field("layers", &self.layers)
            .field("backend", &self.backend)
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

impl StageRunner {
    /// Loads planner layers `layers` of the model in `dir`.
    pub fn load(
        dir: &Path,
        manifest: &Manifest,
        layers: Range<usize>,
        config: &RuntimeConfig,
    ) -> Result<Self> {
        let total = manifest.planner_layers();
        if layers.start >= layers.end || layers.end > total {
            return Err(Error::BadInput(format!(
                "layer range {layers:?} not within 0..{total}"
            )));
        }
        let backend = config.resolve_backend()?;
        let ort_log = config.capture_ort_log.then(OrtLog::default);
        let mut shards = Vec::with_capacity(layers.len());
        let mut kinds = Vec::with_capacity(layers.len());
        for l in layers.clone() {
            let path = manifest
                .shard_path(dir, l)
                .ok_or_else(|| Error::Manifest(format!("no shard for layer {l}")))?;
            let shard = match backend {
                Backend::Ort => Shard::Ort(OrtShard::load(
                    &path,
                    config.threads,
                    config.ort_dylib_path.as_deref(),
                    ort_log.as_ref(),
                    config.ort_profile.as_deref(),
                )?),
                Backend::Tract => Shard::Tract(TractShard::load(&path)?),
            };
            shards.push(shard);
            kinds.push(manifest.layers[l].kind);
        }
        let dtype = manifest.layers[layers.clone()]
            .first()
            .map(|l| l.dtype)
            .unwrap_or_default();
        // Graph copies and load-time buffers freed by the engines stay resident otherwise.
        crate::heap::release_free_heap();
        // Weight pages ONNX Runtime keeps mapped after prepacking them (crate::heap).
        crate::heap::release_file_pages(dir);
        tracing::info!(?layers, %backend, %dtype, "stage loaded");
        match (backend, dtype) {
            (_, WeightDtype::F32) => {}
            (Backend::Tract, WeightDtype::F16) => {
                tracing::info!(%dtype, "f16 weights cast to f32 at load (tract folds the casts)");
            }
            (Backend::Ort, WeightDtype::F16) => {
                tracing::info!(%dtype, "f16 weights cast to f32 at load (no f16 MatMul on the CPU provider)");
            }
            (Backend::Tract, _) => {
                tracing::info!(%dtype, "tract has no quantised kernels: weights dequantised to f32 at load");
            }
            (Backend::Ort, _) => {}
        }
        let d = &manifest.dims;
        Ok(StageRunner {
            layers,
            kinds,
            shards,
            backend,
            hidden: d.hidden,
            vocab: d.vocab,
            kv_shape: (d.kv_heads, d.head_dim),
            all_logits: config.all_logits,
            sessions: SessionTable::new(config.max_sessions, config.idle_timeout),
            ort_log,
        })
    }

    /// The planner layers this stage runs.
    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    /// The engine in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// ONNX Runtime's log records so far, when the runner was loaded with
    /// [`RuntimeConfig::capture_ort_log`] (empty otherwise).
    pub fn ort_log(&self) -> Vec<String> {
        self.ort_log.as_ref().map(OrtLog::lines).unwrap_or_default()
    }

    /// Positions cached for `session`, if it exists.
    pub fn session_len(&self, session: u64) -> Option<usize> {
        self.sessions.get(session).map(|s| s.len)
    }

    /// Number of sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Forgets a session and its cache; whether it existed.
    pub fn drop_session(&mut self, session: u64) -> bool {
        self.sessions.remove(session)
    }

    /// Drops sessions idle longer than the timeout; returns how many.
    pub fn evict_idle(&mut self, now: Instant) -> usize {
        self.sessions.evict_idle(now)
    }

    /// Runs `input` as the continuation of `session` (created on first use).
    pub fn run(&mut self, session: u64, input: StageInput) -> Result<StageOutput> {
        self.run_inner(session, None, input, 1)
    }

    /// Like [`StageRunner::run`], but checks that the input starts at position `start`: 0
    /// restarts the session (a re-plan replays the history), anything else must equal the
    /// cached length.
    pub fn run_at(&mut self, session: u64, start: usize, input: StageInput) -> Result<StageOutput> {
        if start == 0 {
            self.sessions.remove(session);
        }
        self.run_inner(session, Some(start), input, 1)
    }

    /// A speculative step (docs/pipeline.md, "Speculative decoding"): like
    /// [`StageRunner::run_at`], but `start` may also lie below the cached length, and then the
    /// positions from `start` on (a rejected speculation's) are dropped from every layer's
    /// cache first; and a head returns the logits of the last `outputs` positions (`[1,
    /// outputs, V]`), one per verified position. `outputs` must not exceed the input's length.
    pub fn run_verify(
        &mut self,
        session: u64,
        start: usize,
        input: StageInput,
        outputs: usize,
    ) -> Result<StageOutput> {
        if start == 0 {
            self.sessions.remove(session);
        } else if let Some(state) = self.sessions.get_mut(session)
            && start < state.len
        {
            let rolled = state.kv.iter_mut().try_for_each(|kv| kv.truncate(start));
            if let Err(e) = rolled {
                self.sessions.remove(session);
                return Err(e);
            }
            state.len = start;
        }
        self.run_inner(session, Some(start), input, outputs)
    }

    fn run_inner(
        &mut self,
        session: u64,
        start: Option<usize>,
        input: StageInput,
        outputs: usize,
    ) -> Result<StageOutput> {
        let r = self.step(session, start, input, outputs);
        if r.is_err() {
            // A failed step may have extended some layers' caches and not others.
            self.sessions.remove(session);
        }
        r
    }

    fn step(
        &mut self,
        session: u64,
        start: Option<usize>,
        input: StageInput,
        outputs: usize,
    ) -> Result<StageOutput> {
        self.check_input(&input)?;
        let len = match &input {
            StageInput::Tokens(t) => t.len(),
            StageInput::Hidden(a) => a.shape[1],
        };
        if outputs == 0 || outputs > len {
            return Err(Error::BadInput(format!(
                "{outputs} verified positions in an input of {len}"
            )));
        }
        let backend = self.backend;
        let n_kv = self
            .kinds
            .iter()
            .filter(|k| **k == LayerKind::Decoder)
            .count();
        let make = || SessionState {
            len: 0,
            kv: (0..n_kv)
                .map(|_| match backend {
                    Backend::Ort => Kv::Ort(None),
                    Backend::Tract => Kv::Tract(None),
                })
                .collect(),
        };
        let state = self.sessions.get_or_create(session, Instant::now(), make)?;
        if let Some(start) = start
            && start != state.len
        {
            return Err(Error::SessionOutOfSync {
                session,
                cached: state.len,
                start,
            });
        }
        let (seq, ids, mut hidden) = match input {
            StageInput::Tokens(t) => (t.len(), Some(t), None),
            StageInput::Hidden(a) => (a.shape[1], None, Some(Hidden::Host(a))),
        };
        let past = state.len;
        let pos: Vec<i64> = (past..past + seq).map(|p| p as i64).collect();
        let mask = vec![1i64; past + seq];
        let mut kv_i = 0;
        let mut logits = None;
        for (shard, kind) in self.shards.iter_mut().zip(&self.kinds) {
            match (kind, shard) {
                (LayerKind::Embedding, shard) => {
                    let Some(ids) = &ids else {
                        return Err(Error::BadInput("the embedding needs token ids".to_owned()));
                    };
                    let ids: Vec<i64> = ids.iter().map(|t| i64::from(*t)).collect();
                    hidden = Some(match shard {
                        Shard::Ort(s) => s.embed(&ids)?,
                        Shard::Tract(s) => s.embed(&ids)?,
                    });
                }
                (LayerKind::Decoder, shard) => {
                    let h = hidden
                        .take()
                        .ok_or_else(|| Error::BadInput("no hidden states".to_owned()))?;
                    let out = match (shard, &mut state.kv[kv_i]) {
                        (Shard::Ort(s), Kv::Ort(kv)) => {
                            s.layer(h, &mask, &pos, kv, self.kv_shape)?
                        }
                        (Shard::Tract(s), Kv::Tract(kv)) => {
                            s.layer(h, &mask, &pos, kv, self.kv_shape)?
                        }
                        _ => {
                            return Err(Error::BadInput(
                                "backend mismatch in session cache".to_owned(),
                            ));
                        }
                    };
                    kv_i += 1;
                    hidden = Some(out);
                }
                (LayerKind::Head, shard) => {
                    let h = hidden
                        .take()
                        .ok_or_else(|| Error::BadInput("no hidden states".to_owned()))?;
                    let h = if self.all_logits || seq == outputs {
                        h
                    } else {
                        Hidden::Host(h.into_host()?.last_positions(outputs)?)
                    };
                    logits = Some(match shard {
                        Shard::Ort(s) => s.head(h)?,
                        Shard::Tract(s) => s.head(h)?,
                    });
                }
            }
        }
        state.len += seq;
        match (logits, hidden) {
            (Some(l), _) => Ok(StageOutput::Logits(l)),
            (None, Some(h)) => Ok(StageOutput::Hidden(h.into_host()?)),
            (None, None) => Err(Error::BadInput("stage produced nothing".to_owned())),
        }
    }

    /// Validates the input against the range; returns the hidden states to start from.
    fn check_input(&self, input: &StageInput) -> Result<()> {
        let starts_at_embedding = self.layers.start == 0;
        match input {
            StageInput::Tokens(ids) => {
                if !starts_at_embedding {
                    return Err(Error::BadInput(format!(
                        "stage {:?} takes hidden states, not tokens",
                        self.layers
                    )));
                }
                if ids.is_empty() {
                    return Err(Error::BadInput("no tokens".to_owned()));
                }
                if let Some(bad) = ids.iter().find(|t| **t as usize >= self.vocab) {
                    return Err(Error::BadInput(format!(
                        "token {bad} >= vocab {}",
                        self.vocab
                    )));
                }
                Ok(())
            }
            StageInput::Hidden(a) => {
                if starts_at_embedding {
                    return Err(Error::BadInput(format!(
                        "stage {:?} takes token ids",
                        self.layers
                    )));
                }
                match a.shape[..] {
                    [1, s, h] if s > 0 && h == self.hidden => Ok(()),
                    _ => Err(Error::BadInput(format!(
                        "hidden states {:?}, expected [1,S,{}]",
                        a.shape, self.hidden
                    ))),
                }
            }
        }
    }
}
