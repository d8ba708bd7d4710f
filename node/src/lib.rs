//! The shoal node: the swarm, link probing, membership, coordinator rotation, the HTTP API
//! and the sled store.
//!
//! Pure logic (`membership`, `coordinator`, `links`) has no IO and is tested
//! deterministically; `swarm` owns the libp2p swarm in one task and everything else talks to it
//! through a cloneable [`swarm::NetworkHandle`]; `node` wires the parts together.

pub mod api;
pub mod capability;
pub mod config;
pub mod coordinator;
pub mod links;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod probe;
pub mod store;
pub mod swarm;
