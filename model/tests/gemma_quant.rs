//! Gemma-3-270M imported at q4 (from the dequantised Q4_K_M GGUF: see `model/README.md`) against the f32
//! import of the same file, both on ONNX Runtime: the greedy continuation of "The capital of
//! France is" begins " the capital of" (what llama.cpp's own Q4 kernels print; measured
//! " the capital of the United States of America"), and the q4 shards pick the f32 shards'
//! top-1 token on at least [`MIN_AGREEMENT`] of the positions of a fixed 64-token text
//! (teacher-forced: one prefill of the whole text, every position's logits).
//!
//! The files come from `scripts/fetch-gemma.sh` (run by `scripts/setup.sh` unless `SHOAL_NO_MODEL=1`); without them
//! the test prints a SKIP line and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/gemma_files.rs"]
mod gemma_files;
use gemma_files::gemma_files;

use shoal_model::generate::{GenerateRequest, generate};
use shoal_model::{
    BackendChoice, Manifest, QuantSpec, RuntimeConfig, SamplingConfig, StageInput, StageOutput,
    StageRunner, Tokenizer, WeightDtype, gguf,
};

/// A fixed English text; its first 64 tokens are compared.
const TEXT: &str = "The river runs through the old town, past the market square where farmers \
    sell bread, cheese and apples every Saturday morning. Children play near the fountain while \
    their parents talk about the weather, the harvest and the news from the capital. In the \
    evening the bells of the church ring and the streets slowly become quiet again.";
/// Positions compared.
const POSITIONS: usize = 64;
/// Required top-1 agreement with f32: issue 11's 90%. Measured 96% over 128 positions
/// (`gemma_parity.rs`; block size 32, tensors the GGUF stored above 4 bits kept at 8, the
/// `Q4_K` ones in 4-bit affine blocks that hold them exactly, 8-bit head, `accuracy_level = 4`);
/// before those two choices, 69% (44/64).
const MIN_AGREEMENT: f64 = 0.90;

fn runner(dir: &std::path::Path, m: &Manifest, all_logits: bool) -> StageRunner {
    let config = RuntimeConfig {
        backend: BackendChoice::Ort,
        all_logits,
        ..RuntimeConfig::default()
    };
    StageRunner::load(dir, m, 0..m.planner_layers(), &config).unwrap()
}

fn top1(dir: &std::path::Path, m: &Manifest, ids: &[u32]) -> Vec<usize> {
    let mut r = runner(dir, m, true);
    let StageOutput::Logits(l) = r.run(1, StageInput::Tokens(ids.to_vec())).unwrap() else {
        panic!("no logits");
    };
    l.data
        .chunks(m.dims.vocab)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, f32::MIN),
                    |b, (i, x)| if *x > b.1 { (i, *x) } else { b },
                )
                .0
        })
        .collect()
}

#[test]
fn gemma3_270m_q4_matches_f32_and_llama_cpp() {
    let Some((gguf_path, tokenizer_path)) = gemma_files("gemma_quant") else {
        return;
    };
    let q4_dir = tempfile::tempdir().unwrap();
    let spec = QuantSpec::new(WeightDtype::Q4, shoal_model::quant::DEFAULT_BLOCK_SIZE).unwrap();
    let q4 = gguf::import_as(
        &gguf_path,
        Some(&tokenizer_path),
        q4_dir.path(),
        false,
        spec,
    )
    .unwrap();
    assert_eq!(q4.dtype, "q4");
    let tokenizer = Tokenizer::load(q4_dir.path(), &q4).unwrap().unwrap();

    let prompt_ids = tokenizer.encode("The capital of France is").unwrap();
    let req = GenerateRequest {
        prompt_ids,
        max_tokens: 8,
        sampling: SamplingConfig::greedy(),
        stop_ids: Vec::new(),
    };
    let mut r = runner(q4_dir.path(), &q4, false);
    let stats = generate(&mut r, 1, &req, |_| true).unwrap();
    let text = tokenizer.decode(&stats.token_ids).unwrap();
    eprintln!(
        "gemma q4 greedy: {text:?}, decode {:.1} tokens/s",
        stats.decode_tokens_per_s
    );
    assert!(text.starts_with(" the capital of"), "q4 continued {text:?}");
    drop(r);

    let mut ids = tokenizer.encode(TEXT).unwrap();
    assert!(ids.len() >= POSITIONS, "{} tokens", ids.len());
    ids.truncate(POSITIONS);
    let got = top1(q4_dir.path(), &q4, &ids);
    drop(q4_dir);

    let f32_dir = tempfile::tempdir().unwrap();
    let f = gguf::import(&gguf_path, Some(&tokenizer_path), f32_dir.path(), false).unwrap();
    let want = top1(f32_dir.path(), &f, &ids);
    let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
    let agreement = same as f64 / POSITIONS as f64;
    eprintln!("gemma q4 vs f32 top-1 agreement over {POSITIONS} positions: {same}/{POSITIONS}");
    assert!(agreement >= MIN_AGREEMENT, "{same}/{POSITIONS}");
}
