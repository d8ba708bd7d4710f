//! The OpenAI-compatible API of real `shoal run` processes: `stop` sequences on the decoded
//! text (plain and streamed), `usage` (also streamed with `include_usage`), the fields shoal
//! refuses, and the request-error class of docs/pipeline.md: a bad request (token id outside
//! the vocabulary, a prompt past the context, malformed or oversized bodies) is a 4xx in
//! OpenAI's error shape at once, with no failover, and the node serves on afterwards.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const PROMPT: [u32; 6] = [72, 101, 108, 108, 111, 32];

/// Asserts OpenAI's error shape with `status`; returns the message.
fn error_message(status: u16, want: u16, answer: &Value) -> String {
    assert_eq!(status, want, "{answer}");
    assert_eq!(answer["error"]["type"], "invalid_request_error", "{answer}");
    answer["error"]["message"].as_str().unwrap().to_string()
}

/// The failover count in node `i`'s metrics.
async fn failovers(swarm: &shoal_node::launch::LocalSwarm, i: usize) -> f64 {
    let text = swarm.get_text(i, "/metrics").await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("shoal_failovers_total "))
        .unwrap()
        .parse()
        .unwrap()
}

/// POSTs raw bytes with `content_type` to node 0; returns the status and the JSON answer.
async fn post_raw(
    swarm: &shoal_node::launch::LocalSwarm,
    body: Vec<u8>,
    content_type: Option<&str>,
) -> (u16, Value) {
    let url = format!("http://{}/v1/completions", swarm.nodes[0].api);
    let mut req = reqwest::Client::new().post(url).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// POSTs a JSON body of `len` bytes on a plain TCP connection, writing while it reads: the
/// server answers (and closes) before the body is through, which an HTTP client library
/// reports as a broken pipe instead of the answer.
async fn post_oversized(api: &str, len: usize) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(api).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {api}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let chunk = vec![b' '; 64 << 10];
        for _ in 0..len / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let answer = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n")
            && let Ok(v) = serde_json::from_str::<Value>(body)
        {
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            break (status, v);
        }
        assert!(n > 0, "connection closed before a whole answer: {text}");
    };
    writer.abort();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_fields_and_request_errors_on_real_processes() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let (swarm, _plan) = planned_swarm(dir.path(), &model, 2).await;

    // The reference text, and a stop sequence from inside it.
    let (status, plain) = swarm
        .post_json(0, "/v1/completions", &greedy_request(&PROMPT, 24, false))
        .await
        .unwrap();
    assert_eq!(status, 200, "{plain}");
    let text = plain["choices"][0]["text"].as_str().unwrap().to_string();
    let stop: String = text
        .chars()
        .skip(3)
        .find(|c| *c != '\u{fffd}')
        .expect("a character to stop at")
        .to_string();
    let expected = text[..text.find(&stop).unwrap()].to_string();

    let mut req = greedy_request(&PROMPT, 24, false);
    req["stop"] = json!([stop, "\u{1}never\u{2}"]);
    req["user"] = json!("someone");
    req["an_unknown_field"] = json!({"ignored": true});
    let (status, stopped) = swarm.post_json(0, "/v1/completions", &req).await.unwrap();
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["choices"][0]["text"], json!(expected), "{stopped}");
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    let u = &stopped["usage"];
    assert_eq!(u["prompt_tokens"], json!(PROMPT.len()));
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );

    // Streamed: the same text, then the finish, then the usage chunk, then [DONE].
    req["stream"] = json!(true);
    req["stop"] = json!(stop);
    req["stream_options"] = json!({"include_usage": true});
    let mut events = Vec::new();
    let status = swarm
        .post_sse(0, "/v1/completions", &req, |d| events.push(d.to_string()))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, expected, "{events:?}");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]), "{usage}");
    assert_eq!(usage["usage"]["prompt_tokens"], json!(PROMPT.len()));
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );

    // Log-probabilities: the same greedy tokens, one entry per token, the picked token first
    // among its alternatives (greedy), probabilities that are probabilities.
    let mut req = greedy_request(&PROMPT, 24, false);
    req["logprobs"] = json!(3);
    let (status, with_lp) = swarm.post_json(0, "/v1/completions", &req).await.unwrap();
    assert_eq!(status, 200, "{with_lp}");
    assert_eq!(with_lp["choices"][0]["text"], plain["choices"][0]["text"]);
    let lp = &with_lp["choices"][0]["logprobs"];
    let n = with_lp["choices"][0]["token_ids"].as_array().unwrap().len();
    let token_lps = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(token_lps.len(), n, "{lp}");
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n);
    assert_eq!(lp["text_offset"][0], json!(0));
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3, "{top:?}");
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        let picked = token_lps[i].as_f64().unwrap();
        assert!(
            picked <= 0.0 && (picked - best).abs() < 1e-4,
            "{picked} vs {best}"
        );
    }
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
        "temperature": 0, "logprobs": true, "top_logprobs": 2});
    let (status, answer) = swarm
        .post_json(0, "/v1/chat/completions", &chat)
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let content = answer["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert!(!content.is_empty(), "{answer}");
    for c in content {
        assert_eq!(c["top_logprobs"].as_array().unwrap().len(), 2, "{c}");
        assert!(c["logprob"].as_f64().unwrap() <= 0.0);
        assert!(c["bytes"].is_array());
    }

    // Fields shoal does not implement are refused, saying which.
    let before = failovers(&swarm, 0).await;
    for (field, value, says) in [
        ("n", json!(2), "n = 1"),
        ("presence_penalty", json!(0.5), "presence_penalty"),
        ("logprobs", json!(6), "logprobs"),
        ("top_logprobs", json!(2), "top_logprobs"),
        ("stop", json!(["a", "b", "c", "d", "e"]), "stop"),
        ("max_tokens", json!(0), "max_tokens"),
        ("max_tokens", json!("ten"), "invalid type"),
        ("temperature", json!(-1), "temperature"),
    ] {
        let mut bad = greedy_request(&PROMPT, 4, false);
        bad[field] = value;
        let (status, answer) = swarm.post_json(0, "/v1/completions", &bad).await.unwrap();
        let msg = error_message(status, 400, &answer);
        assert!(msg.contains(says), "{field}: {msg}");
    }
    let mut streamed_lp = greedy_request(&PROMPT, 4, true);
    streamed_lp["logprobs"] = json!(1);
    let (status, answer) = swarm
        .post_json(0, "/v1/completions", &streamed_lp)
        .await
        .unwrap();
    let msg = error_message(status, 400, &answer);
    assert!(msg.contains("stream"), "{msg}");
    let chat = json!({"messages": [], "max_tokens": 4});
    let (status, answer) = swarm
        .post_json(0, "/v1/chat/completions", &chat)
        .await
        .unwrap();
    error_message(status, 400, &answer);

    // Request errors end at once: no failover, no retries.
    let t = Instant::now();
    let (status, answer) = swarm
        .post_json(
            1,
            "/v1/completions",
            &json!({"prompt": [999_999_999], "max_tokens": 2}),
        )
        .await
        .unwrap();
    let msg = error_message(status, 400, &answer);
    assert!(msg.contains("vocabulary"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let long = json!({"prompt": vec![65u32; 100_000], "max_tokens": 2});
    let (status, answer) = swarm.post_json(0, "/v1/completions", &long).await.unwrap();
    let msg = error_message(status, 400, &answer);
    assert!(msg.contains("context"), "{msg}");

    // The framework's own refusals, in the same shape.
    let (status, answer) = post_raw(
        &swarm,
        b"{\"prompt\": [1,".to_vec(),
        Some("application/json"),
    )
    .await;
    error_message(status, 400, &answer);
    let (status, answer) = post_oversized(&swarm.nodes[0].api, 10 << 20).await;
    error_message(status, 413, &answer);
    let (status, answer) = post_raw(&swarm, b"{}".to_vec(), None).await;
    error_message(status, 415, &answer);
    assert_eq!(failovers(&swarm, 0).await, before);
    assert_eq!(failovers(&swarm, 1).await, 0.0);

    // And the node serves on.
    let (status, again) = swarm
        .post_json(0, "/v1/completions", &greedy_request(&PROMPT, 24, false))
        .await
        .unwrap();
    assert_eq!(status, 200, "{again}");
    assert_eq!(token_ids(&again), token_ids(&plain));
    swarm.shutdown().await;
}
