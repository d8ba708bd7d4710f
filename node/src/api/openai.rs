//! OpenAI-compatible endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (both with
//! `stream: true` as server-sent events), `GET /v1/models`, and `GET /metrics` (Prometheus).
//!
//! The node that receives the request is the origin: it tokenizes (a `prompt` may also be an
//! array of token ids), runs the generation through the pipeline and answers in OpenAI's
//! shapes. Sampling: `temperature` (0 = greedy; default 1), `top_p` (default 1), `top_k`
//! (extension, default off), `seed` (default 0, so a request is reproducible), `max_tokens`
//! (default 16; `max_completion_tokens` is accepted too). Generation stops at the model's
//! end-of-sequence tokens; `stop` strings are not supported and are refused with 400.
//! Every non-streamed answer carries a `shoal` object (token ids, tokens/s, timings, epoch,
//! retries); each streamed chunk's choice carries its `token_ids`.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_model::SamplingConfig;
use tokio::sync::mpsc;

use crate::pipeline::chat::Message;
use crate::pipeline::{GenerateError, GenerateParams, Generated, PipelineHandle};

/// Default `max_tokens`, as OpenAI's completions endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;
/// Server-sent events buffered per streamed request.
const EVENT_BUFFER: usize = 64;

/// The routes of this module, with the pipeline as state.
pub fn router(pipeline: PipelineHandle) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .with_state(pipeline)
}

/// A text prompt or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
}

/// Fields shared by both endpoints.
#[derive(Debug, Deserialize)]
struct Common {
    model: Option<String>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    stop: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: Prompt,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

/// An error in OpenAI's shape.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = if self.0.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        (
            self.0,
            Json(json!({"error": {"message": self.1, "type": kind, "code": self.0.as_u16()}})),
        )
            .into_response()
    }
}

impl From<GenerateError> for ApiError {
    fn from(e: GenerateError) -> Self {
        let status = match e {
            GenerateError::BadRequest(_) | GenerateError::NoTokenizer(_) => StatusCode::BAD_REQUEST,
            GenerateError::NoPlan | GenerateError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            GenerateError::Failed { .. } => StatusCode::BAD_GATEWAY,
        };
        ApiError(status, e.to_string())
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

impl Common {
    fn params(&self, p: &PipelineHandle, prompt: Vec<u32>) -> Result<GenerateParams, ApiError> {
        if self.stop.as_ref().is_some_and(|s| !s.is_null()) {
            return Err(bad(
                "`stop` sequences are not supported; generation stops at the model's end-of-sequence tokens",
            ));
        }
        if let (Some(want), Some(have)) = (&self.model, p.model_name())
            && *want != have
        {
            return Err(bad(format!(
                "model {want:?} is not served here; this swarm serves {have:?}"
            )));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        let top_p = self.top_p.unwrap_or(1.0);
        if !(0.0..=100.0).contains(&temperature) || top_p <= 0.0 || top_p > 1.0 || top_p.is_nan() {
            return Err(bad("temperature must be >= 0 and top_p in (0, 1]"));
        }
        let max_tokens = self
            .max_tokens
            .or(self.max_completion_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS);
        if max_tokens == 0 || prompt.is_empty() {
            return Err(bad("max_tokens and the prompt must not be empty"));
        }
        Ok(GenerateParams {
            prompt,
            max_tokens,
            sampling: SamplingConfig {
                temperature,
                top_k: self.top_k.unwrap_or(0),
                top_p,
                seed: self.seed.unwrap_or(0),
            },
            stop: p.eos_ids(),
        })
    }
}

async fn completions(
    State(p): State<PipelineHandle>,
    Json(req): Json<CompletionRequest>,
) -> Result<Response, ApiError> {
    let prompt = match req.prompt {
        Prompt::Ids(ids) => ids,
        Prompt::Text(t) => p.encode(&t)?,
        Prompt::Texts(mut v) if v.len() == 1 => p.encode(&v.remove(0))?,
        Prompt::Texts(_) => return Err(bad("exactly one prompt per request")),
    };
    let params = req.common.params(&p, prompt)?;
    let kind = Kind::Text;
    if req.common.stream {
        return Ok(stream(p, params, kind).into_response());
    }
    let g = p.generate(&params, None).await?;
    Ok(Json(kind.full(&p, &params, &g)).into_response())
}

async fn chat_completions(
    State(p): State<PipelineHandle>,
    Json(req): Json<ChatRequest>,
) -> Result<Response, ApiError> {
    if req.messages.is_empty() {
        return Err(bad("messages must not be empty"));
    }
    let prompt = p.chat_prompt(&req.messages)?;
    let params = req.common.params(&p, prompt)?;
    let kind = Kind::Chat;
    if req.common.stream {
        return Ok(stream(p, params, kind).into_response());
    }
    let g = p.generate(&params, None).await?;
    Ok(Json(kind.full(&p, &params, &g)).into_response())
}

async fn models(State(p): State<PipelineHandle>) -> Json<Value> {
    let data: Vec<Value> = p
        .model_name()
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "shoal"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn metrics(State(p): State<PipelineHandle>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        p.render_metrics(),
    )
}

/// Which endpoint's shapes to answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Chat,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(kind: Kind) -> String {
    let prefix = if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

fn finish_label(f: shoal_protocol::FinishReason) -> &'static str {
    match f {
        shoal_protocol::FinishReason::Length => "length",
        shoal_protocol::FinishReason::Stop => "stop",
    }
}

impl Kind {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Kind::Text, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    /// The complete (non-streamed) answer.
    fn full(self, p: &PipelineHandle, params: &GenerateParams, g: &Generated) -> Value {
        let text = p.decode(&g.tokens).unwrap_or_default();
        let finish = finish_label(g.finish);
        let choice = match self {
            Kind::Text => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish, "token_ids": g.tokens})
            }
            Kind::Chat => {
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "token_ids": g.tokens})
            }
        };
        let secs = g.elapsed.as_secs_f64();
        json!({
            "id": request_id(self),
            "object": self.object(false),
            "created": now_s(),
            "model": p.model_name(),
            "choices": [choice],
            "usage": {
                "prompt_tokens": params.prompt.len(),
                "completion_tokens": g.tokens.len(),
                "total_tokens": params.prompt.len() + g.tokens.len(),
            },
            "shoal": {
                "token_ids": g.tokens,
                "tokens_per_s": if secs > 0.0 { g.tokens.len() as f64 / secs } else { 0.0 },
                "elapsed_s": secs,
                "prefill_s": g.prefill.as_secs_f64(),
                "epoch": g.epoch,
                "retries": g.retries,
            },
        })
    }

    /// One streamed chunk with `text` (and its tokens) or the final `finish` reason.
    fn chunk(
        self,
        id: &str,
        model: &Option<String>,
        text: &str,
        ids: &[u32],
        finish: Option<&str>,
        first: bool,
    ) -> Value {
        let choice = match self {
            Kind::Text => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish, "token_ids": ids})
            }
            Kind::Chat => {
                let delta = if first {
                    json!({"role": "assistant", "content": text})
                } else if finish.is_some() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": 0, "delta": delta, "finish_reason": finish, "token_ids": ids})
            }
        };
        json!({"id": id, "object": self.object(true), "created": now_s(), "model": model, "choices": [choice]})
    }
}

/// The streamed answer: one event per token (text decoded incrementally), a final event
/// with the finish reason (or an error object), then `[DONE]`.
fn stream(
    p: PipelineHandle,
    params: GenerateParams,
    kind: Kind,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let (ev_tx, ev_rx) = mpsc::channel::<Event>(EVENT_BUFFER);
    tokio::spawn(async move {
        let (tok_tx, mut tok_rx) = mpsc::channel::<u32>(EVENT_BUFFER);
        let gen_p = p.clone();
        let gen_params = params.clone();
        let generation =
            tokio::spawn(async move { gen_p.generate(&gen_params, Some(&tok_tx)).await });
        let id = request_id(kind);
        let model = p.model_name();
        let (mut ids, mut sent) = (Vec::new(), String::new());
        let mut first = true;
        while let Some(tok) = tok_rx.recv().await {
            ids.push(tok);
            let text = p.decode(&ids).unwrap_or_default();
            // Hold back an incomplete UTF-8 sequence until its last byte arrives.
            let delta = match text.strip_prefix(sent.as_str()) {
                Some(d) if !d.ends_with('\u{fffd}') => d.to_string(),
                _ => String::new(),
            };
            if !delta.is_empty() {
                sent.push_str(&delta);
            }
            let ev = kind.chunk(&id, &model, &delta, &[tok], None, first);
            first = false;
            if ev_tx
                .send(Event::default().data(ev.to_string()))
                .await
                .is_err()
            {
                return; // the client went away; dropping tok_rx stops the generation
            }
        }
        let last = match generation.await {
            Ok(Ok(g)) => kind.chunk(&id, &model, "", &[], Some(finish_label(g.finish)), false),
            Ok(Err(e)) => json!({"error": {"message": e.to_string(), "type": "server_error"}}),
            Err(e) => json!({"error": {"message": e.to_string(), "type": "server_error"}}),
        };
        let _ = ev_tx.send(Event::default().data(last.to_string())).await;
        let _ = ev_tx.send(Event::default().data("[DONE]")).await;
    });
    let events = futures::stream::unfold(ev_rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok(e), rx))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
