//! `ProtocolError`: every way a message can be refused, as a typed value.
//!
//! Decoders never panic: whatever the bytes, they return one of these. [`ProtocolError::reason`]
//! gives a short stable label per variant so the node can count refusals by reason in its
//! metrics and lower the sender's score.

use shoal_keys::NodeId;

use crate::Kind;

/// Why a message could not be encoded, decoded, validated or verified.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    /// The input is longer than the kind's size limit; refused before any parsing.
    #[error("{kind} message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The kind whose limit applies.
        kind: Kind,
        /// Length of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input ended before the message did.
    #[error("truncated {}", kind.map_or("frame", |k| k.name()))]
    Truncated {
        /// The kind being decoded (or [`Kind`] of the frame header when that was cut).
        kind: Option<Kind>,
    },
    /// The bytes are not well-formed CBOR of the expected shape.
    #[error("malformed {}: {reason}", kind.map_or("frame", |k| k.name()))]
    Malformed {
        /// The kind being decoded, when the frame header was readable.
        kind: Option<Kind>,
        /// What the parser found.
        reason: String,
    },
    /// The frame carries a schema version this build does not speak.
    #[error("schema version {found}, this node speaks {expected}")]
    Version {
        /// Version in the frame.
        found: u64,
        /// [`crate::SCHEMA_VERSION`].
        expected: u16,
    },
    /// The frame names a message kind this build does not know.
    #[error("unknown message kind code {0}")]
    UnknownKind(u64),
    /// The frame holds another kind than the caller expected (or is signed when it should not
    /// be, or the reverse).
    #[error("expected {}{expected}, got {}{found}", signed_word(*expected_signed), signed_word(*found_signed))]
    WrongKind {
        /// Kind the caller asked for.
        expected: Kind,
        /// Whether the caller asked for a signed envelope.
        expected_signed: bool,
        /// Kind in the frame.
        found: Kind,
        /// Whether the frame holds a signed envelope.
        found_signed: bool,
    },
    /// Bytes follow the end of the message.
    #[error("{count} trailing bytes after {kind} message")]
    TrailingBytes {
        /// The kind decoded.
        kind: Kind,
        /// How many bytes were left over.
        count: usize,
    },
    /// The message decoded but breaks a semantic rule (shape, ranges, contiguity).
    #[error("invalid {kind}: {reason}")]
    Invalid {
        /// The kind checked.
        kind: Kind,
        /// The rule that failed.
        reason: String,
    },
    /// The signature does not verify for the signer, the domain and the body.
    #[error("bad signature on {kind} from {signer}")]
    BadSignature {
        /// The kind of the signed body.
        kind: Kind,
        /// The node the envelope claims signed it.
        signer: NodeId,
    },
    /// The envelope's signer is not the node the body names as its author.
    #[error("{kind} names {claimed} as its author but is signed by {signer}")]
    SignerMismatch {
        /// The kind of the signed body.
        kind: Kind,
        /// The envelope's signer (boxed: node ids are large and errors should stay small).
        signer: Box<NodeId>,
        /// The author named inside the body.
        claimed: Box<NodeId>,
    },
    /// A gossip topic name that is not one of [`crate::Topic`].
    #[error("unknown gossip topic {0:?}")]
    UnknownTopic(String),
    /// Serialising a message failed.
    #[error("cannot encode {kind}: {reason}")]
    Encode {
        /// The kind being encoded.
        kind: Kind,
        /// The serialiser's message.
        reason: String,
    },
}

fn signed_word(signed: bool) -> &'static str {
    if signed { "signed " } else { "" }
}

impl ProtocolError {
    /// A short stable label for metrics (`refused_total{reason="too_large"}`).
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::TooLarge { .. } => "too_large",
            ProtocolError::Truncated { .. } => "truncated",
            ProtocolError::Malformed { .. } => "malformed",
            ProtocolError::Version { .. } => "version",
            ProtocolError::UnknownKind(_) => "unknown_kind",
            ProtocolError::WrongKind { .. } => "wrong_kind",
            ProtocolError::TrailingBytes { .. } => "trailing_bytes",
            ProtocolError::Invalid { .. } => "invalid",
            ProtocolError::BadSignature { .. } => "bad_signature",
            ProtocolError::SignerMismatch { .. } => "signer_mismatch",
            ProtocolError::UnknownTopic(_) => "unknown_topic",
            ProtocolError::Encode { .. } => "encode",
        }
    }

    /// Every label [`ProtocolError::reason`] can return, so metrics can print zeros too.
    pub const REASONS: [&'static str; 12] = [
        "too_large",
        "truncated",
        "malformed",
        "version",
        "unknown_kind",
        "wrong_kind",
        "trailing_bytes",
        "invalid",
        "bad_signature",
        "signer_mismatch",
        "unknown_topic",
        "encode",
    ];

    /// Shorthand for [`ProtocolError::Invalid`].
    pub(crate) fn invalid(kind: Kind, reason: impl Into<String>) -> Self {
        ProtocolError::Invalid {
            kind,
            reason: reason.into(),
        }
    }
}
