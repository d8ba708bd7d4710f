//! [`View`]: the snapshot of what a node knows, published on a `watch` channel after every
//! change. The pipeline reads the plan from it, the API and `shoal status` render it.

use std::collections::BTreeMap;

use shoal_keys::NodeId;
use shoal_protocol::{Capability, Plan, Signed};

use crate::links::LinkMetrics;

/// One member as seen now.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberView {
    /// Its id.
    pub id: NodeId,
    /// Its latest capability announcement.
    pub capability: Capability,
    /// Seconds since that announcement arrived.
    pub age_s: f64,
}

/// One directed link of the matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkView {
    /// Sender side.
    pub from: NodeId,
    /// Receiver side.
    pub to: NodeId,
    /// Its smoothed metrics.
    pub metrics: LinkMetrics,
}

/// A node's view of the swarm.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// This node.
    pub local: NodeId,
    /// Members in ascending id order (this node included once it announced itself).
    pub members: Vec<MemberView>,
    /// The link matrix (this node's own measurements and the members' reports).
    pub links: Vec<LinkView>,
    /// The accepted plan, signed by its coordinator.
    pub plan: Option<Signed<Plan>>,
    /// Predicted seconds per decoded token of the plan under the current metrics (latency
    /// objective), when the node holds the model and can evaluate it.
    pub predicted_latency_s: Option<f64>,
    /// The coordinator of the next epoch in this view.
    pub next_coordinator: Option<NodeId>,
    /// Refused messages by reason (plans and gossip), since start.
    pub refused: BTreeMap<String, u64>,
    /// Peers this node reaches only through a relay, with the relay.
    pub relayed: BTreeMap<NodeId, NodeId>,
}

impl View {
    /// An empty view of `local`.
    pub fn empty(local: NodeId) -> Self {
        View {
            local,
            members: Vec::new(),
            links: Vec::new(),
            plan: None,
            predicted_latency_s: None,
            next_coordinator: None,
            refused: BTreeMap::new(),
            relayed: BTreeMap::new(),
        }
    }

    /// The accepted plan's body.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref().map(|p| p.unverified())
    }

    /// The accepted plan's epoch (0 without a plan).
    pub fn epoch(&self) -> u64 {
        self.plan().map_or(0, |p| p.epoch)
    }

    /// Member ids in ascending order.
    pub fn member_ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// The stage index this node runs in the plan, if any.
    pub fn local_stage(&self) -> Option<usize> {
        self.plan().and_then(|p| p.stage_of(&self.local))
    }
}
