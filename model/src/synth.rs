//! `shoal model synth`: a deterministic random-weight Llama-family model with a byte-level
//! tokenizer, small enough for tests and `shoal demo` and still split-able across stages.
//!
//! Every tensor is drawn from a ChaCha8 stream seeded by the model seed and the tensor's name,
//! so the same options give byte-identical shards whatever order they are built in.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::arch::common::inv_freq;
use crate::arch::llama::{Llama, LlamaOptions};
use crate::arch::{ModelDims, WeightSource, WeightTensor};
use crate::error::{Error, Result};
use crate::export::{self, ExportOptions};
use crate::manifest::Manifest;
use crate::quant::QuantSpec;

/// Byte tokens occupy ids `0..256`; then these specials.
pub const BOS_ID: u32 = 256;
/// End of sequence.
pub const EOS_ID: u32 = 257;
/// A ChatML-like template, so `shoal generate --chat` works on synthetic models too.
const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content | trim }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";
/// Scale of the embedding rows of printable ASCII bytes relative to the others.
const PRINTABLE_GAIN: f32 = 2.0;
/// Smallest vocabulary: 256 bytes and the two specials.
pub const MIN_VOCAB: usize = 258;

/// Shape and seed of a synthetic model.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Feed-forward size (default 3 x hidden).
    pub intermediate: Option<usize>,
    /// Vocabulary size, at least [`MIN_VOCAB`].
    pub vocab: usize,
    /// Weight seed.
    pub seed: u64,
    /// Share the embedding with the head.
    pub tied: bool,
    /// Add q/k/v biases (the Qwen2 variant).
    pub qkv_bias: bool,
    /// Quantise linear layers, embedding and head (default `None`: f32).
    pub quant: Option<QuantSpec>,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            layers: 6,
            hidden: 128,
            heads: 4,
            kv_heads: 2,
            intermediate: None,
            vocab: 320,
            seed: 0,
            tied: true,
            qkv_bias: false,
            quant: None,
        }
    }
}

impl SynthOptions {
    /// The model's dimensions.
    pub fn dims(&self) -> Result<ModelDims> {
        if self.vocab < MIN_VOCAB {
            return Err(Error::Config(format!(
                "vocab {} < {MIN_VOCAB} (256 bytes + BOS + EOS)",
                self.vocab
            )));
        }
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return Err(Error::Config(format!(
                "hidden {} not a multiple of {} heads",
                self.hidden, self.heads
            )));
        }
        let d = ModelDims {
            hidden: self.hidden,
            layers: self.layers,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.hidden / self.heads,
            intermediate: self.intermediate.unwrap_or(3 * self.hidden),
            vocab: self.vocab,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
            tied_embeddings: self.tied,
            max_position: 4096,
        };
        d.validate()?;
        Ok(d)
    }

    /// The architecture builder for these options.
    pub fn arch(&self) -> Result<Llama> {
        let d = self.dims()?;
        let opts = LlamaOptions {
            qkv_bias: self.qkv_bias,
            o_bias: false,
            mlp_bias: false,
            inv_freq: inv_freq(d.rope_theta, d.head_dim),
        };
        Llama::new(if self.qkv_bias { "qwen2" } else { "llama" }, d, opts)
    }
}

/// Writes a synthetic model into `out` and returns its manifest.
pub fn synth(opts: &SynthOptions, out: &Path, progress: bool) -> Result<Manifest> {
    let arch = opts.arch()?;
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let tok = out.join("tokenizer.json");
    let text =
        serde_json::to_string(&byte_tokenizer_json(opts.vocab)).map_err(Error::json(&tok))?;
    std::fs::write(&tok, text).map_err(Error::io(&tok))?;
    let cfg = out.join("tokenizer_config.json");
    let cfg_json = json!({"add_bos_token": true, "bos_token": "<|bos|>", "eos_token": "<|eos|>",
        "chat_template": CHAT_TEMPLATE});
    std::fs::write(&cfg, cfg_json.to_string()).map_err(Error::io(&cfg))?;
    let eo = ExportOptions {
        name: format!("synth-l{}-h{}-s{}", opts.layers, opts.hidden, opts.seed),
        tokenizer: Some(tok),
        tokenizer_config: Some(cfg),
        bos_token_id: Some(BOS_ID),
        eos_token_ids: vec![EOS_ID],
        progress,
        quant: opts.quant,
    };
    export::export(&arch, &mut SynthWeights::new(opts)?, out, &eo)
}

/// Random weights in Hugging Face naming, drawn on demand.
#[derive(Debug, Clone)]
pub struct SynthWeights {
    dims: ModelDims,
    seed: u64,
    qkv_bias: bool,
}

impl SynthWeights {
    /// The weight source for `opts`.
    pub fn new(opts: &SynthOptions) -> Result<Self> {
        Ok(SynthWeights {
            dims: opts.dims()?,
            seed: opts.seed,
            qkv_bias: opts.qkv_bias,
        })
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let d = &self.dims;
        let (h, q, kv, f) = (
            d.hidden,
            d.heads * d.head_dim,
            d.kv_heads * d.head_dim,
            d.intermediate,
        );
        match name {
            "model.embed_tokens.weight" => return Some(vec![d.vocab, h]),
            "lm_head.weight" if !d.tied_embeddings => return Some(vec![d.vocab, h]),
            "model.norm.weight" => return Some(vec![h]),
            _ => {}
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (i, part) = rest.split_once('.')?;
        if i.parse::<usize>().ok()? >= d.layers {
            return None;
        }
        Some(match part {
            "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![h],
            "self_attn.q_proj.weight" => vec![q, h],
            "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, h],
            "self_attn.q_proj.bias" if self.qkv_bias => vec![q],
            "self_attn.k_proj.bias" | "self_attn.v_proj.bias" if self.qkv_bias => vec![kv],
            "self_attn.o_proj.weight" => vec![h, q],
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![f, h],
            "mlp.down_proj.weight" => vec![h, f],
            _ => return None,
        })
    }
}

impl WeightSource for SynthWeights {
    fn tensor(&mut self, name: &str) -> Result<WeightTensor> {
        let dims = self
            .shape(name)
            .ok_or_else(|| Error::MissingTensor(name.to_owned()))?;
        let n: usize = dims.iter().product();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ fnv1a(name));
        let (centre, spread) = if name.ends_with("norm.weight") {
            (1.0, 0.1)
        } else if name.ends_with(".bias") {
            (0.0, 0.1)
        } else if dims.len() == 2 && !name.contains("embed") && name != "lm_head.weight" {
            (0.0, 1.0 / (dims[1] as f32).sqrt())
        } else {
            (0.0, 0.1)
        };
        let mut data: Vec<f32> = (0..n)
            .map(|_| centre + spread * rng.random_range(-1.0f32..1.0))
            .collect();
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            // Larger rows for printable ASCII make sampled demo text mostly readable bytes.
            let h = dims[1];
            for row in 32..127 {
                data[row * h..(row + 1) * h]
                    .iter_mut()
                    .for_each(|v| *v *= PRINTABLE_GAIN);
            }
        }
        Ok(WeightTensor {
            dims,
            data,
            source_bits: None,
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }
}

/// 64-bit FNV-1a: a stable per-name seed offset.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// GPT-2's printable stand-in character for each byte, as byte-level BPE vocabularies use.
pub fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|x| !printable(*x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

/// A `tokenizer.json` for a byte-level BPE without merges: ids `0..256` are bytes, then
/// `<|bos|>`, `<|eos|>`, then `<|extra_N|>` up to `vocab`.
pub fn byte_tokenizer_json(vocab: usize) -> serde_json::Value {
    let mut v = serde_json::Map::new();
    for b in 0..=255u8 {
        v.insert(byte_to_char(b).to_string(), json!(b));
    }
    let mut added = Vec::new();
    for id in 256..vocab.max(MIN_VOCAB) {
        let content = match id as u32 {
            BOS_ID => "<|bos|>".to_owned(),
            EOS_ID => "<|eos|>".to_owned(),
            _ => format!("<|extra_{id}|>"),
        };
        added.push(
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}),
        );
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": v, "merges": []}
    })
}
