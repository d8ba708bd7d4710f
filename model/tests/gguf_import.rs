//! GGUF import end to end on tiny random models written by `scripts/gguf-tiny-models.py`:
//! the shards' logits match NumPy references for a prefill and for token-by-token decoding,
//! on ONNX Runtime and tract.
//!
//! - tiny-gemma3: 6 layers (5 local with a 3-token window, layer 5 global), q/k norms,
//!   `1 + w` norms as llama.cpp stores them; reference: the NumPy Gemma 3 of
//!   `scripts/gemma-reference.py`.
//! - tiny-gemma3-explicit: the same with `attention.sliding_window_pattern` (globals at
//!   layers 1 and 4), `rope.freq_base_swa` (20 000) and `final_logit_softcapping` (8).
//! - tiny-llama: GQA, attn_q/attn_k permuted as llama.cpp's converter does; reference: a
//!   Hugging Face-style forward pass on the unpermuted weights.
//! - tiny-qwen2: q/k/v biases, unpermuted (as the converter writes Qwen2), tied head.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use shoal_model::{
    BackendChoice, Error, Manifest, RuntimeConfig, StageInput, StageOutput, StageRunner, gguf,
};

const TOL: f32 = 1e-4;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

struct Reference {
    prompt: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(data(&format!("{name}.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let prompt = v["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    Reference { prompt, logits }
}

fn logits(out: StageOutput) -> Vec<f32> {
    match out {
        StageOutput::Logits(a) => a.data,
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

fn runner(dir: &Path, m: &Manifest, backend: BackendChoice) -> StageRunner {
    let config = RuntimeConfig {
        backend,
        all_logits: true,
        ..RuntimeConfig::default()
    };
    StageRunner::load(dir, m, 0..m.planner_layers(), &config).unwrap()
}

/// Imports `name`.gguf, then checks prefill logits of the whole prompt and, in a fresh
/// session, a 5-token prefill followed by one-token decode steps.
fn check(name: &str, arch: &str) {
    let r = reference(name);
    let out = tempfile::tempdir().unwrap();
    let m = gguf::import(&data(&format!("{name}.gguf")), None, out.path(), false).unwrap();
    assert_eq!(m.architecture, arch);
    let v = m.dims.vocab;
    let want: Vec<f32> = r.logits.concat();
    for backend in [BackendChoice::Ort, BackendChoice::Tract] {
        let mut run = runner(out.path(), &m, backend);
        let got = logits(run.run(1, StageInput::Tokens(r.prompt.clone())).unwrap());
        let d = max_diff(&got, &want);
        assert!(d < TOL, "{name} {backend:?}: prefill differs by {d}");

        let split = 5;
        let got = logits(
            run.run(2, StageInput::Tokens(r.prompt[..split].to_vec()))
                .unwrap(),
        );
        assert!(max_diff(&got, &want[..split * v]) < TOL);
        for (i, &tok) in r.prompt.iter().enumerate().skip(split) {
            let got = logits(run.run(2, StageInput::Tokens(vec![tok])).unwrap());
            let d = max_diff(&got, &r.logits[i]);
            assert!(
                d < TOL,
                "{name} {backend:?}: decode position {i} differs by {d}"
            );
        }
    }
}

#[test]
fn tiny_gemma3_matches_numpy() {
    check("tiny-gemma3", "gemma3");
}

#[test]
fn tiny_gemma3_with_explicit_pattern_and_local_base_matches_numpy() {
    check("tiny-gemma3-explicit", "gemma3");
}

#[test]
fn tiny_llama_permuted_qk_matches_hf_layout() {
    check("tiny-llama", "llama");
}

#[test]
fn tiny_qwen2_with_biases_and_tied_head_matches_hf_layout() {
    check("tiny-qwen2", "qwen2");
}

#[test]
fn gemma3_metadata_becomes_the_right_architecture() {
    let mut w = gguf::GgufWeights::open(&data("tiny-gemma3.gguf")).unwrap();
    assert_eq!(w.family(), gguf::Family::Gemma3);
    let arch = gguf::architecture(&mut w).unwrap();
    let d = arch.dims();
    assert_eq!(
        (d.hidden, d.layers, d.heads, d.kv_heads, d.head_dim),
        (32, 6, 2, 1, 16)
    );
    assert_eq!((d.intermediate, d.vocab), (64, 64));
    assert!(d.tied_embeddings);
    assert_eq!(d.rope_theta, 1_000_000.0);
}

#[test]
fn unsupported_architecture_is_refused() {
    // The reader fixture declares architecture "test".
    let err = gguf::GgufWeights::open(&data("gguf-vectors.gguf")).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedArchitecture { found, .. } if found == "test"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.gguf");
    std::fs::write(&bogus, b"GGUF\x03\0\0\0").unwrap();
    let err = gguf::GgufWeights::open(&bogus).unwrap_err();
    assert!(matches!(err, Error::Gguf { .. }), "{err}");
}
