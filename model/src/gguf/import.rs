//! GGUF checkpoints as a [`WeightSource`], GGUF metadata as an [`Architecture`], and
//! [`import`], which turns a `.gguf` file into a shoal model directory.
//!
//! Flow: [`GgufWeights::open`] parses the header; [`architecture`] reads `{arch}.*` metadata
//! into [`ModelDims`] and the family's options; the exporter then asks the weights for tensors
//! by Hugging Face name, which [`GgufWeights`] maps to GGUF names ([`names::to_gguf`]),
//! dequantises, un-permutes (Llama Q/K) and un-offsets (Gemma norms).

use std::fs::File;
use std::path::{Path, PathBuf};

use super::names::{self, Family};
use super::{GgufError, GgufReader};
use crate::arch::gemma3::{self, Gemma3, Gemma3Options};
use crate::arch::llama::{Llama, LlamaOptions};
use crate::arch::{Architecture, ModelDims, WeightSource, WeightTensor, common};
use crate::error::{Error, Result};
use crate::export::{self, ExportOptions};
use crate::manifest::Manifest;
use crate::quant::QuantSpec;

/// A GGUF file read tensor by tensor, under Hugging Face names.
#[derive(Debug)]
pub struct GgufWeights {
    reader: GgufReader<File>,
    path: PathBuf,
    family: Family,
    heads: usize,
    kv_heads: usize,
}

impl GgufWeights {
    /// Opens `path` and parses its header; refuses architectures without an importer.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(Error::io(path))?;
        let reader = GgufReader::new(file).map_err(gguf_err(path))?;
        let arch = reader.architecture().map_err(gguf_err(path))?;
        let family = Family::from_arch(arch).ok_or_else(|| Error::UnsupportedArchitecture {
            found: arch.to_owned(),
            supported: names::SUPPORTED_GGUF,
        })?;
        let mut weights = GgufWeights {
            reader,
            path: path.to_owned(),
            family,
            heads: 0,
            kv_heads: 0,
        };
        weights.heads = weights.meta_usize("attention.head_count")?;
        weights.kv_heads = weights
            .opt_usize("attention.head_count_kv")?
            .unwrap_or(weights.heads);
        Ok(weights)
    }

    /// The architecture family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The parsed header.
    pub fn reader(&self) -> &GgufReader<File> {
        &self.reader
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.family.arch())
    }

    fn opt_usize(&self, suffix: &str) -> Result<Option<usize>> {
        let key = self.key(suffix);
        if !self.reader.metadata.contains_key(&key) {
            return Ok(None);
        }
        let v = self.reader.get_u64(&key).map_err(gguf_err(&self.path))?;
        usize::try_from(v)
            .map(Some)
            .map_err(|_| Error::Config(format!("{key} = {v} is too large")))
    }

    fn meta_usize(&self, suffix: &str) -> Result<usize> {
        self.opt_usize(suffix)?
            .ok_or_else(|| gguf_err(&self.path)(GgufError::MissingKey(self.key(suffix))))
    }

    fn opt_f64(&self, suffix: &str) -> Result<Option<f64>> {
        let key = self.key(suffix);
        if !self.reader.metadata.contains_key(&key) {
            return Ok(None);
        }
        self.reader
            .get_f64(&key)
            .map(Some)
            .map_err(gguf_err(&self.path))
    }

    fn has(&self, gguf: &str) -> bool {
        self.reader.tensor_info(gguf).is_some()
    }

    fn gguf_tensor(&mut self, gguf: &str) -> Result<WeightTensor> {
        let (dims, mut data) = self.reader.tensor_f32(gguf).map_err(gguf_err(&self.path))?;
        if let Some(heads) = names::permuted_heads(self.family, gguf, self.heads, self.kv_heads) {
            let rows = dims.first().copied().unwrap_or(0);
            let cols = dims.get(1).copied().unwrap_or(1);
            data = names::unpermute_rows(&data, rows, cols, heads).ok_or_else(|| {
                Error::BadTensor {
                    name: gguf.to_owned(),
                    reason: format!("shape {dims:?} does not split into {heads} RoPE heads"),
                }
            })?;
        }
        if names::is_offset_norm(self.family, gguf) {
            data.iter_mut().for_each(|v| *v -= 1.0);
        }
        let source_bits = self
            .reader
            .tensor_info(gguf)
            .and_then(|t| t.ty.value_bits());
        Ok(WeightTensor {
            dims,
            data,
            source_bits,
        })
    }
}

impl WeightSource for GgufWeights {
    fn tensor(&mut self, name: &str) -> Result<WeightTensor> {
        let gguf = names::to_gguf(self.family, name)
            .ok_or_else(|| Error::MissingTensor(name.to_owned()))?;
        if !self.has(&gguf) {
            return Err(Error::MissingTensor(format!("{name} (GGUF {gguf})")));
        }
        self.gguf_tensor(&gguf)
    }

    fn contains(&self, name: &str) -> bool {
        names::to_gguf(self.family, name).is_some_and(|g| self.has(&g))
    }
}

/// Wraps a GGUF error with the file it concerns.
fn gguf_err(path: &Path) -> impl FnOnce(GgufError) -> Error + '_ {
    move |source| Error::Gguf {
        path: path.to_owned(),
        source,
    }
}

/// The dimensions GGUF metadata declares.
fn dims(w: &GgufWeights) -> Result<ModelDims> {
    let hidden = w.meta_usize("embedding_length")?;
    let heads = w.heads;
    let head_dim = w
        .opt_usize("attention.key_length")?
        .unwrap_or(hidden / heads.max(1));
    if let Some(v) = w
        .opt_usize("attention.value_length")?
        .filter(|&v| v != head_dim)
    {
        return Err(Error::Config(format!(
            "value_length {v} differs from key_length {head_dim}"
        )));
    }
    if let Some(r) = w
        .opt_usize("rope.dimension_count")?
        .filter(|&r| r != head_dim)
    {
        return Err(Error::Config(format!(
            "partial rotary ({r} of {head_dim} dims) is not supported"
        )));
    }
    let embd = w
        .reader
        .tensor_info("token_embd.weight")
        .ok_or_else(|| Error::MissingTensor("token_embd.weight".into()))?;
    let vocab = embd.shape().first().copied().unwrap_or(0);
    Ok(ModelDims {
        hidden,
        layers: w.meta_usize("block_count")?,
        heads,
        kv_heads: w.kv_heads,
        head_dim,
        intermediate: w.meta_usize("feed_forward_length")?,
        vocab,
        rms_eps: w
            .opt_f64("attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-6),
        rope_theta: w.opt_f64("rope.freq_base")?.unwrap_or(10_000.0),
        tied_embeddings: !w.has("output.weight"),
        max_position: w.opt_usize("context_length")?.unwrap_or(2048),
    })
}

/// RoPE inverse frequencies after `rope.scaling.*` and a `rope_freqs.weight` tensor (how GGUF
/// stores Llama 3's frequency factors: each frequency is divided by its factor).
fn inv_freq(w: &mut GgufWeights, theta: f64, head_dim: usize) -> Result<Vec<f32>> {
    let mut freqs = common::inv_freq(theta, head_dim);
    let kind_key = w.key("rope.scaling.type");
    let kind = w
        .reader
        .metadata
        .get(&kind_key)
        .and_then(|v| v.as_str())
        .unwrap_or("none")
        .to_owned();
    match kind.as_str() {
        "none" => {}
        "linear" => {
            let factor = w.opt_f64("rope.scaling.factor")?.unwrap_or(1.0) as f32;
            freqs.iter_mut().for_each(|f| *f /= factor);
        }
        other => {
            return Err(Error::Config(format!(
                "RoPE scaling {other:?} is not supported"
            )));
        }
    }
    if w.has("rope_freqs.weight") {
        let factors = w.gguf_tensor("rope_freqs.weight")?;
        if factors.data.len() != freqs.len() {
            return Err(Error::BadTensor {
                name: "rope_freqs.weight".into(),
                reason: format!(
                    "{} factors for {} frequencies",
                    factors.data.len(),
                    freqs.len()
                ),
            });
        }
        freqs
            .iter_mut()
            .zip(&factors.data)
            .for_each(|(f, k)| *f /= k);
    }
    Ok(freqs)
}

/// The graph builder for the file's architecture, configured from its metadata.
pub fn architecture(w: &mut GgufWeights) -> Result<Box<dyn Architecture>> {
    let d = dims(w)?;
    let freqs = inv_freq(w, d.rope_theta, d.head_dim)?;
    match w.family {
        Family::Llama | Family::Qwen2 => {
            let opts = LlamaOptions {
                qkv_bias: w.has("blk.0.attn_q.bias"),
                o_bias: w.has("blk.0.attn_output.bias"),
                mlp_bias: w.has("blk.0.ffn_gate.bias"),
                inv_freq: freqs,
            };
            Ok(Box::new(Llama::new(w.family.arch(), d, opts)?))
        }
        Family::Gemma3 => {
            // llama.cpp: query_pre_attn_scalar is head_dim except for the 27B model (62
            // layers), where it is hidden / heads; local layers use RoPE base 10 000 and
            // every sixth layer is global. None of this is in the GGUF metadata.
            let scalar = if d.layers == 62 {
                d.hidden / d.heads
            } else {
                d.head_dim
            };
            // Newer converters may write the layer pattern and the local base explicitly.
            let local_theta = w.opt_f64("rope.freq_base_swa")?;
            let opts = Gemma3Options {
                query_pre_attn_scalar: scalar as f64,
                sliding_window: w.meta_usize("attention.sliding_window")?,
                global_layers: global_layers(w, d.layers)?,
                local_inv_freq: common::inv_freq(
                    local_theta.unwrap_or(gemma3::DEFAULT_LOCAL_ROPE_THETA),
                    d.head_dim,
                ),
                global_inv_freq: freqs,
                final_logit_softcap: w.opt_f64("final_logit_softcapping")?.map(|v| v as f32),
            };
            Ok(Box::new(Gemma3::new(d, opts)?))
        }
    }
}

/// Gemma 3's global (full-attention) layers: from `attention.sliding_window_pattern` when the
/// file has it (a period `n`, layer `i` global when `(i + 1) % n == 0`, or one bool per layer,
/// `true` = sliding), else every sixth layer as llama.cpp assumes.
fn global_layers(w: &GgufWeights, layers: usize) -> Result<Vec<bool>> {
    let key = w.key("attention.sliding_window_pattern");
    let Some(value) = w.reader.metadata.get(&key) else {
        return Ok(Gemma3Options::pattern_layers(
            layers,
            gemma3::DEFAULT_PATTERN,
        ));
    };
    let bad = |reason: String| Error::Config(format!("{key}: {reason}"));
    if let Some(period) = value.as_u64() {
        let period = usize::try_from(period).map_err(|_| bad(format!("period {period}")))?;
        return Ok(Gemma3Options::pattern_layers(layers, period));
    }
    let flags = value.as_array().ok_or_else(|| {
        bad(format!(
            "a {} (period or bools expected)",
            value.type_name()
        ))
    })?;
    if flags.len() != layers {
        return Err(bad(format!("{} flags for {layers} layers", flags.len())));
    }
    flags
        .iter()
        .map(|f| f.as_bool().map(|sliding| !sliding))
        .collect::<Option<Vec<bool>>>()
        .ok_or_else(|| bad("non-bool flag".into()))
}

/// Token ids named by `tokenizer.ggml.<what>_token_id`.
fn token_id(w: &GgufWeights, what: &str) -> Option<u32> {
    let v = w
        .reader
        .metadata
        .get(&format!("tokenizer.ggml.{what}_token_id"))?;
    v.as_u64().and_then(|id| u32::try_from(id).ok())
}

/// Imports the GGUF file `path` into a model directory `out`. `tokenizer` is a Hugging Face
/// `tokenizer.json` (a `tokenizer_config.json` next to it is copied too); without one the
/// import warns and only `--prompt-ids` generation works.
pub fn import(
    path: &Path,
    tokenizer: Option<&Path>,
    out: &Path,
    progress: bool,
) -> Result<Manifest> {
    import_as(path, tokenizer, out, progress, None)
}

/// Like [`import`], with linear layers, embedding and head requantised by `quant` from the
/// dequantised f32 weights (GGUF blocks are not mapped directly: Q4_K/Q6_K super-blocks have
/// no `MatMulNBits` layout, so a Q4_K_M file is dequantised once, then quantised again).
pub fn import_as(
    path: &Path,
    tokenizer: Option<&Path>,
    out: &Path,
    progress: bool,
    quant: Option<QuantSpec>,
) -> Result<Manifest> {
    let mut weights = GgufWeights::open(path)?;
    let arch = architecture(&mut weights)?;
    if tokenizer.is_none() {
        tracing::warn!(
            "no --tokenizer given for {}: only --prompt-ids generation will work",
            path.display()
        );
    }
    let tokenizer_config = tokenizer
        .and_then(Path::parent)
        .map(|dir| dir.join("tokenizer_config.json"))
        .filter(|p| p.exists());
    let mut eos_token_ids: Vec<u32> = token_id(&weights, "eos").into_iter().collect();
    eos_token_ids.extend(token_id(&weights, "eot").filter(|id| !eos_token_ids.contains(id)));
    let name = match weights
        .reader
        .metadata
        .get("general.name")
        .and_then(|v| v.as_str())
    {
        Some(n) => n.to_owned(),
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let opts = ExportOptions {
        name,
        tokenizer: tokenizer.map(Path::to_owned),
        tokenizer_config,
        bos_token_id: token_id(&weights, "bos"),
        eos_token_ids,
        progress,
        quant,
    };
    export::export(arch.as_ref(), &mut weights, out, &opts)
}
