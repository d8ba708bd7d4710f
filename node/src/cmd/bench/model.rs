//! `shoal bench model`: per-token decode of the `shoal generate` path (one stage holding the
//! whole model) against a minimal loop that calls ONNX Runtime directly on the same shards in
//! the same process, and decode speed against the memory-bandwidth roofline.

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use clap::Args;
use shoal_model::bench::{DirectOrt, memory_bandwidth};
use shoal_model::generate::{GenerateRequest, generate};
use shoal_model::synth::{SynthOptions, synth};
use shoal_model::{BackendChoice, Manifest, RuntimeConfig, SamplingConfig, StageRunner};

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
    let cfg = RuntimeConfig {
        backend: BackendChoice::Ort,
        ..RuntimeConfig::default()
    };
    let mut runner = StageRunner::load(dir, &m, 0..m.planner_layers(), &cfg)?;
    let mut direct = DirectOrt::load(dir, &m)?;
    let prompt: Vec<u32> = (0..args.prompt_len)
        .map(|i| (i * 7 % m.dims.vocab) as u32)
        .collect();
    let req = GenerateRequest {
        prompt_ids: prompt.clone(),
        max_tokens: args.tokens,
        sampling: SamplingConfig::greedy(),
        stop_ids: Vec::new(),
    };
    let steps = (args.tokens - 1) as f64;
    // Warm-up, and a check that both paths compute the same thing.
    let a = generate(&mut runner, 1, &req, |_| true)?;
    let (b, _) = direct.decode(&prompt, args.tokens)?;
    ensure!(a.token_ids == b, "the two paths decoded different tokens");
    let (mut shoal_s, mut direct_s) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        shoal_s.push(generate(&mut runner, 1, &req, |_| true)?.decode_s / steps);
        direct_s.push(direct.decode(&prompt, args.tokens)?.1.as_secs_f64() / steps);
    }
    let (s, d) = (median(&mut shoal_s), median(&mut direct_s));
    let (s_best, d_best) = (shoal_s[0], direct_s[0]);
    let read: u64 = m.layers.iter().map(|l| l.figures.read_bytes).sum();
    let bw = memory_bandwidth(128 << 20, 5);
    let roof = bw / read as f64;
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

/// Sorts `v` and returns its median.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
