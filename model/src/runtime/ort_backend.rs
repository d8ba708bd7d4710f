//! Shards on ONNX Runtime. The KV cache stays in ONNX Runtime values between steps: a layer's
//! `present_key` output is fed back as the next step's `past_key` without a copy.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ort::logging::LogLevel;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor};

use super::{Activation, Hidden};
use crate::error::{Error, Result};
use crate::export::names;

/// ONNX Runtime log records captured from the sessions of a runner (a diagnostic: tests
/// check that no `MatMulNBits` falls back to its slow unpacked path).
#[derive(Debug, Clone, Default)]
pub(crate) struct OrtLog(Arc<Mutex<Vec<String>>>);

impl OrtLog {
    /// The records so far.
    pub(crate) fn lines(&self) -> Vec<String> {
        match self.0.lock() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// A loaded shard.
pub(crate) struct OrtShard {
    session: Session,
}

/// A layer's cached keys and values.
pub(crate) struct OrtKv {
    key: DynValue,
    value: DynValue,
}

impl OrtKv {
    /// The cache from host keys and values `[1,KV,P,D]`.
    pub(crate) fn from_host(key: Activation, value: Activation) -> Result<Self> {
        let t = |a: Activation| -> Result<DynValue> {
            Ok(Tensor::from_array((dims(&a.shape), a.data))
                .map_err(err)?
                .into_dyn())
        };
        Ok(OrtKv {
            key: t(key)?,
            value: t(value)?,
        })
    }

    /// The cached keys and values `[1,KV,P,D]`, read in place.
    pub(crate) fn values(&self) -> Result<(&[f32], &[f32])> {
        fn data(v: &DynValue) -> Result<&[f32]> {
            v.try_extract_tensor::<f32>().map(|(_, d)| d).map_err(err)
        }
        Ok((data(&self.key)?, data(&self.value)?))
    }

    /// Keeps the first `keep` positions of the cache (a rejected speculation's are dropped).
    pub(crate) fn truncate(&mut self, keep: usize) -> Result<()> {
        let cut = |v: &DynValue| -> Result<DynValue> {
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(err)?;
            let shape: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
            let (shape, data) = super::keep_positions(&shape, data, keep)?;
            Ok(Tensor::from_array((dims(&shape), data))
                .map_err(err)?
                .into_dyn())
        };
        self.key = cut(&self.key)?;
        self.value = cut(&self.value)?;
        Ok(())
    }
}

fn err<E: std::fmt::Display>(e: E) -> Error {
    Error::Ort(e.to_string())
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|d| *d as i64).collect()
}

impl OrtShard {
    /// Loads `path` (external data resolved next to it). With `log`, the session logs at
    /// verbose level into it (one `level category: message` line per record); with `profile`,
    /// ONNX Runtime profiles every node run into a JSON file in that folder, named after the
    /// shard (written when the session is dropped).
    pub(crate) fn load(
        path: &Path,
        threads: usize,
        ort_path: Option<&Path>,
        log: Option<&OrtLog>,
        profile: Option<&Path>,
    ) -> Result<Self> {
        let env = super::ort_lib::environment(ort_path, threads)?;
        let mut b = Session::builder(env).map_err(err)?;
        b = b
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(err)?;
        if let Some(dir) = profile {
            let stem = path
                .file_stem()
                .map_or_else(|| "shard".into(), |s| s.to_string_lossy().into_owned());
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
            b = b.with_profiling(dir.join(stem)).map_err(err)?;
        }
        if let Some(log) = log {
            let sink = Arc::clone(&log.0);
            b = b
                .with_logger(Arc::new(move |level, category, _id, _at, message| {
                    if let Ok(mut lines) = sink.lock() {
                        lines.push(format!("{level:?} {category}: {message}"));
                    }
                }))
                .map_err(err)?
                .with_log_level(LogLevel::Verbose)
                .map_err(err)?;
        }
        let session = b
            .commit_from_file(path)
            .map_err(|e| Error::Ort(format!("{}: {e}", path.display())))?;
        Ok(OrtShard { session })
    }

    /// Embedding: ids `[1,S]` to hidden states.
    pub(crate) fn embed(&mut self, ids: &[i64]) -> Result<Hidden> {
        self.embed_shaped(ids, [1, ids.len() as i64])
    }

    /// Embedding of ids laid out as `shape` (`[B,S]`).
    fn embed_shaped(&mut self, ids: &[i64], shape: [i64; 2]) -> Result<Hidden> {
        let t = Tensor::from_array((shape.to_vec(), ids.to_vec())).map_err(err)?;
        let mut out = self
            .session
            .run(ort::inputs![names::INPUT_IDS => t])
            .map_err(err)?;
        take(&mut out, names::HIDDEN_OUT).map(Hidden::Ort)
    }

    /// Runs the layer graph; returns the hidden states and the present keys and values.
    fn run_layer(
        &mut self,
        hidden: DynValue,
        (mask, pos): (Tensor<i64>, Tensor<i64>),
        past_key: &DynValue,
        past_value: &DynValue,
    ) -> Result<(DynValue, DynValue, DynValue)> {
        let mut out = self
            .session
            .run(ort::inputs![
                names::HIDDEN => hidden,
                names::ATTENTION_MASK => mask,
                names::POSITION_IDS => pos,
                names::PAST_KEY => past_key,
                names::PAST_VALUE => past_value,
            ])
            .map_err(err)?;
        Ok((
            take(&mut out, names::HIDDEN_OUT)?,
            take(&mut out, names::PRESENT_KEY)?,
            take(&mut out, names::PRESENT_VALUE)?,
        ))
    }

    /// One decoder layer step; creates the cache on the first step.
    pub(crate) fn layer(
        &mut self,
        hidden: Hidden,
        mask: &[i64],
        pos: &[i64],
        kv: &mut Option<OrtKv>,
        kv_shape: (usize, usize),
    ) -> Result<Hidden> {
        let h = value(hidden)?;
        let m = Tensor::from_array((vec![1i64, mask.len() as i64], mask.to_vec())).map_err(err)?;
        let p = Tensor::from_array((vec![1i64, pos.len() as i64], pos.to_vec())).map_err(err)?;
        let past = match kv.take() {
            Some(kv) => kv,
            None => {
                let shape = vec![1i64, kv_shape.0 as i64, 0, kv_shape.1 as i64];
                let e = |s: Vec<i64>| {
                    Tensor::<f32>::from_array((s, Vec::new()))
                        .map(|t| t.into_dyn())
                        .map_err(err)
                };
                OrtKv {
                    key: e(shape.clone())?,
                    value: e(shape)?,
                }
            }
        };
        let (hidden, key, value) = self.run_layer(h, (m, p), &past.key, &past.value)?;
        *kv = Some(OrtKv { key, value });
        Ok(Hidden::Ort(hidden))
    }

    /// Embedding of one token per row: ids `[B,1]` to hidden states `[B,1,H]`.
    pub(crate) fn embed_rows(&mut self, ids: &[i64]) -> Result<Hidden> {
        self.embed_shaped(ids, [ids.len() as i64, 1])
    }

    /// One decoder layer over a batch of rows with explicit caches: `mask` `[B, P+1]`, `pos`
    /// `[B,1]`, past keys and values `[B,KV,P,D]` (`past_shape`); returns the hidden states
    /// and the present keys and values on the host.
    pub(crate) fn layer_rows(
        &mut self,
        hidden: Hidden,
        (mask, pos): (&[i64], &[i64]),
        past_shape: [usize; 4],
        (past_key, past_value): (Vec<f32>, Vec<f32>),
    ) -> Result<(Hidden, Activation, Activation)> {
        let b = past_shape[0] as i64;
        let h = value(hidden)?;
        let m = Tensor::from_array((vec![b, mask.len() as i64 / b], mask.to_vec())).map_err(err)?;
        let p = Tensor::from_array((vec![b, 1i64], pos.to_vec())).map_err(err)?;
        let kv = |data: Vec<f32>| -> Result<DynValue> {
            Ok(Tensor::from_array((dims(&past_shape), data))
                .map_err(err)?
                .into_dyn())
        };
        let (k, v) = (kv(past_key)?, kv(past_value)?);
        let (hidden, key, value) = self.run_layer(h, (m, p), &k, &v)?;
        Ok((Hidden::Ort(hidden), host(&key)?, host(&value)?))
    }

    /// Head: hidden states to logits.
    pub(crate) fn head(&mut self, hidden: Hidden) -> Result<Activation> {
        let h = value(hidden)?;
        let out = self
            .session
            .run(ort::inputs![names::HIDDEN => h])
            .map_err(err)?;
        host(&out[names::LOGITS])
    }
}

fn take(out: &mut ort::session::SessionOutputs<'_>, name: &str) -> Result<DynValue> {
    out.remove(name)
        .ok_or_else(|| Error::Ort(format!("shard has no output {name:?}")))
}

/// Hidden states as an ONNX Runtime value (no copy if they already are one).
fn value(h: Hidden) -> Result<DynValue> {
    match h {
        Hidden::Ort(v) => Ok(v),
        other => {
            let a = other.into_host()?;
            Ok(Tensor::from_array((dims(&a.shape), a.data))
                .map_err(err)?
                .into_dyn())
        }
    }
}

/// Copies an f32 value to the host.
pub(crate) fn host(v: &DynValue) -> Result<Activation> {
    let (shape, data) = v.try_extract_tensor::<f32>().map_err(err)?;
    let shape = shape.iter().map(|d| *d as usize).collect();
    Activation::new(shape, data.to_vec())
}
