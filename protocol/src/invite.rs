//! `Invite`: what a new device needs to join a swarm, signed by the member that invited it.
//!
//! An invite carries the swarm's pre-shared key (absent for a public swarm), a few addresses to
//! dial (bootstrap peers and relays, each ending in `/p2p/<node id>`), the model the swarm runs
//! and an expiry. It travels out of band (copied as one line of text, or scanned as a QR code),
//! so it is never gossiped; the text form (`shoal-invite1:` and the base64url of the signed
//! frame) lives in `shoal-node`'s `invite` module. The envelope must be signed by the node the
//! body names as `inviter` ([`Message::author`]): a changed byte anywhere fails the signature.

use serde::{Deserialize, Serialize};
use shoal_keys::{Domain, NodeId};

use crate::check::{max_len, max_text};
use crate::{Kind, MAX_ADDR_LEN, Message, ModelRef, ProtocolError};

/// Most bootstrap addresses (and, separately, relay addresses) one invite carries.
pub const MAX_INVITE_ADDRS: usize = 8;
/// Largest encoded invite frame (unsigned), bytes: 16 addresses of [`MAX_ADDR_LEN`] and room
/// for the rest. Keeps the text form short enough for a QR code.
pub const MAX_INVITE_BYTES: usize = 2 * MAX_INVITE_ADDRS * MAX_ADDR_LEN + 512;

/// An invitation to a swarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    /// The member that issued it (and signs it).
    pub inviter: NodeId,
    /// The swarm's libp2p pre-shared key, or `None` for a public swarm.
    #[serde(with = "serde_bytes")]
    pub swarm_key: Option<[u8; 32]>,
    /// Addresses to join through, each ending in `/p2p/<node id>`; at least one.
    pub bootstrap: Vec<String>,
    /// Relays to reserve a slot on (for a device behind NAT); may be empty.
    pub relays: Vec<String>,
    /// The model the swarm runs, if the inviter holds one.
    pub model: Option<ModelRef>,
    /// When it was issued, seconds since the Unix epoch.
    pub issued_unix_s: u64,
    /// After this instant (seconds since the Unix epoch) it is refused.
    pub expires_unix_s: u64,
}

impl Message for Invite {
    const KIND: Kind = Kind::Invite;
    const DOMAIN: Domain = Domain::INVITE;
    const MAX_BYTES: usize = MAX_INVITE_BYTES;

    fn validate(&self) -> Result<(), ProtocolError> {
        let k = Self::KIND;
        if self.bootstrap.is_empty() {
            return Err(ProtocolError::invalid(k, "no bootstrap address"));
        }
        max_len(k, "bootstrap", self.bootstrap.len(), MAX_INVITE_ADDRS)?;
        max_len(k, "relays", self.relays.len(), MAX_INVITE_ADDRS)?;
        for addr in self.bootstrap.iter().chain(&self.relays) {
            max_text(k, "address", addr, MAX_ADDR_LEN)?;
            if !addr.starts_with('/') || !addr.contains("/p2p/") {
                return Err(ProtocolError::invalid(
                    k,
                    format!("address {addr:?} is not a multiaddr ending in /p2p/<node id>"),
                ));
            }
        }
        if let Some(m) = &self.model {
            m.check(k)?;
        }
        if self.expires_unix_s <= self.issued_unix_s {
            return Err(ProtocolError::invalid(k, "expires before it was issued"));
        }
        Ok(())
    }

    fn author(&self) -> Option<&NodeId> {
        Some(&self.inviter)
    }
}
