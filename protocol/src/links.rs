//! `LinkReport`: how well a node hears its peers, gossiped on `shoal/1/links`.
//!
//! One report per node lists its smoothed (EWMA) measurements towards each peer it has probed:
//! round-trip time and jitter from ping samples, bandwidth from timed transfers on
//! `/shoal/probe/1`, packet loss from UDP loss probes. Metrics not measured yet are `None`.
//! Links are directed: the report of `from` describes `from -> to`. The report must be signed
//! by `from`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use shoal_keys::{Domain, NodeId};

use crate::check::{fraction, max_len, non_negative, positive};
use crate::{GOSSIP_MAX_BYTES, Kind, MAX_SWARM, Message, ProtocolError, SIGNED_OVERHEAD};

/// One directed link's smoothed measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkEntry {
    /// The peer at the far end.
    pub to: NodeId,
    /// Round-trip time, seconds.
    pub rtt_s: f64,
    /// Standard deviation of one-way delay, seconds.
    pub jitter_s: f64,
    /// Throughput of timed transfers, bits per second (> 0), once measured.
    pub bandwidth_bps: Option<f64>,
    /// Packet loss probability in `[0, 1]`, once enough loss probes ran.
    pub loss: Option<f64>,
    /// Ping samples behind `rtt_s` and `jitter_s`.
    pub samples: u32,
    /// Loss probes behind `loss`.
    pub loss_samples: u32,
    /// Seconds since the newest sample of this link.
    pub age_s: f64,
    /// The relay this link runs through, when the only connection to `to` is a relayed
    /// circuit (libp2p relay v2): the planner then charges the two legs `from -> via` and
    /// `via -> to` instead of this entry's figures. Absent for a direct connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<NodeId>,
}

/// A node's view of its outgoing links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkReport {
    /// The reporting node; must be the signer.
    pub from: NodeId,
    /// Increases with every report of this node; receivers keep the highest.
    pub seq: u64,
    /// Sender's wall clock, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// One entry per peer, distinct `to`, never `from` itself; at most [`MAX_SWARM`].
    pub links: Vec<LinkEntry>,
}

impl Message for LinkReport {
    const KIND: Kind = Kind::LinkReport;
    const DOMAIN: Domain = Domain::LINKS;
    const MAX_BYTES: usize = GOSSIP_MAX_BYTES - SIGNED_OVERHEAD;

    fn validate(&self) -> Result<(), ProtocolError> {
        let k = Self::KIND;
        max_len(k, "links", self.links.len(), MAX_SWARM)?;
        let mut seen = BTreeSet::new();
        for link in &self.links {
            if link.to == self.from {
                return Err(ProtocolError::invalid(
                    k,
                    "a link to the reporting node itself",
                ));
            }
            if !seen.insert(link.to) {
                return Err(ProtocolError::invalid(
                    k,
                    format!("two entries for {}", link.to),
                ));
            }
            non_negative(k, "rtt_s", link.rtt_s)?;
            non_negative(k, "jitter_s", link.jitter_s)?;
            non_negative(k, "age_s", link.age_s)?;
            if let Some(bw) = link.bandwidth_bps {
                positive(k, "bandwidth_bps", bw)?;
            }
            if let Some(loss) = link.loss {
                fraction(k, "loss", loss)?;
            }
            if link.via.is_some_and(|v| v == self.from || v == link.to) {
                return Err(ProtocolError::invalid(
                    k,
                    format!("link to {} relayed through one of its ends", link.to),
                ));
            }
        }
        Ok(())
    }

    fn author(&self) -> Option<&NodeId> {
        Some(&self.from)
    }
}
