//! Load and faults at once (issue 16's soak): real `shoal run` processes on loopback, 16
//! streaming clients sending greedy completions to node 0 for `SHOAL_SOAK_SECS` seconds (60 by
//! default; CI runs the default), while a stage is killed (`kill -9`), another stage is frozen
//! (SIGSTOP, SIGCONT ten seconds later of a 60 s run) and a new node joins.
//!
//! Every request must either complete with exactly the tokens of an undisturbed run of its
//! prompt or end with an error that names its cause; none may take longer than
//! [`REQUEST_BOUND`]; no process may grow past its resident size after warm-up by more than
//! [`RSS_GROWTH_BOUND`]. Prints the outcome table and the resident sizes over time.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use shoal_node::launch::{self, ApiClient, LaunchOptions, LocalSwarm};

/// Concurrent streaming clients.
const CLIENTS: usize = 16;
/// Tokens per request.
const MAX_TOKENS: usize = 24;
/// Longest a request may take, from sending it to the end of its stream.
const REQUEST_BOUND: Duration = Duration::from_secs(60);
/// How much a process may grow past its resident size after warm-up.
const RSS_GROWTH_BOUND: u64 = 96 << 20;
/// How often resident sizes are sampled.
const RSS_EVERY: Duration = Duration::from_secs(2);

/// How one request ended.
#[derive(Debug)]
enum Outcome {
    /// Completed with the tokens of the undisturbed run.
    Identical,
    /// Completed with other tokens: a failure of the test.
    Differs { got: Vec<u32>, want: Vec<u32> },
    /// Ended with an error message (HTTP status or an error event).
    Error(String),
    /// Still running after [`REQUEST_BOUND`]: a failure of the test.
    Hung,
}

#[derive(Debug)]
struct Record {
    prompt: usize,
    latency: Duration,
    outcome: Outcome,
}

/// Prompt `i`: distinct short texts, as bytes (the built-in model's tokens are bytes).
fn prompt(i: usize) -> Vec<u32> {
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    format!("{} {} {i}:", words[i % 8], words[(i * 3 + 1) % 8])
        .bytes()
        .map(u32::from)
        .collect()
}

fn secs() -> u64 {
    std::env::var("SHOAL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
        .max(20)
}

/// Resident set size of `pid` in bytes, while it runs.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb << 10)
}

/// One streamed greedy request of prompt `p` to node 0.
async fn one_request(api: &ApiClient, p: usize, want: &[u32]) -> Record {
    let start = Instant::now();
    let mut tokens: Vec<u32> = Vec::new();
    let mut error: Option<String> = None;
    let body = greedy_request(&prompt(p), MAX_TOKENS, true);
    let streamed = api.post_sse(0, "/v1/completions", &body, |d| {
        if d == "[DONE]" {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(d) else {
            error = Some(format!("unparsable event {d:?}"));
            return;
        };
        if let Some(e) = v.get("error") {
            error = Some(e["message"].as_str().unwrap_or("").to_string());
            return;
        }
        for t in v["choices"][0]["token_ids"]
            .as_array()
            .into_iter()
            .flatten()
        {
            tokens.push(t.as_u64().unwrap() as u32);
        }
    });
    let outcome = match tokio::time::timeout(REQUEST_BOUND, streamed).await {
        Err(_) => Outcome::Hung,
        Ok(Err(e)) => Outcome::Error(format!("transport: {e}")),
        Ok(Ok(200)) => match error {
            Some(e) => Outcome::Error(e),
            None if tokens == want => Outcome::Identical,
            None => Outcome::Differs {
                got: tokens,
                want: want.to_vec(),
            },
        },
        Ok(Ok(status)) => Outcome::Error(format!(
            "HTTP {status}: {}",
            error.unwrap_or_else(|| "(no message)".into())
        )),
    };
    Record {
        prompt: p,
        latency: start.elapsed(),
        outcome,
    }
}

/// Client `c`: requests one after the other until `deadline`, cycling through the prompts.
async fn client(
    api: ApiClient,
    c: usize,
    want: &[Vec<u32>],
    deadline: Instant,
    out: &Mutex<Vec<Record>>,
) {
    let mut k = 0;
    while Instant::now() < deadline {
        let p = (c + k) % want.len();
        let r = one_request(&api, p, &want[p]).await;
        out.lock().unwrap().push(r);
        k += 1;
    }
}

fn stage_devices(swarm: &LocalSwarm, status: &Value) -> Vec<usize> {
    status["plan"]["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["device"].as_str().and_then(|d| swarm.index_of(d)))
        .collect()
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_streams_through_a_kill_a_freeze_and_a_join() {
    let total = Duration::from_secs(secs());
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    // Any two nodes hold the model, no single one does: after the kill and during the
    // freeze, two live nodes remain.
    let fraction = shoal_node::config::Config::default()
        .planner
        .memory_fraction;
    let budget = launch::spanning_budget(&model, 2, fraction).unwrap();
    let opts = LaunchOptions {
        bin: shoal_bin(),
        dir: dir.path().join("swarm"),
        model: model.clone(),
        memory: vec![budget; 4],
        log: std::env::var("SHOAL_LOG").unwrap_or_else(|_| "info".into()),
        extra_config: String::new(),
        ..Default::default()
    };
    let mut swarm = LocalSwarm::start(&opts).await.unwrap();
    let plan = match swarm.wait_plan(2, 0, PLAN_TIMEOUT).await {
        Ok(p) => p,
        Err(e) => {
            dump_logs(&swarm);
            panic!("{e}");
        }
    };
    swarm.wait_ready(&plan, PLAN_TIMEOUT).await.unwrap();

    // The undisturbed tokens of every prompt.
    let api = swarm.client();
    let mut want = Vec::new();
    for p in 0..CLIENTS {
        let (status, v) = api
            .post_json(
                0,
                "/v1/completions",
                &greedy_request(&prompt(p), MAX_TOKENS, false),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{v}");
        want.push(token_ids(&v));
    }
    let warm: Vec<Option<u64>> = swarm.nodes.iter().map(|n| n.pid().and_then(rss)).collect();

    let start = Instant::now();
    let deadline = start + total;
    let records = Mutex::new(Vec::new());
    let clients = futures::future::join_all(
        (0..CLIENTS).map(|c| client(api.clone(), c, &want, deadline, &records)),
    );
    // The faults, at fixed fractions of the run, and the resident sizes every RSS_EVERY.
    let faults = async {
        let mut events: Vec<String> = Vec::new();
        let mut samples: Vec<(Duration, Vec<Option<u64>>)> = Vec::new();
        let at = |f: f64| start + total.mul_f64(f);
        let (mut killed, mut frozen, mut thawed, mut joined) = (None, None, false, None);
        let mut next_sample = start;
        while Instant::now() < deadline {
            let now = Instant::now();
            if now >= next_sample {
                samples.push((
                    now - start,
                    swarm.nodes.iter().map(|n| n.pid().and_then(rss)).collect(),
                ));
                next_sample += RSS_EVERY;
            }
            let status = swarm.get_json(0, "/v1/status").await.unwrap_or(Value::Null);
            let stages = stage_devices(&swarm, &status);
            if killed.is_none() && now >= at(0.2) {
                let v = stages.iter().copied().find(|&d| d != 0).unwrap_or(1);
                swarm.kill(v).await.unwrap();
                events.push(format!(
                    "{:>5.1} s  kill -9 node {v} (stages on {stages:?})",
                    (now - start).as_secs_f64()
                ));
                killed = Some(v);
            } else if frozen.is_none() && killed.is_some() && now >= at(0.4) {
                let v = stages
                    .iter()
                    .copied()
                    .find(|&d| d != 0 && Some(d) != killed)
                    .or_else(|| (1..4).find(|&d| Some(d) != killed))
                    .unwrap();
                signal(swarm.nodes[v].pid().unwrap(), "-STOP");
                events.push(format!(
                    "{:>5.1} s  SIGSTOP node {v} (stages on {stages:?})",
                    (now - start).as_secs_f64()
                ));
                frozen = Some(v);
            } else if let (Some(v), false) = (frozen, thawed)
                && now >= at(0.4) + Duration::from_secs(10).min(total.mul_f64(0.15))
            {
                signal(swarm.nodes[v].pid().unwrap(), "-CONT");
                events.push(format!(
                    "{:>5.1} s  SIGCONT node {v}",
                    (now - start).as_secs_f64()
                ));
                thawed = true;
            } else if joined.is_none() && thawed && now >= at(0.65) {
                let j = swarm.join(&opts, budget).await.unwrap();
                events.push(format!(
                    "{:>5.1} s  node {j} joined (stages on {stages:?})",
                    (now - start).as_secs_f64()
                ));
                joined = Some(j);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (events, samples, joined)
    };
    let (_, (events, mut samples, joined)) = tokio::join!(clients, faults);
    let ran = start.elapsed();
    samples.push((
        ran,
        swarm.nodes.iter().map(|n| n.pid().and_then(rss)).collect(),
    ));
    let records = records.into_inner().unwrap();

    // After the storm, the swarm still answers every prompt with its undisturbed tokens.
    let final_plan = swarm.wait_plan(2, 0, PLAN_TIMEOUT).await;
    let mut after = 0;
    for (p, w) in want.iter().enumerate().take(4) {
        let r = one_request(&api, p, w).await;
        after += usize::from(matches!(r.outcome, Outcome::Identical));
    }
    let metrics = api_metrics(&swarm).await;
    let failovers = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_failovers_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);

    // The table.
    let identical = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Identical))
        .count();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        if let Outcome::Error(e) = &r.outcome {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }
    let n_errors: usize = errors.values().sum();
    let mut lat: Vec<Duration> = records.iter().map(|r| r.latency).collect();
    lat.sort();
    println!(
        "\nsoak: {CLIENTS} streaming clients, {MAX_TOKENS} greedy tokens each, {ran:.1?} on 4 nodes (+1 joined)"
    );
    for e in &events {
        println!("  {e}");
    }
    println!(
        "\n| requests | completed identical | failed with error | p50 latency | p95 latency | failovers |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {identical} | {n_errors} | {:.2} s | {:.2} s | {failovers} |",
        records.len(),
        percentile(&lat, 0.5).as_secs_f64(),
        percentile(&lat, 0.95).as_secs_f64(),
    );
    for (e, n) in &errors {
        println!("  error x{n}: {e}");
    }
    println!("\nresident MB over time (node: columns; - = not running):");
    println!(
        "| t s | {} |",
        (0..swarm.nodes.len())
            .map(|i| format!("node {i}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    for (t, row) in samples.iter().step_by(3).chain(samples.last()) {
        let cells: Vec<String> = (0..swarm.nodes.len())
            .map(|i| {
                row.get(i)
                    .copied()
                    .flatten()
                    .map_or("-".into(), |b| format!("{}", b >> 20))
            })
            .collect();
        println!("| {:.0} | {} |", t.as_secs_f64(), cells.join(" | "));
    }

    // The checks.
    let bad: Vec<&Record> = records
        .iter()
        .filter(|r| {
            matches!(r.outcome, Outcome::Hung | Outcome::Differs { .. })
                || matches!(&r.outcome, Outcome::Error(e) if e.trim().is_empty())
        })
        .collect();
    if !bad.is_empty() || identical * 2 < records.len() || after < 4 || final_plan.is_err() {
        dump_logs(&swarm);
    }
    let described: Vec<String> = bad
        .iter()
        .take(4)
        .map(|r| match &r.outcome {
            Outcome::Differs { got, want } => {
                format!("prompt {}: got {got:?}, want {want:?}", r.prompt)
            }
            o => format!("prompt {}: {o:?} after {:.1?}", r.prompt, r.latency),
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} requests hung, gave other tokens or failed without a cause: {described:?}",
        bad.len()
    );
    assert!(
        identical * 2 >= records.len(),
        "only {identical} of {} requests completed",
        records.len()
    );
    assert!(
        records.iter().any(|r| r.prompt == 0) && records.len() >= CLIENTS * 2,
        "too few requests: {}",
        records.len()
    );
    assert!(failovers >= 1.0, "the kill caused no failover");
    assert!(joined.is_some(), "the new node never joined");
    final_plan.unwrap();
    assert_eq!(
        after, 4,
        "the swarm no longer answers with the undisturbed tokens"
    );
    // Memory: the last sample of every process still running against its size after warm-up
    // (a joined node: its first sample).
    let last = &samples.last().unwrap().1;
    for (i, now) in last.iter().enumerate() {
        let Some(now) = *now else { continue };
        let base = warm.get(i).copied().flatten().or_else(|| {
            samples
                .iter()
                .find_map(|(_, row)| row.get(i).copied().flatten())
        });
        let base = base.unwrap_or(now);
        assert!(
            now <= base + RSS_GROWTH_BOUND,
            "node {i} grew from {} MB to {} MB",
            base >> 20,
            now >> 20
        );
    }
    swarm.shutdown().await;
}

async fn api_metrics(swarm: &LocalSwarm) -> String {
    swarm.get_text(0, "/metrics").await.unwrap_or_default()
}
