//! Every versioned name on the wire, in one place.
//!
//! Stream protocols carry a version suffix (`/1`) and gossip topics a version segment
//! (`shoal/1/...`); a change that old nodes cannot read gets new names, so old and new nodes
//! simply do not talk instead of misreading each other. Inside a name, frames still carry
//! [`crate::SCHEMA_VERSION`].

use std::str::FromStr;

use crate::ProtocolError;

/// Bandwidth probing (request/response of [`crate::BandwidthProbe`]).
pub const PROBE_PROTOCOL: &str = "/shoal/probe/1";
/// Pipeline traffic ([`crate::PipelineMessage`]).
pub const ACTIVATION_PROTOCOL: &str = "/shoal/activation/1";
/// Client generation requests ([`crate::GenerateRequest`] and [`crate::GenerateResponse`]).
pub const GENERATE_PROTOCOL: &str = "/shoal/generate/1";
/// Model files between peers ([`crate::FileRequest`] and [`crate::FileResponse`]).
pub const LAYERS_PROTOCOL: &str = "/shoal/layers/1";
/// Every stream protocol name.
pub const PROTOCOLS: [&str; 4] = [
    PROBE_PROTOCOL,
    ACTIVATION_PROTOCOL,
    GENERATE_PROTOCOL,
    LAYERS_PROTOCOL,
];

/// Gossip topic of [`crate::Capability`] announcements.
pub const CAPABILITY_TOPIC: &str = "shoal/1/capability";
/// Gossip topic of [`crate::LinkReport`]s.
pub const LINKS_TOPIC: &str = "shoal/1/links";
/// Gossip topic of [`crate::Plan`]s.
pub const PLAN_TOPIC: &str = "shoal/1/plan";

/// Largest signed gossip frame, bytes: below gossipsub's default `max_transmit_size`
/// (65536), which also has to hold the gossipsub envelope around it.
pub const GOSSIP_MAX_BYTES: usize = 60 * 1024;

/// Most members a swarm may have: bounds plans, link reports and stage indices.
pub const MAX_SWARM: usize = 256;

/// A gossip topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// `shoal/1/capability`.
    Capability,
    /// `shoal/1/links`.
    Links,
    /// `shoal/1/plan`.
    Plan,
}

impl Topic {
    /// Every topic, for subscribing.
    pub const ALL: [Topic; 3] = [Topic::Capability, Topic::Links, Topic::Plan];

    /// The topic's name as gossipsub sees it.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Capability => CAPABILITY_TOPIC,
            Topic::Links => LINKS_TOPIC,
            Topic::Plan => PLAN_TOPIC,
        }
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Topic {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, ProtocolError> {
        Topic::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let clipped: String = s.chars().take(64).collect();
                ProtocolError::UnknownTopic(clipped)
            })
    }
}
