//! `NodeId`: a node's name in the swarm, equal to the libp2p `PeerId` of its ed25519 key.
//!
//! An ed25519 peer id embeds the public key (identity multihash), so a `NodeId` always carries
//! the key that verifies its signatures; parsing rejects any other kind of peer id.

use std::str::FromStr;

use libp2p_identity::PeerId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{KeyError, PublicKey};

/// Multihash code of the identity hash, which libp2p uses for keys of at most 42 bytes.
const IDENTITY_MULTIHASH: u64 = 0x00;
/// The longest encoded peer id accepted (ed25519 ids are 38 bytes).
const MAX_NODE_ID_BYTES: usize = 64;

/// A node's identity: its libp2p peer id, with the ed25519 key the id embeds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    peer: PeerId,
}

impl NodeId {
    /// The node id of an ed25519 public key.
    pub fn from_public_key(key: &PublicKey) -> Self {
        let ed = libp2p_identity::ed25519::PublicKey::try_from_bytes(&key.to_bytes());
        // A dalek verifying key's bytes are always a valid libp2p ed25519 key: both parse
        // the same 32-byte compressed point.
        #[allow(clippy::expect_used)]
        let ed = ed.expect("a valid ed25519 key is a valid libp2p ed25519 key");
        let public = libp2p_identity::PublicKey::from(ed);
        NodeId {
            peer: PeerId::from_public_key(&public),
        }
    }

    /// Accepts a peer id only if it embeds an ed25519 key.
    pub fn from_peer_id(peer: PeerId) -> Result<Self, KeyError> {
        extract_key(&peer)?;
        Ok(NodeId { peer })
    }

    /// Parses the binary form of a peer id (as `to_bytes` writes it).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() > MAX_NODE_ID_BYTES {
            return Err(KeyError::InvalidNodeId(format!(
                "{} bytes is longer than any ed25519 peer id",
                bytes.len()
            )));
        }
        let peer = PeerId::from_bytes(bytes).map_err(|e| KeyError::InvalidNodeId(e.to_string()))?;
        Self::from_peer_id(peer)
    }

    /// The binary form of the peer id.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.peer.to_bytes()
    }

    /// The libp2p peer id.
    pub fn to_peer_id(&self) -> PeerId {
        self.peer
    }

    /// The public key that verifies this node's signatures.
    pub fn public_key(&self) -> PublicKey {
        // Construction guarantees an embedded ed25519 key (see `from_peer_id`).
        #[allow(clippy::expect_used)]
        extract_key(&self.peer).expect("NodeId always embeds an ed25519 key")
    }

    /// A short form for logs: the last 8 characters of the base58 id.
    pub fn short(&self) -> String {
        let s = self.peer.to_base58();
        s[s.len().saturating_sub(8)..].to_string()
    }
}

fn extract_key(peer: &PeerId) -> Result<PublicKey, KeyError> {
    let mh = peer.as_ref();
    if mh.code() != IDENTITY_MULTIHASH {
        return Err(KeyError::InvalidNodeId(
            "peer id is a hash, not an embedded ed25519 key".into(),
        ));
    }
    let key = libp2p_identity::PublicKey::try_decode_protobuf(mh.digest())
        .map_err(|e| KeyError::InvalidNodeId(e.to_string()))?;
    let ed = key
        .try_into_ed25519()
        .map_err(|_| KeyError::InvalidNodeId("peer id key is not ed25519".into()))?;
    PublicKey::from_bytes(&ed.to_bytes())
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.peer.to_base58())
    }
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeId({})", self.peer.to_base58())
    }
}

impl FromStr for NodeId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let peer = PeerId::from_str(s).map_err(|e| KeyError::InvalidNodeId(e.to_string()))?;
        Self::from_peer_id(peer)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.peer.to_bytes())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = NodeId;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an ed25519 peer id as bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<NodeId, E> {
                NodeId::from_bytes(v).map_err(E::custom)
            }
        }
        d.deserialize_bytes(V)
    }
}
