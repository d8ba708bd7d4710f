//! The Llama family (Llama 2/3, TinyLlama, SmolLM, Mistral) and Qwen2: pre-norm decoder
//! layers with RMSNorm, grouped-query attention with RoPE, and a SwiGLU feed-forward; Qwen2
//! adds biases to the q/k/v projections. Tensor names follow Hugging Face's `LlamaForCausalLM`.

use serde_json::Value;

use super::common::{self, AttentionShape};
use super::{Architecture, LayerIo, LayerOutputs, ModelDims, WeightSource};
use crate::error::{Error, Result};
use crate::onnx::GraphBuilder;

/// Options that vary inside the family.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaOptions {
    /// Biases on the q/k/v projections (Qwen2, or Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Biases on the feed-forward projections (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// RoPE inverse frequencies (after any `rope_scaling`), `head_dim / 2` values.
    pub inv_freq: Vec<f32>,
}

/// A Llama-family model's graph builder.
#[derive(Debug, Clone)]
pub struct Llama {
    name: String,
    dims: ModelDims,
    opts: LlamaOptions,
    window: Option<usize>,
}

impl Llama {
    /// A builder for `dims` with `opts`, writing `name` to the manifest.
    pub fn new(name: &str, dims: ModelDims, opts: LlamaOptions) -> Result<Self> {
        dims.validate()?;
        if opts.inv_freq.len() != dims.head_dim / 2 {
            return Err(Error::Config(format!(
                "{} RoPE frequencies for head_dim {}",
                opts.inv_freq.len(),
                dims.head_dim
            )));
        }
        Ok(Llama {
            name: name.to_owned(),
            dims,
            opts,
            window: None,
        })
    }

    /// Restricts attention to keys less than `window` positions back (Mistral's
    /// `sliding_window`, Qwen2's with `use_sliding_window`); `None` is full attention.
    pub fn with_sliding_window(mut self, window: Option<usize>) -> Self {
        self.window = window;
        self
    }

    /// Reads a Hugging Face `config.json` of model type `llama`, `mistral` or `qwen2`.
    pub fn from_hf_config(c: &Value) -> Result<Self> {
        let model_type = c
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("llama")
            .to_owned();
        let hidden = req(c, "hidden_size")?;
        let heads = req(c, "num_attention_heads")?;
        let head_dim = opt(c, "head_dim").unwrap_or(hidden / heads.max(1));
        let dims = ModelDims {
            hidden,
            layers: req(c, "num_hidden_layers")?,
            heads,
            kv_heads: opt(c, "num_key_value_heads").unwrap_or(heads),
            head_dim,
            intermediate: req(c, "intermediate_size")?,
            vocab: req(c, "vocab_size")?,
            rms_eps: c
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6),
            rope_theta: c
                .get("rope_theta")
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
            tied_embeddings: c
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            max_position: opt(c, "max_position_embeddings").unwrap_or(2048),
        };
        let flag = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
        let qwen = model_type == "qwen2";
        let opts = LlamaOptions {
            qkv_bias: qwen || flag("attention_bias"),
            o_bias: !qwen && flag("attention_bias"),
            mlp_bias: flag("mlp_bias"),
            inv_freq: rope_inv_freq(c, dims.rope_theta, head_dim)?,
        };
        let window = match model_type.as_str() {
            "mistral" => opt(c, "sliding_window"),
            "qwen2" if flag("use_sliding_window") => opt(c, "sliding_window"),
            _ => None,
        };
        Ok(Llama::new(&model_type, dims, opts)?.with_sliding_window(window))
    }

    fn attn(&self, i: usize, part: &str) -> String {
        format!("model.layers.{i}.self_attn.{part}")
    }
}

fn req(c: &Value, key: &str) -> Result<usize> {
    opt(c, key).ok_or_else(|| Error::Config(format!("config.json lacks {key:?}")))
}

fn opt(c: &Value, key: &str) -> Option<usize> {
    c.get(key).and_then(Value::as_u64).map(|v| v as usize)
}

/// Inverse frequencies with `rope_scaling` applied (`default`, `linear`, `llama3`).
fn rope_inv_freq(c: &Value, theta: f64, head_dim: usize) -> Result<Vec<f32>> {
    let base = common::inv_freq(theta, head_dim);
    let Some(s) = c.get("rope_scaling").filter(|v| !v.is_null()) else {
        return Ok(base);
    };
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let f = |k: &str, d: f64| s.get(k).and_then(Value::as_f64).unwrap_or(d);
    match kind {
        "default" => Ok(base),
        "linear" => Ok(base.iter().map(|v| v / f("factor", 1.0) as f32).collect()),
        "llama3" => {
            let (factor, lo, hi) = (
                f("factor", 8.0),
                f("low_freq_factor", 1.0),
                f("high_freq_factor", 4.0),
            );
            let old = f("original_max_position_embeddings", 8192.0);
            let (lo_wl, hi_wl) = (old / lo, old / hi);
            Ok(base
                .iter()
                .map(|&v| {
                    let freq = f64::from(v);
                    let wl = 2.0 * std::f64::consts::PI / freq;
                    let out = if wl < hi_wl {
                        freq
                    } else if wl > lo_wl {
                        freq / factor
                    } else {
                        let smooth = (old / wl - lo) / (hi - lo);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    };
                    out as f32
                })
                .collect())
        }
        other => Err(Error::Config(format!(
            "rope_scaling type {other:?} is not supported"
        ))),
    }
}

impl Architecture for Llama {
    fn name(&self) -> &str {
        &self.name
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
        common::embedding_rows(g, w, name, (d.vocab, d.hidden), input_ids)
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
        let x = common::rms_norm(
            g,
            w,
            io.hidden,
            &format!("{pre}input_layernorm.weight"),
            h,
            d.rms_eps,
            0.0,
        )?;
        let proj =
            |g: &mut GraphBuilder, w: &mut dyn WeightSource, p: &str, out: usize, bias: bool| {
                let b = bias.then(|| self.attn(i, &format!("{p}.bias")));
                common::linear(
                    g,
                    w,
                    &x,
                    &self.attn(i, &format!("{p}.weight")),
                    b.as_deref(),
                    (out, h),
                )
            };
        let q = proj(g, w, "q_proj", nh * hd, self.opts.qkv_bias)?;
        let k = proj(g, w, "k_proj", kv * hd, self.opts.qkv_bias)?;
        let v = proj(g, w, "v_proj", kv * hd, self.opts.qkv_bias)?;
        let (q, k, v) = (
            common::split_heads(g, &q, nh, hd),
            common::split_heads(g, &k, kv, hd),
            common::split_heads(g, &v, kv, hd),
        );
        let (cos, sin) = common::rope_tables(g, io.position_ids, &self.opts.inv_freq, "rope");
        let q = common::apply_rope(g, &q, &cos, &sin, hd);
        let k = common::apply_rope(g, &k, &cos, &sin, hd);
        let present_key = g.concat(&[io.past_key, &k], 2);
        let present_value = g.concat(&[io.past_value, &v], 2);
        let bias =
            common::attention_bias(g, io.attention_mask, io.position_ids, nh / kv, self.window);
        let shape = AttentionShape {
            heads: nh,
            kv_heads: kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let a = common::attention(g, &q, &present_key, &present_value, &bias, shape);
        let ob = self.opts.o_bias.then(|| self.attn(i, "o_proj.bias"));
        let o = common::linear(
            g,
            w,
            &a,
            &self.attn(i, "o_proj.weight"),
            ob.as_deref(),
            (h, nh * hd),
        )?;
        let hidden = g.add(io.hidden, &o);
        let x = common::rms_norm(
            g,
            w,
            &hidden,
            &format!("{pre}post_attention_layernorm.weight"),
            h,
            d.rms_eps,
            0.0,
        )?;
        let m = self.mlp(g, w, &x, &pre)?;
        let hidden = g.add(&hidden, &m);
        Ok(LayerOutputs {
            hidden,
            present_key,
            present_value,
        })
    }

    fn head(&self, g: &mut GraphBuilder, w: &mut dyn WeightSource, hidden: &str) -> Result<String> {
        let d = &self.dims;
        let x = common::rms_norm(g, w, hidden, "model.norm.weight", d.hidden, d.rms_eps, 0.0)?;
        let name = if d.tied_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        common::head_logits(g, w, &x, name, (d.vocab, d.hidden))
    }
}

impl Llama {
    /// SwiGLU: `down(silu(gate(x)) * up(x))`.
    fn mlp(
        &self,
        g: &mut GraphBuilder,
        w: &mut dyn WeightSource,
        x: &str,
        pre: &str,
    ) -> Result<String> {
        let (h, f) = (self.dims.hidden, self.dims.intermediate);
        let b = |p: &str| self.opts.mlp_bias.then(|| format!("{pre}mlp.{p}.bias"));
        let gate = common::linear(
            g,
            w,
            x,
            &format!("{pre}mlp.gate_proj.weight"),
            b("gate_proj").as_deref(),
            (f, h),
        )?;
        let up = common::linear(
            g,
            w,
            x,
            &format!("{pre}mlp.up_proj.weight"),
            b("up_proj").as_deref(),
            (f, h),
        )?;
        let sg = g.unary("Sigmoid", &gate);
        let act = g.mul(&gate, &sg);
        let prod = g.mul(&act, &up);
        common::linear(
            g,
            w,
            &prod,
            &format!("{pre}mlp.down_proj.weight"),
            b("down_proj").as_deref(),
            (h, f),
        )
    }
}
