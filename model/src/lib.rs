//! shoal-model: importing checkpoints into ONNX layer shards, the shard manifest, and running
//! any range of shards with a KV cache per generation session.
//!
//! Data flow. Import: a [`arch::WeightSource`] (Hugging Face safetensors in [`hf`], GGUF in
//! [`gguf`], random weights in [`synth`]) feeds an [`arch::Architecture`], which emits ONNX
//! graphs through [`onnx::GraphBuilder`]; [`export::export`] writes one shard per planner layer
//! plus `manifest.json` ([`Manifest`]). Run: [`StageRunner`] loads planner layers `[a, b)` on
//! ONNX Runtime or tract and turns token ids or hidden states into hidden states or logits;
//! [`Sampler`] and [`Tokenizer`] close the loop, and [`generate::generate`] runs it locally.

pub mod arch;
pub mod bench;
pub mod bpe;
pub mod error;
pub mod export;
pub mod generate;
pub mod gguf;
pub mod heap;
pub mod hf;
pub mod manifest;
pub mod onnx;
pub mod quant;
pub mod runtime;
pub mod sampler;
pub mod synth;
pub mod tokenizer;

pub use error::{Error, Result};
pub use manifest::{LayerEntry, LayerFigures, LayerKind, Manifest};
pub use quant::{QuantSpec, WeightDtype};
pub use runtime::{
    Activation, Backend, BackendChoice, RuntimeConfig, StageInput, StageOutput, StageRunner,
};
pub use sampler::{Sampler, SamplingConfig, argmax};
pub use tokenizer::Tokenizer;
