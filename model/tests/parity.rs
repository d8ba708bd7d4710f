//! Parity of chained shards with the unsplit model on ONNX Runtime (prefill and 10 decode
//! steps, max |logit diff| < 1e-4), of split stages with one stage, and of tract with ONNX
//! Runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/reference.rs"]
mod common;

use common::{Unsplit, argmax_last, chain, make_model, max_abs_diff};
use shoal_model::synth::SynthOptions;
use shoal_model::{BackendChoice, RuntimeConfig, StageRunner};

const TOL: f32 = 1e-4;
const PROMPT: [u32; 6] = [256, 72, 101, 108, 108, 111];
const DECODE_STEPS: usize = 10;

fn config(backend: BackendChoice) -> RuntimeConfig {
    RuntimeConfig {
        backend,
        all_logits: true,
        ..RuntimeConfig::default()
    }
}

fn check(opts: &SynthOptions, splits: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    let m = make_model(dir.path(), opts);
    let n = m.planner_layers();
    let mut reference = Unsplit::load(dir.path(), &m);
    let mut bounds = vec![0];
    bounds.extend_from_slice(splits);
    bounds.push(n);
    let load = |b: BackendChoice| -> Vec<StageRunner> {
        bounds
            .windows(2)
            .map(|w| StageRunner::load(dir.path(), &m, w[0]..w[1], &config(b)).unwrap())
            .collect()
    };
    let mut whole =
        vec![StageRunner::load(dir.path(), &m, 0..n, &config(BackendChoice::Ort)).unwrap()];
    let mut split = load(BackendChoice::Ort);
    let mut tract = load(BackendChoice::Tract);
    let v = m.dims.vocab;
    let mut ids = PROMPT.to_vec();
    let mut worst = (0.0f32, 0.0f32, 0.0f32);
    for step in 0..=DECODE_STEPS {
        let r = reference.step(&ids);
        let a = chain(&mut whole, 9, &ids);
        let b = chain(&mut split, 9, &ids);
        let c = chain(&mut tract, 9, &ids);
        let (da, db, dc) = (
            max_abs_diff(&r, &a),
            max_abs_diff(&r, &b),
            max_abs_diff(&a, &c),
        );
        assert!(da < TOL, "step {step}: one stage vs unsplit differ by {da}");
        assert!(
            db < TOL,
            "step {step}: split stages vs unsplit differ by {db}"
        );
        assert!(dc < TOL, "step {step}: tract vs onnxruntime differ by {dc}");
        worst = (worst.0.max(da), worst.1.max(db), worst.2.max(dc));
        ids = vec![argmax_last(&r, v)];
    }
    assert_eq!(whole[0].session_len(9), Some(PROMPT.len() + DECODE_STEPS));
    eprintln!(
        "max |diff|: one stage {:.2e}, split {:.2e}, tract {:.2e}",
        worst.0, worst.1, worst.2
    );
}

#[test]
fn tied_gqa_model_chains_like_the_unsplit_model() {
    let opts = SynthOptions {
        layers: 4,
        hidden: 64,
        heads: 4,
        kv_heads: 2,
        vocab: 300,
        seed: 7,
        ..SynthOptions::default()
    };
    check(&opts, &[1, 3, 5]);
}

#[test]
fn untied_biased_model_chains_like_the_unsplit_model() {
    let opts = SynthOptions {
        layers: 3,
        hidden: 96,
        heads: 6,
        kv_heads: 6,
        vocab: 280,
        seed: 11,
        tied: false,
        qkv_bias: true,
        ..SynthOptions::default()
    };
    check(&opts, &[2, 4]);
}
