//! `Signed<T>`: a message body with its author's domain-separated ed25519 signature.
//!
//! On the wire the envelope is a CBOR map `{signer, signature, body}` where `body` is a byte
//! string holding the canonical CBOR encoding of `T` (as [`Signed::sign`] wrote it). The
//! signature covers exactly those bytes, tagged with `T::DOMAIN`, so a receiver verifies what it
//! received, never a re-encoding, and a signature made for one kind never verifies as another.
//! The signer's public key is embedded in its [`NodeId`], so no key lookup is needed.
//!
//! Decoding an envelope parses and validates the body but does not check the signature; call
//! [`Signed::verify`] (the gossip and pipeline dispatchers do it for you).

use serde::{Deserialize, Serialize};
use shoal_keys::{Identity, NodeId, Signature};

use crate::codec::{read_cbor, write_cbor};
use crate::{Kind, Message, ProtocolError, Wire};

/// Bytes a signed envelope adds to its body's limit: the signer id (38 bytes), the signature
/// (64 bytes), field names and CBOR headers, with room to spare.
pub const SIGNED_OVERHEAD: usize = 256;

/// A body of type `T` signed by `signer`.
#[derive(Clone, PartialEq)]
pub struct Signed<T> {
    signer: NodeId,
    signature: Signature,
    body: T,
    body_bytes: Vec<u8>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("signer", &self.signer)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

/// The envelope as it is serialised.
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    signer: &'a NodeId,
    signature: &'a Signature,
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
}

/// The envelope as it is parsed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn {
    signer: NodeId,
    signature: Signature,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

impl<T: Message> Signed<T> {
    /// Validates `body`, encodes it canonically and signs it in `T::DOMAIN`. Refuses a body
    /// that names another author than `identity` (see [`Message::author`]).
    pub fn sign(identity: &Identity, body: T) -> Result<Self, ProtocolError> {
        body.validate()?;
        let signer = identity.node_id();
        check_author(&signer, &body)?;
        let mut body_bytes = Vec::new();
        write_cbor(T::KIND, &body, &mut body_bytes)?;
        let signature = identity.sign(T::DOMAIN, &body_bytes);
        Ok(Signed {
            signer,
            signature,
            body,
            body_bytes,
        })
    }

    /// Rebuilds an envelope from its parts, parsing and validating `body_bytes` as `T`; the
    /// signature is not checked. Tests use it to forge envelopes.
    pub fn from_parts(
        signer: NodeId,
        signature: Signature,
        body_bytes: Vec<u8>,
    ) -> Result<Self, ProtocolError> {
        let body: T = read_cbor(T::KIND, &body_bytes)?;
        body.validate()?;
        Ok(Signed {
            signer,
            signature,
            body,
            body_bytes,
        })
    }

    /// Checks the signature against the key embedded in the signer's id, in `T::DOMAIN`,
    /// and that the signer is the body's author where it names one. Returns the body.
    pub fn verify(&self) -> Result<&T, ProtocolError> {
        self.signer
            .public_key()
            .verify(T::DOMAIN, &self.body_bytes, &self.signature)
            .map_err(|_| ProtocolError::BadSignature {
                kind: T::KIND,
                signer: self.signer,
            })?;
        check_author(&self.signer, &self.body)?;
        Ok(&self.body)
    }

    /// [`Signed::verify`], then the signer and the body by value.
    pub fn into_verified(self) -> Result<(NodeId, T), ProtocolError> {
        self.verify()?;
        Ok((self.signer, self.body))
    }

    /// The node the envelope claims signed it (trust it only after [`Signed::verify`]).
    pub fn signer(&self) -> &NodeId {
        &self.signer
    }

    /// The body before any signature check: for cheap early refusals (a stale epoch) and logs.
    pub fn unverified(&self) -> &T {
        &self.body
    }

    /// The signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The exact signed bytes (canonical CBOR of the body); hash them to tell two plans apart.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body_bytes
    }
}

fn check_author<T: Message>(signer: &NodeId, body: &T) -> Result<(), ProtocolError> {
    match body.author() {
        Some(claimed) if claimed != signer => Err(ProtocolError::SignerMismatch {
            kind: T::KIND,
            signer: Box::new(*signer),
            claimed: Box::new(*claimed),
        }),
        _ => Ok(()),
    }
}

impl<T: Message> Wire for Signed<T> {
    const KIND: Kind = T::KIND;
    const SIGNED: bool = true;
    const MAX_BYTES: usize = T::MAX_BYTES + SIGNED_OVERHEAD;

    fn write_body(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let envelope = EnvelopeOut {
            signer: &self.signer,
            signature: &self.signature,
            body: &self.body_bytes,
        };
        write_cbor(T::KIND, &envelope, out)
    }

    fn read_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let envelope: EnvelopeIn = read_cbor(T::KIND, body)?;
        Self::from_parts(envelope.signer, envelope.signature, envelope.body)
    }

    fn check(&self) -> Result<(), ProtocolError> {
        self.body.validate()
    }
}
