//! Gemma-3-270M decode speed on ONNX Runtime against the memory-bandwidth roofline: a decode
//! step reads every weight once (embedding: one row), so it cannot beat
//! `sum(read_bytes) / memory bandwidth`. Prints the table; asserts only that the greedy ids
//! match the reference of `gemma.rs` (timing is too noisy on shared machines to assert).
//!
//! A benchmark, so ignored by default:
//! `cargo test -p shoal-model --release --test gemma_roofline -- --ignored --nocapture`
//! (set `SHOAL_GEMMA_MODEL` to an imported model directory to skip the import).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_model::generate::{GenerateRequest, generate};
use shoal_model::{BackendChoice, Manifest, RuntimeConfig, SamplingConfig, StageRunner, gguf};

/// `<bos>The capital of France is` and the first reference ids (see `gemma.rs`).
const PROMPT_IDS: [u32; 6] = [2, 818, 5279, 529, 7001, 563];
const REFERENCE: [u32; 11] = [506, 5279, 529, 506, 2891, 529, 7001, 236761, 1030, 563, 506];
const STEPS: usize = 32;
/// Buffers of the bandwidth copy (well beyond the caches).
const COPY_BYTES: usize = 256 << 20;

/// Copy bandwidth, bytes read + written per second, best of several passes.
fn memory_bandwidth() -> f64 {
    let src = vec![1u8; COPY_BYTES];
    let mut dst = vec![0u8; COPY_BYTES];
    let mut best = Duration::MAX;
    for _ in 0..8 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed());
    }
    2.0 * COPY_BYTES as f64 / best.as_secs_f64()
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn gemma3_270m_decode_vs_roofline() {
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/gemma3-270m");
    let (dir, _tmp) = match std::env::var_os("SHOAL_GEMMA_MODEL") {
        Some(d) => (PathBuf::from(d), None),
        None => {
            let gguf_path = cache.join("gemma-3-270m-q4_k_m.gguf");
            if !gguf_path.exists() {
                eprintln!("SKIP gemma roofline: run scripts/fetch-gemma.sh first");
                return;
            }
            let tmp = tempfile::tempdir().unwrap();
            gguf::import(&gguf_path, None, tmp.path(), false).unwrap();
            (tmp.path().to_owned(), Some(tmp))
        }
    };
    let m = Manifest::load(&dir).unwrap();
    let read_bytes: u64 = m.layers.iter().map(|l| l.figures.read_bytes).sum();
    let config = RuntimeConfig {
        backend: BackendChoice::Ort,
        ..RuntimeConfig::default()
    };
    let mut runner = StageRunner::load(&dir, &m, 0..m.planner_layers(), &config).unwrap();
    let req = GenerateRequest {
        prompt_ids: PROMPT_IDS.to_vec(),
        max_tokens: STEPS,
        sampling: SamplingConfig::greedy(),
        stop_ids: Vec::new(),
    };
    // One warm-up generation (first-run allocations), then the measured one.
    generate(&mut runner, 1, &req, |_| true).unwrap();
    let stats = generate(&mut runner, 2, &req, |_| true).unwrap();
    assert_eq!(stats.token_ids[..REFERENCE.len()], REFERENCE);

    let bw = memory_bandwidth();
    let roofline_s = read_bytes as f64 / bw;
    let step_s = 1.0 / stats.decode_tokens_per_s;
    eprintln!("Gemma-3-270M (f32 shards), ONNX Runtime, one stage, {STEPS} greedy tokens");
    eprintln!(
        "  weight bytes read per token   {:>10.1} MB",
        read_bytes as f64 / 1e6
    );
    eprintln!("  memory bandwidth (copy)       {:>10.2} GB/s", bw / 1e9);
    eprintln!(
        "  roofline                      {:>10.1} ms/token  {:>6.1} tokens/s",
        roofline_s * 1e3,
        1.0 / roofline_s
    );
    eprintln!(
        "  measured decode               {:>10.1} ms/token  {:>6.1} tokens/s  ({:.0}% of roofline)",
        step_s * 1e3,
        stats.decode_tokens_per_s,
        100.0 * roofline_s / step_s
    );
    eprintln!(
        "  prefill ({} tokens)           {:>10.1} ms",
        PROMPT_IDS.len(),
        stats.prefill_s * 1e3
    );
}
