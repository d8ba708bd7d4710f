//! Helpers shared by the swarm tests: a synthesised model, fast test configs, and in-process
//! nodes with fixed identities.

// Test harness: each test file uses a subset; a failed setup step should panic loudly.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::field_reassign_with_default
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_keys::{Identity, NodeId};
use shoal_node::config::Config;
use shoal_node::start::{Node, Running};
use shoal_node::view::View;
use tokio_util::sync::CancellationToken;

/// Writes the default synthesised model (6 decoder layers, hidden 128) into `dir/model`.
pub(crate) fn synth_model(dir: &Path) -> PathBuf {
    let out = dir.join("model");
    shoal_model::synth::synth(&shoal_model::synth::SynthOptions::default(), &out, false)
        .expect("synthesise the test model");
    out
}

/// A config with timings scaled down for tests: liveness 3 s, announcements every 300 ms,
/// TCP on loopback only, no mDNS, no API.
pub(crate) fn fast_config(dir: &Path, model: Option<PathBuf>) -> Config {
    let mut c = Config::default();
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    c.data_dir = dir.join("data");
    c.key_file = dir.join("node.key");
    c.model = model;
    c.api = None;
    c.mdns = false;
    c.quic = false;
    c.memory_offered = Some(1 << 30);
    c.probe.udp_echo = "127.0.0.1:0".parse().unwrap();
    c.probe.ping_interval_ms = 300;
    c.probe.loss_rate_hz = 20;
    c.probe.loss_timeout_ms = 500;
    c.membership.liveness_timeout_ms = 3000;
    c.membership.announce_interval_ms = 300;
    c.membership.settle_ms = 1000;
    c.planner.republish_interval_ms = 1000;
    c
}

/// The identity of test node `i` (fixed seed, so runs are reproducible).
pub(crate) fn identity(i: usize) -> Identity {
    let mut seed = [0u8; 32];
    seed[0] = 0x5e;
    seed[1] = u8::try_from(i).unwrap();
    Identity::from_secret_bytes(seed)
}

/// Starts `n` nodes in this process; node 0 is the only bootstrap address of the others.
pub(crate) async fn start_swarm(
    root: &Path,
    n: usize,
    model: &Path,
) -> Vec<(Running, CancellationToken)> {
    let mut nodes = Vec::new();
    let mut bootstrap: Option<String> = None;
    for i in 0..n {
        let dir = root.join(format!("node{i}"));
        let mut cfg = fast_config(&dir, Some(model.to_path_buf()));
        cfg.bootstrap.extend(bootstrap.clone());
        let cancel = CancellationToken::new();
        let node = Node::start_with_identity(cfg, identity(i), cancel.clone())
            .await
            .expect("start node");
        if bootstrap.is_none() {
            bootstrap = Some(node.listen_addrs()[0].to_string());
        }
        nodes.push((node, cancel));
    }
    nodes
}

/// Waits until every node's view satisfies `pred`; panics with the views after `timeout`.
pub(crate) async fn wait_all(
    nodes: &[&Running],
    timeout: Duration,
    what: &str,
    pred: impl Fn(&View) -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if nodes.iter().all(|n| pred(&n.snapshot())) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let views: Vec<String> = nodes
                .iter()
                .map(|n| {
                    let v = n.snapshot();
                    format!(
                        "{}: members {} epoch {} plan members {:?} refused {:?}",
                        v.local.short(),
                        v.members.len(),
                        v.epoch(),
                        v.plan().map(|p| p.members.len()),
                        v.refused
                    )
                })
                .collect();
            panic!("timed out waiting for {what}:\n{}", views.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (epoch, coordinator, stages as (node, start, end)).
pub(crate) type PlanKey = (u64, NodeId, Vec<(NodeId, u32, u32)>);

/// What identifies a view's plan.
pub(crate) fn plan_key(v: &View) -> Option<PlanKey> {
    let p = v.plan()?;
    Some((
        p.epoch,
        p.coordinator,
        p.stages.iter().map(|s| (s.node, s.start, s.end)).collect(),
    ))
}
