//! shoal-keys: a node's identity and its signatures.
//!
//! One ed25519 key is both the libp2p swarm identity and the signing key for plans and
//! activations, so the [`NodeId`] a peer connects with is the id that signs its messages.
//! The secret lives in a file created with mode 0600 ([`Identity::create`]); loading refuses a
//! file that group or others can read. Every signature is domain-separated ([`Domain`]), so a
//! signature made for one kind of message never verifies as another.
//!
//! No async and no network code lives here.

mod domain;
mod error;
mod identity;
mod node_id;

pub use domain::{Domain, PublicKey, Signature};
pub use error::KeyError;
pub use identity::Identity;
pub use node_id::NodeId;
