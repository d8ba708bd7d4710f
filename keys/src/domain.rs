//! Domain separation, public keys and signatures.
//!
//! The signed bytes are `len(domain) as u8 || domain || message`: the length prefix keeps one
//! domain from being a prefix of another's signed input.

use ed25519_dalek::Signer;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::KeyError;

/// A message kind whose signatures must never verify as another kind's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Domain(&'static str);

impl Domain {
    /// Activations passed from stage to stage.
    pub const ACTIVATION: Domain = Domain("shoal/activation/1");
    /// Placement plans published by the coordinator.
    pub const PLAN: Domain = Domain("shoal/plan/1");
    /// Capability announcements.
    pub const CAPABILITY: Domain = Domain("shoal/capability/1");
    /// Link-quality reports.
    pub const LINKS: Domain = Domain("shoal/links/1");
    /// Client generation requests and their answers.
    pub const GENERATE: Domain = Domain("shoal/generate/1");
    /// Link probes.
    pub const PROBE: Domain = Domain("shoal/probe/1");
    /// Invitations to a swarm.
    pub const INVITE: Domain = Domain("shoal/invite/1");

    /// A domain for a message kind not listed above.
    pub const fn new(name: &'static str) -> Self {
        Domain(name)
    }

    /// The domain's name, e.g. `shoal/plan/1`.
    pub fn as_str(&self) -> &'static str {
        self.0
    }

    /// The exact bytes that get signed for `msg` in this domain.
    pub(crate) fn tagged(&self, msg: &[u8]) -> Vec<u8> {
        let name = self.0.as_bytes();
        // Domain names are short constants; a name over 255 bytes is clamped, which keeps the
        // prefix unambiguous because the clamped length still precedes the full name.
        let len = u8::try_from(name.len()).unwrap_or(u8::MAX);
        let mut out = Vec::with_capacity(1 + name.len() + msg.len());
        out.push(len);
        out.extend_from_slice(name);
        out.extend_from_slice(msg);
        out
    }
}

/// An ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub(crate) [u8; 64]);

impl Signature {
    /// Parses a signature; it must be exactly 64 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 64] = bytes
            .try_into()
            .map_err(|_| KeyError::SignatureLength(bytes.len()))?;
        Ok(Signature(arr))
    }

    /// The raw 64 bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..8]))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = <ByteBuf64 as Deserialize>::deserialize(d)?;
        Ok(Signature(bytes.0))
    }
}

/// Deserialises a byte string of exactly 64 bytes without allocating for longer input.
struct ByteBuf64([u8; 64]);

impl<'de> Deserialize<'de> for ByteBuf64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteBuf64;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf64, E> {
                let arr: [u8; 64] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(ByteBuf64(arr))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// An ed25519 public key that checks domain-separated signatures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub(crate) ed25519_dalek::VerifyingKey);

impl PublicKey {
    /// Parses 32 public-key bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| KeyError::InvalidPublicKey)?;
        ed25519_dalek::VerifyingKey::from_bytes(&arr)
            .map(PublicKey)
            .map_err(|_| KeyError::InvalidPublicKey)
    }

    /// The raw 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Checks `sig` over `msg` in `domain`; strict verification rejects malleable signatures.
    pub fn verify(&self, domain: Domain, msg: &[u8], sig: &Signature) -> Result<(), KeyError> {
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        self.0
            .verify_strict(&domain.tagged(msg), &sig)
            .map_err(|_| KeyError::BadSignature)
    }

    /// The node id (libp2p peer id) of this key.
    pub fn node_id(&self) -> crate::NodeId {
        crate::NodeId::from_public_key(self)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.to_bytes()))
    }
}

/// Signs with a dalek signing key; used by [`crate::Identity::sign`].
pub(crate) fn sign(key: &ed25519_dalek::SigningKey, domain: Domain, msg: &[u8]) -> Signature {
    Signature(key.sign(&domain.tagged(msg)).to_bytes())
}
