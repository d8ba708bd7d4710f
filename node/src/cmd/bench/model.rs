//! `shoal bench model`: per-token decode of the `shoal generate` path (one stage holding the
//! whole model) against a minimal loop that calls ONNX Runtime directly on the same shards in
//! the same process, and decode speed against the memory-bandwidth roofline.
//!
//! With `--gguf` or `--dtypes`, a speed table instead: the model imported (or synthesised) at
//! each dtype, decode and 512-token prefill tokens/s, bytes read per token and the share of the
//! memory-bandwidth roofline (bandwidth measured in the same run), and with `--peer llama-cpp`
//! a row for llama.cpp on the same GGUF and thread count (from `scripts/peer-llama-cpp.sh`) and
//! each row's ratio to it.

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use clap::Args;
use shoal_model::QuantSpec;
use shoal_model::bench::{
    DecodeBench, SpeedBench, compare_decode, measure_speed, memory_bandwidth,
};
use shoal_model::quant::DEFAULT_BLOCK_SIZE;
use shoal_model::synth::{SynthOptions, synth};
use shoal_model::{Manifest, WeightDtype};

/// Options of the model benchmark.
#[derive(Debug, Args)]
pub(crate) struct ModelBenchArgs {
    /// Model directory; default: a synthesised model (`shoal model synth` defaults).
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    /// Tokens generated per round.
    #[arg(long, default_value_t = 64)]
    pub(crate) tokens: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 8)]
    pub(crate) prompt_len: usize,
    /// Rounds per path, alternating; the table shows the median and the best round.
    #[arg(long, default_value_t = 15)]
    pub(crate) rounds: usize,
    /// Speed table of this GGUF imported at each of `--dtypes`.
    #[arg(long)]
    pub(crate) gguf: Option<PathBuf>,
    /// tokenizer.json for the GGUF import (not needed for the benchmark).
    #[arg(long, requires = "gguf")]
    pub(crate) tokenizer: Option<PathBuf>,
    /// Speed table over these dtypes (comma-separated; default q4,q8,f32 with --gguf).
    #[arg(long, value_delimiter = ',', value_parser = crate::cmd::model::parse_dtype)]
    pub(crate) dtypes: Option<Vec<WeightDtype>>,
    /// Quantisation block size of the imports.
    #[arg(long, default_value_t = DEFAULT_BLOCK_SIZE)]
    pub(crate) block_size: usize,
    /// Where the imported model directories are kept (reused when present); default: a
    /// temporary folder removed afterwards.
    #[arg(long)]
    pub(crate) cache: Option<PathBuf>,
    /// ONNX Runtime threads (0: one per core).
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
    /// Prompt length of the prefill measurement.
    #[arg(long, default_value_t = 512)]
    pub(crate) prefill_len: usize,
    /// Add a peer row: `llama-cpp` runs `--peer-script GGUF THREADS`.
    #[arg(long, requires = "gguf")]
    pub(crate) peer: Option<Peer>,
    /// Instead of the comparison, profile a greedy decode of `--tokens` tokens with ONNX
    /// Runtime's profiler (one JSON file per shard into this folder) and print where the time
    /// goes, per op type.
    #[arg(long, conflicts_with_all = ["gguf", "dtypes"])]
    pub(crate) ort_profile: Option<PathBuf>,
    /// The peer script (prints one JSON line with `decode_tok_s` and `prefill_tok_s`).
    #[arg(long, default_value = "scripts/peer-llama-cpp.sh")]
    pub(crate) peer_script: PathBuf,
}

/// A runtime to compare with.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Peer {
    /// llama.cpp's llama-bench on the same GGUF.
    LlamaCpp,
}

pub(crate) fn run(args: &ModelBenchArgs) -> anyhow::Result<()> {
    if args.gguf.is_some() || args.dtypes.is_some() {
        return table(args);
    }
    ensure!(
        args.tokens >= 2 && args.rounds >= 1,
        "need --tokens >= 2 and --rounds >= 1"
    );
    let tmp;
    let dir: &Path = match &args.model {
        Some(d) => d,
        None => {
            tmp = std::env::temp_dir().join(format!("shoal-bench-model-{}", std::process::id()));
            synth(&SynthOptions::default(), &tmp, false).context("synthesising the bench model")?;
            &tmp
        }
    };
    let result = bench(dir, args);
    if args.model.is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn bench(dir: &Path, args: &ModelBenchArgs) -> anyhow::Result<()> {
    let m = Manifest::load(dir)?;
    if let Some(out) = &args.ort_profile {
        return profile(dir, &m, args, out);
    }
    let b = DecodeBench {
        tokens: args.tokens,
        prompt_len: args.prompt_len,
        rounds: args.rounds,
    };
    let c = compare_decode(dir, &m, b)?;
    let (s, d) = c.median();
    let (s_best, d_best) = c.best();
    let roof = c.roofline_tokens_per_s();
    let (read, bw) = (c.read_bytes, c.mem_bw);
    println!(
        "model {} ({} layers, hidden {}, vocab {}), {} tokens after an {}-token prompt, median of {} rounds",
        m.name,
        m.dims.layers,
        m.dims.hidden,
        m.dims.vocab,
        args.tokens,
        args.prompt_len,
        args.rounds
    );
    println!(
        "{:<38} {:>12} {:>10} {:>12}",
        "path", "ms/token", "tokens/s", "best ms/tok"
    );
    let row = |name: &str, med: f64, best: f64| {
        println!(
            "{name:<38} {:>12.4} {:>10.1} {:>12.4}",
            med * 1e3,
            1.0 / med,
            best * 1e3
        );
    };
    row("shoal generate (1 stage, StageRunner)", s, s_best);
    row("direct ONNX Runtime loop, same shards", d, d_best);
    println!(
        "{:<38} {:>12.3} {:>10} {:>12.3}   (target <= 1.03; median, best)",
        "ratio shoal / direct",
        s / d,
        "",
        s_best / d_best
    );
    println!(
        "roofline: {:.2} MB of weights read per token, memory bandwidth {:.1} GB/s -> {:.0} tokens/s bound; shoal reaches {:.1}% of it",
        read as f64 / 1e6,
        bw / 1e9,
        roof,
        100.0 / s / roof
    );
    Ok(())
}

/// One row of the speed table.
struct Row {
    name: String,
    decode_tok_s: f64,
    prefill_tok_s: f64,
    read_bytes: Option<u64>,
}

/// The speed table: each dtype of the model, then the peer.
fn table(args: &ModelBenchArgs) -> anyhow::Result<()> {
    ensure!(
        args.tokens >= 2 && args.rounds >= 1,
        "need --tokens >= 2 and --rounds >= 1"
    );
    let dtypes = args
        .dtypes
        .clone()
        .unwrap_or_else(|| vec![WeightDtype::Q4, WeightDtype::Q8, WeightDtype::F32]);
    let tmp = tempfile_dir()?;
    let cache = args.cache.clone().unwrap_or_else(|| tmp.clone());
    let result = table_rows(args, &dtypes, &cache);
    if args.cache.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let (rows, name) = result?;
    let bw = memory_bandwidth(256 << 20, 5);
    print_table(args, &name, &rows, bw);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("shoal-bench-table-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// Imports (or synthesises) the model at each dtype under `cache` and measures it.
fn table_rows(
    args: &ModelBenchArgs,
    dtypes: &[WeightDtype],
    cache: &Path,
) -> anyhow::Result<(Vec<Row>, String)> {
    let mut rows = Vec::new();
    let mut name = String::new();
    for &dtype in dtypes {
        let quant = QuantSpec::new(dtype, args.block_size)?;
        let dir = cache.join(format!("{dtype}-b{}", args.block_size));
        let m = match Manifest::load(&dir) {
            Ok(m) => m,
            Err(_) => match &args.gguf {
                Some(g) => {
                    eprintln!(
                        "importing {} as {dtype} into {}",
                        g.display(),
                        dir.display()
                    );
                    shoal_model::gguf::import_as(g, args.tokenizer.as_deref(), &dir, true, quant)?
                }
                None => synth(
                    &SynthOptions {
                        quant,
                        ..SynthOptions::default()
                    },
                    &dir,
                    false,
                )?,
            },
        };
        name = m.name.clone();
        let b = SpeedBench {
            tokens: args.tokens,
            prefill_len: args.prefill_len,
            rounds: args.rounds,
            threads: args.threads,
        };
        let s = measure_speed(&dir, &m, b).with_context(|| format!("measuring {dtype}"))?;
        rows.push(Row {
            name: format!("shoal {dtype}"),
            decode_tok_s: s.decode_tok_s,
            prefill_tok_s: s.prefill_tok_s,
            read_bytes: Some(s.read_bytes),
        });
    }
    if let (Some(Peer::LlamaCpp), Some(g)) = (args.peer, &args.gguf) {
        rows.push(peer_row(&args.peer_script, g, args)?);
    }
    Ok((rows, name))
}

/// Runs the peer script; a missing script gives a row that says so (no figures).
fn peer_row(script: &Path, gguf: &Path, args: &ModelBenchArgs) -> anyhow::Result<Row> {
    let absent = Row {
        name: format!("llama.cpp: absent ({} not found)", script.display()),
        decode_tok_s: f64::NAN,
        prefill_tok_s: f64::NAN,
        read_bytes: None,
    };
    if !script.exists() {
        return Ok(absent);
    }
    eprintln!("running {} (may build llama.cpp first)", script.display());
    let out = std::process::Command::new(script)
        .arg(gguf)
        .arg(args.threads.max(1).to_string())
        .arg(args.prefill_len.to_string())
        .arg(args.tokens.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("the peer script printed no JSON line")?;
    let v: serde_json::Value = serde_json::from_str(line).context("peer JSON")?;
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    Ok(Row {
        name: "llama.cpp (same GGUF)".to_owned(),
        decode_tok_s: num("decode_tok_s").context("no decode_tok_s")?,
        prefill_tok_s: num("prefill_tok_s").context("no prefill_tok_s")?,
        read_bytes: None,
    })
}

fn print_table(args: &ModelBenchArgs, name: &str, rows: &[Row], bw: f64) {
    println!(
        "model {name}, {} threads, decode: {} tokens after an 8-token prompt, prefill: {}-token prompt, median of {} rounds; memory bandwidth {:.1} GB/s (measured now)",
        args.threads,
        args.tokens,
        args.prefill_len,
        args.rounds,
        bw / 1e9
    );
    let peer = rows
        .iter()
        .find(|r| r.read_bytes.is_none() && r.decode_tok_s.is_finite());
    println!(
        "{:<34} {:>10} {:>11} {:>12} {:>9} {:>11} {:>11}",
        "runtime",
        "decode t/s",
        "prefill t/s",
        "MB read/tok",
        "roofline",
        "decode/peer",
        "prefill/peer"
    );
    for r in rows {
        let (mb, roof) = match r.read_bytes {
            Some(b) => (
                format!("{:.1}", b as f64 / 1e6),
                format!("{:.0}%", 100.0 * r.decode_tok_s * b as f64 / bw),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let ratio = |a: f64, p: Option<f64>| match p {
            Some(p) if a.is_finite() => format!("{:.2}x", a / p),
            _ => "-".to_owned(),
        };
        println!(
            "{:<34} {:>10.1} {:>11.1} {:>12} {:>9} {:>11} {:>11}",
            r.name,
            r.decode_tok_s,
            r.prefill_tok_s,
            mb,
            roof,
            ratio(r.decode_tok_s, peer.map(|p| p.decode_tok_s)),
            ratio(r.prefill_tok_s, peer.map(|p| p.prefill_tok_s)),
        );
    }
    if args.peer.is_none() {
        println!("peer: none asked (add --peer llama-cpp --gguf FILE for a llama.cpp row)");
    }
}

/// Prints where a profiled decode's time goes, per op type.
fn profile(dir: &Path, m: &Manifest, args: &ModelBenchArgs, out: &Path) -> anyhow::Result<()> {
    let rows = shoal_model::bench::profile_decode(dir, m, args.threads, args.tokens, out)?;
    let wall = rows
        .iter()
        .find(|r| r.op == "(wall)")
        .map_or(f64::MIN_POSITIVE, |r| r.total_us);
    let steps = args.tokens.max(2) as f64;
    println!(
        "model {} ({}), {} tokens after an 8-token prompt, {} threads; profiles in {}",
        m.name,
        m.dtype,
        args.tokens,
        args.threads,
        out.display()
    );
    println!(
        "{:<28} {:>8} {:>12} {:>14} {:>8}",
        "op", "count", "total ms", "us per token", "of wall"
    );
    for r in &rows {
        println!(
            "{:<28} {:>8} {:>12.2} {:>14.1} {:>7.1}%",
            r.op,
            r.count,
            r.total_us / 1e3,
            r.total_us / steps,
            100.0 * r.total_us / wall
        );
    }
    Ok(())
}
