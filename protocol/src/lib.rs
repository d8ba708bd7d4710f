//! shoal-protocol: every message on shoal's wire, its CBOR codec, size limits, versioned
//! names and signed envelopes. Types, codecs and checks only: no async, no network.
//!
//! # Data flow
//!
//! A sender builds a plain serde message ([`Capability`], [`Plan`], [`Activation`], ...),
//! wraps it in [`Signed::sign`] when its kind travels signed, and [`encode`]s it into a frame
//! `[SCHEMA_VERSION, kind, signed, body]`. A receiver hands the bytes to the decoder of the
//! protocol or topic they came on ([`Topic::decode`], [`PipelineMessage::decode`],
//! [`GenerateResponse::decode`], or [`decode::<T>`](decode) for a fixed type), which refuses
//! oversized input before parsing, checks the schema version and kind, parses with bounded
//! allocation and nesting, runs the message's semantic [`Message::validate`], and (for the
//! dispatchers) verifies the signature. Every failure is a typed [`ProtocolError`] with a
//! metrics label ([`ProtocolError::reason`]); nothing panics on any input.
//!
//! | where | frames | signed |
//! |---|---|---|
//! | topic `shoal/1/capability` | [`Capability`] | yes, by `node` |
//! | topic `shoal/1/links` | [`LinkReport`] | yes, by `from` |
//! | topic `shoal/1/plan` | [`Plan`] | yes, by `coordinator` |
//! | `/shoal/activation/1` | [`Activation`], [`TokenReturn`], [`SessionEnd`] | yes, by the sender |
//! | `/shoal/generate/1` | [`GenerateRequest`]; answers [`TokenChunk`]*, then [`GenerateResult`] or [`ErrorReply`] | no |
//! | `/shoal/probe/1` | [`BandwidthProbe`] -> [`BandwidthProbeReply`] | no |
//! | `/shoal/layers/1` | [`FileRequest`] -> [`FileChunk`] or [`ErrorReply`] | no (checked by sha256) |
//! | UDP loss echo | [`LossProbe`] | no |
//! | UDP bandwidth train | [`TrainProbe`], answered by [`TrainAck`] | no |
//! | out of band (text, QR code) | [`Invite`] | yes, by `inviter` |
//!
//! # Tests
//!
//! `cargo test -p shoal-protocol` runs the property tests (round trip of every message;
//! truncated, bit-flipped and random input never panics; oversized input refused before
//! parsing; tampered, forged and wrong-domain signatures refused). The long run pushes at
//! least 1,000,000 random and mutated inputs through every decoder and prints the count:
//!
//! ```text
//! cargo test -p shoal-protocol --release --test wire -- --ignored long_run --nocapture
//! ```
//! (`SHOAL_LONG_RUN_INPUTS=N` changes the count.)

mod capability;
mod check;
mod codec;
mod error;
mod files;
mod generate;
mod gossip;
mod invite;
mod links;
mod message;
mod names;
mod pipeline;
mod plan;
mod probe;
mod signed;
mod tensor;

pub use capability::{
    Battery, Capability, MAX_ADDR_LEN, MAX_HELD_RANGES, MAX_LISTEN_ADDRS, MAX_MODEL_NAME_LEN,
    MAX_WATTS, ModelRef, SpecFigures, TEMP_RANGE_C,
};
pub use codec::{
    Header, RECURSION_LIMIT, SCHEMA_VERSION, Wire, decode, encode, encode_unchecked, peek,
};
pub use error::ProtocolError;
pub use files::{FileChunk, FileRequest, FileResponse, MAX_FILE_BYTES, MAX_FILE_CHUNK};
pub use generate::{
    ErrorCode, ErrorReply, FinishReason, GenerateRequest, GenerateResponse, GenerateResult,
    MAX_CHUNK_TOKENS, MAX_ERROR_MESSAGE, MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, MAX_STOP_IDS,
    MAX_TEXT_BYTES, Sampling, TokenChunk,
};
pub use gossip::GossipMessage;
pub use invite::{Invite, MAX_INVITE_ADDRS, MAX_INVITE_BYTES};
pub use links::{LinkEntry, LinkReport};
pub use message::{Kind, Message};
pub use names::{
    ACTIVATION_PROTOCOL, CAPABILITY_TOPIC, GENERATE_PROTOCOL, GOSSIP_MAX_BYTES, LAYERS_PROTOCOL,
    LINKS_TOPIC, MAX_SWARM, PLAN_TOPIC, PROBE_PROTOCOL, PROTOCOLS, Topic,
};
pub use pipeline::{
    Activation, MAX_ACTIVATION_BYTES, MAX_DRAFT, MAX_LOGITS_BYTES, PipelineMessage, Sampled,
    SessionEnd, TokenReturn,
};
pub use plan::{MAX_CAUSE_LEN, MAX_LAYERS, Objective, Plan, PlanStrategy, Stage};
pub use probe::{
    BandwidthProbe, BandwidthProbeReply, LossProbe, MAX_ACK_EARLIER, MAX_LOSS_PROBE_BYTES,
    MAX_PROBE_PAYLOAD, MAX_TRAIN_ACK_BYTES, MAX_TRAIN_DATAGRAM, TrainAck, TrainProbe,
};
pub use signed::{SIGNED_OVERHEAD, Signed};
pub use tensor::{DType, MAX_RANK, Tensor};
