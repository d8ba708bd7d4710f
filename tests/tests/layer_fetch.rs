//! Devices that join with nothing but an invite: one `shoal run` process holds the model and
//! too little memory to serve it alone; two more start with `--join TOKEN` and no model. They
//! fetch the manifest and tokenizer from the swarm, announce that they hold no layers, are
//! given stages by a plan that charges the transfer, fetch exactly the files of their stages
//! (verified by sha256), load them, and the greedy tokens from every origin equal the
//! one-process run. The first node was given no swarm key: it made the swarm private, and the
//! invite carries the key it generated.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use shoal_node::launch::{self, LaunchOptions, LocalSwarm};

const PROMPT: [u32; 4] = [5, 9, 13, 2];
const MAX_TOKENS: usize = 12;

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

/// The model folder a joiner fetched into (`<data_dir>/models/<name>-<sha>`).
fn fetched_dir(swarm_dir: &Path, node: usize) -> PathBuf {
    let models = swarm_dir.join(format!("node{node}/data/models"));
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&models)
        .unwrap_or_else(|e| panic!("{}: {e}", models.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

/// Waits until node `i` reports a finished fetch; returns its `fetch` status.
async fn fetched(swarm: &LocalSwarm, i: usize, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let st = swarm.get_json(i, "/v1/status").await.unwrap();
        match st["fetch"]["state"].as_str() {
            Some("done") => return st["fetch"].clone(),
            Some("failed") => {
                dump_logs(swarm);
                panic!("node{i}'s fetch failed: {}", st["fetch"]);
            }
            _ => {}
        }
        if start.elapsed() > timeout {
            dump_logs(swarm);
            panic!("node{i} fetched nothing in {timeout:?}: {}", st["fetch"]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_with_no_model_join_by_invite_fetch_their_layers_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let manifest = shoal_model::Manifest::load(&model).unwrap();
    let reference = reference_tokens(&model, &PROMPT, MAX_TOKENS);
    // Three nodes are needed to hold the model; the first alone has it on disk.
    let budget = launch::spanning_budget(&model, 3, memory_fraction()).unwrap();
    // No key given and not public: the first node makes the swarm private.
    let opts = LaunchOptions {
        top_config: "public = false".into(),
        ..launch_options(dir.path(), &model, vec![budget])
    };
    let mut swarm = LocalSwarm::start(&opts).await.unwrap();
    let generated = opts.dir.join("node0/data/swarm.key");
    let key = shoal_node::invite::read_swarm_key(&generated).unwrap();
    let out = Command::new(shoal_bin())
        .args(["invite", "--api", &swarm.nodes[0].api, "--ttl", "600"])
        .env_remove("SHOAL_API_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let inv = shoal_node::invite::read(&token, shoal_node::invite::now_unix_s()).unwrap();
    assert_eq!(
        inv.swarm_key,
        Some(key),
        "the invite carries the generated key"
    );

    // The page's invite: the same token kind, with its QR code drawn by the node.
    let (code, page_invite) = swarm
        .post_json(0, "/v1/invite", &serde_json::json!({"ttl_s": 600}))
        .await
        .unwrap();
    assert_eq!(code, 200, "{page_invite}");
    let svg = page_invite["qr_svg"].as_str().unwrap();
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");
    let page = swarm.get_text(0, "/").await.unwrap();
    assert!(page.contains("invite-qr"), "the page has no invite");

    let bare = LaunchOptions {
        model: PathBuf::new(),
        ..opts.clone()
    };
    let b = swarm.join_by_invite(&bare, budget, &token).await.unwrap();
    let c = swarm.join_by_invite(&bare, budget, &token).await.unwrap();
    let plan = match swarm.wait_plan(3, 0, PLAN_TIMEOUT).await {
        Ok(p) => p,
        Err(e) => {
            dump_logs(&swarm);
            panic!("{e}");
        }
    };
    let stages = plan["stages"].as_array().unwrap();
    for i in [b, c] {
        let report = fetched(&swarm, i, Duration::from_secs(60)).await;
        let id = &swarm.nodes[i].id;
        let stage = stages
            .iter()
            .find(|s| s["device"] == id.as_str())
            .unwrap_or_else(|| panic!("node{i} has no stage in {plan}"));
        let (a, z) = (
            stage["layers"][0].as_u64().unwrap() as usize,
            stage["layers"][1].as_u64().unwrap() as usize,
        );
        // Exactly the stage's files, the manifest and the tokenizer: nothing else, no leftovers.
        let mut want: BTreeSet<String> = manifest.layers[a..z]
            .iter()
            .flat_map(|l| l.files.clone())
            .collect();
        want.insert("manifest.json".into());
        want.extend(manifest.tokenizer.clone());
        want.extend(manifest.tokenizer_config.clone());
        let got_dir = fetched_dir(&opts.dir, i);
        assert_eq!(
            files_under(&got_dir),
            want,
            "node{i} holds layers [{a}, {z})"
        );
        // Every fetched file is the original, byte for byte.
        for f in &want {
            assert_eq!(
                std::fs::read(got_dir.join(f)).unwrap(),
                std::fs::read(model.join(f)).unwrap(),
                "{f}"
            );
        }
        eprintln!("node{i}: layers [{a}, {z}), fetch {report}");
        assert!(report["bytes"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["rejected"], 0, "{report}");
    }
    for origin in [0, b, c] {
        let ids = greedy_tokens(&swarm, origin, &PROMPT, MAX_TOKENS).await;
        assert_eq!(ids, reference, "origin node{origin}");
    }
    swarm.shutdown().await;
}
