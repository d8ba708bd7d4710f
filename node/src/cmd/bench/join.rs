//! `shoal bench join`: how long a new device takes from `shoal run --join TOKEN` to serving a
//! stage when it fetches its layers from the swarm, against the way without fetching: copying
//! the whole model folder to the device first and joining with `--model`.
//!
//! One node holds the model and offers memory for about half of it; the new device offers the
//! same. Each way starts a new device (its own data folder) with the member's invite and
//! times, from the moment its process is started (for the copy: from the start of the copy),
//! until a plan puts a stage on it and its `/metrics` reports that stage loaded. The copy is a
//! local file copy, the most favourable case for it (a phone receives the folder over Wi-Fi or
//! USB); the fetch goes over loopback TCP through the swarm, paced to its link share. The
//! device is stopped between the ways; the order alternates over `--rounds`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use shoal_node::launch::{self, LaunchOptions, LocalSwarm};

/// How long one way may take.
const WAY_TIMEOUT: Duration = Duration::from_secs(600);

/// Arguments of `bench join`.
#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// Model directory; absent: the built-in synthesised model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Rounds (each times both ways, alternating which goes first).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// One timed join.
struct Way {
    name: &'static str,
    seconds: f64,
    copy_s: f64,
    bytes: u64,
    layers: String,
}

pub(crate) fn run(args: &JoinArgs) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let (dir, model) = super::work_dir("shoal-bench-join", args.model.as_deref())?;
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(bench(args, &model, &dir)));
    let _ = std::fs::remove_dir_all(&dir);
    let (ways, model_bytes) = result?;
    let mean = |name: &str| {
        let v: Vec<f64> = ways
            .iter()
            .filter(|w| w.name == name)
            .map(|w| w.seconds)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let ratio = mean("copy") / mean("fetch");
    if args.json {
        let rows: Vec<Value> = ways
            .iter()
            .map(|w| json!({"way": w.name, "seconds": w.seconds, "copy_s": w.copy_s, "bytes": w.bytes, "layers": w.layers}))
            .collect();
        println!(
            "{}",
            json!({"model_bytes": model_bytes, "rows": rows, "copy_over_fetch": ratio})
        );
        return Ok(());
    }
    println!("model folder: {:.1} MB", model_bytes as f64 / 1e6);
    println!(
        "{:<6} {:>10} {:>9} {:>12}  stage layers",
        "way", "to stage s", "copy s", "bytes moved"
    );
    for w in &ways {
        println!(
            "{:<6} {:>10.2} {:>9.2} {:>12}  {}",
            w.name, w.seconds, w.copy_s, w.bytes, w.layers
        );
    }
    println!(
        "mean: fetch {:.2} s, copy then join {:.2} s: copying takes {ratio:.2}x as long",
        mean("fetch"),
        mean("copy")
    );
    Ok(())
}

async fn bench(args: &JoinArgs, model: &Path, dir: &Path) -> anyhow::Result<(Vec<Way>, u64)> {
    let fraction = shoal_node::config::Config::default()
        .planner
        .memory_fraction;
    let budget = launch::spanning_budget(model, 2, fraction)?;
    let opts = LaunchOptions {
        bin: std::env::current_exe()?,
        dir: dir.join("swarm"),
        model: model.to_path_buf(),
        memory: vec![budget],
        log: "info".into(),
        ..Default::default()
    };
    let mut swarm = LocalSwarm::start(&opts).await?;
    let result = ways(args, &mut swarm, &opts, budget, dir).await;
    swarm.shutdown().await;
    Ok((result?, folder_bytes(model)?))
}

async fn ways(
    args: &JoinArgs,
    swarm: &mut LocalSwarm,
    opts: &LaunchOptions,
    budget: u64,
    dir: &Path,
) -> anyhow::Result<Vec<Way>> {
    let (status, invite) = swarm
        .post_json(0, "/v1/invite", &json!({"ttl_s": 3600}))
        .await?;
    if status != 200 {
        bail!("invite: HTTP {status}: {invite}");
    }
    let token = invite["token"].as_str().context("no token")?.to_string();
    let mut out = Vec::new();
    for round in 0..args.rounds {
        let order: [&'static str; 2] = if round % 2 == 0 {
            ["fetch", "copy"]
        } else {
            ["copy", "fetch"]
        };
        for name in order {
            let t0 = Instant::now();
            let (device, copy_s) = if name == "copy" {
                let to = dir.join(format!("copy{round}"));
                copy_dir(&opts.model, &to)?;
                let copy_s = t0.elapsed().as_secs_f64();
                let with = LaunchOptions {
                    model: to,
                    ..opts.clone()
                };
                (swarm.join_by_invite(&with, budget, &token).await?, copy_s)
            } else {
                let bare = LaunchOptions {
                    model: PathBuf::new(),
                    ..opts.clone()
                };
                (swarm.join_by_invite(&bare, budget, &token).await?, 0.0)
            };
            let layers = serving(swarm, device, t0).await?;
            let seconds = t0.elapsed().as_secs_f64();
            let st = swarm.get_json(device, "/v1/status").await?;
            let bytes = if name == "copy" {
                folder_bytes(&opts.model)?
            } else {
                // The manifest and tokenizer at start, plus the stage's layers.
                let fetched = st["fetch"]["bytes"].as_u64().unwrap_or(0);
                let dirs = std::fs::read_dir(opts.dir.join(format!("node{device}/data/models")))?;
                let mut common = 0;
                for d in dirs {
                    let d = d?.path();
                    for f in ["manifest.json", "tokenizer.json", "tokenizer_config.json"] {
                        common += std::fs::metadata(d.join(f)).map_or(0, |m| m.len());
                    }
                }
                fetched + common
            };
            out.push(Way {
                name,
                seconds,
                copy_s,
                bytes,
                layers,
            });
            swarm.kill(device).await?;
            // Let the swarm notice the departure before the next device comes.
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
    }
    Ok(out)
}

/// Waits until a plan gives node `device` a stage and the node reports it loaded; returns the
/// stage's layers.
async fn serving(swarm: &LocalSwarm, device: usize, t0: Instant) -> anyhow::Result<String> {
    let id = swarm.nodes[device].id.clone();
    loop {
        let st = swarm.get_json(device, "/v1/status").await?;
        let epoch = st["plan"]["epoch"].as_u64().unwrap_or(0);
        let stage = st["plan"]["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["device"] == id.as_str());
        if let Some(s) = stage {
            let text = swarm.get_text(device, "/metrics").await?;
            let loaded = text
                .lines()
                .find_map(|l| l.strip_prefix("shoal_stage_loaded_epoch "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            if loaded >= epoch as f64 && epoch > 0 {
                return Ok(format!("{}", s["layers"]));
            }
        }
        if t0.elapsed() > WAY_TIMEOUT {
            bail!(
                "node{device} serves no stage after {WAY_TIMEOUT:?} (log {})",
                swarm.nodes[device].log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let p = e?.path();
        let dest = to.join(p.file_name().context("file name")?);
        if p.is_dir() {
            copy_dir(&p, &dest)?;
        } else {
            std::fs::copy(&p, &dest)?;
        }
    }
    Ok(())
}

fn folder_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        n += if p.is_dir() {
            folder_bytes(&p)?
        } else {
            std::fs::metadata(&p)?.len()
        };
    }
    Ok(n)
}
