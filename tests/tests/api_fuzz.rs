//! The HTTP API under random and mutated bodies (issue 16's fuzz mode), against two real
//! `shoal run` processes: valid requests of both endpoints are mutated (a field's value
//! replaced by a value of another type, or by an extreme one, a field dropped or added, bytes
//! flipped, inserted or cut off) or replaced by random bytes, and sent with and without a JSON
//! content type. Every answer must come within [`ANSWER_TIMEOUT`], never be a 5xx (no swarm
//! failure is provoked here), and every refusal must be a 4xx in OpenAI's error shape; after
//! all of them both nodes still generate.
//!
//! `SHOAL_API_FUZZ_CASES` sets the number of cases (default 300, about half a minute); a long
//! run: `SHOAL_API_FUZZ_CASES=20000 cargo test -p shoal-tests --test api_fuzz -- --nocapture`.
//! `SHOAL_API_FUZZ_SEED` picks the seed (default 1); a failure prints the seed, the case and
//! the body.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// Longest wait for one answer (a valid mutated request may generate up to the context).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Valid requests the mutations start from: (path, body).
fn seeds() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/completions",
            json!({"prompt": "Hi there", "max_tokens": 3, "temperature": 0}),
        ),
        (
            "/v1/completions",
            json!({"prompt": [72, 105], "max_tokens": 2, "stream": true,
                   "stream_options": {"include_usage": true}, "stop": ["x", "yz"]}),
        ),
        (
            "/v1/completions",
            json!({"prompt": ["Hello"], "max_tokens": 2, "logprobs": 2, "seed": 7,
                   "top_p": 0.9, "top_k": 5, "temperature": 0.7}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                   "temperature": 0, "logprobs": true, "top_logprobs": 1}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi"}],
                   "max_tokens": 2, "stream": true, "n": 1, "user": "u"}),
        ),
    ]
}

/// A random JSON value, often an extreme or a wrong type for any field.
fn random_value(rng: &mut ChaCha8Rng, depth: u32) -> Value {
    match rng.random_range(0..14) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random_range(-3i64..4)),
        3 => json!(i64::MAX),
        4 => json!(u64::MAX),
        5 => json!(-1e300),
        6 => json!(rng.random::<f64>() * 2e6 - 1e6),
        7 => json!(""),
        8 => json!("x".repeat(rng.random_range(1..20_000))),
        9 => json!([999_999_999u64, 0, 1]),
        10 => json!(vec![65u32; rng.random_range(0..5000)]),
        11 if depth < 8 => {
            let n = rng.random_range(0..4);
            Value::Array((0..n).map(|_| random_value(rng, depth + 1)).collect())
        }
        12 if depth < 8 => {
            json!({"role": random_value(rng, depth + 1), "content": random_value(rng, depth + 1)})
        }
        _ => json!("\u{0}\u{fffd}\u{1F600}</s><bos>"),
    }
}

/// One mutated or random body: (path, bytes, send a JSON content type).
fn case(rng: &mut ChaCha8Rng, seeds: &[(&'static str, Value)]) -> (&'static str, Vec<u8>, bool) {
    let (path, seed) = &seeds[rng.random_range(0..seeds.len())];
    let mut body = seed.clone();
    let fields: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
    let kind = rng.random_range(0..10);
    match kind {
        0..=3 => {
            let f = &fields[rng.random_range(0..fields.len())];
            body[f] = random_value(rng, 0);
        }
        4 => {
            let f = &fields[rng.random_range(0..fields.len())];
            body.as_object_mut().unwrap().remove(f);
        }
        5 => {
            body["unknown_field"] = random_value(rng, 0);
        }
        6 => {
            body = random_value(rng, 0);
        }
        _ => {}
    }
    let mut bytes = serde_json::to_vec(&body).unwrap();
    match kind {
        7 => {
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
        }
        8 => bytes.truncate(rng.random_range(0..bytes.len())),
        9 => {
            let n = rng.random_range(0..64);
            bytes = (0..n).map(|_| rng.random()).collect();
        }
        _ => {}
    }
    (path, bytes, rng.random_range(0..8) != 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_bodies_get_answers_in_the_error_shape_and_the_nodes_live_on() {
    let cases: usize = std::env::var("SHOAL_API_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("SHOAL_API_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let (swarm, _plan) = planned_swarm(dir.path(), &model, 2).await;
    let http = reqwest::Client::builder()
        .timeout(ANSWER_TIMEOUT)
        .build()
        .unwrap();
    let seeds = seeds();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut ok, mut refused) = (0usize, 0usize);
    for i in 0..cases {
        let (path, bytes, json_type) = case(&mut rng, &seeds);
        let node = i % swarm.nodes.len();
        let url = format!("http://{}{path}", swarm.nodes[node].api);
        let mut req = http.post(&url).body(bytes.clone());
        if json_type {
            req = req.header("content-type", "application/json");
        }
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
        let r = req.send().await.unwrap_or_else(|e| {
            dump_logs(&swarm);
            panic!("seed {seed} case {i}: no answer from node {node}: {e}\nbody: {shown}")
        });
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_else(|e| {
            panic!("seed {seed} case {i}: answer body cut off: {e}\nbody: {shown}")
        });
        assert!(
            status < 500,
            "seed {seed} case {i}: {status} {text}\nbody: {shown}"
        );
        if status >= 400 {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("seed {seed} case {i}: {status} not JSON ({e}): {text}\nbody: {shown}")
            });
            assert!(
                v["error"]["message"].is_string(),
                "seed {seed} case {i}: {status} not in the error shape: {text}"
            );
            refused += 1;
        } else {
            ok += 1;
        }
    }
    eprintln!("api fuzz: seed {seed}, {cases} cases: {ok} answered, {refused} refused (4xx)");
    // Both nodes still serve.
    for node in 0..swarm.nodes.len() {
        let (status, answer) = swarm
            .post_json(
                node,
                "/v1/completions",
                &greedy_request(&[72, 105], 2, false),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "node {node} after the fuzz: {answer}");
    }
    swarm.shutdown().await;
}
