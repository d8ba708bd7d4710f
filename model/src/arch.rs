//! Architectures: how a checkpoint's tensors become the ONNX graphs of the embedding, each
//! decoder layer and the head.
//!
//! An architecture implements [`Architecture`]; the exporter (`crate::export`) calls it once
//! per planner layer with a fresh [`GraphBuilder`], and once for all layers to build the
//! unsplit reference graph. Weights come from a [`WeightSource`] under Hugging Face names
//! (`model.layers.3.self_attn.q_proj.weight`), whatever the file format, so a GGUF reader that
//! maps its names to these reuses the Llama builder. Adding an architecture is a new module
//! here plus one arm in [`from_hf_config`]; shared building blocks are in [`common`].

pub mod common;
pub mod gemma3;
pub mod llama;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::onnx::GraphBuilder;

/// Architectures `shoal model import --hf` accepts (for the refusal message).
pub const SUPPORTED_HF: &str =
    "llama (Llama 2/3, TinyLlama, SmolLM), mistral, qwen2, gemma3_text (Gemma 3 text-only)";

/// Dimensions every architecture shares; stored in the manifest and used by the runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDims {
    /// Hidden size H.
    pub hidden: usize,
    /// Number of decoder layers n.
    pub layers: usize,
    /// Attention (query) heads.
    pub heads: usize,
    /// Key/value heads (GQA); divides `heads`.
    pub kv_heads: usize,
    /// Size of one head D.
    pub head_dim: usize,
    /// Feed-forward inner size.
    pub intermediate: usize,
    /// Vocabulary size V (rows of the embedding).
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// The head reuses the embedding matrix.
    pub tied_embeddings: bool,
    /// Longest context the checkpoint was trained for.
    pub max_position: usize,
}

impl ModelDims {
    /// Checks the figures fit together.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        if self.hidden == 0 || self.layers == 0 || self.heads == 0 || self.vocab == 0 {
            return fail(format!("zero dimension in {self:?}"));
        }
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return fail(format!(
                "{} heads not a multiple of {} kv heads",
                self.heads, self.kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return fail(format!(
                "head_dim {} must be even and positive",
                self.head_dim
            ));
        }
        Ok(())
    }
}

/// A weight tensor as f32, row-major, in its checkpoint (Hugging Face) layout.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    /// Shape, outermost first (`[out, in]` for a linear layer).
    pub dims: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
    /// Bits per value when the checkpoint stored the tensor block-quantised (a GGUF `Q5_0`
    /// gives 5), `None` for float checkpoints. A 4-bit export keeps such a tensor at 8 bits
    /// when it had more than 4 ([`crate::quant::QuantSpec::for_source`]).
    pub source_bits: Option<u32>,
}

/// Where weights come from: a checkpoint reader, or the synthetic generator.
pub trait WeightSource {
    /// The tensor called `name` (Hugging Face naming), converted to f32.
    fn tensor(&mut self, name: &str) -> Result<WeightTensor>;
    /// Whether the checkpoint has `name`.
    fn contains(&self, name: &str) -> bool;
}

/// The value names a decoder layer reads.
#[derive(Debug, Clone, Copy)]
pub struct LayerIo<'a> {
    /// Hidden states `[B,S,H]`.
    pub hidden: &'a str,
    /// Attention mask `[B,P+S]` (i64, 1 = attend).
    pub attention_mask: &'a str,
    /// Positions `[B,S]` (i64).
    pub position_ids: &'a str,
    /// Past keys `[B,KV,P,D]`.
    pub past_key: &'a str,
    /// Past values `[B,KV,P,D]`.
    pub past_value: &'a str,
}

/// The value names a decoder layer produces.
#[derive(Debug, Clone)]
pub struct LayerOutputs {
    /// New hidden states `[B,S,H]`.
    pub hidden: String,
    /// Keys for positions `0..P+S`: `[B,KV,P+S,D]`.
    pub present_key: String,
    /// Values for positions `0..P+S`.
    pub present_value: String,
}

/// One model family's graph construction.
pub trait Architecture {
    /// Name written to the manifest (`llama`, `qwen2`, ...).
    fn name(&self) -> &str;
    /// Dimensions.
    fn dims(&self) -> &ModelDims;
    /// Emits the embedding: token ids `[B,S]` (i64) to hidden states; returns the value name.
    fn embedding(
        &self,
        g: &mut GraphBuilder,
        w: &mut dyn WeightSource,
        input_ids: &str,
    ) -> Result<String>;
    /// Emits decoder layer `layer` (0-based).
    fn decoder_layer(
        &self,
        g: &mut GraphBuilder,
        w: &mut dyn WeightSource,
        layer: usize,
        io: LayerIo<'_>,
    ) -> Result<LayerOutputs>;
    /// Emits the head: hidden states to logits `[B,S,V]`; returns the value name.
    fn head(&self, g: &mut GraphBuilder, w: &mut dyn WeightSource, hidden: &str) -> Result<String>;
}

/// Picks the architecture for a Hugging Face `config.json`, or refuses it clearly.
pub fn from_hf_config(config: &serde_json::Value) -> Result<Box<dyn Architecture>> {
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let declared = config
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|v| v.as_str())
        .unwrap_or(model_type);
    match model_type {
        "llama" | "mistral" | "qwen2" => Ok(Box::new(llama::Llama::from_hf_config(config)?)),
        "gemma3_text" => Ok(Box::new(gemma3::Gemma3::from_hf_config(config)?)),
        _ => Err(Error::UnsupportedArchitecture {
            found: declared.to_owned(),
            supported: SUPPORTED_HF,
        }),
    }
}
