//! `Kind` and `Message`: what every wire type declares about itself.
//!
//! Each message type names its [`Kind`] (the code written in the frame header), the signing
//! [`Domain`] used when it travels in a [`crate::Signed`] envelope, its size limit, and its
//! semantic checks. The codec ([`crate::encode`], [`crate::decode`]) reads all of these from
//! the trait, so adding a message is one `impl Message`.

use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_keys::{Domain, NodeId};

use crate::ProtocolError;

/// The kind of a message, written as a small integer in every frame header.
///
/// Codes are part of the wire format: never reuse or renumber one; add new kinds at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// [`crate::Capability`], gossiped on `shoal/1/capability`.
    Capability = 1,
    /// [`crate::LinkReport`], gossiped on `shoal/1/links`.
    LinkReport = 2,
    /// [`crate::Plan`], gossiped on `shoal/1/plan`.
    Plan = 3,
    /// [`crate::Activation`], sent on `/shoal/activation/1`.
    Activation = 4,
    /// [`crate::TokenReturn`], sent on `/shoal/activation/1` from the last stage to the origin.
    TokenReturn = 5,
    /// [`crate::SessionEnd`], sent on `/shoal/activation/1` by the origin to free K/V caches.
    SessionEnd = 6,
    /// [`crate::GenerateRequest`], sent on `/shoal/generate/1`.
    GenerateRequest = 7,
    /// [`crate::TokenChunk`], streamed back on `/shoal/generate/1`.
    TokenChunk = 8,
    /// [`crate::GenerateResult`], the last frame of a `/shoal/generate/1` answer.
    GenerateResult = 9,
    /// [`crate::ErrorReply`], a typed error on any request/response protocol.
    ErrorReply = 10,
    /// [`crate::BandwidthProbe`], a timed transfer on `/shoal/probe/1`.
    BandwidthProbe = 11,
    /// [`crate::BandwidthProbeReply`], the answer to a bandwidth probe.
    BandwidthProbeReply = 12,
    /// [`crate::LossProbe`], a UDP datagram for loss probing.
    LossProbe = 13,
    /// [`crate::TrainProbe`], one UDP datagram of a bandwidth train.
    TrainProbe = 14,
    /// [`crate::TrainAck`], the receiver's note of a train datagram's arrival.
    TrainAck = 15,
    /// [`crate::Invite`], carried out of band (text or QR code), never on the swarm.
    Invite = 16,
    /// [`crate::FileRequest`], a chunk of a model file asked for on `/shoal/layers/1`.
    FileRequest = 17,
    /// [`crate::FileChunk`], the answer to a file request.
    FileChunk = 18,
}

impl Kind {
    /// Every kind, in code order.
    pub const ALL: [Kind; 18] = [
        Kind::Capability,
        Kind::LinkReport,
        Kind::Plan,
        Kind::Activation,
        Kind::TokenReturn,
        Kind::SessionEnd,
        Kind::GenerateRequest,
        Kind::TokenChunk,
        Kind::GenerateResult,
        Kind::ErrorReply,
        Kind::BandwidthProbe,
        Kind::BandwidthProbeReply,
        Kind::LossProbe,
        Kind::TrainProbe,
        Kind::TrainAck,
        Kind::Invite,
        Kind::FileRequest,
        Kind::FileChunk,
    ];

    /// The code written in frame headers.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The kind with this code, if any.
    pub fn from_code(code: u64) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| u64::from(k.code()) == code)
    }

    /// A short name for logs and metrics, e.g. `activation`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Capability => "capability",
            Kind::LinkReport => "link_report",
            Kind::Plan => "plan",
            Kind::Activation => "activation",
            Kind::TokenReturn => "token_return",
            Kind::SessionEnd => "session_end",
            Kind::GenerateRequest => "generate_request",
            Kind::TokenChunk => "token_chunk",
            Kind::GenerateResult => "generate_result",
            Kind::ErrorReply => "error_reply",
            Kind::BandwidthProbe => "bandwidth_probe",
            Kind::BandwidthProbeReply => "bandwidth_probe_reply",
            Kind::LossProbe => "loss_probe",
            Kind::TrainProbe => "train_probe",
            Kind::TrainAck => "train_ack",
            Kind::Invite => "invite",
            Kind::FileRequest => "file_request",
            Kind::FileChunk => "file_chunk",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A wire message body: a plain serde type plus what the codec needs to know about it.
pub trait Message: Serialize + DeserializeOwned {
    /// The frame code of this type.
    const KIND: Kind;
    /// The signing domain when this type travels in a [`crate::Signed`] envelope.
    const DOMAIN: Domain;
    /// The largest encoded frame of this type (unsigned) a decoder accepts, in bytes. A
    /// [`crate::Signed`] envelope adds [`crate::SIGNED_OVERHEAD`].
    const MAX_BYTES: usize;

    /// Semantic checks beyond the CBOR shape (ranges, tensor sizes, contiguity). Decoding
    /// runs them, so every decoded message has passed; encoding and signing run them too.
    fn validate(&self) -> Result<(), ProtocolError>;

    /// The node the body names as its author (a capability's `node`, a plan's
    /// `coordinator`); a [`crate::Signed`] envelope must then be signed by that node.
    fn author(&self) -> Option<&NodeId> {
        None
    }
}
