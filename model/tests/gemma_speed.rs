//! Gemma-3-270M decode and prefill speed at q4 (block sizes 32, 64, 128), q8 and f32 on 2
//! threads, against the memory-bandwidth roofline measured in the same run; with
//! `SHOAL_PEER_SCRIPT` set (`scripts/peer-llama-cpp.sh`), llama.cpp on the same GGUF too.
//!
//! A benchmark, so ignored by default:
//! `cargo test -p shoal-model --test gemma_speed -- --ignored --nocapture`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use shoal_model::bench::{SpeedBench, measure_speed, memory_bandwidth};
use shoal_model::{QuantSpec, WeightDtype, gguf};

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn gemma3_270m_speed_by_dtype_and_block_size() {
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/gemma3-270m");
    let gguf_path = cache.join("gemma-3-270m-q4_k_m.gguf");
    if !gguf_path.exists() {
        eprintln!("SKIP gemma_speed: run scripts/fetch-gemma.sh");
        return;
    }
    let b = SpeedBench {
        tokens: 32,
        prefill_len: 512,
        rounds: 3,
        threads: 2,
    };
    let cases = [
        (WeightDtype::Q4, 32),
        (WeightDtype::Q4, 128),
        (WeightDtype::Q8, 32),
        (WeightDtype::F32, 32),
    ];
    let mut rows = Vec::new();
    for (dtype, block) in cases {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let spec = QuantSpec::new(dtype, block).unwrap();
        let m = gguf::import_as(&gguf_path, None, dir.path(), false, spec).unwrap();
        let import_s = t.elapsed().as_secs_f64();
        let s = measure_speed(dir.path(), &m, b).unwrap();
        eprintln!("{dtype} b{block}: {s:?} (import {import_s:.0} s)");
        rows.push((format!("shoal {dtype} b{block}"), s));
    }
    let bw = memory_bandwidth(256 << 20, 5);
    eprintln!("memory bandwidth {:.2} GB/s", bw / 1e9);
    eprintln!(
        "{:<20} {:>10} {:>11} {:>12} {:>9}",
        "runtime", "decode t/s", "prefill t/s", "MB read/tok", "roofline"
    );
    for (name, s) in &rows {
        eprintln!(
            "{name:<20} {:>10.1} {:>11.1} {:>12.1} {:>8.0}%",
            s.decode_tok_s,
            s.prefill_tok_s,
            s.read_bytes as f64 / 1e6,
            100.0 * s.decode_tok_s * s.read_bytes as f64 / bw
        );
    }
    if let Some(script) = std::env::var_os("SHOAL_PEER_SCRIPT") {
        let out = std::process::Command::new(script)
            .arg(&gguf_path)
            .arg("2")
            .output()
            .unwrap();
        eprintln!("peer: {}", String::from_utf8_lossy(&out.stdout).trim());
    }
}
