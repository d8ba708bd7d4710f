//! Client messages on `/shoal/generate/1`: a request, a stream of token chunks, then one final
//! result or one typed error.
//!
//! A node that takes a request on behalf of a client sends [`GenerateRequest`] to the node that
//! will be the origin; the origin answers with zero or more [`TokenChunk`] frames (when
//! `stream` is set) and then exactly one [`GenerateResult`] or [`ErrorReply`].
//! [`GenerateResponse::decode`] reads any of those three. These frames travel unsigned over the
//! authenticated libp2p stream; a deployment that relays them can wrap them in
//! [`crate::Signed`] (domain `shoal/generate/1`).

use serde::{Deserialize, Serialize};
use shoal_keys::Domain;

use crate::check::{max_len, max_text, non_negative};
use crate::{Kind, Message, ProtocolError, decode, encode, peek};

/// Longest prompt, tokens.
pub const MAX_PROMPT_TOKENS: usize = 128 * 1024;
/// Most tokens one request may generate.
pub const MAX_NEW_TOKENS: u32 = 64 * 1024;
/// Most stop token ids in a request.
pub const MAX_STOP_IDS: usize = 64;
/// Most tokens in one stream chunk.
pub const MAX_CHUNK_TOKENS: usize = 4096;
/// Longest text in a chunk or result, bytes.
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;
/// Longest error message, bytes.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables.
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability reaches `top_p`, in `(0, 1]`.
    pub top_p: f32,
    /// Seed of the sampler's random number generator, so a run is reproducible.
    pub seed: u64,
}

impl Sampling {
    /// Greedy decoding: always the most likely token.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };

    pub(crate) fn check(&self, kind: Kind) -> Result<(), ProtocolError> {
        non_negative(kind, "temperature", f64::from(self.temperature))?;
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ProtocolError::invalid(
                kind,
                format!("top_p must lie in (0, 1], got {}", self.top_p),
            ));
        }
        Ok(())
    }
}

/// A request to generate a continuation of `prompt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// Session id chosen by the requester; answers carry it.
    pub session: u64,
    /// Prompt token ids (already tokenized and templated); at least one.
    pub prompt: Vec<u32>,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// Most tokens to generate, `1..=MAX_NEW_TOKENS`.
    pub max_tokens: u32,
    /// Generation stops after any of these token ids (it is included in the output).
    pub stop: Vec<u32>,
    /// Send [`TokenChunk`]s as tokens arrive, not only the final result.
    pub stream: bool,
}

impl Message for GenerateRequest {
    const KIND: Kind = Kind::GenerateRequest;
    const DOMAIN: Domain = Domain::GENERATE;
    // Five bytes per token id at most, plus the other fields.
    const MAX_BYTES: usize = MAX_PROMPT_TOKENS * 5 + 4096;

    fn validate(&self) -> Result<(), ProtocolError> {
        let k = Self::KIND;
        if self.prompt.is_empty() {
            return Err(ProtocolError::invalid(k, "empty prompt"));
        }
        max_len(k, "prompt", self.prompt.len(), MAX_PROMPT_TOKENS)?;
        max_len(k, "stop", self.stop.len(), MAX_STOP_IDS)?;
        if self.max_tokens == 0 || self.max_tokens > MAX_NEW_TOKENS {
            return Err(ProtocolError::invalid(
                k,
                format!(
                    "max_tokens {} outside 1..={MAX_NEW_TOKENS}",
                    self.max_tokens
                ),
            ));
        }
        self.sampling.check(k)
    }
}

/// Tokens generated so far, streamed in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenChunk {
    /// The request's session.
    pub session: u64,
    /// Index of this chunk's first token in the generated output.
    pub index: u32,
    /// Token ids; at least one.
    pub tokens: Vec<u32>,
    /// Their text, when the sender has the tokenizer (else empty).
    pub text: String,
}

impl Message for TokenChunk {
    const KIND: Kind = Kind::TokenChunk;
    const DOMAIN: Domain = Domain::GENERATE;
    const MAX_BYTES: usize = MAX_CHUNK_TOKENS * 5 + MAX_TEXT_BYTES + 1024;

    fn validate(&self) -> Result<(), ProtocolError> {
        let k = Self::KIND;
        if self.tokens.is_empty() {
            return Err(ProtocolError::invalid(k, "empty chunk"));
        }
        max_len(k, "tokens", self.tokens.len(), MAX_CHUNK_TOKENS)?;
        max_text(k, "text", &self.text, MAX_TEXT_BYTES)
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// A stop token was generated.
    Stop,
}

/// The complete answer, always the last frame of a successful request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateResult {
    /// The request's session.
    pub session: u64,
    /// Every generated token id.
    pub tokens: Vec<u32>,
    /// Their text, when the sender has the tokenizer (else empty).
    pub text: String,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// Prompt length, tokens.
    pub prompt_tokens: u32,
    /// Wall time from request to last token, seconds.
    pub elapsed_s: f64,
}

impl Message for GenerateResult {
    const KIND: Kind = Kind::GenerateResult;
    const DOMAIN: Domain = Domain::GENERATE;
    const MAX_BYTES: usize = MAX_NEW_TOKENS as usize * 5 + MAX_TEXT_BYTES + 1024;

    fn validate(&self) -> Result<(), ProtocolError> {
        let k = Self::KIND;
        max_len(k, "tokens", self.tokens.len(), MAX_NEW_TOKENS as usize)?;
        max_text(k, "text", &self.text, MAX_TEXT_BYTES)?;
        non_negative(k, "elapsed_s", self.elapsed_s)
    }
}

/// Machine-readable class of an [`ErrorReply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is invalid (empty prompt, limits).
    BadRequest,
    /// No plan is in force, so nothing can run.
    NoPlan,
    /// Too many sessions in flight; retry later.
    Busy,
    /// A stage failed and the retries ran out.
    StageFailed,
    /// The answer did not come in time.
    Timeout,
    /// The peer refused the message (signature, sender, epoch).
    Refused,
    /// The request names a model this node does not hold.
    WrongModel,
    /// Anything else; the message says what.
    Internal,
}

/// A typed error answer on any request/response protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    /// The session it concerns, if any.
    pub session: Option<u64>,
    /// The class of error.
    pub code: ErrorCode,
    /// What went wrong, for people; at most [`MAX_ERROR_MESSAGE`] bytes.
    pub message: String,
}

impl Message for ErrorReply {
    const KIND: Kind = Kind::ErrorReply;
    const DOMAIN: Domain = Domain::GENERATE;
    const MAX_BYTES: usize = MAX_ERROR_MESSAGE + 256;

    fn validate(&self) -> Result<(), ProtocolError> {
        max_text(Self::KIND, "message", &self.message, MAX_ERROR_MESSAGE)
    }
}

/// Any answer frame of `/shoal/generate/1`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerateResponse {
    /// More tokens.
    Chunk(TokenChunk),
    /// The complete answer (last frame).
    Done(GenerateResult),
    /// A typed error (last frame).
    Error(ErrorReply),
}

impl GenerateResponse {
    /// Decodes any answer frame, applying its kind's size limit first.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let header = peek(bytes)?;
        match header.kind {
            Kind::TokenChunk => decode(bytes).map(GenerateResponse::Chunk),
            Kind::GenerateResult => decode(bytes).map(GenerateResponse::Done),
            Kind::ErrorReply => decode(bytes).map(GenerateResponse::Error),
            other => Err(ProtocolError::WrongKind {
                expected: Kind::GenerateResult,
                expected_signed: false,
                found: other,
                found_signed: header.signed,
            }),
        }
    }

    /// Encodes the answer as a frame.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        match self {
            GenerateResponse::Chunk(m) => encode(m),
            GenerateResponse::Done(m) => encode(m),
            GenerateResponse::Error(m) => encode(m),
        }
    }

    /// True for the frame that ends an answer ([`GenerateResponse::Done`] or an error).
    pub fn is_last(&self) -> bool {
        !matches!(self, GenerateResponse::Chunk(_))
    }
}
