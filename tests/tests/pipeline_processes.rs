//! Three real `shoal run` processes on loopback split the built-in model; greedy generation
//! through them must give exactly the single-process token ids, and the OpenAI-compatible
//! endpoints must answer a real HTTP client, streamed and not.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use common::*;
use serde_json::{Value, json};

const PROMPT: [u32; 6] = [72, 101, 108, 108, 111, 32];
const MAX_TOKENS: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_match_single_process_and_serve_openai_clients() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let reference = reference_tokens(&model, &PROMPT, MAX_TOKENS);
    assert!(!reference.is_empty());
    let (swarm, plan) = planned_swarm(dir.path(), &model, 3).await;
    let devices: Vec<&str> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    assert_eq!(
        devices.len(),
        3,
        "the model must span all three processes: {plan}"
    );

    // Non-streamed completion from every node as origin: identical to the reference.
    for origin in 0..3 {
        let (status, answer) = swarm
            .post_json(
                origin,
                "/v1/completions",
                &greedy_request(&PROMPT, MAX_TOKENS, false),
            )
            .await
            .unwrap();
        if status != 200 {
            dump_logs(&swarm);
        }
        assert_eq!(status, 200, "{answer}");
        assert_eq!(token_ids(&answer), reference, "origin node{origin}");
        assert_eq!(answer["object"], "text_completion");
        assert_eq!(
            answer["usage"]["completion_tokens"].as_u64(),
            Some(reference.len() as u64)
        );
    }

    // Several sessions in flight at once, through different origins: each one exact.
    let req = greedy_request(&PROMPT, MAX_TOKENS, false);
    let (a, b, c) = tokio::join!(
        swarm.post_json(0, "/v1/completions", &req),
        swarm.post_json(1, "/v1/completions", &req),
        swarm.post_json(0, "/v1/completions", &req),
    );
    for (status, answer) in [a.unwrap(), b.unwrap(), c.unwrap()] {
        assert_eq!(status, 200, "{answer}");
        assert_eq!(token_ids(&answer), reference, "concurrent session");
    }

    // `shoal generate`: the single-process CLI gives the reference, `--api` the same ids.
    let ids = PROMPT
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let max = MAX_TOKENS.to_string();
    let from_model = ["--model", model.to_str().unwrap()];
    let generate = |source: &[&str], sampling: &[&str]| {
        let mut args = vec!["generate"];
        args.extend_from_slice(source);
        args.extend_from_slice(&["--prompt-ids", &ids, "--max-tokens", &max, "--json"]);
        args.extend_from_slice(sampling);
        cli_json(&args)
    };
    let local = generate(&from_model, &["--greedy"]);
    assert_eq!(
        ids_of(&local["token_ids"]),
        reference,
        "single-process shoal generate"
    );
    let remote = generate(&["--api", &swarm.nodes[2].api], &["--greedy"]);
    assert_eq!(
        ids_of(&remote["token_ids"]),
        reference,
        "shoal generate --api"
    );
    assert!(remote["tokens_per_s"].as_f64().unwrap() > 0.0);

    // Seeded sampling: the origin samples the returned logits with the same stream as the
    // single-process CLI, so the ids match it too, from any origin.
    let local = generate(
        &from_model,
        &["--temperature", "0.9", "--top-p", "0.95", "--seed", "3"],
    );
    let sampled = json!({"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0.9, "top_p": 0.95, "seed": 3});
    for origin in [0, 2] {
        let (status, answer) = swarm
            .post_json(origin, "/v1/completions", &sampled)
            .await
            .unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            token_ids(&answer),
            ids_of(&local["token_ids"]),
            "seeded sampling from node{origin}"
        );
    }

    // Streamed completion: one event per token, then the finish reason, then [DONE].
    let mut events: Vec<String> = Vec::new();
    let status = swarm
        .post_sse(
            0,
            "/v1/completions",
            &greedy_request(&PROMPT, MAX_TOKENS, true),
            |d| events.push(d.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed: Vec<u32> = chunks
        .iter()
        .flat_map(|c| {
            c["choices"][0]["token_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(streamed, reference);
    let finish = chunks.last().unwrap()["choices"][0]["finish_reason"]
        .as_str()
        .unwrap();
    assert!(finish == "length" || finish == "stop", "{finish}");

    // Chat completions, both ways.
    let chat =
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0});
    let (status, answer) = swarm
        .post_json(1, "/v1/chat/completions", &chat)
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    assert!(answer["choices"][0]["message"]["content"].is_string());
    let mut chat_events = Vec::new();
    let mut stream_req = chat.clone();
    stream_req["stream"] = json!(true);
    let status = swarm
        .post_sse(2, "/v1/chat/completions", &stream_req, |d| {
            chat_events.push(d.to_string())
        })
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(chat_events.last().map(String::as_str), Some("[DONE]"));
    let first: Value = serde_json::from_str(&chat_events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");

    // Models and metrics.
    let models = swarm.get_json(0, "/v1/models").await.unwrap();
    assert_eq!(models["data"][0]["object"], "model");
    let metrics = swarm.get_text(0, "/metrics").await.unwrap();
    assert!(
        metrics.contains("# TYPE shoal_refused_total counter"),
        "{metrics}"
    );
    assert!(metrics.contains("shoal_epoch "), "{metrics}");
    let tokens_line = metrics
        .lines()
        .find(|l| l.starts_with("shoal_generated_tokens_total "))
        .unwrap();
    // Node 0 was the origin of four greedy runs and one sampled run.
    let counted: usize = tokens_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(counted > reference.len() * 4, "{tokens_line}");

    // A bad request is a 400 in OpenAI's error shape, not a hang.
    let (status, answer) = swarm
        .post_json(
            0,
            "/v1/completions",
            &json!({"prompt": [], "max_tokens": 4}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].is_string());
    swarm.shutdown().await;
}

/// Runs `shoal ARGS` and parses its one-line JSON output.
fn cli_json(args: &[&str]) -> Value {
    let out = std::process::Command::new(shoal_bin())
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "shoal {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}
