//! API keys on a real `shoal run` process: with `api_keys` set, every route but the page and
//! `/health` answers 401 (OpenAI's error shape) with no key and with a wrong key, and works
//! with the right one, also through `shoal status` and `shoal generate --api` given
//! `SHOAL_API_KEY`; a node whose API would listen on a non-loopback address without keys
//! refuses to start and says how to fix it, unless `api_insecure = true`. Out-of-range
//! sampling parameters are refused as OpenAI refuses them.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};
use shoal_node::launch::{LaunchOptions, LocalSwarm};

const KEY: &str = "sk-shoal-test-4b1d9a7c2e";
const WRONG: &str = "sk-shoal-test-4b1d9a7c2f";

fn options(dir: &std::path::Path, model: &std::path::Path, top: &str) -> LaunchOptions {
    LaunchOptions {
        bin: shoal_bin(),
        dir: dir.to_path_buf(),
        model: model.to_path_buf(),
        memory: vec![u64::MAX / 4],
        log: "info".into(),
        top_config: top.to_string(),
        ..Default::default()
    }
}

/// Status and JSON body (Null when not JSON) of a request with `key` as bearer token.
async fn call(api: &str, method: &str, path: &str, key: Option<&str>) -> (u16, Value, String) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{api}{path}");
    let mut req = match method {
        "GET" => http.get(&url),
        _ => http.post(&url).json(&json!({
            "prompt": [72, 101, 108], "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "user", "content": "hi"}],
        })),
    };
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let auth = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    (status, r.json().await.unwrap_or(Value::Null), auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_guard_every_route_but_the_page_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let mut opts = options(
        &dir.path().join("keyed"),
        &model,
        &format!("api_keys = [{KEY:?}]"),
    );
    opts.api_key = Some(KEY.into());
    let swarm = LocalSwarm::start(&opts).await.expect("start");
    swarm.wait_plan(1, 0, PLAN_TIMEOUT).await.expect("plan");
    let api = swarm.nodes[0].api.clone();

    for (method, path) in [("GET", "/"), ("GET", "/health")] {
        let (status, _, _) = call(&api, method, path, None).await;
        assert_eq!(status, 200, "{method} {path} without a key");
    }
    let guarded = [
        ("GET", "/v1/status"),
        ("GET", "/metrics"),
        ("GET", "/v1/models"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/invite"),
    ];
    for (method, path) in guarded {
        for (key, code) in [(None, "missing_api_key"), (Some(WRONG), "invalid_api_key")] {
            let (status, body, auth) = call(&api, method, path, key).await;
            assert_eq!(status, 401, "{method} {path} with {key:?}: {body}");
            assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
            assert_eq!(body["error"]["type"], "invalid_request_error");
            assert_eq!(auth, "Bearer", "{method} {path}");
        }
        let (status, body, _) = call(&api, method, path, Some(KEY)).await;
        assert_ne!(status, 401, "{method} {path} with the key: {body}");
        if path != "/v1/chat/completions" && path != "/v1/invite" {
            // (The synthesised model has no chat template: chat may be a 400, never a 401;
            // the invite route refuses this test's completion body with a 4xx, never a 401.)
            assert_eq!(status, 200, "{method} {path} with the key: {body}");
        }
    }
    // The key never reaches the log.
    let log = std::fs::read_to_string(&swarm.nodes[0].log).unwrap();
    assert!(
        !log.contains(KEY) && !log.contains(WRONG),
        "a key was logged"
    );

    // The CLI clients send $SHOAL_API_KEY.
    let status = |key: Option<&str>| {
        let mut cmd = Command::new(shoal_bin());
        cmd.args(["status", "--json", "--api", &api]);
        match key {
            Some(k) => cmd.env("SHOAL_API_KEY", k),
            None => cmd.env_remove("SHOAL_API_KEY"),
        };
        cmd.output().unwrap()
    };
    assert!(status(Some(KEY)).status.success());
    let refused = status(None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let out = Command::new(shoal_bin())
        .args([
            "generate",
            "--json",
            "--api",
            &api,
            "--prompt-ids",
            "72,101",
            "--max-tokens",
            "2",
        ])
        .env("SHOAL_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // OpenAI's ranges: temperature 0..=2, top_p 0..=1.
    for (field, value) in [("temperature", 7.0), ("temperature", -0.5), ("top_p", 1.5)] {
        let (status, body) = swarm
            .post_json(
                0,
                "/v1/completions",
                &json!({"prompt": [72], "max_tokens": 1, field: value}),
            )
            .await
            .unwrap();
        assert_eq!(status, 400, "{field} = {value}: {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(field), "{msg}");
    }
    swarm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_api_without_keys_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    // Its own config with the API on every interface (the launcher binds loopback).
    let run = |top: &str, name: &str| {
        let node_dir = dir.path().join(name);
        std::fs::create_dir_all(&node_dir).unwrap();
        let config = node_dir.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "listen = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\nquic = false\n\
                 api = \"0.0.0.0:0\"\n{top}\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(shoal_bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(node_dir.join("data"))
            .arg("--key-file")
            .arg(node_dir.join("node.key"))
            .arg("--model")
            .arg(&model)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A refusing node exits at once; a starting one prints its ready line.
        let stdout = child.stdout.take().unwrap();
        let mut first = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).unwrap();
        let started = first.starts_with("shoal-ready ");
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        (started, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (started, stderr) = run("", "open");
    assert!(!started, "an exposed API without keys started");
    assert!(
        stderr.contains("api_insecure") && stderr.contains("0.0.0.0"),
        "no clear refusal: {stderr}"
    );
    let (started, stderr) = run("api_insecure = true", "insecure");
    assert!(started, "api_insecure = true did not start: {stderr}");
    let (started, stderr) = run(&format!("api_keys = [{KEY:?}]"), "keyed");
    assert!(started, "an exposed API with keys did not start: {stderr}");
    let (started, stderr) = run("api_keys = [\"short\"]", "weak");
    assert!(!started, "a weak key was accepted");
    assert!(stderr.contains("at least 16"), "{stderr}");
}
