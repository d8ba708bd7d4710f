//! One measured run of a swarm on a bed: start the nodes with a forced planner strategy, wait
//! for a settled plan, generate a few times at node 0 and keep the plan's prediction next to
//! the measured per-token latency. Scenarios 3 and 4 are tables of such runs.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::Testbed;
use super::swarm::{self, BedNode, NodeSpec};

/// The prompt every run decodes from (token ids of the synthesised byte-level model).
pub const PROMPT: [u32; 6] = [256, 72, 101, 108, 108, 111];

/// What one run produced.
#[derive(Clone, Debug)]
pub struct Run {
    /// The settled plan (status document's `plan`).
    pub plan: Value,
    /// Node 0's whole status document at that moment (members, links, plan).
    pub status: Value,
    /// Node 0's status document after the generations (its link estimates by then).
    pub after: Value,
    /// The nodes of the run (ids and bed indices).
    pub nodes: Vec<BedNode>,
    /// Bed index of each stage's device.
    pub devices: Vec<Option<usize>>,
    /// The plan's predicted per-token latency (`cost_s`), seconds.
    pub predicted_s: f64,
    /// Measured decode time per token of each generation, seconds.
    pub per_token_s: Vec<f64>,
    /// The token ids of the first generation (greedy, so every run should agree).
    pub tokens: Vec<u64>,
}

impl Run {
    /// Mean measured per-token latency.
    pub fn mean_s(&self) -> f64 {
        self.per_token_s.iter().sum::<f64>() / self.per_token_s.len() as f64
    }

    /// Median measured per-token latency.
    pub fn median_s(&self) -> f64 {
        let mut v = self.per_token_s.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

/// What every run of a scenario shares: the model, each node's memory and, optionally, each
/// node's identity (see [`swarm::secrets_avoiding_coordinator`]).
#[derive(Clone, Copy, Debug)]
pub struct Setup<'a> {
    /// Model directory.
    pub model: &'a Path,
    /// Memory offered by each node, bytes (one entry per node, node 0 first).
    pub memory: &'a [u64],
    /// Secret key of each node, or fresh keys.
    pub secrets: Option<&'a [[u8; 32]]>,
    /// The nodes' `[probe]` settings ([`PROBE_TOML`] unless a test needs others).
    pub probe: &'a str,
}

/// Probe settings for runs: light enough not to load a 2 Mbit/s link much, frequent enough
/// that the coordinator sees every link within seconds.
pub const PROBE_TOML: &str = "[probe]\nping_interval_ms = 500\nbandwidth_interval_ms = 60000\n\
                              bandwidth_bytes = 131072\nloss_rate_hz = 20\nloss_window = 300\n";

/// Starts one node per entry of `memory` on `bed` (node 0 bootstraps the rest), forcing
/// `strategy`; waits for a plan over all of them that stays put for a few seconds; runs one
/// warm-up and `reps` generations of `tokens` tokens at node 0; stops the nodes.
pub fn measure(
    bed: &mut Testbed,
    run: &str,
    setup: &Setup<'_>,
    strategy: &str,
    reps: usize,
    tokens: usize,
) -> Result<Run> {
    let Setup {
        model,
        memory,
        secrets,
        probe,
    } = *setup;
    let specs: Vec<NodeSpec> = memory
        .iter()
        .enumerate()
        .map(|(k, &m)| NodeSpec {
            run: run.to_string(),
            model: model.to_path_buf(),
            memory: m,
            strategy: strategy.to_string(),
            extra: probe.to_string(),
            top: String::new(),
            secret: secrets.and_then(|s| s.get(k).copied()),
        })
        .collect();
    let nodes = swarm::start_swarm(bed, &specs)?;
    let all: Vec<usize> = (0..memory.len()).collect();
    let n = memory.len();
    let result = (|| {
        let doc = swarm::wait_stable_plan(
            bed,
            &all,
            Duration::from_secs(6),
            Duration::from_secs(90),
            |d| {
                d["plan"]["members"]
                    .as_array()
                    .is_some_and(|m| m.len() == n)
            },
        )?;
        let plan = doc["plan"].clone();
        let predicted_s = plan["cost_s"].as_f64().context("plan without cost_s")?;
        swarm::generate(bed, 0, &PROMPT, 4).context("warm-up generation")?;
        let mut per_token_s = Vec::new();
        let mut first = Vec::new();
        for _ in 0..reps {
            let g = swarm::generate(bed, 0, &PROMPT, tokens)?;
            ensure!(
                g.token_ids.len() >= 4,
                "only {} tokens generated",
                g.token_ids.len()
            );
            if first.is_empty() {
                first = g.token_ids.clone();
            }
            per_token_s.push(g.per_token_s());
        }
        let after = swarm::status(bed, 0).context("status after the generations")?;
        Ok(Run {
            devices: swarm::plan_devices(&nodes, &doc),
            plan,
            status: doc.clone(),
            after,
            nodes: nodes.clone(),
            predicted_s,
            per_token_s,
            tokens: first,
        })
    })();
    swarm::stop_swarm(bed, &nodes);
    result
}
