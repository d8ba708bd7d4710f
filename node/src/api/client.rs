//! A small client of a node's `POST /v1/completions`, for `shoal generate --api ADDR`: it
//! streams the answer (server-sent events), hands each text piece to the caller as it
//! arrives, and returns the generated token ids, the text and the speed seen by the client.

use std::time::Instant;

use serde_json::{Value, json};

/// Errors of the API client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request could not be sent or the answer not read.
    #[error("{url}: {reason}")]
    Http {
        /// The URL asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The node answered with an error.
    #[error("the node at {addr} refused the request ({status}): {message}")]
    Refused {
        /// The node's address.
        addr: String,
        /// HTTP status.
        status: u16,
        /// The node's message.
        message: String,
    },
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Prompt text (tokenized by the node), or
    pub prompt: Option<String>,
    /// prompt token ids.
    pub prompt_ids: Option<Vec<u32>>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Temperature; 0 is greedy.
    pub temperature: f32,
    /// Top-p.
    pub top_p: f32,
    /// Top-k (0 = off).
    pub top_k: usize,
    /// Sampler seed.
    pub seed: u64,
    /// An API key of the node (when it has `api_keys`), sent as a bearer token.
    pub api_key: Option<String>,
}

/// The answer as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Generated text.
    pub text: String,
    /// Generated token ids.
    pub token_ids: Vec<u32>,
    /// Tokens per second, request to last token.
    pub tokens_per_s: f64,
    /// Seconds from request to last token.
    pub elapsed_s: f64,
    /// Seconds from request to the first token (the prompt's time, as the client sees it).
    pub first_token_s: f64,
}

/// Sends `c` to the node whose API listens on `addr` (`host:port` or a URL) and streams the
/// answer; `on_text` sees each new piece of text.
pub async fn complete(
    addr: &str,
    c: &Completion,
    mut on_text: impl FnMut(&str),
) -> Result<Answer, ClientError> {
    use futures::StreamExt;
    let base = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let url = format!("{}/v1/completions", base.trim_end_matches('/'));
    let http_err = |reason: String| ClientError::Http {
        url: url.clone(),
        reason,
    };
    let prompt = match (&c.prompt_ids, &c.prompt) {
        (Some(ids), _) => json!(ids),
        (None, Some(t)) => json!(t),
        (None, None) => json!(""),
    };
    let body = json!({
        "prompt": prompt, "max_tokens": c.max_tokens, "temperature": c.temperature,
        "top_p": c.top_p, "top_k": c.top_k, "seed": c.seed, "stream": true,
    });
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| http_err(e.to_string()))?;
    let start = Instant::now();
    let mut request = client.post(&url).json(&body);
    if let Some(key) = &c.api_key {
        request = request.bearer_auth(key);
    }
    let r = request.send().await.map_err(|e| http_err(e.to_string()))?;
    let status = r.status().as_u16();
    if status != 200 {
        let v: Value = r.json().await.unwrap_or(Value::Null);
        let message = v["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_string();
        return Err(ClientError::Refused {
            addr: addr.to_string(),
            status,
            message,
        });
    }
    let mut answer = Answer {
        text: String::new(),
        token_ids: Vec::new(),
        tokens_per_s: 0.0,
        elapsed_s: 0.0,
        first_token_s: 0.0,
    };
    let mut bytes = r.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = bytes.next().await {
        buf.push_str(&String::from_utf8_lossy(
            &chunk.map_err(|e| http_err(e.to_string()))?,
        ));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for data in event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
            {
                if data == "[DONE]" {
                    continue;
                }
                let v: Value = serde_json::from_str(data).map_err(|e| http_err(e.to_string()))?;
                if let Some(msg) = v["error"]["message"].as_str() {
                    return Err(ClientError::Refused {
                        addr: addr.to_string(),
                        status,
                        message: msg.to_string(),
                    });
                }
                let choice = &v["choices"][0];
                let piece = choice["text"].as_str().unwrap_or_default();
                if !piece.is_empty() {
                    on_text(piece);
                    answer.text.push_str(piece);
                }
                if answer.token_ids.is_empty() {
                    answer.first_token_s = start.elapsed().as_secs_f64();
                }
                for t in choice["token_ids"].as_array().into_iter().flatten() {
                    answer.token_ids.push(t.as_u64().unwrap_or(0) as u32);
                }
            }
        }
    }
    answer.elapsed_s = start.elapsed().as_secs_f64();
    if answer.elapsed_s > 0.0 {
        answer.tokens_per_s = answer.token_ids.len() as f64 / answer.elapsed_s;
    }
    Ok(answer)
}
