//! Concurrent sessions on 3 real processes (issue 12's isolation and backpressure): 16 greedy
//! requests with 16 different prompts sent at once each get exactly the tokens of their
//! prompt run alone; 24 sent at once to a node that runs at most 16 generations
//! (`pipeline.max_generations`) get either those tokens or an immediate 503 in OpenAI's error
//! shape with `Retry-After`, never a hang. The nodes batch the steps that wait for a stage
//! together (`pipeline.max_batch = 8`), so the identity also covers batched steps.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const MAX_TOKENS: usize = 48;
/// `pipeline.max_generations` of a default node.
const SLOTS: usize = 16;

fn prompt(i: usize) -> Vec<u32> {
    format!("request {i}, tell me:")
        .bytes()
        .map(u32::from)
        .collect()
}

/// Sends one greedy completion of prompt `i` to `api`; returns the status, the
/// `Retry-After` header and the body.
async fn complete(http: &reqwest::Client, api: &str, i: usize) -> (u16, Option<String>, Value) {
    let r = http
        .post(format!("http://{api}/v1/completions"))
        .json(&greedy_request(&prompt(i), MAX_TOKENS, false))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, retry, r.json().await.expect("JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_never_mix_tokens_and_a_full_node_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let swarm = start_swarm_with(dir.path(), &model, 3, 3, "[pipeline]\nmax_batch = 8\n").await;
    let plan = swarm.wait_plan(3, 0, PLAN_TIMEOUT).await.unwrap();
    swarm.wait_ready(&plan, PLAN_TIMEOUT).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let api = swarm.nodes[0].api.clone();

    let mut alone = Vec::new();
    for i in 0..SLOTS + 8 {
        let (status, _, v) = complete(&http, &api, i).await;
        assert_eq!(status, 200, "{v}");
        alone.push(token_ids(&v));
    }
    // Different prompts really give different streams (so a mix-up would show).
    let distinct: std::collections::BTreeSet<&Vec<u32>> = alone.iter().collect();
    assert!(
        distinct.len() > SLOTS / 2,
        "prompts give too few distinct outputs"
    );

    let together = futures::future::join_all((0..SLOTS).map(|i| complete(&http, &api, i))).await;
    for (i, (status, _, v)) in together.iter().enumerate() {
        assert_eq!(*status, 200, "request {i}: {v}");
        assert_eq!(token_ids(v), alone[i], "request {i} got other tokens");
    }

    let over = futures::future::join_all((0..SLOTS + 8).map(|i| complete(&http, &api, i))).await;
    let mut refused = 0;
    for (i, (status, retry, v)) in over.iter().enumerate() {
        match status {
            200 => assert_eq!(token_ids(v), alone[i], "request {i} got other tokens"),
            503 => {
                refused += 1;
                assert_eq!(retry.as_deref(), Some("1"), "503 without Retry-After: {v}");
                assert!(v["error"]["message"].is_string(), "not OpenAI's shape: {v}");
            }
            s => panic!("request {i}: HTTP {s}: {v}"),
        }
    }
    assert!(refused > 0, "24 requests at once on 16 slots: none refused");
    let mut batched = 0.0;
    for i in 0..3 {
        let metrics = swarm.get_text(i, "/metrics").await.unwrap();
        batched += metrics
            .lines()
            .find_map(|l| l.strip_prefix("shoal_batched_steps_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    assert!(batched > 0.0, "no stage step ran in a batch");
    eprintln!("{batched} stage steps ran in batches");
    eprintln!("{refused} of {} refused with 503", SLOTS + 8);
    swarm.shutdown().await;
}
