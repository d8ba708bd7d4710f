//! Gemma-3-270M (Q4_K_M GGUF) imported into ONNX shards, run on ONNX Runtime, continues
//! "The capital of France is" exactly as two independent reference runs do.
//!
//! How the reference was made (`scripts/gemma-reference.py`, same GGUF file, sha256
//! a5fd3b62...6818):
//! - llama.cpp 0.3.36 through `llama-cpp-python` (its own loader, tokenizer and quantised
//!   kernels) greedily continues with ids REFERENCE (16 steps) and prompt ids PROMPT_IDS;
//! - a float32 NumPy forward pass written from the Hugging Face Gemma 3 definition on weights
//!   dequantised by gguf-py agrees on the first 15 ids, and gives TOP5, the five largest
//!   logits after the prompt, checked here to LOGIT_TOL. Only the first CHECKED ids are
//!   asserted: from step 12 on the top-2 logit margin of the f32 reference falls to 0.014,
//!   below what separates f32 ONNX Runtime from NumPy, so later steps could flip honestly.
//!
//! The files come from `scripts/fetch-gemma.sh` (run by `scripts/setup.sh` unless `SHOAL_NO_MODEL=1`); without
//! them the test prints a SKIP line and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/gemma_files.rs"]
mod gemma_files;
use gemma_files::gemma_files;
use std::time::Instant;

use shoal_model::generate::{GenerateRequest, generate};
use shoal_model::{
    BackendChoice, RuntimeConfig, SamplingConfig, StageInput, StageOutput, StageRunner, Tokenizer,
    gguf,
};

const PROMPT: &str = "The capital of France is";
/// `<bos>The capital of France is` in Gemma 3's vocabulary (llama.cpp's tokenizer).
const PROMPT_IDS: [u32; 6] = [2, 818, 5279, 529, 7001, 563];
/// llama.cpp's greedy continuation: " the capital of the country of France. It is the
/// largest city in France."
const REFERENCE: [u32; 16] = [
    506, 5279, 529, 506, 2891, 529, 7001, 236761, 1030, 563, 506, 7488, 3207, 528, 7001, 236761,
];
/// Steps asserted (see the module doc).
const CHECKED: usize = 11;
/// The f32 NumPy reference's five largest logits after the prompt, as (id, logit).
const TOP5: [(u32, f32); 5] = [
    (506, 19.0915),
    (496, 18.5476),
    (9079, 18.2686),
    (886, 18.113),
    (3224, 17.7839),
];
/// Tolerance on those logits (printed to 4 decimals; f32 sums in another order: 3e-5 seen).
const LOGIT_TOL: f32 = 1e-3;

#[test]
fn gemma3_270m_continues_like_llama_cpp() {
    let Some((gguf_path, tokenizer_path)) = gemma_files("gemma") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let manifest = gguf::import(&gguf_path, Some(&tokenizer_path), out.path(), false).unwrap();
    eprintln!("import: {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(manifest.dims.layers, 18);
    assert_eq!(manifest.dims.vocab, 262_144);

    let tokenizer = Tokenizer::load(out.path(), &manifest).unwrap().unwrap();
    let prompt_ids = tokenizer.encode(PROMPT).unwrap();
    assert_eq!(prompt_ids, PROMPT_IDS);

    let config = RuntimeConfig {
        backend: BackendChoice::Ort,
        ..RuntimeConfig::default()
    };
    let n = manifest.planner_layers();
    let mut runner = StageRunner::load(out.path(), &manifest, 0..n, &config).unwrap();
    let StageOutput::Logits(first) = runner
        .run(7, StageInput::Tokens(prompt_ids.clone()))
        .unwrap()
    else {
        panic!("a whole-model runner returns logits");
    };
    let mut worst = 0f32;
    for (id, want) in TOP5 {
        let got = first.data[id as usize];
        worst = worst.max((got - want).abs());
        assert!(
            (got - want).abs() < LOGIT_TOL,
            "logit of token {id}: {got} vs NumPy {want}"
        );
    }
    let req = GenerateRequest {
        prompt_ids,
        max_tokens: REFERENCE.len(),
        sampling: SamplingConfig::greedy(),
        stop_ids: Vec::new(),
    };
    eprintln!("top-5 logits after the prompt: max |diff| to NumPy {worst:.2e}");
    let stats = generate(&mut runner, 1, &req, |_| true).unwrap();
    let text = tokenizer.decode(&stats.token_ids).unwrap();
    eprintln!(
        "gemma3-270m greedy: {:?} {text:?}; prefill {:.3} s, decode {:.1} tokens/s",
        stats.token_ids, stats.prefill_s, stats.decode_tokens_per_s
    );
    assert_eq!(
        stats.token_ids[..CHECKED],
        REFERENCE[..CHECKED],
        "text: {text:?}"
    );
}
