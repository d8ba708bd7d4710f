//! `GossipMessage`: what travels on the gossip topics, and `Topic::decode`.
//!
//! Gossipsub must not forward a message before the node has checked it, so
//! [`Topic::decode`] does everything a receiver can check without its own state: the topic's
//! size limit, the frame, the body's semantic rules, the signature and that the signer is the
//! body's author. The node adds the stateful checks (sequence numbers, the coordinator of the
//! epoch) and then accepts or rejects the message in gossipsub.

use shoal_keys::NodeId;

use crate::{Capability, Kind, LinkReport, Plan, ProtocolError, Signed, Topic, decode, encode};

/// A verified message from one of the gossip topics.
#[derive(Debug, Clone, PartialEq)]
pub enum GossipMessage {
    /// From `shoal/1/capability`.
    Capability(Signed<Capability>),
    /// From `shoal/1/links`.
    Links(Signed<LinkReport>),
    /// From `shoal/1/plan`.
    Plan(Signed<Plan>),
}

impl Topic {
    /// Decodes a message received on this topic and verifies its signature; a frame of
    /// another kind than the topic carries is refused.
    pub fn decode(self, bytes: &[u8]) -> Result<GossipMessage, ProtocolError> {
        let msg = match self {
            Topic::Capability => GossipMessage::Capability(decode(bytes)?),
            Topic::Links => GossipMessage::Links(decode(bytes)?),
            Topic::Plan => GossipMessage::Plan(decode(bytes)?),
        };
        msg.verify()?;
        Ok(msg)
    }

    /// The message kind this topic carries.
    pub fn kind(self) -> Kind {
        match self {
            Topic::Capability => Kind::Capability,
            Topic::Links => Kind::LinkReport,
            Topic::Plan => Kind::Plan,
        }
    }
}

impl GossipMessage {
    /// Decodes a message received on the topic named `topic` (the gossipsub topic string).
    pub fn decode(topic: &str, bytes: &[u8]) -> Result<Self, ProtocolError> {
        topic.parse::<Topic>()?.decode(bytes)
    }

    /// The topic this message is published on.
    pub fn topic(&self) -> Topic {
        match self {
            GossipMessage::Capability(_) => Topic::Capability,
            GossipMessage::Links(_) => Topic::Links,
            GossipMessage::Plan(_) => Topic::Plan,
        }
    }

    /// Encodes the signed message for publishing on [`GossipMessage::topic`].
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        match self {
            GossipMessage::Capability(m) => encode(m),
            GossipMessage::Links(m) => encode(m),
            GossipMessage::Plan(m) => encode(m),
        }
    }

    /// Checks the signature and authorship (see [`Signed::verify`]).
    pub fn verify(&self) -> Result<(), ProtocolError> {
        match self {
            GossipMessage::Capability(m) => m.verify().map(drop),
            GossipMessage::Links(m) => m.verify().map(drop),
            GossipMessage::Plan(m) => m.verify().map(drop),
        }
    }

    /// The node that signed the message.
    pub fn signer(&self) -> &NodeId {
        match self {
            GossipMessage::Capability(m) => m.signer(),
            GossipMessage::Links(m) => m.signer(),
            GossipMessage::Plan(m) => m.signer(),
        }
    }
}
