//! GGUF <-> Hugging Face names per family, and undoing llama.cpp's Q/K row permutation.

use shoal_model::gguf::names::{Family, is_offset_norm, permuted_heads, to_gguf, unpermute_rows};

/// llama.cpp's `permute`: `w.reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2)`,
/// written as the index arithmetic of that numpy expression.
fn llama_cpp_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let half = rows / n_head / 2;
    let mut out = Vec::with_capacity(w.len());
    // Output element [h][i][j][c] (after swapaxes) is input element [h][j][i][c].
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = ((h * 2 + j) * half + i) * cols;
                out.extend_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

#[test]
fn unpermute_inverts_the_converter() {
    for (rows, cols, heads) in [(8, 3, 2), (16, 5, 4), (12, 1, 1), (64, 7, 8)] {
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let gguf = llama_cpp_permute(&hf, rows, cols, heads);
        assert_ne!(
            gguf, hf,
            "the permutation must move rows ({rows}x{cols}, {heads} heads)"
        );
        assert_eq!(unpermute_rows(&gguf, rows, cols, heads).unwrap(), hf);
    }
    // Head dim 4: GGUF rows 0,1,2,3 of head 0 are HF rows 0,2,1,3.
    let gguf = [0.0, 1.0, 2.0, 3.0];
    assert_eq!(
        unpermute_rows(&gguf, 4, 1, 1).unwrap(),
        [0.0, 2.0, 1.0, 3.0]
    );
    assert!(unpermute_rows(&gguf, 4, 1, 3).is_none());
    assert!(unpermute_rows(&gguf, 3, 1, 1).is_none());
    assert!(unpermute_rows(&gguf, 4, 2, 1).is_none());
}

#[test]
fn names_per_family() {
    let cases = [
        (
            Family::Llama,
            "model.embed_tokens.weight",
            "token_embd.weight",
        ),
        (Family::Llama, "model.norm.weight", "output_norm.weight"),
        (Family::Llama, "lm_head.weight", "output.weight"),
        (
            Family::Llama,
            "model.layers.3.self_attn.q_proj.weight",
            "blk.3.attn_q.weight",
        ),
        (
            Family::Qwen2,
            "model.layers.0.self_attn.k_proj.bias",
            "blk.0.attn_k.bias",
        ),
        (
            Family::Llama,
            "model.layers.1.self_attn.o_proj.weight",
            "blk.1.attn_output.weight",
        ),
        (
            Family::Llama,
            "model.layers.1.input_layernorm.weight",
            "blk.1.attn_norm.weight",
        ),
        (
            Family::Llama,
            "model.layers.1.post_attention_layernorm.weight",
            "blk.1.ffn_norm.weight",
        ),
        (
            Family::Llama,
            "model.layers.10.mlp.down_proj.weight",
            "blk.10.ffn_down.weight",
        ),
        (
            Family::Gemma3,
            "model.layers.2.post_attention_layernorm.weight",
            "blk.2.post_attention_norm.weight",
        ),
        (
            Family::Gemma3,
            "model.layers.2.pre_feedforward_layernorm.weight",
            "blk.2.ffn_norm.weight",
        ),
        (
            Family::Gemma3,
            "model.layers.2.post_feedforward_layernorm.weight",
            "blk.2.post_ffw_norm.weight",
        ),
        (
            Family::Gemma3,
            "model.layers.2.self_attn.q_norm.weight",
            "blk.2.attn_q_norm.weight",
        ),
        (
            Family::Gemma3,
            "model.layers.2.self_attn.k_norm.weight",
            "blk.2.attn_k_norm.weight",
        ),
        (
            Family::Gemma3,
            "model.layers.0.mlp.gate_proj.weight",
            "blk.0.ffn_gate.weight",
        ),
    ];
    for (family, hf, gguf) in cases {
        assert_eq!(
            to_gguf(family, hf).as_deref(),
            Some(gguf),
            "{family:?} {hf}"
        );
    }
    for bad in [
        "model.layers.x.mlp.up_proj.weight",
        "model.layers.1.mlp.weird.weight",
        "other",
        "model.layers.1.mlp.up_proj.scale",
    ] {
        assert_eq!(to_gguf(Family::Llama, bad), None, "{bad}");
    }
    assert_eq!(
        to_gguf(
            Family::Llama,
            "model.layers.0.pre_feedforward_layernorm.weight"
        ),
        None
    );
}

#[test]
fn which_tensors_are_transformed() {
    assert_eq!(
        permuted_heads(Family::Llama, "blk.0.attn_q.weight", 8, 2),
        Some(8)
    );
    assert_eq!(
        permuted_heads(Family::Llama, "blk.0.attn_k.weight", 8, 2),
        Some(2)
    );
    assert_eq!(
        permuted_heads(Family::Llama, "blk.0.attn_k.bias", 8, 2),
        Some(2)
    );
    assert_eq!(
        permuted_heads(Family::Llama, "blk.0.attn_v.weight", 8, 2),
        None
    );
    assert_eq!(
        permuted_heads(Family::Qwen2, "blk.0.attn_q.weight", 8, 2),
        None
    );
    assert_eq!(
        permuted_heads(Family::Gemma3, "blk.0.attn_q.weight", 8, 2),
        None
    );
    assert!(is_offset_norm(Family::Gemma3, "blk.0.attn_q_norm.weight"));
    assert!(is_offset_norm(Family::Gemma3, "output_norm.weight"));
    assert!(!is_offset_norm(Family::Gemma3, "blk.0.attn_q.weight"));
    assert!(!is_offset_norm(Family::Llama, "output_norm.weight"));
    assert_eq!(Family::from_arch("gemma3"), Some(Family::Gemma3));
    assert_eq!(Family::from_arch("gpt2"), None);
}
