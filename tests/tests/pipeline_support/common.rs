//! Shared helpers of the pipeline and demo tests (included with `#[path]`): the `shoal`
//! binary, a synthesised model, a local swarm of real processes, and the single-process
//! reference generation.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use shoal_node::launch::{self, LaunchOptions, LocalSwarm};

/// How long a test waits for a plan.
pub(crate) const PLAN_TIMEOUT: Duration = Duration::from_secs(60);

/// The `shoal` binary: `SHOAL_BIN` (scripts/test.sh sets it), else a built one in target/,
/// else built now.
pub(crate) fn shoal_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHOAL_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["debug", "release"] {
        let p = root.join("target").join(profile).join("shoal");
        if p.exists() {
            return p;
        }
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "-p", "shoal-node", "--bin", "shoal"])
        .current_dir(&root)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building shoal failed");
    root.join("target/debug/shoal")
}

/// The built-in model of `shoal demo` (default synth options) in `dir/model`.
pub(crate) fn synth_model(dir: &Path) -> PathBuf {
    let out = dir.join("model");
    shoal_model::synth::synth(&shoal_model::synth::SynthOptions::default(), &out, false)
        .expect("synth");
    out
}

/// `n` nodes whose memory forces the model over `span` of them.
pub(crate) async fn start_swarm(dir: &Path, model: &Path, n: usize, span: usize) -> LocalSwarm {
    start_swarm_with(dir, model, n, span, "").await
}

/// Like [`start_swarm`], with `extra` appended to every node's config (TOML sections).
pub(crate) async fn start_swarm_with(
    dir: &Path,
    model: &Path,
    n: usize,
    span: usize,
    extra: &str,
) -> LocalSwarm {
    let budget = launch::spanning_budget(model, span, memory_fraction()).expect("budget");
    let opts = LaunchOptions {
        extra_config: extra.to_string(),
        ..launch_options(dir, model, vec![budget; n])
    };
    LocalSwarm::start(&opts).await.expect("start swarm")
}

/// The share of offered memory the planner uses (the default config's).
pub(crate) fn memory_fraction() -> f64 {
    shoal_node::config::Config::default()
        .planner
        .memory_fraction
}

/// Options for nodes of `model` in `dir/swarm` offering `memory` bytes each, logging at
/// `SHOAL_LOG` (default info); everything else default.
pub(crate) fn launch_options(dir: &Path, model: &Path, memory: Vec<u64>) -> LaunchOptions {
    LaunchOptions {
        bin: shoal_bin(),
        dir: dir.join("swarm"),
        model: model.to_path_buf(),
        memory,
        log: std::env::var("SHOAL_LOG").unwrap_or_else(|_| "info".into()),
        ..Default::default()
    }
}

/// The token ids of a greedy `/v1/completions` of `prompt` from node `origin`; a non-200
/// answer fails the test with every node's log.
pub(crate) async fn greedy_tokens(
    swarm: &LocalSwarm,
    origin: usize,
    prompt: &[u32],
    max_tokens: usize,
) -> Vec<u32> {
    let (status, answer) = swarm
        .post_json(
            origin,
            "/v1/completions",
            &greedy_request(prompt, max_tokens, false),
        )
        .await
        .expect("completion request");
    if status != 200 {
        dump_logs(swarm);
    }
    assert_eq!(status, 200, "origin node{origin}: {answer}");
    token_ids(&answer)
}

/// `n` nodes over which `model` must span, once they agree on an `n`-stage plan (its JSON);
/// a plan that does not come in time fails the test with every node's log.
pub(crate) async fn planned_swarm(dir: &Path, model: &Path, n: usize) -> (LocalSwarm, Value) {
    let swarm = start_swarm(dir, model, n, n).await;
    match swarm.wait_plan(n, 0, PLAN_TIMEOUT).await {
        Ok(plan) => (swarm, plan),
        Err(e) => {
            dump_logs(&swarm);
            panic!("{e}");
        }
    }
}

/// Prints the tail of every node's log (call when a test is about to fail).
pub(crate) fn dump_logs(swarm: &LocalSwarm) {
    for (i, n) in swarm.nodes.iter().enumerate() {
        let text = std::fs::read_to_string(&n.log).unwrap_or_default();
        // Periodic probe lines would crowd out the events that explain a failure.
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .filter(|l| !l.contains("bandwidth probe"))
            .take(60)
            .collect();
        eprintln!("---- node{i} {} ----", n.id);
        for l in tail.into_iter().rev() {
            eprintln!("{l}");
        }
    }
}

/// Greedy single-process generation of `prompt` on the whole model, stopping at EOS as the
/// API does: the reference every distributed run must reproduce.
pub(crate) fn reference_tokens(model: &Path, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let manifest = shoal_model::Manifest::load(model).expect("manifest");
    let layers = 0..manifest.planner_layers();
    let mut runner = shoal_model::StageRunner::load(
        model,
        &manifest,
        layers,
        &shoal_model::RuntimeConfig::default(),
    )
    .expect("load model");
    let req = shoal_model::generate::GenerateRequest {
        prompt_ids: prompt.to_vec(),
        max_tokens,
        sampling: shoal_model::SamplingConfig::greedy(),
        stop_ids: manifest.eos_token_ids.clone(),
    };
    shoal_model::generate::generate(&mut runner, 1, &req, |_| true)
        .expect("generate")
        .token_ids
}

/// Token ids of a `/v1/completions` answer.
pub(crate) fn token_ids(answer: &Value) -> Vec<u32> {
    answer["shoal"]["token_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no token ids in {answer}"))
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// A greedy completion request for token ids.
pub(crate) fn greedy_request(prompt: &[u32], max_tokens: usize, stream: bool) -> Value {
    serde_json::json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream})
}

/// What [`stream_disturbed`] saw.
pub(crate) struct Disturbed {
    /// HTTP status of the stream.
    pub(crate) status: u16,
    /// Every token id streamed.
    pub(crate) tokens: Vec<u32>,
    /// When the signal was sent, if the stream got that far.
    pub(crate) signalled_at: Option<std::time::Instant>,
    /// The last event (an `error` key there means the stream failed).
    pub(crate) last: Option<Value>,
}

/// Streams `request` (a streaming `/v1/completions` body) from node `origin` and sends
/// `signal` (e.g. `-KILL`, `-STOP`) to process `pid` from outside, as an operator or a crash
/// would, once `after` tokens have arrived.
pub(crate) async fn stream_disturbed(
    swarm: &LocalSwarm,
    origin: usize,
    request: &Value,
    (pid, signal): (u32, &str),
    after: usize,
) -> Disturbed {
    stream_then(swarm, origin, request, after, || {
        let ok = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    })
    .await
}

/// Streams `request` from node `origin` and runs `disturb` once, when `after` tokens have
/// arrived (`Disturbed::signalled_at` is when).
pub(crate) async fn stream_then(
    swarm: &LocalSwarm,
    origin: usize,
    request: &Value,
    after: usize,
    disturb: impl FnOnce(),
) -> Disturbed {
    let mut tokens: Vec<u32> = Vec::new();
    let mut signalled_at = None;
    let mut last: Option<Value> = None;
    let mut disturb = Some(disturb);
    let status = swarm
        .post_sse(origin, "/v1/completions", request, |d| {
            if d == "[DONE]" {
                return;
            }
            let v: Value = serde_json::from_str(d).unwrap();
            for t in v["choices"][0]["token_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                tokens.push(t.as_u64().unwrap() as u32);
            }
            if tokens.len() >= after
                && let Some(f) = disturb.take()
            {
                f();
                signalled_at = Some(std::time::Instant::now());
            }
            last = Some(v);
        })
        .await
        .unwrap();
    Disturbed {
        status,
        tokens,
        signalled_at,
        last,
    }
}
