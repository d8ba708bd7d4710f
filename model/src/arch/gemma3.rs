//! Gemma 3 (text): the embedding scaled by `sqrt(hidden)`, RMSNorm with `(1 + weight)`,
//! RMS-normed queries and keys, pre- and post-norms around both attention and feed-forward,
//! GeGLU (tanh-approximated GELU), and interleaved attention: local layers see a sliding
//! window and use RoPE base `rope_local_base_freq` (10 000), every `pattern`-th layer is
//! global with `rope_theta` (1 000 000). Scores are scaled by `query_pre_attn_scalar^-1/2`;
//! the head is tied to the embedding, with optional final logit soft-capping.
//!
//! Tensor names follow Hugging Face's `Gemma3ForCausalLM`; norm weights are the raw `w` of
//! `(1 + w)` as in Hugging Face checkpoints (the GGUF reader subtracts the 1 that llama.cpp's
//! converter added).

use serde_json::Value;

use super::common::{self, AttentionShape};
use super::{Architecture, LayerIo, LayerOutputs, ModelDims, WeightSource};
use crate::error::{Error, Result};
use crate::onnx::GraphBuilder;

/// Gemma 3's RoPE base for local (sliding-window) layers when the config does not say.
pub const DEFAULT_LOCAL_ROPE_THETA: f64 = 10_000.0;
/// Every sixth layer is global in every Gemma 3 size.
pub const DEFAULT_PATTERN: usize = 6;
/// `sqrt(2 / pi)`, the constant of the tanh approximation of GELU.
const GELU_C: f32 = 0.797_884_6;

/// Gemma 3 figures beyond [`ModelDims`].
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3Options {
    /// Scores are multiplied by `query_pre_attn_scalar^-1/2`.
    pub query_pre_attn_scalar: f64,
    /// Keys visible to a local layer: those less than this many positions back.
    pub sliding_window: usize,
    /// Which layers are global (full attention); the others are local.
    pub global_layers: Vec<bool>,
    /// RoPE inverse frequencies of global layers (base `rope_theta`, after any scaling).
    pub global_inv_freq: Vec<f32>,
    /// RoPE inverse frequencies of local layers (base `rope_local_base_freq`).
    pub local_inv_freq: Vec<f32>,
    /// `tanh(logits / c) * c` on the head's output, when set.
    pub final_logit_softcap: Option<f32>,
}

impl Gemma3Options {
    /// Layer `i` is global when `(i + 1) % pattern == 0` (the Gemma 3 layout).
    pub fn pattern_layers(layers: usize, pattern: usize) -> Vec<bool> {
        (0..layers)
            .map(|i| pattern != 0 && (i + 1).is_multiple_of(pattern))
            .collect()
    }
}

/// A Gemma 3 model's graph builder.
#[derive(Debug, Clone)]
pub struct Gemma3 {
    dims: ModelDims,
    opts: Gemma3Options,
}

impl Gemma3 {
    /// A builder for `dims` with `opts`.
    pub fn new(dims: ModelDims, opts: Gemma3Options) -> Result<Self> {
        dims.validate()?;
        let half = dims.head_dim / 2;
        if opts.global_inv_freq.len() != half || opts.local_inv_freq.len() != half {
            return Err(Error::Config(format!(
                "Gemma 3 RoPE tables must have {half} frequencies"
            )));
        }
        if opts.global_layers.len() != dims.layers {
            return Err(Error::Config(format!(
                "{} layer types for {} layers",
                opts.global_layers.len(),
                dims.layers
            )));
        }
        if opts.sliding_window == 0 || opts.query_pre_attn_scalar <= 0.0 {
            return Err(Error::Config(
                "Gemma 3 needs a positive sliding_window and query_pre_attn_scalar".into(),
            ));
        }
        Ok(Gemma3 { dims, opts })
    }

    /// Reads a Hugging Face `config.json` of model type `gemma3_text`.
    pub fn from_hf_config(c: &Value) -> Result<Self> {
        let n = |k: &str| c.get(k).and_then(Value::as_u64).map(|v| v as usize);
        let f = |k: &str| c.get(k).and_then(Value::as_f64);
        let req = |k: &str| n(k).ok_or_else(|| Error::Config(format!("config.json lacks {k:?}")));
        let (hidden, heads, layers) = (
            req("hidden_size")?,
            req("num_attention_heads")?,
            req("num_hidden_layers")?,
        );
        let head_dim = n("head_dim").unwrap_or(256);
        let dims = ModelDims {
            hidden,
            layers,
            heads,
            kv_heads: n("num_key_value_heads").unwrap_or(heads),
            head_dim,
            intermediate: req("intermediate_size")?,
            vocab: req("vocab_size")?,
            rms_eps: f("rms_norm_eps").unwrap_or(1e-6),
            rope_theta: f("rope_theta").unwrap_or(1_000_000.0),
            tied_embeddings: c
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            max_position: n("max_position_embeddings").unwrap_or(32_768),
        };
        let global_layers = match c.get("layer_types").and_then(Value::as_array) {
            Some(types) => types
                .iter()
                .map(|t| t.as_str() == Some("full_attention"))
                .collect(),
            None => Gemma3Options::pattern_layers(
                layers,
                n("sliding_window_pattern").unwrap_or(DEFAULT_PATTERN),
            ),
        };
        let local_theta = f("rope_local_base_freq").unwrap_or(DEFAULT_LOCAL_ROPE_THETA);
        let opts = Gemma3Options {
            query_pre_attn_scalar: f("query_pre_attn_scalar").unwrap_or(head_dim as f64),
            sliding_window: n("sliding_window").unwrap_or(4096),
            global_layers,
            global_inv_freq: scaled_inv_freq(c.get("rope_scaling"), dims.rope_theta, head_dim)?,
            local_inv_freq: common::inv_freq(local_theta, head_dim),
            final_logit_softcap: f("final_logit_softcapping").map(|v| v as f32),
        };
        Gemma3::new(dims, opts)
    }

    /// The Gemma 3 figures.
    pub fn options(&self) -> &Gemma3Options {
        &self.opts
    }

    fn norm(
        &self,
        g: &mut GraphBuilder,
        w: &mut dyn WeightSource,
        x: &str,
        name: &str,
        size: usize,
    ) -> Result<String> {
        common::rms_norm(g, w, x, name, size, self.dims.rms_eps, 1.0)
    }

    /// GeGLU: `down(gelu_tanh(gate(x)) * up(x))`.
    fn mlp(
        &self,
        g: &mut GraphBuilder,
        w: &mut dyn WeightSource,
        x: &str,
        pre: &str,
    ) -> Result<String> {
        let (h, f) = (self.dims.hidden, self.dims.intermediate);
        let gate = common::linear(g, w, x, &format!("{pre}mlp.gate_proj.weight"), None, (f, h))?;
        let up = common::linear(g, w, x, &format!("{pre}mlp.up_proj.weight"), None, (f, h))?;
        let act = gelu_tanh(g, &gate);
        let prod = g.mul(&act, &up);
        common::linear(
            g,
            w,
            &prod,
            &format!("{pre}mlp.down_proj.weight"),
            None,
            (h, f),
        )
    }
}

/// Global-layer inverse frequencies with Hugging Face `rope_scaling` (`linear` or none).
fn scaled_inv_freq(scaling: Option<&Value>, theta: f64, head_dim: usize) -> Result<Vec<f32>> {
    let base = common::inv_freq(theta, head_dim);
    let Some(s) = scaling.filter(|v| !v.is_null()) else {
        return Ok(base);
    };
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(base),
        "linear" => {
            let factor = s.get("factor").and_then(Value::as_f64).unwrap_or(1.0) as f32;
            Ok(base.iter().map(|v| v / factor).collect())
        }
        other => Err(Error::Config(format!(
            "Gemma 3 rope_scaling type {other:?} is not supported"
        ))),
    }
}

/// `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`.
pub fn gelu_tanh(g: &mut GraphBuilder, x: &str) -> String {
    let x2 = g.mul(x, x);
    let x3 = g.mul(&x2, x);
    let k = g.scalar(0.044_715);
    let kx3 = g.mul(&x3, &k);
    let inner = g.add(x, &kx3);
    let c = g.scalar(GELU_C);
    let scaled = g.mul(&inner, &c);
    let t = g.unary("Tanh", &scaled);
    let one = g.scalar(1.0);
    let t1 = g.add(&t, &one);
    let half = g.scalar(0.5);
    let hx = g.mul(x, &half);
    g.mul(&hx, &t1)
}

impl Architecture for Gemma3 {
    fn name(&self) -> &str {
        "gemma3"
    }

    fn dims(&self) -> &ModelDims {
        &self.dims
    }

    fn embedding(
        &self,
        g: &mut GraphBuilder,
        w: &mut dyn WeightSource,
        input_ids: &str,
    ) -> Result<String> {
        let d = &self.dims;
        let name = "model.embed_tokens.weight";
        let rows = common::embedding_rows(g, w, name, (d.vocab, d.hidden), input_ids)?;
        let scale = g.scalar((d.hidden as f32).sqrt());
        Ok(g.mul(&rows, &scale))
    }

    fn decoder_layer(
        &self,
        g: &mut GraphBuilder,
        w: &mut dyn WeightSource,
        i: usize,
        io: LayerIo<'_>,
    ) -> Result<LayerOutputs> {
        let d = &self.dims;
        let (h, nh, kv, hd) = (d.hidden, d.heads, d.kv_heads, d.head_dim);
        let pre = format!("model.layers.{i}.");
        let attn = |p: &str| format!("{pre}self_attn.{p}");
        let x = self.norm(g, w, io.hidden, &format!("{pre}input_layernorm.weight"), h)?;
        let q = common::linear(g, w, &x, &attn("q_proj.weight"), None, (nh * hd, h))?;
        let k = common::linear(g, w, &x, &attn("k_proj.weight"), None, (kv * hd, h))?;
        let v = common::linear(g, w, &x, &attn("v_proj.weight"), None, (kv * hd, h))?;
        let q = common::split_heads(g, &q, nh, hd);
        let k = common::split_heads(g, &k, kv, hd);
        let v = common::split_heads(g, &v, kv, hd);
        let q = self.norm(g, w, &q, &attn("q_norm.weight"), hd)?;
        let k = self.norm(g, w, &k, &attn("k_norm.weight"), hd)?;
        let global = self.opts.global_layers.get(i).copied().unwrap_or(false);
        let (freqs, key, window) = if global {
            (&self.opts.global_inv_freq, "rope/global", None)
        } else {
            (
                &self.opts.local_inv_freq,
                "rope/local",
                Some(self.opts.sliding_window),
            )
        };
        let (cos, sin) = common::rope_tables(g, io.position_ids, freqs, key);
        let q = common::apply_rope(g, &q, &cos, &sin, hd);
        let k = common::apply_rope(g, &k, &cos, &sin, hd);
        let present_key = g.concat(&[io.past_key, &k], 2);
        let present_value = g.concat(&[io.past_value, &v], 2);
        let bias = common::attention_bias(g, io.attention_mask, io.position_ids, nh / kv, window);
        let scale = (1.0 / self.opts.query_pre_attn_scalar.sqrt()) as f32;
        let shape = AttentionShape {
            heads: nh,
            kv_heads: kv,
            head_dim: hd,
            scale,
        };
        let a = common::attention(g, &q, &present_key, &present_value, &bias, shape);
        let o = common::linear(g, w, &a, &attn("o_proj.weight"), None, (h, nh * hd))?;
        let o = self.norm(
            g,
            w,
            &o,
            &format!("{pre}post_attention_layernorm.weight"),
            h,
        )?;
        let hidden = g.add(io.hidden, &o);
        let x = self.norm(
            g,
            w,
            &hidden,
            &format!("{pre}pre_feedforward_layernorm.weight"),
            h,
        )?;
        let m = self.mlp(g, w, &x, &pre)?;
        let m = self.norm(
            g,
            w,
            &m,
            &format!("{pre}post_feedforward_layernorm.weight"),
            h,
        )?;
        let hidden = g.add(&hidden, &m);
        Ok(LayerOutputs {
            hidden,
            present_key,
            present_value,
        })
    }

    fn head(&self, g: &mut GraphBuilder, w: &mut dyn WeightSource, hidden: &str) -> Result<String> {
        let d = &self.dims;
        let x = self.norm(g, w, hidden, "model.norm.weight", d.hidden)?;
        let name = if d.tied_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let logits = common::head_logits(g, w, &x, name, (d.vocab, d.hidden))?;
        Ok(match self.opts.final_logit_softcap {
            Some(cap) => {
                let c = g.scalar(cap);
                let inv = g.scalar(1.0 / cap);
                let scaled = g.mul(&logits, &inv);
                let t = g.unary("Tanh", &scaled);
                g.mul(&t, &c)
            }
            None => logits,
        })
    }
}
