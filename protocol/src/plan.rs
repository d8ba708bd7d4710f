//! `Plan`: the signed placement of layer ranges on nodes, gossiped on `shoal/1/plan`.
//!
//! The coordinator of `epoch` solves the placement and signs the plan; it is independent of
//! which node originates a request (any node can be the origin). `validate` checks the
//! structure only: stages non-empty, contiguous, covering `[0, num_layers)` in order, on
//! distinct nodes that are members. Whether the signer really is the epoch's coordinator is a
//! question of the receiver's membership view and is decided in the node.

use std::collections::BTreeSet;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use shoal_keys::{Domain, NodeId};

use crate::check::{max_len, max_text, non_negative};
use crate::{GOSSIP_MAX_BYTES, Kind, MAX_SWARM, Message, ModelRef, ProtocolError, SIGNED_OVERHEAD};

/// Most layers a model may have (embedding + decoder layers + head).
pub const MAX_LAYERS: u32 = 4096;

/// What the solver minimised (DESIGN.md, cost model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Per-token time of one stream.
    Latency,
    /// Slowest stage or hop of pipelined streams.
    Throughput,
}

/// How the placement was found (the planner's `--strategy` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanStrategy {
    /// The MILP on HiGHS.
    Milp,
    /// Equal layer counts per device.
    Even,
    /// Layers proportional to memory.
    Memory,
    /// Greedy baseline.
    Greedy,
    /// Exact brute force (small cases).
    Exhaustive,
}

/// One pipeline stage: a node and its half-open layer range `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// The node that runs the layers.
    pub node: NodeId,
    /// First layer (inclusive).
    pub start: u32,
    /// One past the last layer.
    pub end: u32,
}

impl Stage {
    /// The stage's layers as a range.
    pub fn layers(&self) -> Range<u32> {
        self.start..self.end
    }
}

/// A signed placement for one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Plan generation; of two valid plans the higher epoch wins.
    pub epoch: u64,
    /// The coordinator that made and signed the plan; must be the signer.
    pub coordinator: NodeId,
    /// The model placed (every stage node must hold this manifest).
    pub model: ModelRef,
    /// Layers of the model; the stages cover exactly `[0, num_layers)`.
    pub num_layers: u32,
    /// The objective solved.
    pub objective: Objective,
    /// Predicted objective value the solver reported, seconds.
    pub cost_s: f64,
    /// Stages in pipeline order; at least one, at most [`MAX_SWARM`].
    pub stages: Vec<Stage>,
    /// The membership view the plan was made for, strictly ascending; includes the
    /// coordinator and every stage node.
    pub members: Vec<NodeId>,
    /// How the placement was found.
    pub strategy: PlanStrategy,
    /// Whether the solver proved the placement optimal.
    pub optimal: bool,
    /// Coordinator's wall clock when it signed, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Layers nodes should fetch for a coming plan, which the coordinator will put in force
    /// once they hold them (not in force; at most one range per node, members only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefetch: Vec<Stage>,
    /// Why the coordinator re-planned ("X went on battery at 18%", "Y left"), at most
    /// [`MAX_CAUSE_LEN`] bytes; absent for the first plan or when it does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Stage nodes on battery below the planner's floor that hold layers all the same,
    /// because the model could not be placed without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub below_floor: Vec<NodeId>,
}

/// Longest [`Plan::cause`], in bytes.
pub const MAX_CAUSE_LEN: usize = 256;

impl Plan {
    /// Index of the stage `node` runs, if any.
    pub fn stage_of(&self, node: &NodeId) -> Option<usize> {
        self.stages.iter().position(|s| &s.node == node)
    }

    fn check_stages(&self) -> Result<(), ProtocolError> {
        let k = Self::KIND;
        if self.stages.is_empty() {
            return Err(ProtocolError::invalid(k, "no stages"));
        }
        max_len(k, "stages", self.stages.len(), MAX_SWARM)?;
        if self.num_layers > MAX_LAYERS {
            return Err(ProtocolError::invalid(
                k,
                format!("{} layers exceeds {MAX_LAYERS}", self.num_layers),
            ));
        }
        let mut next = 0u32;
        let mut nodes = BTreeSet::new();
        for (i, stage) in self.stages.iter().enumerate() {
            if stage.start != next || stage.end <= stage.start {
                return Err(ProtocolError::invalid(
                    k,
                    format!(
                        "stage {i} covers [{}, {}), expected a non-empty range from {next}",
                        stage.start, stage.end
                    ),
                ));
            }
            if !nodes.insert(stage.node) {
                return Err(ProtocolError::invalid(
                    k,
                    format!("node {} runs two stages", stage.node),
                ));
            }
            next = stage.end;
        }
        if next != self.num_layers {
            return Err(ProtocolError::invalid(
                k,
                format!("stages end at layer {next}, model has {}", self.num_layers),
            ));
        }
        Ok(())
    }

    fn check_members(&self) -> Result<(), ProtocolError> {
        let k = Self::KIND;
        max_len(k, "members", self.members.len(), MAX_SWARM)?;
        if self.members.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ProtocolError::invalid(
                k,
                "members are not strictly ascending",
            ));
        }
        let is_member = |n: &NodeId| self.members.binary_search(n).is_ok();
        if !is_member(&self.coordinator) {
            return Err(ProtocolError::invalid(k, "coordinator is not a member"));
        }
        if let Some(s) = self.stages.iter().find(|s| !is_member(&s.node)) {
            return Err(ProtocolError::invalid(
                k,
                format!("stage node {} is not a member", s.node),
            ));
        }
        if let Some(cause) = &self.cause {
            max_text(k, "cause", cause, MAX_CAUSE_LEN)?;
        }
        max_len(k, "below_floor", self.below_floor.len(), MAX_SWARM)?;
        if let Some(n) = self.below_floor.iter().find(|n| self.stage_of(n).is_none()) {
            return Err(ProtocolError::invalid(
                k,
                format!("below-floor node {n} runs no stage"),
            ));
        }
        max_len(k, "prefetch", self.prefetch.len(), MAX_SWARM)?;
        let mut nodes = BTreeSet::new();
        for s in &self.prefetch {
            if !is_member(&s.node) || !nodes.insert(s.node) {
                return Err(ProtocolError::invalid(
                    k,
                    format!("prefetch node {} is not a member or listed twice", s.node),
                ));
            }
            if s.end <= s.start || s.end > self.num_layers {
                return Err(ProtocolError::invalid(
                    k,
                    format!("prefetch range [{}, {}) outside the model", s.start, s.end),
                ));
            }
        }
        Ok(())
    }
}

impl Message for Plan {
    const KIND: Kind = Kind::Plan;
    const DOMAIN: Domain = Domain::PLAN;
    const MAX_BYTES: usize = GOSSIP_MAX_BYTES - SIGNED_OVERHEAD;

    fn validate(&self) -> Result<(), ProtocolError> {
        non_negative(Self::KIND, "cost_s", self.cost_s)?;
        self.model.check(Self::KIND)?;
        self.check_stages()?;
        self.check_members()
    }

    fn author(&self) -> Option<&NodeId> {
        Some(&self.coordinator)
    }
}
