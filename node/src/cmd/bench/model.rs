//! `shoal bench model`: per-token decode of the `shoal generate` path (one stage holding the
//! whole model) against a minimal loop that calls ONNX Runtime directly on the same shards in
//! the same process, and decode speed against the memory-bandwidth roofline.

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use clap::Args;
use shoal_model::Manifest;
use shoal_model::bench::{DecodeBench, compare_decode};
use shoal_model::synth::{SynthOptions, synth};

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
}

pub(crate) fn run(args: &ModelBenchArgs) -> anyhow::Result<()> {
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
