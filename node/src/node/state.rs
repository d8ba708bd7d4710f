//! The node task's state ([`NodeTask`]) and the results its helpers send back to it. The
//! handlers live by concern in `task.rs` (events, probing), `gossip.rs` and `coord.rs`; they
//! all import this file, which imports none of them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use shoal_keys::{Identity, NodeId};
use shoal_protocol::{Capability, Plan, Signed};
use tokio::sync::{mpsc, watch};

use super::model::ModelInfo;
use crate::config::Config;
use crate::coordinator::{LinkMatrix, PlanGate, PowerState};
use crate::links::LinkEstimator;
use crate::membership::Membership;
use crate::probe;
use crate::store::Store;
use crate::swarm::NetworkHandle;
use crate::view::View;

/// A finished solve.
#[derive(Debug)]
pub(super) struct SolveOutcome {
    /// The epoch the plan is for.
    pub(super) epoch: u64,
    /// The members it was solved over.
    pub(super) members: Vec<NodeId>,
    /// The plan, or why there is none.
    pub(super) result: Result<shoal_planner::Plan, String>,
    /// For a background improvement: the epoch of the plan it tries to beat and that plan's
    /// cost in the same scenario (`None` for a re-plan).
    pub(super) improves: Option<(u64, f64)>,
    /// Why the re-plan was started, for the plan's `cause` (`None` for the first plan and
    /// for improvements).
    pub(super) cause: Option<String>,
}

/// A bandwidth measurement of one peer.
pub(super) type BandwidthResult = (NodeId, BandwidthProbeOutcome);

/// What one bandwidth probe of a peer measured.
#[derive(Debug)]
pub(super) enum BandwidthProbeOutcome {
    /// A datagram train's link rate, bits per second.
    Train {
        /// The rate.
        rate_bps: f64,
        /// Datagrams that arrived.
        arrivals: usize,
        /// Paced at a rate seen before; false for the first train (the scout).
        paced: bool,
    },
    /// The timed transfers (when no train could measure: no echo, trains off, or a link too
    /// fast for one), `(bytes, seconds)` of the small and the large.
    Transfers(Result<probe::TransferPair, probe::ProbeError>),
    /// The train met another train at the peer (each measures a share of the link): no
    /// sample this round.
    Shared,
}

/// The node task's state.
pub(super) struct NodeTask {
    pub(super) cfg: Arc<Config>,
    /// When this node's link last carried a bandwidth train (see `probe::TrainActivity`).
    pub(super) train_activity: probe::TrainActivity,
    pub(super) identity: Arc<Identity>,
    pub(super) me: NodeId,
    pub(super) net: NetworkHandle,
    pub(super) model: Option<Arc<ModelInfo>>,
    pub(super) own: Capability,
    pub(super) membership: Membership<Capability>,
    pub(super) link_seq: HashMap<NodeId, u64>,
    pub(super) reports: BTreeMap<NodeId, shoal_protocol::LinkReport>,
    pub(super) estimators: BTreeMap<NodeId, LinkEstimator>,
    /// When each peer's estimator last got a sample.
    pub(super) last_sample: BTreeMap<NodeId, Instant>,
    pub(super) gate: PlanGate,
    /// Highest epoch signed by a member among the plans we refused (see `next_epoch`).
    pub(super) seen_epoch: u64,
    pub(super) plan: Option<Signed<Plan>>,
    /// The newest plan refused only because its signer is not its epoch's coordinator in our
    /// view; judged again whenever the membership changes (see `recheck_deferred_plan`).
    pub(super) deferred_plan: Option<Signed<Plan>>,
    /// Link matrix and time when the held plan was adopted (the re-plan baseline).
    pub(super) baseline: Option<(LinkMatrix, Instant)>,
    /// Members' power states when the held plan was adopted (the power re-plan baseline).
    pub(super) power_baseline: BTreeMap<NodeId, PowerState>,
    /// This node's battery and temperature, from the power poller.
    pub(super) power: watch::Receiver<crate::power::Reading>,
    /// This node's throttle factor, from the speed watch the model thread feeds.
    pub(super) throttle: watch::Receiver<Option<f64>>,
    /// The speed watch (ticked for its idle recovery).
    pub(super) speed: Arc<crate::power::SpeedWatch>,
    pub(super) store: Store,
    pub(super) clock: Instant,
    pub(super) solving: bool,
    /// The held plan's epoch a background improvement was started for (once per epoch).
    pub(super) improved_epoch: Option<u64>,
    /// A background improvement is running.
    pub(super) improving: bool,
    /// Members of the last view whose solve failed, with the number of links known then and
    /// when (not retried until either changes, or `FAILED_PLAN_RETRY` has passed: an early
    /// solve may have lacked some links, and a link's figures may change without its count).
    pub(super) failed_view: Option<(Vec<NodeId>, usize, Instant)>,
    pub(super) last_republish: Instant,
    pub(super) refused: BTreeMap<String, u64>,
    pub(super) view_tx: watch::Sender<Arc<View>>,
    pub(super) loss_targets: watch::Sender<BTreeMap<NodeId, SocketAddr>>,
    pub(super) bw_due: BTreeMap<NodeId, Instant>,
    pub(super) bw_busy: bool,
    pub(super) bw_tx: mpsc::Sender<BandwidthResult>,
    pub(super) solve_tx: mpsc::Sender<SolveOutcome>,
    pub(super) connected: std::collections::BTreeSet<PeerId>,
    /// Peers reached only through a relay, with the relay.
    pub(super) routes: BTreeMap<NodeId, NodeId>,
    /// Speculative decoding's figures measured by this node's pipeline as origin, announced
    /// in its capability.
    pub(super) speculation: tokio::sync::watch::Receiver<Option<shoal_protocol::SpecFigures>>,
    /// Layers of the model on disk, as the follower (`layers::follow`) reports them.
    pub(super) held: watch::Receiver<Vec<(u32, u32)>>,
    /// Keeps `held` open on a node without a model (no follower owns the sender then).
    pub(super) _held_tx: Option<watch::Sender<Vec<(u32, u32)>>>,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
