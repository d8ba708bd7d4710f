//! GGUF tensor names to Hugging Face names, and undoing the converter's Q/K row permutation.
//!
//! Architectures (`crate::arch`) ask for weights by Hugging Face name; [`to_gguf`] gives the
//! GGUF name for a family ([`Family`]), since the same HF name maps differently per family
//! (Llama's `post_attention_layernorm` is GGUF's `ffn_norm`; Gemma 3's is
//! `post_attention_norm`, and its `pre_feedforward_layernorm` is `ffn_norm`).
//!
//! llama.cpp's `convert_hf_to_gguf.py` permutes the rows of `q_proj`/`k_proj` of the `llama`
//! architecture (its `LlamaModel`, which also converts Mistral) from Hugging Face's
//! rotate-half RoPE layout to GGML's interleaved-pairs layout; Qwen2 and Gemma 3 are written
//! unpermuted (they use GGML's NeoX RoPE, which is rotate-half). [`unpermute_rows`] undoes it.

/// A GGUF architecture this crate imports, with its naming and conversion quirks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `llama` (Llama 2/3, TinyLlama, SmolLM, Mistral): Q/K rows permuted.
    Llama,
    /// `qwen2`: q/k/v biases, no permutation.
    Qwen2,
    /// `gemma3`: extra norms, q/k norms; norm weights stored as `1 + w`.
    Gemma3,
}

impl Family {
    /// The family of a `general.architecture` value.
    pub fn from_arch(arch: &str) -> Option<Self> {
        match arch {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            "gemma3" => Some(Self::Gemma3),
            _ => None,
        }
    }

    /// The `general.architecture` value, also the key prefix of its metadata.
    pub fn arch(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Gemma3 => "gemma3",
        }
    }
}

/// The GGUF names `shoal model import --gguf` accepts, for the refusal message.
pub const SUPPORTED_GGUF: &str = "llama (Llama 2/3, TinyLlama, SmolLM, Mistral), qwen2, gemma3";

/// The GGUF name of Hugging Face tensor `hf` in `family`, if it has one.
pub fn to_gguf(family: Family, hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = part.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let gguf = match (module, family) {
        ("input_layernorm", _) => "attn_norm",
        ("self_attn.q_proj", _) => "attn_q",
        ("self_attn.k_proj", _) => "attn_k",
        ("self_attn.v_proj", _) => "attn_v",
        ("self_attn.o_proj", _) => "attn_output",
        ("self_attn.q_norm", _) => "attn_q_norm",
        ("self_attn.k_norm", _) => "attn_k_norm",
        ("mlp.gate_proj", _) => "ffn_gate",
        ("mlp.up_proj", _) => "ffn_up",
        ("mlp.down_proj", _) => "ffn_down",
        ("post_attention_layernorm", Family::Gemma3) => "post_attention_norm",
        ("post_attention_layernorm", _) => "ffn_norm",
        ("pre_feedforward_layernorm", Family::Gemma3) => "ffn_norm",
        ("post_feedforward_layernorm", Family::Gemma3) => "post_ffw_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{suffix}"))
}

/// Whether GGUF tensor `gguf` of `family` was row-permuted for RoPE, and with how many heads
/// (`heads` for Q, `kv_heads` for K).
pub fn permuted_heads(family: Family, gguf: &str, heads: usize, kv_heads: usize) -> Option<usize> {
    if family != Family::Llama || !gguf.starts_with("blk.") {
        return None;
    }
    if gguf.ends_with(".attn_q.weight") || gguf.ends_with(".attn_q.bias") {
        Some(heads)
    } else if gguf.ends_with(".attn_k.weight") || gguf.ends_with(".attn_k.bias") {
        Some(kv_heads)
    } else {
        None
    }
}

/// Whether GGUF tensor `gguf` holds a Gemma-style `1 + w` norm weight.
pub fn is_offset_norm(family: Family, gguf: &str) -> bool {
    family == Family::Gemma3 && gguf.ends_with("norm.weight")
}

/// Undoes the converter's permutation of a `[heads * head_dim, cols]` matrix (or a bias, with
/// `cols == 1`).
///
/// The converter maps Hugging Face row `h*D + j*D/2 + i` (half `j` of head `h`, `i < D/2`)
/// to GGUF row `h*D + 2*i + j`; this returns the rows in Hugging Face order. `None` if the
/// row count is not `heads` times an even head size, or `data` is not `rows * cols` long.
pub fn unpermute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Option<Vec<f32>> {
    if heads == 0 || !rows.is_multiple_of(heads) || data.len() != rows.checked_mul(cols)? {
        return None;
    }
    let head_dim = rows / heads;
    if !head_dim.is_multiple_of(2) {
        return None;
    }
    let half = head_dim / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * head_dim + 2 * i + j) * cols;
                let dst = (h * head_dim + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    Some(out)
}
