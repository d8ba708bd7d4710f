//! `shoal bench pipeline`: per-token decode time of a 3-node loopback swarm against
//! single-process generation on the same model, in the same run, and their ratio.
//!
//! Single process: the model crate's generation loop on one runner holding every layer (what
//! `shoal generate` runs). Swarm: `shoal run` processes with memory budgets that force the
//! model over every node, one warm-up request, then greedy requests through node 0's API.
//! Decode time per token excludes the prefill: `(elapsed - prefill) / (tokens - 1)`. Each
//! side takes the best of `--runs` runs. Both sides run ONNX Runtime with its threads not
//! spinning (the nodes share the machine's cores), unless `--single-spin` lets the single
//! process spin (about 20% faster on its own, so the ratio then also counts that).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use shoal_model::generate::{GenerateRequest, generate};
use shoal_model::{Manifest, RuntimeConfig, SamplingConfig, StageRunner};

/// Arguments of `bench pipeline`.
#[derive(Debug, Args)]
pub(crate) struct PipelineArgs {
    /// Model directory; absent: a synthesised model of `--layers` x `--hidden`.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Decoder layers of the synthesised model.
    #[arg(long, default_value_t = 8)]
    layers: usize,
    /// Hidden size of the synthesised model.
    #[arg(long, default_value_t = 512)]
    hidden: usize,
    /// Nodes in the swarm.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Tokens generated per run.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Runs per side (the best counts).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Let ONNX Runtime's threads spin in the single-process run. Off by default: the swarm's
    /// nodes share this machine's cores and run with spinning off (`ort_spin = false`), so
    /// the default compares like with like and the ratio is the swarm's own cost.
    #[arg(long)]
    single_spin: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

const PROMPT: [u32; 8] = [84, 104, 101, 32, 115, 104, 111, 97];

pub(crate) fn run(args: &PipelineArgs) -> anyhow::Result<()> {
    if args.tokens < 2 || args.runs == 0 {
        bail!("--tokens must be at least 2 and --runs at least 1");
    }
    let dir = std::env::temp_dir().join(format!("shoal-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(args: &PipelineArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let opts = shoal_model::synth::SynthOptions {
                layers: args.layers,
                hidden: args.hidden,
                heads: (args.hidden / 64).max(1),
                kv_heads: (args.hidden / 128).max(1),
                ..Default::default()
            };
            let out = dir.join("model");
            shoal_model::synth::synth(&opts, &out, false).context("synthesising the model")?;
            out
        }
    };
    let single = single_process(&model, args)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (swarm_s, plan_stages) = rt.block_on(swarm(&model, args, dir))?;
    let ratio = swarm_s / single;
    if args.json {
        println!(
            "{}",
            json!({"single_ms_per_token": single * 1e3, "single_spin": args.single_spin, "swarm_ms_per_token": swarm_s * 1e3, "ratio": ratio, "nodes": args.nodes, "stages": plan_stages, "tokens": args.tokens})
        );
    } else {
        println!("{:<28} {:>14} {:>10}", "mode", "decode ms/tok", "tokens/s");
        println!(
            "{:<28} {:>14.3} {:>10.1}",
            if args.single_spin {
                "single process (spinning)"
            } else {
                "single process"
            },
            single * 1e3,
            1.0 / single
        );
        println!(
            "{:<28} {:>14.3} {:>10.1}",
            format!("{}-node loopback swarm", plan_stages),
            swarm_s * 1e3,
            1.0 / swarm_s
        );
        println!("ratio swarm / single: {ratio:.3} (target <= 1.10)");
    }
    Ok(())
}

/// Best per-token decode time of the single-process loop, seconds.
fn single_process(model: &std::path::Path, args: &PipelineArgs) -> anyhow::Result<f64> {
    // Before the runtime's environment exists (the first session creates it).
    shoal_model::runtime::ort_lib::set_thread_spinning(args.single_spin);
    let manifest = Manifest::load(model)?;
    let mut runner = StageRunner::load(
        model,
        &manifest,
        0..manifest.planner_layers(),
        &RuntimeConfig::default(),
    )?;
    let req = GenerateRequest {
        prompt_ids: PROMPT.to_vec(),
        max_tokens: args.tokens,
        sampling: SamplingConfig::greedy(),
        stop_ids: Vec::new(),
    };
    let mut best = f64::INFINITY;
    for i in 0..=args.runs {
        let stats = generate(&mut runner, i as u64, &req, |_| true)?;
        let n = stats.token_ids.len();
        if i > 0 && n > 1 {
            best = best.min(stats.decode_s / (n - 1) as f64); // run 0 warms up
        }
    }
    Ok(best)
}

/// Best per-token decode time through the swarm, seconds, and the plan's stage count.
async fn swarm(
    model: &std::path::Path,
    args: &PipelineArgs,
    dir: &std::path::Path,
) -> anyhow::Result<(f64, usize)> {
    let swarm = super::super::demo::start_swarm(model, args.nodes, &dir.join("swarm"), "").await?;
    let result = async {
        let plan = swarm
            .wait_plan(args.nodes, 0, std::time::Duration::from_secs(90))
            .await?;
        swarm
            .wait_ready(&plan, std::time::Duration::from_secs(300))
            .await?;
        let stages = plan["stages"].as_array().map_or(0, Vec::len);
        let body =
            json!({"prompt": PROMPT, "max_tokens": args.tokens, "temperature": 0, "stop": null});
        let mut best = f64::INFINITY;
        for i in 0..=args.runs {
            let (status, answer) = swarm.post_json(0, "/v1/completions", &body).await?;
            if status != 200 {
                bail!("generation failed ({status}): {answer}");
            }
            let s = &answer["shoal"];
            let n = s["token_ids"].as_array().map_or(0, Vec::len);
            let decode =
                s["elapsed_s"].as_f64().unwrap_or(0.0) - s["prefill_s"].as_f64().unwrap_or(0.0);
            if i > 0 && n > 1 {
                best = best.min(decode / (n - 1) as f64);
            }
        }
        Ok((best, stages))
    }
    .await;
    swarm.shutdown().await;
    result
}
