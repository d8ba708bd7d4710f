//! `shoal demo`, the README's first command: real processes, a plan over every node, the
//! same tokens as single-process generation, and no process left behind (also on Ctrl-C).

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn alive(pid: u64) -> bool {
    // A reaped child has no /proc entry; a zombie would show state Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// The generated token ids of the demo's JSON.
fn demo_token_ids(v: &Value) -> Vec<u32> {
    v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// Runs `shoal demo --json --greedy` with `extra` arguments and returns its JSON.
fn demo_json(extra: &[&str]) -> Value {
    let out = Command::new(shoal_bin())
        .args(["demo", "--json", "--greedy"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo {extra:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn demo_json_splits_the_model_and_matches_single_process_generation() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let prompt = [72u32, 105, 33, 32];
    let reference = reference_tokens(&model, &prompt, 16);
    let v = demo_json(&[
        "--synth",
        "--prompt-ids",
        "72,105,33,32",
        "--max-tokens",
        "16",
    ]);
    let stages = v["plan"]["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3, "{v}");
    let mut devices: Vec<&str> = stages
        .iter()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    devices.dedup();
    assert_eq!(devices.len(), 3);
    let ids = demo_token_ids(&v);
    assert_eq!(ids, reference);
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["text"].is_string());
    for n in v["nodes"].as_array().unwrap() {
        assert!(
            !alive(n["pid"].as_u64().unwrap()),
            "node process {n} outlived the demo"
        );
    }
}

#[test]
fn demo_without_model_uses_the_fetched_gemma_and_prints_real_text() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/gemma3-270m");
    if !dir.join("gemma-3-270m-q4_k_m.gguf").is_file() {
        eprintln!(
            "SKIP demo_without_model_uses_the_fetched_gemma_and_prints_real_text: {} not fetched; run scripts/setup.sh",
            dir.display()
        );
        return;
    }
    // The first run imports the GGUF into q4 shards beside it (once).
    let v = demo_json(&["--prompt", "The capital of France is", "--max-tokens", "8"]);
    let shards = dir.join("shards-q4");
    let manifest = shoal_model::Manifest::load(&shards).unwrap();
    assert_eq!(manifest.dtype.to_string(), "q4");
    assert_eq!(v["plan"]["stages"].as_array().unwrap().len(), 3, "{v}");
    let text = v["text"].as_str().unwrap();
    // Gemma-3-270M's greedy continuation (llama.cpp's Q4 output begins the same way).
    assert!(
        text.starts_with(" the capital of"),
        "not Gemma's greedy text: {text:?}"
    );
    let tokenizer = shoal_model::Tokenizer::load(&shards, &manifest)
        .unwrap()
        .unwrap();
    let prompt = tokenizer.encode("The capital of France is").unwrap();
    let ids = demo_token_ids(&v);
    assert_eq!(ids, reference_tokens(&shards, &prompt, 8));

    // --chat goes through the chat template and still gives words.
    let chat = demo_json(&["--chat", "--prompt", "Say hello.", "--max-tokens", "8"]);
    let reply = chat["text"].as_str().unwrap();
    assert!(
        reply.chars().any(char::is_alphabetic),
        "chat reply without words: {reply:?}"
    );
}

#[test]
fn ctrl_c_stops_the_demo_and_every_node() {
    let mut demo = Command::new(shoal_bin())
        .args(["demo", "--synth", "--max-tokens", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let mut pids = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split(" pid ").nth(1) {
            pids.push(
                rest.split_whitespace()
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
        }
        if pids.len() == 3 {
            break;
        }
    }
    assert_eq!(pids.len(), 3, "the plan table names three node processes");
    let status = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    loop {
        if let Some(s) = demo.try_wait().unwrap() {
            assert!(!s.success(), "an interrupted demo exits non-zero");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "demo did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in pids {
        assert!(
            !alive(pid),
            "node process {pid} outlived the interrupted demo"
        );
    }
}
