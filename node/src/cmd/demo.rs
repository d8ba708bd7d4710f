//! `shoal demo`: a swarm of real `shoal run` processes on loopback that splits one model
//! across every node and generates text through the pipeline.
//!
//! The model is `--model`, else the real Gemma-3-270M that `scripts/setup.sh` fetches into
//! `.cache/gemma3-270m/` (imported into q4 shards beside it on first use, with a progress
//! bar), else (or with `--synth`) the synthesised built-in model, whose random weights give
//! noise. It gives each node a memory budget that forces the plan to use every node
//! (`launch::spanning_budget`), waits
//! for the signed plan, prints it, generates through node 0's OpenAI endpoint, prints the text,
//! tokens/s and per-stage compute times (from each node's `/metrics`), and stops every child:
//! on success, on error, and on Ctrl-C or SIGTERM (children are also killed if dropped).
//! `--json` prints one object: `plan` (DESIGN.md's plan JSON), `text`, `token_ids`,
//! `tokens_per_s`, `elapsed_s`, `prefill_s`, `stages` and `nodes`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use shoal_node::launch::{self, LaunchOptions, LocalSwarm};

/// How long the demo waits for the swarm to agree on a plan.
const PLAN_TIMEOUT: Duration = Duration::from_secs(90);
/// The prompt when none is given.
const DEFAULT_PROMPT: &str = "A shoal of small devices";
/// The prompt when none is given and the model is the real Gemma.
const DEFAULT_REAL_PROMPT: &str = "The three largest cities in France are";
/// The chat message when none is given (`--chat`).
const DEFAULT_CHAT: &str = "Name three things a small phone can do.";

/// Arguments of `shoal demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Number of node processes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Model directory; absent: the fetched Gemma-3-270M when `.cache/gemma3-270m/` holds it
    /// (`scripts/setup.sh`), else the synthesised built-in model.
    #[arg(long, conflicts_with = "synth")]
    model: Option<PathBuf>,
    /// Use the synthesised built-in model (random weights) even when Gemma is fetched.
    #[arg(long)]
    synth: bool,
    /// Send the prompt as a user message through `/v1/chat/completions` (the model's chat
    /// template).
    #[arg(long, conflicts_with = "prompt_ids")]
    chat: bool,
    /// Prompt text.
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt token ids, comma separated.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Greedy decoding (otherwise temperature 0.8, top-p 0.95, seed 0).
    #[arg(long)]
    greedy: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Keep the work directory (configs, keys, logs) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let dir = work_dir();
    let result = rt.block_on(demo(&args, &dir));
    if args.keep || result.is_err() {
        eprintln!(
            "work directory (configs, keys, node logs): {}",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn work_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!("shoal-demo-{}-{nanos}", std::process::id()))
}

/// Which model the demo runs.
#[derive(Debug)]
pub(crate) enum DemoModel {
    /// `--model DIR`.
    Given(PathBuf),
    /// The fetched Gemma-3-270M's q4 shards.
    Gemma(PathBuf),
    /// The synthesised built-in model in the work directory.
    Synth(PathBuf),
}

impl DemoModel {
    /// The model directory.
    pub(crate) fn dir(&self) -> &std::path::Path {
        match self {
            DemoModel::Given(p) | DemoModel::Gemma(p) | DemoModel::Synth(p) => p,
        }
    }
}

/// The model to use: `--model`, else the fetched Gemma (imported on first use), else (or with
/// `--synth`) the built-in one synthesised into the work directory.
pub(crate) fn demo_model(
    given: Option<&PathBuf>,
    synth_only: bool,
    dir: &std::path::Path,
) -> anyhow::Result<DemoModel> {
    if let Some(m) = given {
        return Ok(DemoModel::Given(m.clone()));
    }
    if !synth_only {
        if let Some(gemma) = launch::gemma::fetched_gemma() {
            return Ok(DemoModel::Gemma(launch::gemma::gemma_shards(&gemma)?));
        }
        eprintln!(
            "shoal demo: no real model fetched, so the built-in one (random weights: the text is noise); \
             for real text run scripts/setup.sh (it fetches Gemma-3-270M into .cache/) and the demo again"
        );
    }
    let out = dir.join("model");
    let opts = shoal_model::synth::SynthOptions::default();
    shoal_model::synth::synth(&opts, &out, false).context("synthesising the built-in model")?;
    Ok(DemoModel::Synth(out))
}

/// Starts `nodes` processes whose memory forces the plan to span all of them.
pub(crate) async fn start_swarm(
    model: &std::path::Path,
    nodes: usize,
    dir: &std::path::Path,
    extra_config: &str,
) -> anyhow::Result<LocalSwarm> {
    let fraction = shoal_node::config::Config::default()
        .planner
        .memory_fraction;
    let budget = launch::spanning_budget(model, nodes, fraction)?;
    let opts = LaunchOptions {
        bin: std::env::current_exe().context("locating the shoal binary")?,
        dir: dir.to_path_buf(),
        model: model.to_path_buf(),
        memory: vec![budget; nodes],
        log: std::env::var("SHOAL_LOG").unwrap_or_else(|_| "warn".into()),
        extra_config: extra_config.to_string(),
        ..Default::default()
    };
    Ok(LocalSwarm::start(&opts).await?)
}

async fn demo(args: &DemoArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let model = demo_model(args.model.as_ref(), args.synth, dir)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    // Dropping the half-started swarm on a signal kills its children (kill_on_drop).
    let swarm = tokio::select! {
        s = start_swarm(model.dir(), args.nodes, dir, "") => s?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    };
    let result = tokio::select! {
        r = drive(args, &model, &swarm) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    swarm.shutdown().await;
    let out = result?;
    if args.json {
        println!("{out}");
    }
    Ok(())
}

/// Waits for the plan, generates, and prints (or returns the JSON object).
async fn drive(args: &DemoArgs, model: &DemoModel, swarm: &LocalSwarm) -> anyhow::Result<Value> {
    let plan = swarm.wait_plan(args.nodes, 0, PLAN_TIMEOUT).await?;
    swarm.wait_ready(&plan, PLAN_TIMEOUT).await?;
    if !args.json {
        let name = shoal_model::Manifest::load(model.dir()).map_or_else(
            |_| "?".to_string(),
            |m| format!("{} ({}, {} layers)", m.name, m.dtype, m.dims.layers),
        );
        let what = match model {
            DemoModel::Synth(_) => " [built-in, random weights]",
            DemoModel::Gemma(_) | DemoModel::Given(_) => "",
        };
        println!("model: {name}{what} from {}", model.dir().display());
        print_plan(&plan, swarm);
    }
    let before = metrics_by_node(swarm).await;
    let default_prompt = match (args.chat, model) {
        (true, _) => DEFAULT_CHAT,
        (false, DemoModel::Synth(_)) => DEFAULT_PROMPT,
        (false, _) => DEFAULT_REAL_PROMPT,
    };
    let prompt = match &args.prompt_ids {
        Some(ids) => json!(ids),
        None => json!(args.prompt.as_deref().unwrap_or(default_prompt)),
    };
    let temperature = if args.greedy { 0.0 } else { 0.8 };
    let mut body = json!({
        "max_tokens": args.max_tokens, "temperature": temperature,
        "top_p": if args.greedy { 1.0 } else { 0.95 }, "seed": 0,
    });
    let path = if args.chat {
        body["messages"] = json!([{"role": "user", "content": prompt}]);
        "/v1/chat/completions"
    } else {
        body["prompt"] = prompt.clone();
        "/v1/completions"
    };
    let (status, answer) = swarm.post_json(0, path, &body).await?;
    if status != 200 {
        bail!("generation failed ({status}): {answer}");
    }
    let after = metrics_by_node(swarm).await;
    let stages = stage_timings(&plan, swarm, &before, &after);
    let shoal = &answer["shoal"];
    let choice = &answer["choices"][0];
    let text = choice["text"]
        .as_str()
        .or_else(|| choice["message"]["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let out = json!({
        "plan": plan,
        "text": text,
        "token_ids": shoal["token_ids"],
        "tokens_per_s": shoal["tokens_per_s"],
        "elapsed_s": shoal["elapsed_s"],
        "prefill_s": shoal["prefill_s"],
        "stages": stages,
        "nodes": swarm.nodes.iter().map(|n| json!({"id": n.id, "api": n.api, "pid": n.pid()})).collect::<Vec<_>>(),
    });
    if !args.json {
        print_result(&out, &prompt);
    }
    Ok(out)
}

fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(8)..]
}

fn print_plan(plan: &Value, swarm: &LocalSwarm) {
    println!(
        "plan: epoch {}, objective {}, strategy {}, predicted {:.3} ms/token, {} stages",
        plan["epoch"],
        plan["objective"].as_str().unwrap_or("?"),
        plan["strategy"].as_str().unwrap_or("?"),
        plan["cost_s"].as_f64().unwrap_or(0.0) * 1e3,
        plan["stages"].as_array().map_or(0, Vec::len)
    );
    println!("  stage  device     layers     process");
    for (i, s) in plan["stages"].as_array().into_iter().flatten().enumerate() {
        let dev = s["device"].as_str().unwrap_or_default();
        let proc_ = swarm.index_of(dev).map_or("?".into(), |k| {
            let origin = if k == 0 { " (origin, API)" } else { "" };
            format!("node{k} pid {}{origin}", swarm.nodes[k].pid().unwrap_or(0))
        });
        println!(
            "  {:<6} {:<10} {:<10} {}",
            i,
            short(dev),
            format!("[{}, {})", s["layers"][0], s["layers"][1]),
            proc_
        );
    }
}

fn print_result(out: &Value, prompt: &Value) {
    println!("prompt: {prompt}");
    println!("text:   {:?}", out["text"].as_str().unwrap_or_default());
    let n = out["token_ids"].as_array().map_or(0, Vec::len);
    println!(
        "{n} tokens in {:.3} s: {:.1} tokens/s (prefill {:.1} ms)",
        out["elapsed_s"].as_f64().unwrap_or(0.0),
        out["tokens_per_s"].as_f64().unwrap_or(0.0),
        out["prefill_s"].as_f64().unwrap_or(0.0) * 1e3
    );
    println!("per-stage compute:");
    for s in out["stages"].as_array().into_iter().flatten() {
        let hop = s["hop_to_next_ms_per_step"]
            .as_f64()
            .map_or(String::new(), |h| {
                format!(", hop to next stage {h:.3} ms/step")
            });
        println!(
            "  stage {} {:<10} on {}: {:.3} ms/step over {} steps ({:.1} ms total){hop}",
            s["stage"],
            s["layers"].to_string(),
            short(s["device"].as_str().unwrap_or_default()),
            s["compute_ms_per_step"].as_f64().unwrap_or(0.0),
            s["steps"],
            s["compute_s"].as_f64().unwrap_or(0.0) * 1e3
        );
    }
}

/// Each node's `/metrics` text.
async fn metrics_by_node(swarm: &LocalSwarm) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..swarm.nodes.len() {
        out.push(swarm.get_text(i, "/metrics").await.unwrap_or_default());
    }
    out
}

/// The value of the sample line that starts with `key` (0 when absent).
fn sample(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Per-stage timings of the generation from the growth of each node's counters: compute per
/// step, and the hop to the next stage (its round trip minus everything the next stage did).
fn stage_timings(
    plan: &Value,
    swarm: &LocalSwarm,
    before: &[String],
    after: &[String],
) -> Vec<Value> {
    let stages: Vec<&Value> = plan["stages"].as_array().into_iter().flatten().collect();
    let node_of = |dev: &str| swarm.index_of(dev);
    let delta = |k: usize, key: &str| sample(&after[k], key) - sample(&before[k], key);
    let mut rows: Vec<(f64, f64, f64)> = Vec::new(); // (compute, steps, downstream)
    for (i, s) in stages.iter().enumerate() {
        let Some(k) = node_of(s["device"].as_str().unwrap_or_default()) else {
            rows.push((0.0, 0.0, 0.0));
            continue;
        };
        let labels = format!(
            "{{stage=\"{i}\",layers=\"{}-{}\"}} ",
            s["layers"][0], s["layers"][1]
        );
        let compute = delta(k, &format!("shoal_stage_compute_seconds_sum{labels}"));
        let steps = delta(k, &format!("shoal_stage_compute_seconds_count{labels}"));
        let next = stages
            .get(i + 1)
            .and_then(|n| n["device"].as_str())
            .unwrap_or_default();
        let short = &next[next.len().saturating_sub(8)..];
        let downstream = delta(
            k,
            &format!("shoal_downstream_seconds_sum{{to=\"{short}\"}} "),
        );
        rows.push((compute, steps, downstream));
    }
    let per_step = |x: f64, n: f64| if n > 0.0 { x * 1e3 / n } else { 0.0 };
    let mut out = Vec::new();
    for (i, s) in stages.iter().enumerate() {
        let (compute, steps, downstream) = rows[i];
        let hop = rows.get(i + 1).map(|(c, _, d)| downstream - c - d);
        out.push(json!({
            "stage": i, "device": s["device"], "layers": s["layers"], "compute_s": compute,
            "steps": steps as u64, "compute_ms_per_step": per_step(compute, steps),
            "hop_to_next_ms_per_step": hop.map(|h| per_step(h, steps)),
        }));
    }
    out
}
