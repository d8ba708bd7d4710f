//! The shoal node: the swarm, link probing, membership, coordinator rotation, the HTTP API
//! and the sled store.
//!
//! Pure logic (`membership`, `coordinator`, `links`) has no IO and is tested
//! deterministically; `swarm` owns the libp2p swarm in one task and everything else talks to it
//! through a cloneable [`swarm::NetworkHandle`]; `start` (the composition root) wires the parts
//! together. The modules' layers and the one direction of their imports are drawn in
//! `node/README.md` and checked by `node/tests/layers.rs`.

pub mod api;
pub mod capability;
pub mod config;
pub mod coordinator;
pub mod invite;
pub mod launch;
pub mod layers;
pub mod links;
pub mod membership;
pub mod node;
pub mod pipeline;
pub mod power;
pub mod probe;
pub mod start;
pub mod store;
pub mod swarm;
pub mod view;
