//! Pipeline messages on `/shoal/activation/1`: activations, returned tokens, session ends.
//!
//! The origin sends the prompt's token ids (an `i64` tensor) to stage 0 as an [`Activation`];
//! each stage sends its output hidden states to the next; the last stage samples and sends a
//! [`TokenReturn`] back to the origin, which then sends the next step. When a generation ends
//! the origin sends [`SessionEnd`] to every stage so it frees the session's K/V cache. All
//! three travel signed by their sender ([`crate::Signed`]); [`PipelineMessage::decode`] picks
//! the type from the frame header, decodes and verifies the signature in one call. Which peer
//! may send what (the previous stage, once per step) is the node's rule, not checked here.

use serde::{Deserialize, Serialize};
use shoal_keys::{Domain, NodeId};

use crate::{
    DType, Kind, MAX_SWARM, Message, ProtocolError, Sampling, Signed, Tensor, decode, encode, peek,
};

/// Largest activation tensor, bytes (a long prefill of a wide model: 2048 tokens x 8192
/// hidden x f32 is 64 MiB).
pub const MAX_ACTIVATION_BYTES: usize = 64 * 1024 * 1024;
/// Largest logits tensor a last stage may return, bytes (a 262k vocabulary in f32 is 1 MiB).
pub const MAX_LOGITS_BYTES: usize = 16 * 1024 * 1024;
/// Most draft tokens one speculative step may verify (docs/pipeline.md, "Speculative
/// decoding"); the step then spans at most `MAX_DRAFT + 1` positions.
pub const MAX_DRAFT: usize = 8;
/// Room for an activation's or token return's fields besides the tensor bytes.
const FIELDS_OVERHEAD: usize = 1024;

/// A tensor passed from one pipeline stage to the next (or the prompt from the origin to
/// stage 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activation {
    /// Epoch of the plan the sender followed.
    pub epoch: u64,
    /// Generation session, chosen by the origin.
    pub session: u64,
    /// Step within the session: 0 is the prefill, then one per decoded token.
    pub step: u64,
    /// Index in the plan of the stage that receives this activation.
    pub stage: u32,
    /// Tokens of the session already in the receiver's K/V cache before this chunk (0 for a
    /// prefill); lets a stage detect a cache that does not match.
    pub position: u32,
    /// Hidden states `[batch, seq, hidden]`, or token ids `[batch, seq]` (`i64`) into stage 0.
    pub tensor: Tensor,
    /// How the last stage picks the token it returns ([`Sampled::Token`]); `None`: it
    /// returns the last position's logits and the origin samples. Stages pass it on unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<Sampling>,
    /// The origin of the session: the last stage sends its [`TokenReturn`] straight there, so
    /// a token comes back in one hop as DESIGN.md's cost model counts it, as well as answering
    /// its own request. Stages pass it on unchanged. `None`: the answer only travels back
    /// through the stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<NodeId>,
    /// Draft tokens this step verifies (speculative decoding): the last `draft.len()` of the
    /// step's token ids are these drafts, and the last stage returns its choice at each of the
    /// last `draft.len() + 1` positions (greedy: [`Sampled::Tokens`], the accepted drafts and
    /// one corrected token; otherwise [`Sampled::Logits`] with one row per position). Empty:
    /// an ordinary step. At most [`MAX_DRAFT`]. Stages pass it on unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draft: Vec<u32>,
}

impl Activation {
    /// Positions whose output the last stage returns: the drafts plus one.
    pub fn verified_positions(&self) -> usize {
        self.draft.len() + 1
    }
}

impl Message for Activation {
    const KIND: Kind = Kind::Activation;
    const DOMAIN: Domain = Domain::ACTIVATION;
    const MAX_BYTES: usize = MAX_ACTIVATION_BYTES + FIELDS_OVERHEAD;

    fn validate(&self) -> Result<(), ProtocolError> {
        check_stage(Self::KIND, self.stage)?;
        if let Some(s) = &self.sample {
            s.check(Self::KIND)?;
        }
        crate::check::max_len(Self::KIND, "draft", self.draft.len(), MAX_DRAFT)?;
        self.tensor.check(Self::KIND, MAX_ACTIVATION_BYTES)
    }
}

fn check_stage(kind: Kind, stage: u32) -> Result<(), ProtocolError> {
    if usize::try_from(stage).is_ok_and(|s| s < MAX_SWARM) {
        Ok(())
    } else {
        Err(ProtocolError::invalid(
            kind,
            format!("stage index {stage} >= {MAX_SWARM}"),
        ))
    }
}

/// What the last stage returns for a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampled {
    /// The token the last stage sampled.
    Token(u32),
    /// The last position's logits (a float tensor), when the origin samples itself; one row
    /// per verified position for a speculative step.
    Logits(Tensor),
    /// A greedy speculative step's answer: the drafts the model agreed with, in order, then
    /// the model's own token at the first disagreement (or after the last draft); between 1
    /// and [`MAX_DRAFT`] + 1 tokens.
    Tokens(Vec<u32>),
}

/// The last stage's answer for one step, sent to the origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenReturn {
    /// Epoch of the plan the sender followed.
    pub epoch: u64,
    /// Generation session.
    pub session: u64,
    /// The step this answers.
    pub step: u64,
    /// The sampled token or the logits.
    pub output: Sampled,
}

impl Message for TokenReturn {
    const KIND: Kind = Kind::TokenReturn;
    const DOMAIN: Domain = Domain::ACTIVATION;
    const MAX_BYTES: usize = MAX_LOGITS_BYTES + FIELDS_OVERHEAD;

    fn validate(&self) -> Result<(), ProtocolError> {
        match &self.output {
            Sampled::Token(_) => Ok(()),
            Sampled::Tokens(t) => {
                if t.is_empty() {
                    return Err(ProtocolError::invalid(Self::KIND, "no tokens"));
                }
                crate::check::max_len(Self::KIND, "tokens", t.len(), MAX_DRAFT + 1)
            }
            Sampled::Logits(t) => {
                if !matches!(t.dtype, DType::F32 | DType::F16 | DType::Bf16) {
                    return Err(ProtocolError::invalid(
                        Self::KIND,
                        format!("logits of type {:?}", t.dtype),
                    ));
                }
                t.check(Self::KIND, MAX_LOGITS_BYTES)
            }
        }
    }
}

/// The origin ends a session: stages drop its K/V cache and replay memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionEnd {
    /// Epoch of the plan the sender followed.
    pub epoch: u64,
    /// The session that ended.
    pub session: u64,
}

impl Message for SessionEnd {
    const KIND: Kind = Kind::SessionEnd;
    const DOMAIN: Domain = Domain::ACTIVATION;
    const MAX_BYTES: usize = 256;

    fn validate(&self) -> Result<(), ProtocolError> {
        Ok(())
    }
}

/// Any message of `/shoal/activation/1`, each signed by its sender.
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineMessage {
    /// An activation for the next stage.
    Activation(Signed<Activation>),
    /// A token (or logits) for the origin.
    Token(Signed<TokenReturn>),
    /// A session ended.
    End(Signed<SessionEnd>),
}

impl PipelineMessage {
    /// Decodes any pipeline frame (size limit of its kind first) and verifies its signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let header = peek(bytes)?;
        let msg = match header.kind {
            Kind::Activation => PipelineMessage::Activation(decode(bytes)?),
            Kind::TokenReturn => PipelineMessage::Token(decode(bytes)?),
            Kind::SessionEnd => PipelineMessage::End(decode(bytes)?),
            other => {
                return Err(ProtocolError::WrongKind {
                    expected: Kind::Activation,
                    expected_signed: true,
                    found: other,
                    found_signed: header.signed,
                });
            }
        };
        msg.verify()?;
        Ok(msg)
    }

    /// Encodes the signed message as a frame.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        match self {
            PipelineMessage::Activation(m) => encode(m),
            PipelineMessage::Token(m) => encode(m),
            PipelineMessage::End(m) => encode(m),
        }
    }

    /// Checks the signature (see [`Signed::verify`]).
    pub fn verify(&self) -> Result<(), ProtocolError> {
        match self {
            PipelineMessage::Activation(m) => m.verify().map(drop),
            PipelineMessage::Token(m) => m.verify().map(drop),
            PipelineMessage::End(m) => m.verify().map(drop),
        }
    }

    /// The node that signed the message.
    pub fn signer(&self) -> &NodeId {
        match self {
            PipelineMessage::Activation(m) => m.signer(),
            PipelineMessage::Token(m) => m.signer(),
            PipelineMessage::End(m) => m.signer(),
        }
    }

    /// `(epoch, session)` of the message, for routing before any heavier work.
    pub fn epoch_session(&self) -> (u64, u64) {
        match self {
            PipelineMessage::Activation(m) => (m.unverified().epoch, m.unverified().session),
            PipelineMessage::Token(m) => (m.unverified().epoch, m.unverified().session),
            PipelineMessage::End(m) => (m.unverified().epoch, m.unverified().session),
        }
    }
}
