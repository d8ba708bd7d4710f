//! Hugging Face import against an independent implementation: tiny random Llama (untied,
//! llama3 RoPE scaling, one F16 tensor) and Qwen2 (q/k/v biases, tied head) checkpoints made
//! by `scripts/make-llama-fixture.py`, whose numpy float64 forward pass produced
//! `reference.json`. Prefill logits at every position and 8 greedy decode steps must match
//! within 1e-4 on ONNX Runtime and on tract.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use shoal_model::{BackendChoice, Manifest, RuntimeConfig, StageInput, StageOutput, StageRunner};

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn logits(out: StageOutput) -> Vec<f32> {
    match out {
        StageOutput::Logits(l) => l.data,
        StageOutput::Hidden(_) => panic!("expected logits"),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check(name: &str) -> Manifest {
    let dir = tempfile::tempdir().unwrap();
    let m = shoal_model::hf::import(&fixture(name), dir.path(), false).unwrap();
    m.verify_files(dir.path()).unwrap();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("reference.json")).unwrap(),
    )
    .unwrap();
    let prompt: Vec<u32> = reference["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want_prefill: Vec<f32> = reference["prefill_logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(floats)
        .collect();
    let decode_ids: Vec<u32> = reference["decode_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    for backend in [BackendChoice::Ort, BackendChoice::Tract] {
        let cfg = RuntimeConfig {
            backend,
            all_logits: true,
            ..RuntimeConfig::default()
        };
        let mut r = StageRunner::load(dir.path(), &m, 0..m.planner_layers(), &cfg).unwrap();
        let got = logits(r.run(1, StageInput::Tokens(prompt.clone())).unwrap());
        let mut worst = max_diff(&got, &want_prefill);
        assert!(worst < TOL, "{name} {backend:?} prefill differs by {worst}");
        for (step, (id, want)) in decode_ids
            .iter()
            .zip(reference["decode_logits"].as_array().unwrap())
            .enumerate()
        {
            let got = logits(r.run(1, StageInput::Tokens(vec![*id])).unwrap());
            let d = max_diff(&got, &floats(want));
            assert!(
                d < TOL,
                "{name} {backend:?} decode step {step} differs by {d}"
            );
            assert_eq!(
                shoal_model::sampler::argmax(&got),
                shoal_model::sampler::argmax(&floats(want))
            );
            worst = worst.max(d);
        }
        eprintln!(
            "{name} on {backend:?}: max |logit diff| {worst:.2e} over prefill + {} steps",
            decode_ids.len()
        );
    }
    m
}

#[test]
fn tiny_llama_matches_numpy_reference() {
    let m = check("tiny-llama");
    assert_eq!(m.architecture, "llama");
    assert!(!m.dims.tied_embeddings);
    assert!(m.tokenizer.is_none());
}

#[test]
fn tiny_qwen2_matches_numpy_reference_and_stores_tied_embedding_once() {
    let m = check("tiny-qwen2");
    assert_eq!(m.architecture, "qwen2");
    let head = m.layers.last().unwrap();
    assert!(
        head.files.contains(&"embed.weights".to_owned()),
        "head reads the embedding file: {:?}",
        head.files
    );
    let embed_bytes = (m.dims.vocab * m.dims.hidden * 4) as u64;
    assert!(head.figures.param_bytes >= embed_bytes);
    // Stored once: the head's own weights file holds only the final norm.
    let dir = tempfile::tempdir().unwrap();
    let m = shoal_model::hf::import(&fixture("tiny-qwen2"), dir.path(), false).unwrap();
    for f in m.files.keys().filter(|f| f.starts_with("head")) {
        let len = std::fs::metadata(dir.path().join(f)).unwrap().len();
        assert!(
            len < embed_bytes,
            "{f} holds {len} bytes, as much as the embedding"
        );
    }
}

#[test]
fn unsupported_architecture_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}"#,
    )
    .unwrap();
    let err = shoal_model::hf::import(dir.path(), &dir.path().join("out"), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("GPT2LMHeadModel") && err.contains("qwen2"),
        "{err}"
    );
}
