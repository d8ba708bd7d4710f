//! Gemma 3 from a Hugging Face folder: the tiny Gemma 3 GGUF fixture, read through
//! `GgufWeights` (which yields Hugging Face names and raw `w` norm weights), is written out
//! as `model.safetensors` + `config.json`; `hf::import` of that folder must give the NumPy
//! reference logits of `tests/data/tiny-gemma3.json` (`scripts/gguf-tiny-models.py`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use shoal_model::arch::WeightSource;
use shoal_model::{BackendChoice, RuntimeConfig, StageInput, StageOutput, StageRunner, gguf, hf};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn hf_names(layers: usize) -> Vec<String> {
    let mut names = vec![
        "model.embed_tokens.weight".to_owned(),
        "model.norm.weight".to_owned(),
    ];
    for i in 0..layers {
        for part in [
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "self_attn.q_norm",
            "self_attn.k_norm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "post_feedforward_layernorm",
        ] {
            names.push(format!("model.layers.{i}.{part}.weight"));
        }
    }
    names
}

#[test]
fn hf_gemma3_text_folder_matches_numpy() {
    let hf_dir = tempfile::tempdir().unwrap();
    let mut w = gguf::GgufWeights::open(&data("tiny-gemma3.gguf")).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = hf_names(6)
        .into_iter()
        .map(|name| {
            let t = w.tensor(&name).unwrap();
            let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, t.dims, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dims, bytes)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, dims.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &hf_dir.path().join("model.safetensors")).unwrap();
    // Gemma 3's config as transformers writes it (layer_types spelled out).
    let mut layer_types = vec!["sliding_attention"; 6];
    layer_types[5] = "full_attention";
    let config = serde_json::json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 6,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
        "vocab_size": 64, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0, "sliding_window": 3, "query_pre_attn_scalar": 16,
        "layer_types": layer_types, "rope_scaling": null, "final_logit_softcapping": null,
        "max_position_embeddings": 128, "bos_token_id": 1, "eos_token_id": 2,
    });
    std::fs::write(hf_dir.path().join("config.json"), config.to_string()).unwrap();

    let out = tempfile::tempdir().unwrap();
    let m = hf::import(hf_dir.path(), out.path(), false).unwrap();
    assert_eq!(m.architecture, "gemma3");
    let config = RuntimeConfig {
        backend: BackendChoice::Ort,
        all_logits: true,
        ..RuntimeConfig::default()
    };
    let mut run = StageRunner::load(out.path(), &m, 0..m.planner_layers(), &config).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("tiny-gemma3.json")).unwrap()).unwrap();
    let prompt: Vec<u32> = reference["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want: Vec<f32> = reference["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let StageOutput::Logits(got) = run.run(1, StageInput::Tokens(prompt)).unwrap() else {
        panic!("expected logits");
    };
    let d = got
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert_eq!(got.data.len(), want.len());
    assert!(d < 1e-4, "HF Gemma 3 differs from the reference by {d}");
}

#[test]
fn hf_gemma3_config_is_read() {
    let c = serde_json::json!({
        "model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048,
        "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 256, "vocab_size": 262144, "query_pre_attn_scalar": 256,
        "sliding_window": 512, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
        "final_logit_softcapping": 30.0,
    });
    let g = shoal_model::arch::gemma3::Gemma3::from_hf_config(&c).unwrap();
    let o = g.options();
    let globals: Vec<usize> = (0..18).filter(|&i| o.global_layers[i]).collect();
    assert_eq!(globals, [5, 11, 17], "every sixth layer is global");
    assert_eq!(o.sliding_window, 512);
    assert_eq!(o.query_pre_attn_scalar, 256.0);
    assert_eq!(o.final_logit_softcap, Some(30.0));
    assert_eq!(o.local_inv_freq[1], 10_000f64.powf(-2.0 / 256.0) as f32);
    assert_eq!(o.global_inv_freq[1], 1_000_000f64.powf(-2.0 / 256.0) as f32);
    let bad = serde_json::json!({"model_type": "gemma3_text", "hidden_size": 8});
    assert!(shoal_model::arch::gemma3::Gemma3::from_hf_config(&bad).is_err());
}
