//! `shoal bench concurrent`: aggregate decode throughput of a loopback swarm under 1, 4, 8,
//! 16 (`--levels`) concurrent streaming requests, with the per-token latency each stream sees
//! (p50, p95) and whether every stream got exactly the tokens of its prompt run alone.
//!
//! Each level sends that many greedy streaming completions at once, each with its own prompt,
//! to node 0; aggregate tokens/s is every stream's tokens over the wall time from the first
//! request to the last stream's end. A stream's per-token latency is the gap between its
//! consecutive token events (the first token, which carries the prefill, is left out).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde_json::{Value, json};
use shoal_node::launch::{ApiClient, LocalSwarm};

/// Arguments of `bench concurrent`.
#[derive(Debug, Args)]
pub(crate) struct ConcurrentArgs {
    /// Model directory; absent: the built-in synthesised model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Nodes in the swarm.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Tokens per request.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Concurrent requests per level, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 8, 16])]
    levels: Vec<usize>,
    /// Sessions a stage runs in one model call (`[pipeline] max_batch` of every node; 1: one
    /// at a time).
    #[arg(long, default_value_t = 1)]
    max_batch: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// One level's figures.
struct Level {
    concurrent: usize,
    tokens: usize,
    wall_s: f64,
    p50_ms: f64,
    p95_ms: f64,
    identical: usize,
}

pub(crate) fn run(args: &ConcurrentArgs) -> anyhow::Result<()> {
    if args.tokens < 2 || args.levels.is_empty() || args.levels.contains(&0) {
        bail!("--tokens must be at least 2 and every level at least 1");
    }
    let (dir, model) = super::work_dir("shoal-bench-conc", args.model.as_deref())?;
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(bench(args, &model, &dir.join("swarm"))));
    let _ = std::fs::remove_dir_all(&dir);
    let levels = result?;
    let base = levels[0].tokens as f64 / levels[0].wall_s;
    if args.json {
        let rows: Vec<Value> = levels
            .iter()
            .map(|l| json!({"concurrent": l.concurrent, "tokens": l.tokens, "wall_s": l.wall_s, "tokens_per_s": l.tokens as f64 / l.wall_s, "p50_ms": l.p50_ms, "p95_ms": l.p95_ms, "identical": l.identical}))
            .collect();
        println!(
            "{}",
            json!({"nodes": args.nodes, "max_batch": args.max_batch, "levels": rows})
        );
        return Ok(());
    }
    println!(
        "{:>10} {:>8} {:>12} {:>8} {:>12} {:>12} {:>10}",
        "concurrent", "tokens", "tokens/s", "vs 1", "p50 ms/tok", "p95 ms/tok", "identical"
    );
    for l in &levels {
        let rate = l.tokens as f64 / l.wall_s;
        println!(
            "{:>10} {:>8} {:>12.1} {:>7.2}x {:>12.2} {:>12.2} {:>7}/{:<2}",
            l.concurrent,
            l.tokens,
            rate,
            rate / base,
            l.p50_ms,
            l.p95_ms,
            l.identical,
            l.concurrent
        );
    }
    Ok(())
}

/// The prompt of stream `i` (bytes of a short distinct text; the built-in model's tokens are
/// bytes, and a real model's tokenizer is not needed for ids below its vocabulary).
fn prompt(i: usize) -> Vec<u32> {
    format!("Stream {i} says:").bytes().map(u32::from).collect()
}

async fn bench(
    args: &ConcurrentArgs,
    model: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<Vec<Level>> {
    let extra = format!("[pipeline]\nmax_batch = {}\n", args.max_batch.max(1));
    let swarm = super::super::demo::start_swarm(model, args.nodes, dir, &extra).await?;
    let result = levels(args, &swarm).await;
    swarm.shutdown().await;
    result
}

async fn levels(args: &ConcurrentArgs, swarm: &LocalSwarm) -> anyhow::Result<Vec<Level>> {
    let plan = swarm
        .wait_plan(args.nodes, 0, Duration::from_secs(90))
        .await?;
    swarm.wait_ready(&plan, Duration::from_secs(300)).await?;
    let api = swarm.client();
    let most = args.levels.iter().copied().max().unwrap_or(1);
    // Each prompt alone, first (this also warms every stage up).
    let mut alone = Vec::new();
    for i in 0..most {
        alone.push(stream(&api, i, args.tokens).await?.0);
    }
    let mut out = Vec::new();
    for &c in &args.levels {
        let gaps = Mutex::new(Vec::new());
        let start = Instant::now();
        let runs = futures::future::join_all((0..c).map(|i| {
            let (api, gaps) = (&api, &gaps);
            async move {
                let (tokens, g) = stream(api, i, args.tokens).await?;
                gaps.lock().unwrap_or_else(|e| e.into_inner()).extend(g);
                anyhow::Ok(tokens)
            }
        }))
        .await;
        let wall_s = start.elapsed().as_secs_f64();
        let mut tokens = 0;
        let mut identical = 0;
        for (i, r) in runs.into_iter().enumerate() {
            let t = r?;
            tokens += t.len();
            identical += usize::from(t == alone[i]);
        }
        let mut gaps = gaps.into_inner().unwrap_or_else(|e| e.into_inner());
        gaps.sort_by(f64::total_cmp);
        let q = |f: f64| {
            gaps.get(((gaps.len().max(1) - 1) as f64 * f).round() as usize)
                .map_or(f64::NAN, |g| g * 1e3)
        };
        out.push(Level {
            concurrent: c,
            tokens,
            wall_s,
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            identical,
        });
    }
    Ok(out)
}

/// One greedy streaming completion of prompt `i` at node 0: its token ids and the gaps
/// between consecutive token events after the first, seconds.
async fn stream(api: &ApiClient, i: usize, tokens: usize) -> anyhow::Result<(Vec<u32>, Vec<f64>)> {
    let body = json!({"prompt": prompt(i), "max_tokens": tokens, "temperature": 0, "stream": true});
    let mut ids = Vec::new();
    let mut times = Vec::new();
    let mut error = None;
    let status = api
        .post_sse(0, "/v1/completions", &body, |d| {
            let Ok(v) = serde_json::from_str::<Value>(d) else {
                return;
            };
            if let Some(e) = v.get("error") {
                error = Some(e.to_string());
            }
            let new: Vec<u32> = v["choices"][0]["token_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_u64().map(|t| t as u32))
                .collect();
            if !new.is_empty() {
                times.push(Instant::now());
                ids.extend(new);
            }
        })
        .await?;
    if status != 200 || error.is_some() {
        bail!("stream {i}: HTTP {status} {}", error.unwrap_or_default());
    }
    let gaps = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    Ok((ids, gaps))
}
