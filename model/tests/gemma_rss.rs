//! Resident memory of a process holding all of Gemma-3-270M at q4, measured per component from
//! `/proc/self/status` after loading each piece in turn: ONNX Runtime's library, the tokenizer,
//! the embedding, the 18 decoder layers, the head, then the whole model in one runner and a
//! short generation; and the resident pages of each mapped file at the end. The table is
//! printed (`--nocapture`) and the peak is held under [`BOUND_MB`].
//!
//! Issue 11 asks for under 400 MB; measured now: 379-385 MB peak and steady (519 in the same
//! session before the compact tokenizer model, the head in blocks of 128 and the reclaimed file
//! pages; 709 before the freed load buffers were returned and the head was sliced). What
//! remains is ONNX Runtime's prepacked weights (~290 MB) and its code and arenas (~50 MB); see
//! `model/README.md`, "Resident memory".
//!
//! The shards are imported from the fetched GGUF into a temporary folder first; the import's
//! own allocations would stay in this process's heap, so the measurement runs in a child
//! process (this test binary again, with `SHOAL_RSS_DIR` set). Skips without the fetched files
//! (see `support/gemma_files.rs`) or without ONNX Runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/gemma_files.rs"]
mod gemma_files;
use gemma_files::gemma_files;

use std::path::Path;

use shoal_model::generate::{GenerateRequest, generate};
use shoal_model::{
    BackendChoice, Manifest, QuantSpec, RuntimeConfig, SamplingConfig, StageRunner, Tokenizer,
    WeightDtype, gguf, runtime::ort_lib::ort_available,
};

/// Bound on the peak resident memory, in MB: issue 11's 400, the measured 379-385 plus 4-5%. A
/// regression fails it: the `tokenizers` crate's own BPE maps back (+80 MB), the head in blocks
/// of 32 again (+50 MB), a second copy of the head table (+170 MB).
const BOUND_MB: f64 = 400.0;
/// Set in the child process: the model folder to measure.
const DIR_VAR: &str = "SHOAL_RSS_DIR";
/// This test's name, for the child's filter.
const TEST: &str = "gemma3_270m_q4_resident_memory";

/// One `/proc/self/status` reading, in MB.
#[derive(Debug, Clone, Copy)]
struct Rss {
    total: f64,
    anon: f64,
    file: f64,
    peak: f64,
}

fn rss() -> Rss {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = |key: &str| -> f64 {
        let line = s.lines().find(|l| l.starts_with(key)).unwrap();
        let v: f64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        v / 1024.0
    };
    Rss {
        total: kb("VmRSS:"),
        anon: kb("RssAnon:"),
        file: kb("RssFile:"),
        peak: kb("VmHWM:"),
    }
}

/// Loads each piece in turn, prints the table, returns the peak in MB.
fn measure(dir: &Path) -> f64 {
    let m = Manifest::load(dir).unwrap();
    let n = m.planner_layers();
    let config = RuntimeConfig {
        backend: BackendChoice::Ort,
        ..RuntimeConfig::default()
    };
    let mut rows = vec![("start", rss())];
    config.resolve_backend().unwrap();
    rows.push(("ONNX Runtime library", rss()));
    let tokenizer = Tokenizer::load(dir, &m).unwrap().unwrap();
    rows.push(("tokenizer", rss()));
    let embed = StageRunner::load(dir, &m, 0..1, &config).unwrap();
    rows.push(("embedding", rss()));
    let layers = StageRunner::load(dir, &m, 1..n - 1, &config).unwrap();
    rows.push(("decoder layers", rss()));
    let head = StageRunner::load(dir, &m, n - 1..n, &config).unwrap();
    rows.push(("head", rss()));
    drop((embed, layers, head));
    rows.push(("all dropped", rss()));
    let mut all = StageRunner::load(dir, &m, 0..n, &config).unwrap();
    rows.push(("whole model, one runner", rss()));
    let req = GenerateRequest {
        prompt_ids: tokenizer.encode("The capital of France is").unwrap(),
        max_tokens: 32,
        sampling: SamplingConfig::default(),
        stop_ids: Vec::new(),
    };
    generate(&mut all, 1, &req, |_| true).unwrap();
    rows.push(("after 32 generated tokens", rss()));
    println!("| after | RSS MB | delta | anon | file | peak |");
    println!("|---|---|---|---|---|---|");
    let mut prev = rows[0].1.total;
    for (what, r) in &rows {
        println!(
            "| {what} | {:.0} | {:+.0} | {:.0} | {:.0} | {:.0} |",
            r.total,
            r.total - prev,
            r.anon,
            r.file,
            r.peak
        );
        prev = r.total;
    }
    println!("resident file pages at the end, by file (MB):");
    for (path, mb) in file_rss() {
        println!("  {mb:6.1} {path}");
    }
    rows.last().unwrap().1.peak
}

/// Resident MB of each mapped file above 1 MB (`/proc/self/smaps`), largest first.
fn file_rss() -> Vec<(String, f64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut by_file = std::collections::BTreeMap::<String, f64>::new();
    let mut current = None;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            current = fields
                .get(5)
                .filter(|p| p.starts_with('/'))
                .map(|p| p.to_string());
        } else if let (Some(path), ["Rss:", kb, "kB"]) = (&current, &fields[..]) {
            *by_file.entry(path.clone()).or_default() += kb.parse::<f64>().unwrap() / 1024.0;
        }
    }
    let mut v: Vec<(String, f64)> = by_file.into_iter().filter(|(_, mb)| *mb > 1.0).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

#[test]
fn gemma3_270m_q4_resident_memory() {
    if let Some(dir) = std::env::var_os(DIR_VAR) {
        let peak = measure(Path::new(&dir));
        assert!(peak < BOUND_MB, "peak resident {peak:.0} MB >= {BOUND_MB}");
        return;
    }
    let Some((gguf_path, tokenizer_path)) = gemma_files("gemma_rss") else {
        return;
    };
    if !ort_available(None) {
        eprintln!("SKIP gemma_rss: ONNX Runtime not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = QuantSpec::new(WeightDtype::Q4, shoal_model::quant::DEFAULT_BLOCK_SIZE).unwrap();
    gguf::import_as(&gguf_path, Some(&tokenizer_path), dir.path(), false, spec).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads", "1"])
        .env(DIR_VAR, dir.path())
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the measuring child failed");
}
