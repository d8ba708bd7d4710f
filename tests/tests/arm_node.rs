//! An aarch64 node in an x86 swarm: the `shoal` cross-built by `scripts/cross-aarch64.sh build`
//! runs on this host under qemu user-mode emulation with the aarch64 ONNX Runtime (the runner
//! that script writes, `.cross/bin/shoal-aarch64`), beside x86 `shoal run` processes on
//! loopback, with memory offered such that every node must hold layers.
//!
//! - f32 synthesised model: greedy tokens through the mixed swarm equal the one-process x86
//!   run, with the x86 and the aarch64 node as origin, for each aarch64 ONNX Runtime version
//!   named in `SHOAL_AARCH64_ORT_VERSIONS` (default: the runner's own).
//! - Gemma-3-270M q4: the greedy text begins as on x86, and the aarch64 stage's top-1 agrees
//!   with x86 at (nearly) every one of 64 teacher-forced positions (ARM kernels may round
//!   differently; the figure is printed).
//!
//! `SHOAL_AARCH64_BIN` names the runner. Without it the tests print SKIP, unless
//! `SHOAL_AARCH64_REQUIRED=1` (set by `.ci/run`), where a missing runner fails them.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;
use shoal_node::launch::{self, LocalSwarm};

const PROMPT: [u32; 6] = [72, 101, 108, 108, 111, 32];
const MAX_TOKENS: usize = 24;
/// Teacher-forced positions compared on Gemma.
const FORCED: usize = 64;
/// Least top-1 agreement accepted on Gemma over [`FORCED`] positions. A wrong stage (wrong
/// layers, a lost row, garbage from a kernel) agrees at almost none; float rounding of the
/// aarch64 kernels flips only near-ties.
const MIN_AGREEMENT: usize = 60;
/// Leading greedy tokens that must equal the x86 run on Gemma ("the text begins as on x86").
const SAME_START: usize = 8;
/// A prompt whose greedy continuation runs past [`FORCED`] tokens without end of text.
const GEMMA_PROMPT: &str = "The history of the city of Paris begins";

/// Whether a missing runner (or model) fails instead of skipping (`.ci/run` sets it).
fn required() -> bool {
    std::env::var("SHOAL_AARCH64_REQUIRED").is_ok_and(|v| v == "1")
}

/// The aarch64 runner, or `None` (after a SKIP line) when it is not built and not required.
fn arm_runner(test: &str) -> Option<PathBuf> {
    let required = required();
    match std::env::var_os("SHOAL_AARCH64_BIN").map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        other => {
            let why = match other {
                Some(p) => format!("SHOAL_AARCH64_BIN={} does not exist", p.display()),
                None => "SHOAL_AARCH64_BIN is not set".to_string(),
            };
            assert!(
                !required,
                "{test}: {why}, and SHOAL_AARCH64_REQUIRED=1; run scripts/cross-aarch64.sh build"
            );
            eprintln!(
                "SKIP {test}: {why} (scripts/cross-aarch64.sh build writes .cross/bin/shoal-aarch64)"
            );
            None
        }
    }
}

/// Memory for each x86 node and for the aarch64 node that leaves the plan one choice: the
/// aarch64 node in the middle with a third or more of the decoder layers. Each x86 node holds
/// the larger end (embedding or head) and a third of the decoder layers; the aarch64 node
/// holds half of them and cannot hold an end.
fn middle_budgets(model: &Path) -> (u64, u64) {
    let info = shoal_node::node::ModelInfo::load(model).unwrap();
    let need: Vec<f64> = info
        .layers
        .iter()
        .map(|l| l.param_bytes + l.kv_bytes_per_token * info.context_tokens)
        .collect();
    let (first, last) = (need[0], need[need.len() - 1]);
    let decoders: f64 = need[1..need.len() - 1].iter().sum();
    let largest = need[1..need.len() - 1].iter().copied().fold(0.0, f64::max);
    assert!(
        first.min(last) > decoders / 2.0 + largest,
        "the embedding and head must each outweigh half the decoder layers"
    );
    let offer = |bytes: f64| (bytes / memory_fraction()).ceil() as u64 + 1;
    (
        offer(first.max(last) + decoders / 3.0 + largest),
        offer(decoders / 2.0 + largest),
    )
}

/// Two x86 nodes, then the aarch64 node, offering `memory` (x86 each, aarch64) bytes; returns
/// the swarm once all three agree on a 3-stage plan in which the aarch64 node (index 2) holds
/// a stage, that plan, and the aarch64 node's layer range.
async fn mixed_swarm(
    dir: &Path,
    model: &Path,
    runner: &Path,
    ort: Option<&str>,
    memory: (u64, u64),
) -> (LocalSwarm, Value, Value) {
    let mut opts = launch_options(dir, model, vec![memory.0; 2]);
    let mut swarm = LocalSwarm::start(&opts).await.expect("start x86 nodes");
    opts.bin = runner.to_path_buf();
    if let Some(v) = ort {
        opts.env.push(("SHOAL_AARCH64_ORT".into(), v.into()));
    }
    let arm = swarm
        .join(&opts, memory.1)
        .await
        .expect("start aarch64 node");
    assert_eq!(arm, 2);
    // Under emulation the aarch64 node calibrates and answers slower: allow it more time.
    let plan = match swarm.wait_plan(3, 0, PLAN_TIMEOUT + PLAN_TIMEOUT).await {
        Ok(p) => p,
        Err(e) => {
            dump_logs(&swarm);
            panic!("{e}");
        }
    };
    let Some(arm_layers) = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["device"].as_str() == Some(swarm.nodes[arm].id.as_str()))
        .map(|s| s["layers"].clone())
    else {
        panic!(
            "the aarch64 node {} holds no stage: {plan}",
            swarm.nodes[arm].id
        );
    };
    let log = std::fs::read_to_string(&swarm.nodes[arm].log).unwrap_or_default();
    assert!(
        log.contains("ONNX Runtime loaded"),
        "the aarch64 node did not load ONNX Runtime:\n{log}"
    );
    (swarm, plan, arm_layers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aarch64_node_serves_a_stage_with_the_x86_tokens() {
    let Some(runner) = arm_runner("aarch64_node_serves_a_stage_with_the_x86_tokens") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let reference = reference_tokens(&model, &PROMPT, MAX_TOKENS);
    assert!(!reference.is_empty());
    let budget = launch::spanning_budget(&model, 3, memory_fraction()).expect("budget");
    let versions: Vec<Option<String>> = match std::env::var("SHOAL_AARCH64_ORT_VERSIONS") {
        Ok(v) if !v.trim().is_empty() => v.split_whitespace().map(|s| Some(s.into())).collect(),
        _ => vec![None],
    };
    for (k, ort) in versions.iter().enumerate() {
        let label = ort.as_deref().unwrap_or("the runner's default");
        let run_dir = dir.path().join(format!("run{k}"));
        let (swarm, plan, arm_layers) =
            mixed_swarm(&run_dir, &model, &runner, ort.as_deref(), (budget, budget)).await;
        eprintln!(
            "ONNX Runtime {label} on aarch64: the aarch64 node holds layers {arm_layers}; plan {}",
            plan["stages"]
        );
        for origin in [0, 2] {
            let ids = greedy_tokens(&swarm, origin, &PROMPT, MAX_TOKENS).await;
            assert_eq!(
                ids, reference,
                "origin node{origin}, aarch64 ONNX Runtime {label}"
            );
        }
        swarm.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aarch64_node_in_a_gemma_swarm_agrees_with_x86() {
    let test = "aarch64_node_in_a_gemma_swarm_agrees_with_x86";
    let Some(runner) = arm_runner(test) else {
        return;
    };
    let Some(gemma) = launch::gemma::fetched_gemma() else {
        assert!(
            !required(),
            "{test}: Gemma-3-270M not fetched; run scripts/fetch-gemma.sh"
        );
        eprintln!("SKIP {test}: Gemma-3-270M not fetched; run scripts/fetch-gemma.sh");
        return;
    };
    let model = launch::gemma::gemma_shards(&gemma).unwrap();
    let manifest = shoal_model::Manifest::load(&model).unwrap();
    let tokenizer = shoal_model::Tokenizer::load(&model, &manifest)
        .unwrap()
        .unwrap();
    let prompt = tokenizer.encode(GEMMA_PROMPT).unwrap();
    let reference = reference_tokens(&model, &prompt, FORCED);
    assert_eq!(
        reference.len(),
        FORCED,
        "the x86 greedy run ended early: {:?}",
        tokenizer.decode(&reference)
    );

    let dir = tempfile::tempdir().unwrap();
    let budgets = middle_budgets(&model);
    let (swarm, plan, arm_layers) = mixed_swarm(dir.path(), &model, &runner, None, budgets).await;
    let (start, end) = (
        arm_layers[0].as_u64().unwrap(),
        arm_layers[1].as_u64().unwrap(),
    );
    let last = manifest.figures().len() as u64 - 1;
    assert!(
        start >= 1 && end <= last && end > start,
        "the aarch64 node should hold decoder layers only: {arm_layers} of {plan}"
    );
    eprintln!(
        "the aarch64 node holds decoder layers {arm_layers}; plan {}",
        plan["stages"]
    );

    // Greedy from the prompt; then, from the first position where the swarm leaves the x86
    // run, again from the x86 prefix one token further: each position's top-1 is judged on
    // the x86 context (teacher forcing), with one request per disagreement instead of 64.
    let greedy = greedy_tokens(&swarm, 0, &prompt, FORCED).await;
    let same_start = greedy
        .iter()
        .zip(&reference)
        .take_while(|(a, b)| a == b)
        .count();
    let mut agree = 0;
    let mut flips = Vec::new();
    let mut at = 0;
    let mut next = greedy;
    while at < FORCED {
        let run = next
            .iter()
            .zip(&reference[at..])
            .take_while(|(a, b)| a == b)
            .count();
        agree += run;
        at += run;
        if at >= FORCED {
            break;
        }
        flips.push(at);
        at += 1;
        if at < FORCED {
            let mut context = prompt.clone();
            context.extend_from_slice(&reference[..at]);
            next = greedy_tokens(&swarm, 0, &context, FORCED - at).await;
        }
    }
    swarm.shutdown().await;
    let text = |ids: &[u32]| tokenizer.decode(ids).unwrap_or_default();
    eprintln!(
        "x86 text:     {:?}\nmixed swarm:  same first {same_start} tokens; top-1 agreement {agree}/{FORCED} \
         (teacher-forced; differing at {flips:?})",
        text(&reference[..SAME_START.max(same_start).min(FORCED)]),
    );
    assert!(
        same_start >= SAME_START,
        "the mixed swarm's text leaves x86's after {same_start} tokens"
    );
    assert!(
        agree >= MIN_AGREEMENT,
        "top-1 agreement {agree}/{FORCED} below {MIN_AGREEMENT} (differing at {flips:?})"
    );
}
