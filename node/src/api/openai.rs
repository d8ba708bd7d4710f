//! OpenAI-compatible endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (both with
//! `stream: true` as server-sent events), `GET /v1/models`, and `GET /metrics` (Prometheus).
//!
//! The node that receives the request is the origin: it tokenizes (a `prompt` may also be an
//! array of token ids), runs the generation through the pipeline and answers in OpenAI's
//! shapes. Sampling: `temperature` (0..=2, 0 = greedy; default 1), `top_p` (0..=1, default
//! 1), `top_k` (extension, default off), `seed` (default 0, so a request is reproducible),
//! `max_tokens` (default 16; `max_completion_tokens` is accepted too; more than the context has
//! left is clamped to it). Generation stops at the model's end-of-sequence tokens and at `stop`
//! sequences (a string or up to four, matched on the decoded text, also when streaming; the
//! stop sequence itself is not returned, see `stop.rs`). `usage` is in every plain answer and,
//! with `stream_options.include_usage`, in a last streamed chunk with no choices. `n` must be 1.
//! Log-probabilities (of the model's distribution, natural log): completions take `logprobs`
//! 0..=5 and answer in the legacy shape (`tokens`, `token_logprobs`, `top_logprobs`,
//! `text_offset`), chat takes `logprobs: true` with `top_logprobs` 0..=20 and answers with
//! `logprobs.content`; the last stage then returns logits even for greedy decoding; not with
//! `stream` (refused). Non-zero `presence_penalty`/`frequency_penalty` are refused with a 400
//! that says so; `user` and unknown fields are ignored, as OpenAI's server does.
//! Every error, the framework's own (bad JSON, wrong types, a body over [`BODY_LIMIT`]) included,
//! is a 4xx in OpenAI's error shape. Every non-streamed answer carries a `shoal` object (token
//! ids, tokens/s, timings, epoch, retries); each streamed chunk's choice carries its
//! `token_ids`. shoal's own request field `speculation` (`"off"`, `"ngram"`, `"model"`) picks
//! the drafter of speculative decoding for the request; the `shoal` object reports its passes,
//! drafts and accepted drafts.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use shoal_model::SamplingConfig;
use tokio::sync::mpsc;

use super::stop::{MAX_STOP_BYTES, MAX_STOPS, StopStep, StopText};
use crate::pipeline::chat::Message;
use crate::pipeline::{
    DrafterKind, GenerateError, GenerateParams, Generated, MAX_TOP_LOGPROBS, PipelineHandle,
    TokenLogprobs,
};

/// Default `max_tokens`, as OpenAI's completions endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;
/// Server-sent events buffered per streamed request.
const EVENT_BUFFER: usize = 64;
/// Largest request body, bytes (a prompt of token ids at the largest contexts fits).
pub const BODY_LIMIT: usize = 4 << 20;

/// The routes of this module, with the pipeline as state.
pub fn router(pipeline: PipelineHandle) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
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
    stream_options: Option<StreamOptions>,
    stop: Option<Stop>,
    n: Option<u32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    /// shoal's extension: speculative decoding's drafter for this request (`"off"`,
    /// `"ngram"`, `"model"`); absent: the node's `[pipeline] drafter`.
    speculation: Option<String>,
}

/// `stream_options` of a streamed request.
#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// `stop`: one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A JSON body whose rejections (syntax, types, size, content type) answer in OpenAI's shape.
struct ApiJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => {
                // OpenAI answers wrong types with 400 too; a too-large body keeps its 413.
                let status = match r.status() {
                    StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                    s => s,
                };
                Err(ApiError(status, r.body_text()))
            }
        }
    }
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

/// Seconds a client is asked to wait before retrying a 503 (`Retry-After`).
const RETRY_AFTER_S: u64 = 1;

/// An error in OpenAI's shape.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = if self.0.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        let body =
            Json(json!({"error": {"message": self.1, "type": kind, "code": self.0.as_u16()}}));
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            // Busy (every generation slot taken) or no plan yet: both pass within seconds.
            let retry = [(header::RETRY_AFTER, RETRY_AFTER_S.to_string())];
            return (self.0, retry, body).into_response();
        }
        (self.0, body).into_response()
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
    /// The stop sequences, checked against OpenAI's limits.
    fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stops.len() > MAX_STOPS || stops.iter().any(|s| s.len() > MAX_STOP_BYTES) {
            return Err(bad(format!(
                "`stop` takes at most {MAX_STOPS} sequences of at most {MAX_STOP_BYTES} bytes"
            )));
        }
        Ok(stops)
    }

    /// How many alternatives per token `logprobs` asks for (`None`: no logprobs). Completions
    /// take `logprobs: 0..=5`; chat takes `logprobs: true` with `top_logprobs: 0..=20`. Not
    /// with `stream`.
    fn logprobs(&self, kind: Kind) -> Result<Option<usize>, ApiError> {
        let count = |v: &Value, max: usize, name: &str| -> Result<usize, ApiError> {
            v.as_u64()
                .map(|n| n as usize)
                .filter(|n| *n <= max)
                .ok_or_else(|| bad(format!("{name} must be an integer from 0 to {max}")))
        };
        fn given(v: &Option<Value>) -> Option<&Value> {
            v.as_ref().filter(|v| !v.is_null())
        }
        let k = match kind {
            Kind::Text => {
                if given(&self.top_logprobs).is_some() {
                    return Err(bad(
                        "top_logprobs is for chat; completions take logprobs: 0..=5",
                    ));
                }
                given(&self.logprobs)
                    .map(|v| count(v, 5, "logprobs"))
                    .transpose()?
            }
            Kind::Chat => {
                let on = match given(&self.logprobs) {
                    None => false,
                    Some(v) => v
                        .as_bool()
                        .ok_or_else(|| bad("logprobs must be true or false for chat"))?,
                };
                let top = given(&self.top_logprobs)
                    .map(|v| count(v, MAX_TOP_LOGPROBS, "top_logprobs"))
                    .transpose()?;
                match (on, top) {
                    (false, Some(_)) => {
                        return Err(bad("top_logprobs needs logprobs: true"));
                    }
                    (false, None) => None,
                    (true, t) => Some(t.unwrap_or(0)),
                }
            }
        };
        if k.is_some() && self.stream {
            return Err(bad("logprobs are not supported with stream"));
        }
        Ok(k)
    }

    /// Refuses the fields shoal does not implement, saying so.
    fn unsupported(&self) -> Result<(), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(bad("only n = 1 is supported: one choice per request"));
        }
        let nonzero = |v: Option<f32>| v.is_some_and(|v| v != 0.0);
        if nonzero(self.presence_penalty) || nonzero(self.frequency_penalty) {
            return Err(bad(
                "presence_penalty and frequency_penalty are not supported (only 0)",
            ));
        }
        Ok(())
    }

    /// Sampling parameters in the ranges OpenAI's server accepts: `temperature` 0..=2,
    /// `top_p` 0..=1.
    fn ranges(&self) -> Result<(), ApiError> {
        let check = |name: &str, v: Option<f32>, max: f32| match v {
            Some(v) if !(0.0..=max).contains(&v) => Err(bad(format!(
                "Invalid '{name}': expected a value from 0 to {max}, but got {v} instead."
            ))),
            _ => Ok(()),
        };
        check("temperature", self.temperature, 2.0)?;
        check("top_p", self.top_p, 1.0)
    }

    fn params(
        &self,
        p: &PipelineHandle,
        prompt: Vec<u32>,
        kind: Kind,
    ) -> Result<GenerateParams, ApiError> {
        self.unsupported()?;
        self.ranges()?;
        let logprobs = self.logprobs(kind)?;
        if let (Some(want), Some(have)) = (&self.model, p.model_name())
            && *want != have
        {
            return Err(bad(format!(
                "model {want:?} is not served here; this swarm serves {have:?}"
            )));
        }
        let params = GenerateParams {
            prompt,
            max_tokens: self
                .max_tokens
                .or(self.max_completion_tokens)
                .unwrap_or(DEFAULT_MAX_TOKENS),
            sampling: SamplingConfig {
                temperature: self.temperature.unwrap_or(1.0),
                top_k: self.top_k.unwrap_or(0),
                top_p: self.top_p.unwrap_or(1.0),
                seed: self.seed.unwrap_or(0),
            },
            stop: p.eos_ids(),
            logprobs,
            drafter: self
                .speculation
                .as_deref()
                .map(str::parse::<DrafterKind>)
                .transpose()
                .map_err(|e| bad(format!("speculation: {e}")))?,
        };
        // The origin's checks (prompt, vocabulary, context, sampling), before anything is
        // streamed.
        Ok(p.validate(&params)?)
    }
}

async fn completions(
    State(p): State<PipelineHandle>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let prompt = match req.prompt {
        Prompt::Ids(ids) => ids,
        Prompt::Text(t) => p.encode(&t)?,
        Prompt::Texts(mut v) if v.len() == 1 => p.encode(&v.remove(0))?,
        Prompt::Texts(_) => return Err(bad("exactly one prompt per request")),
    };
    answer(p, &req.common, prompt, Kind::Text).await
}

async fn chat_completions(
    State(p): State<PipelineHandle>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    if req.messages.is_empty() {
        return Err(bad("messages must not be empty"));
    }
    let prompt = p.chat_prompt(&req.messages)?;
    answer(p, &req.common, prompt, Kind::Chat).await
}

/// Runs the request and answers it, streamed or whole.
async fn answer(
    p: PipelineHandle,
    common: &Common,
    prompt: Vec<u32>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let params = common.params(&p, prompt, kind)?;
    let stops = StopText::new(common.stops()?);
    if common.stream {
        let usage = common
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return Ok(stream(p, params, kind, stops, usage).into_response());
    }
    let (g, done) = generate_until_stop(&p, &params, stops).await?;
    Ok(Json(kind.full(&p, &params, &g, &done)).into_response())
}

/// What a plain answer returns: the text (up to a stop sequence), its tokens and why it ended.
struct Done {
    text: String,
    tokens: Vec<u32>,
    finish: &'static str,
}

/// Runs a generation to its end or to the first stop sequence in its text.
async fn generate_until_stop(
    p: &PipelineHandle,
    params: &GenerateParams,
    mut stops: StopText,
) -> Result<(Generated, Done), ApiError> {
    if stops.is_empty() {
        let g = p.generate(params, None).await?;
        let done = Done {
            text: p.decode(&g.tokens).unwrap_or_default(),
            tokens: g.tokens.clone(),
            finish: finish_label(g.finish),
        };
        return Ok((g, done));
    }
    let (tx, mut rx) = mpsc::channel::<u32>(EVENT_BUFFER);
    let (gen_p, gen_params) = (p.clone(), params.clone());
    let generation = tokio::spawn(async move { gen_p.generate(&gen_params, Some(&tx)).await });
    let (mut tokens, mut text, mut stopped) = (Vec::new(), String::new(), false);
    while let Some(tok) = rx.recv().await {
        tokens.push(tok);
        let full = p.decode(&tokens).unwrap_or_default();
        match stops.feed(&full) {
            StopStep::Emit(t) => text.push_str(&t),
            StopStep::Stop(t) => {
                text.push_str(&t);
                stopped = true;
                break;
            }
        }
    }
    // Dropping the receiver ends the generation at its next token.
    drop(rx);
    let g = generation
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    if !stopped {
        text.push_str(&stops.finish(&p.decode(&tokens).unwrap_or_default()));
    }
    let finish = if stopped {
        "stop"
    } else {
        finish_label(g.finish)
    };
    Ok((
        g,
        Done {
            text,
            tokens,
            finish,
        },
    ))
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
    /// The `logprobs` object of a choice: completions' legacy form (`tokens`,
    /// `token_logprobs`, `top_logprobs`, `text_offset`) or chat's `content` list.
    fn logprobs(self, p: &PipelineHandle, lps: &[TokenLogprobs]) -> Value {
        let text = |t: u32| p.decode(&[t]).unwrap_or_default();
        match self {
            Kind::Text => {
                let tokens: Vec<String> = lps.iter().map(|l| text(l.token)).collect();
                let mut offset = 0;
                let offsets: Vec<usize> = tokens
                    .iter()
                    .map(|t| {
                        let at = offset;
                        offset += t.len();
                        at
                    })
                    .collect();
                let top: Vec<Value> = lps
                    .iter()
                    .map(|l| {
                        let m: serde_json::Map<String, Value> =
                            l.top.iter().map(|(t, lp)| (text(*t), json!(lp))).collect();
                        Value::Object(m)
                    })
                    .collect();
                json!({
                    "tokens": tokens,
                    "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
            Kind::Chat => {
                let entry = |t: u32, lp: f32| {
                    let s = text(t);
                    json!({"token": s, "logprob": lp, "bytes": s.as_bytes()})
                };
                let content: Vec<Value> = lps
                    .iter()
                    .map(|l| {
                        let mut e = entry(l.token, l.logprob);
                        e["top_logprobs"] = l.top.iter().map(|(t, lp)| entry(*t, *lp)).collect();
                        e
                    })
                    .collect();
                json!({"content": content})
            }
        }
    }

    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Kind::Text, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    /// The complete (non-streamed) answer.
    fn full(
        self,
        p: &PipelineHandle,
        params: &GenerateParams,
        g: &Generated,
        done: &Done,
    ) -> Value {
        let (text, finish) = (&done.text, done.finish);
        // A stop sequence may end the text inside the generated tokens: report the tokens
        // that were kept.
        let lps = &g.logprobs[..g.logprobs.len().min(done.tokens.len())];
        let logprobs = if params.logprobs.is_some() {
            self.logprobs(p, lps)
        } else {
            Value::Null
        };
        let choice = match self {
            Kind::Text => {
                json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish, "token_ids": done.tokens})
            }
            Kind::Chat => {
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": finish, "token_ids": done.tokens})
            }
        };
        let secs = g.elapsed.as_secs_f64();
        json!({
            "id": request_id(self),
            "object": self.object(false),
            "created": now_s(),
            "model": p.model_name(),
            "choices": [choice],
            "usage": usage(params.prompt.len(), done.tokens.len()),
            "shoal": {
                "token_ids": done.tokens,
                "tokens_per_s": if secs > 0.0 { g.tokens.len() as f64 / secs } else { 0.0 },
                "elapsed_s": secs,
                "prefill_s": g.prefill.as_secs_f64(),
                "epoch": g.epoch,
                "retries": g.retries,
                "speculation": {
                    "drafter": g.drafter.to_string(),
                    "passes": g.spec.passes,
                    "drafted": g.spec.drafted,
                    "accepted": g.spec.accepted,
                },
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

/// OpenAI's `usage` object.
fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// The streamed answer: one event per token (text decoded incrementally, held back while it
/// may still become a stop sequence), a final event with the finish reason (or an error
/// object), the usage chunk when asked for, then `[DONE]`.
fn stream(
    p: PipelineHandle,
    params: GenerateParams,
    kind: Kind,
    mut stops: StopText,
    include_usage: bool,
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
        let send = |v: Value| {
            let tx = ev_tx.clone();
            async move { tx.send(Event::default().data(v.to_string())).await.is_ok() }
        };
        let (mut ids, mut first, mut stopped) = (Vec::new(), true, false);
        while let Some(tok) = tok_rx.recv().await {
            ids.push(tok);
            let text = p.decode(&ids).unwrap_or_default();
            let delta = match stops.feed(&text) {
                StopStep::Emit(d) => d,
                StopStep::Stop(d) => {
                    stopped = true;
                    d
                }
            };
            if !send(kind.chunk(&id, &model, &delta, &[tok], None, first)).await {
                return; // the client went away; dropping tok_rx stops the generation
            }
            first = false;
            if stopped {
                break;
            }
        }
        drop(tok_rx);
        let last = match generation.await {
            Ok(Ok(g)) => {
                let rest = if stopped {
                    String::new()
                } else {
                    stops.finish(&p.decode(&ids).unwrap_or_default())
                };
                if !rest.is_empty() {
                    send(kind.chunk(&id, &model, &rest, &[], None, first)).await;
                }
                let finish = if stopped {
                    "stop"
                } else {
                    finish_label(g.finish)
                };
                kind.chunk(&id, &model, "", &[], Some(finish), false)
            }
            Ok(Err(e)) => json!({"error": {"message": e.to_string(), "type": "server_error"}}),
            Err(e) => json!({"error": {"message": e.to_string(), "type": "server_error"}}),
        };
        send(last).await;
        if include_usage {
            let chunk = json!({
                "id": id, "object": kind.object(true), "created": now_s(), "model": model,
                "choices": [], "usage": usage(params.prompt.len(), ids.len()),
            });
            send(chunk).await;
        }
        let _ = ev_tx.send(Event::default().data("[DONE]")).await;
    });
    let events = futures::stream::unfold(ev_rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok(e), rx))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_node_answers_503_with_retry_after_and_a_bad_request_without() {
        let busy = ApiError::from(GenerateError::Busy).into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            busy.headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(RETRY_AFTER_S.to_string().as_bytes())
        );
        let bad = bad("no").into_response();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert!(bad.headers().get(header::RETRY_AFTER).is_none());
    }
}
