//! Shards on tract, the pure-Rust ONNX runtime: used when ONNX Runtime is not installed. The
//! graphs keep their symbolic batch, sequence and past lengths; the KV cache stays in tract
//! values between steps.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::{Activation, Hidden};
use crate::error::{Error, Result};

/// A loaded shard.
pub(crate) struct TractShard {
    plan: Arc<TypedRunnableModel>,
}

/// A layer's cached keys and values.
pub(crate) struct TractKv {
    key: TValue,
    value: TValue,
}

impl TractKv {
    /// Keeps the first `keep` positions of the cache (a rejected speculation's are dropped).
    pub(crate) fn truncate(&mut self, keep: usize) -> Result<()> {
        let cut = |t: &TValue| -> Result<TValue> {
            let a = host(t)?;
            let (shape, data) = super::keep_positions(&a.shape, &a.data, keep)?;
            Ok(Tensor::from_shape(&shape, &data)
                .map_err(err)?
                .into_tvalue())
        };
        self.key = cut(&self.key)?;
        self.value = cut(&self.value)?;
        Ok(())
    }
}

fn err<E: std::fmt::Display>(e: E) -> Error {
    Error::Tract(format!("{e:#}"))
}

impl TractShard {
    /// Loads and optimises `path` (external data resolved next to it); a quantised shard is
    /// dequantised to f32 first ([`super::dequant`]).
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let fail = |e: TractError| Error::Tract(format!("{}: {e:#}", path.display()));
        let onnx = tract_onnx::onnx();
        let mut proto = onnx.proto_model_for_path(path).map_err(fail)?;
        if super::dequant::is_quantized(&proto) {
            super::dequant::dequantize_model(&mut proto, path)?;
        }
        let dir = path.parent().and_then(Path::to_str);
        let parsed = onnx.parse(&proto, dir).map_err(fail)?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(Error::Tract(format!(
                "{}: unresolved inputs {:?}",
                path.display(),
                parsed.unresolved_inputs
            )));
        }
        let model = parsed
            .model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(fail)?;
        Ok(TractShard { plan: model })
    }

    fn run(&self, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        self.plan.run(inputs).map_err(err)
    }

    /// Embedding: ids `[1,S]` to hidden states.
    pub(crate) fn embed(&mut self, ids: &[i64]) -> Result<Hidden> {
        let t = Tensor::from_shape(&[1, ids.len()], ids).map_err(err)?;
        let out = self.run(tvec![t.into_tvalue()])?;
        nth(&out, 0).map(Hidden::Tract)
    }

    /// One decoder layer step; creates the cache on the first step.
    pub(crate) fn layer(
        &mut self,
        hidden: Hidden,
        mask: &[i64],
        pos: &[i64],
        kv: &mut Option<TractKv>,
        kv_shape: (usize, usize),
    ) -> Result<Hidden> {
        let h = value(hidden)?;
        let m = Tensor::from_shape(&[1, mask.len()], mask).map_err(err)?;
        let p = Tensor::from_shape(&[1, pos.len()], pos).map_err(err)?;
        let past = match kv.take() {
            Some(kv) => kv,
            None => {
                let e = Tensor::zero::<f32>(&[1, kv_shape.0, 0, kv_shape.1])
                    .map_err(err)?
                    .into_tvalue();
                TractKv {
                    key: e.clone(),
                    value: e,
                }
            }
        };
        let out = self.run(tvec![
            h,
            m.into_tvalue(),
            p.into_tvalue(),
            past.key,
            past.value
        ])?;
        *kv = Some(TractKv {
            key: nth(&out, 1)?,
            value: nth(&out, 2)?,
        });
        nth(&out, 0).map(Hidden::Tract)
    }

    /// Head: hidden states to logits.
    pub(crate) fn head(&mut self, hidden: Hidden) -> Result<Activation> {
        let h = value(hidden)?;
        let out = self.run(tvec![h])?;
        host(&nth(&out, 0)?)
    }
}

fn nth(out: &TVec<TValue>, i: usize) -> Result<TValue> {
    out.get(i)
        .cloned()
        .ok_or_else(|| Error::Tract(format!("shard returned no output {i}")))
}

/// Hidden states as a tract value (no copy if they already are one).
fn value(h: Hidden) -> Result<TValue> {
    match h {
        Hidden::Tract(t) => Ok(t),
        other => {
            let a = other.into_host()?;
            Ok(Tensor::from_shape(&a.shape, &a.data)
                .map_err(err)?
                .into_tvalue())
        }
    }
}

/// Copies an f32 value to the host.
pub(crate) fn host(t: &TValue) -> Result<Activation> {
    let view = t.try_as_plain_ram().map_err(err)?;
    let data = view.as_slice::<f32>().map_err(err)?.to_vec();
    Activation::new(t.shape().to_vec(), data)
}
