//! Coordinator rotation and plan acceptance (pure logic, no IO).
//!
//! **Rotation.** The coordinator of epoch `e` is the member whose rank
//! `sha256(e.to_be_bytes() || node_id.to_bytes())` is smallest, compared as 32 big-endian
//! bytes. `e.to_be_bytes()` is the epoch as a `u64` in 8 big-endian bytes; `node_id.to_bytes()`
//! is the binary libp2p peer id (the identity multihash of the protobuf-encoded ed25519 public
//! key, 38 bytes). Every member with the same view computes the same coordinator, and because the
//! rank changes with the epoch, the role rotates.
//!
//! **Acceptance** ([`PlanGate`]): a plan of epoch `e` signed by `s` is accepted only if its
//! signature holds, `s` is the coordinator of `e` in our own view, and `e` is newer than the plan
//! we hold. At the same epoch a different plan replaces ours only when our plan's signer is no
//! longer that epoch's coordinator in our view (views converged after a split). Everything else
//! is refused, counted by [`Refusal`] and logged by the caller.
//!
//! A plan refused only because its signer is not its epoch's coordinator in our view is kept
//! (the newest one) and judged again by [`PlanGate::recheck`] when our membership changes: our
//! view may be the one behind, still listing a member that left and would rank first.
//!
//! **Re-planning** ([`replan_trigger`]): when the members differ from the plan's, or a link
//! metric moved past its threshold and the hysteresis interval since the last plan has passed.
//! Only the coordinator of the next epoch (`current + 1`) acts on a trigger.
//!
//! **Power** ([`power_trigger`]): a member that went on battery or back on mains, or whose
//! charge crossed a step of `battery_step_percent`, re-plans at once (charge moves slowly); a
//! member whose announced throttle changed re-plans after the hysteresis interval, as a link
//! does. The trigger names the cause for the plan and the log.
//!
//! **Layers on disk** ([`phase`]): a placement whose nodes lack layers takes effect in two
//! phases: the held plan keeps serving with a prefetch order, and the placement follows once
//! the ordered nodes announce the layers ([`Trigger::Fetched`]).

use std::collections::BTreeMap;
use std::time::Duration;

use sha2::{Digest, Sha256};
use shoal_keys::NodeId;

use crate::links::LinkMetrics;

/// The rank of `node` for `epoch`: `sha256(epoch_be_u64 || node_id_bytes)`.
pub fn rank(epoch: u64, node: &NodeId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(epoch.to_be_bytes());
    h.update(node.to_bytes());
    h.finalize().into()
}

/// The coordinator of `epoch` among `members`: the smallest rank (None when there are none).
pub fn coordinator<'a>(
    epoch: u64,
    members: impl IntoIterator<Item = &'a NodeId>,
) -> Option<NodeId> {
    members.into_iter().min_by_key(|n| rank(epoch, n)).copied()
}

/// Why a plan was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// The signature does not verify for the claimed signer.
    BadSignature,
    /// The signer is not the coordinator of the plan's epoch in our view.
    NotCoordinator,
    /// The epoch is older than the plan we hold (or the same epoch with a conflicting plan).
    Stale,
}

impl Refusal {
    /// A stable label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::BadSignature => "bad_signature",
            Refusal::NotCoordinator => "not_coordinator",
            Refusal::Stale => "stale_epoch",
        }
    }
}

/// What to do with a plan that passed the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A new plan: adopt it.
    Adopt,
    /// The plan we already hold (a re-publication): nothing changes.
    Duplicate,
}

/// The plan currently held: its epoch, signer and a digest of its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The plan's epoch.
    pub epoch: u64,
    /// Who signed it.
    pub signer: NodeId,
    /// sha256 of its signed bytes, to tell a re-publication from a conflicting plan.
    pub digest: [u8; 32],
}

/// Accepts or refuses plans and counts the refusals.
#[derive(Debug, Clone, Default)]
pub struct PlanGate {
    held: Option<Held>,
    deferred: Option<Held>,
    refused: BTreeMap<Refusal, u64>,
}

impl PlanGate {
    /// A gate holding `held` (e.g. the plan restored from the store).
    pub fn new(held: Option<Held>) -> Self {
        PlanGate {
            held,
            deferred: None,
            refused: BTreeMap::new(),
        }
    }

    /// Checks a plan against our view `members`; on [`Verdict::Adopt`] it becomes the held one.
    pub fn check(
        &mut self,
        plan: Held,
        signature_ok: bool,
        members: &[NodeId],
    ) -> Result<Verdict, Refusal> {
        let verdict = self.judge(plan, signature_ok, members);
        match verdict {
            Ok(Verdict::Adopt) => self.hold(plan),
            Ok(Verdict::Duplicate) => {}
            Err(r) => {
                *self.refused.entry(r).or_default() += 1;
                let newest = self.deferred.is_none_or(|d| d.epoch <= plan.epoch);
                if r == Refusal::NotCoordinator && plan.epoch > self.epoch() && newest {
                    self.deferred = Some(plan);
                }
            }
        }
        verdict
    }

    /// Judges the deferred plan again under `members` (call it when they change); returns it
    /// when it is adopted now. It stays deferred while its signer is still not the coordinator.
    pub fn recheck(&mut self, members: &[NodeId]) -> Option<Held> {
        let plan = self.deferred.take()?;
        if plan.epoch <= self.epoch() {
            return None;
        }
        match self.judge(plan, true, members) {
            Ok(Verdict::Adopt) => {
                self.hold(plan);
                Some(plan)
            }
            Err(Refusal::NotCoordinator) => {
                self.deferred = Some(plan);
                None
            }
            Ok(Verdict::Duplicate) | Err(_) => None,
        }
    }

    /// The plan [`PlanGate::recheck`] would judge again.
    pub fn deferred(&self) -> Option<Held> {
        self.deferred
    }

    fn hold(&mut self, plan: Held) {
        self.held = Some(plan);
        if self.deferred.is_some_and(|d| d.epoch <= plan.epoch) {
            self.deferred = None;
        }
    }

    fn judge(
        &self,
        plan: Held,
        signature_ok: bool,
        members: &[NodeId],
    ) -> Result<Verdict, Refusal> {
        if !signature_ok {
            return Err(Refusal::BadSignature);
        }
        if coordinator(plan.epoch, members) != Some(plan.signer) {
            return Err(Refusal::NotCoordinator);
        }
        let Some(held) = self.held else {
            return Ok(Verdict::Adopt);
        };
        if plan.epoch > held.epoch {
            return Ok(Verdict::Adopt);
        }
        if plan.epoch < held.epoch {
            return Err(Refusal::Stale);
        }
        if plan.digest == held.digest {
            return Ok(Verdict::Duplicate);
        }
        // Same epoch, different plan: take it only if ours came from someone who is not this
        // epoch's coordinator in our (now converged) view.
        if held.signer != plan.signer {
            Ok(Verdict::Adopt)
        } else {
            Err(Refusal::Stale)
        }
    }

    /// The plan held now.
    pub fn held(&self) -> Option<Held> {
        self.held
    }

    /// The epoch of the held plan (0 when none).
    pub fn epoch(&self) -> u64 {
        self.held.map_or(0, |h| h.epoch)
    }

    /// Refusals so far, by reason.
    pub fn refused(&self) -> &BTreeMap<Refusal, u64> {
        &self.refused
    }
}

/// Why the swarm should re-plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// No plan yet.
    NoPlan,
    /// The members differ from the members the plan was made for.
    Membership,
    /// A member signed a newer epoch than our plan that our view could not accept: the swarm
    /// moved on while this node was away, so its held plan is stale.
    Behind,
    /// Every node the held plan ordered to prefetch layers now holds them: the plan that
    /// needed them can take effect.
    Fetched,
    /// A member's battery or speed changed ([`power_trigger`]).
    Power {
        /// The member.
        node: NodeId,
        /// What changed.
        cause: PowerCause,
    },
    /// A link metric moved past its threshold.
    LinkDrift {
        /// Sender side of the link.
        from: NodeId,
        /// Receiver side.
        to: NodeId,
        /// Which metric: `rtt`, `bandwidth` or `loss`.
        metric: &'static str,
    },
}

/// What changed in a member's power state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PowerCause {
    /// It was unplugged (charge, if known).
    OnBattery(Option<f64>),
    /// It was plugged in.
    OnMains,
    /// Its charge crossed a step, or the floor (the new charge).
    Charge(f64),
    /// Its own step times show it running at this share of its measured speed.
    Throttled(f64),
    /// It runs at full speed again.
    FullSpeed,
}

impl Trigger {
    /// Whether this is a member's speed change (throttled or back to full speed).
    pub fn is_speed(&self) -> bool {
        matches!(
            self,
            Trigger::Power {
                cause: PowerCause::Throttled(_) | PowerCause::FullSpeed,
                ..
            }
        )
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |x: f64| (x * 100.0).round();
        match self {
            Trigger::NoPlan => f.write_str("first plan"),
            Trigger::Membership => f.write_str("members changed"),
            Trigger::Behind => f.write_str("the swarm moved on while this node was away"),
            Trigger::Fetched => f.write_str("the ordered layers are on disk"),
            Trigger::LinkDrift { from, to, metric } => {
                write!(f, "link {} -> {} {metric} moved", from.short(), to.short())
            }
            Trigger::Power { node, cause } => {
                let n = node.short();
                match *cause {
                    PowerCause::OnBattery(Some(l)) => {
                        write!(f, "{n} went on battery at {}%", pct(l))
                    }
                    PowerCause::OnBattery(None) => write!(f, "{n} went on battery"),
                    PowerCause::OnMains => write!(f, "{n} is on mains again"),
                    PowerCause::Charge(l) => write!(f, "{n}'s battery at {}%", pct(l)),
                    PowerCause::Throttled(t) => {
                        write!(f, "{n} throttled to {}% of its measured speed", pct(t))
                    }
                    PowerCause::FullSpeed => write!(f, "{n} runs at full speed again"),
                }
            }
        }
    }
}

/// How [`power_trigger`] buckets members' power states.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Power {
    /// The planner's battery floor, a charge in [0, 1].
    pub min_level: f64,
    /// Charge steps that count as a change, in (0, 1].
    pub step: f64,
}

/// The charge assumed for a member on battery that does not report its level.
pub const UNKNOWN_LEVEL: f64 = 0.5;

/// A member's power state as far as planning cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerState {
    on_battery: bool,
    level: Option<f64>,
    throttle: Option<f64>,
}

impl PowerState {
    /// The state a capability announces.
    pub fn of(c: &shoal_protocol::Capability) -> Self {
        let battery = c.battery.filter(|b| b.on_battery);
        PowerState {
            on_battery: battery.is_some(),
            level: battery.and_then(|b| b.level),
            throttle: c.throttle,
        }
    }

    /// The charge bucket: steps of `p.step`, and whether below the floor.
    fn bucket(&self, p: &Power) -> Option<(i64, bool)> {
        let l = self.level.filter(|_| self.on_battery)?;
        let step = if p.step > 0.0 { p.step } else { 1.0 };
        Some(((l / step).floor() as i64, l < p.min_level))
    }
}

/// The first member whose power state differs from its state when the plan was adopted
/// (`before`; members not in it are new and left to the membership trigger).
pub fn power_trigger(
    before: &BTreeMap<NodeId, PowerState>,
    now: &BTreeMap<NodeId, PowerState>,
    p: &Power,
) -> Option<Trigger> {
    for (node, new) in now {
        let Some(old) = before.get(node) else {
            continue;
        };
        let cause = if new.on_battery != old.on_battery {
            if new.on_battery {
                PowerCause::OnBattery(new.level)
            } else {
                PowerCause::OnMains
            }
        } else if new.bucket(p) != old.bucket(p) {
            PowerCause::Charge(new.level.unwrap_or(UNKNOWN_LEVEL))
        } else if new.throttle != old.throttle {
            match new.throttle {
                Some(t) => PowerCause::Throttled(t),
                None => PowerCause::FullSpeed,
            }
        } else {
            continue;
        };
        return Some(Trigger::Power { node: *node, cause });
    }
    None
}

/// Why a plan for `members` replaces one for `before`, in words: "X joined; Y left".
pub fn membership_cause(before: &[NodeId], members: &[NodeId]) -> String {
    let list = |v: Vec<&NodeId>| v.iter().map(|n| n.short()).collect::<Vec<_>>().join(", ");
    let joined = list(members.iter().filter(|m| !before.contains(m)).collect());
    let left = list(before.iter().filter(|m| !members.contains(m)).collect());
    match (joined.is_empty(), left.is_empty()) {
        (false, false) => format!("{joined} joined; {left} left"),
        (false, true) => format!("{joined} joined"),
        (true, false) => format!("{left} left"),
        (true, true) => "members changed".into(),
    }
}

/// Thresholds and hysteresis of [`replan_trigger`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplanPolicy {
    /// Relative RTT change that triggers.
    pub rtt_change: f64,
    /// Relative bandwidth change that triggers.
    pub bandwidth_change: f64,
    /// Absolute loss change that triggers.
    pub loss_change: f64,
    /// No link-triggered re-plan sooner than this after the last plan.
    pub min_interval: Duration,
}

/// A link matrix: metrics of each directed pair (from, to).
pub type LinkMatrix = BTreeMap<(NodeId, NodeId), LinkMetrics>;

/// Charges each relayed link `(from, to, relay)` as its two legs, `from -> relay` then
/// `relay -> to` ([`LinkMetrics::through`]), in place of what was measured over the circuit.
/// A leg's figure is the measured direction when the planner can use it, else the reverse
/// one (a node behind NAT answers no UDP echo, so the relay's figures towards it count every
/// probe lost). A link whose legs are not both known keeps its measured figures.
pub fn charge_relayed(m: &mut LinkMatrix, relayed: &[(NodeId, NodeId, NodeId)]) {
    let leg = |m: &LinkMatrix, a: NodeId, b: NodeId| {
        [m.get(&(a, b)), m.get(&(b, a))]
            .into_iter()
            .flatten()
            .find(|l| l.plannable())
            .copied()
    };
    let charged: Vec<_> = relayed
        .iter()
        .filter_map(|&(from, to, relay)| {
            let (first, second) = (leg(m, from, relay)?, leg(m, relay, to)?);
            Some(((from, to), first.through(&second)))
        })
        .collect();
    m.extend(charged);
}

/// Decides whether to re-plan. `plan` is the held plan's members and the link matrix as it
/// was when the plan was adopted; `since_plan` is the time since then.
pub fn replan_trigger(
    plan: Option<(&[NodeId], &LinkMatrix)>,
    members: &[NodeId],
    links: &LinkMatrix,
    since_plan: Duration,
    policy: &ReplanPolicy,
) -> Option<Trigger> {
    let Some((plan_members, plan_links)) = plan else {
        return Some(Trigger::NoPlan);
    };
    let mut a = plan_members.to_vec();
    let mut b = members.to_vec();
    a.sort();
    b.sort();
    if a != b {
        return Some(Trigger::Membership);
    }
    if since_plan < policy.min_interval {
        return None;
    }
    for (&(from, to), old) in plan_links {
        let Some(new) = links.get(&(from, to)) else {
            continue;
        };
        let drift = |metric| Some(Trigger::LinkDrift { from, to, metric });
        if relative(old.rtt_s, new.rtt_s) > policy.rtt_change {
            return drift("rtt");
        }
        if relative(old.bandwidth_bps, new.bandwidth_bps) > policy.bandwidth_change {
            return drift("bandwidth");
        }
        if (old.loss - new.loss).abs() > policy.loss_change {
            return drift("loss");
        }
    }
    None
}

/// The plan to put in force for a solved placement `target` of cost `cost`: when every stage
/// node holds its layers on disk (`holds`), `target` itself; otherwise, while the `held` plan
/// still runs (its stage nodes are in `members` and hold their layers), the held stages again
/// with the stages of `target` that lack layers as the prefetch order; otherwise (nothing
/// runs without the fetches) `target`, whose nodes fetch and then load. Returns the stages,
/// the prefetch order and the cost.
pub fn phase(
    target: Vec<shoal_protocol::Stage>,
    cost: f64,
    held: Option<&shoal_protocol::Plan>,
    members: &[NodeId],
    holds: impl Fn(&shoal_protocol::Stage) -> bool,
) -> (Vec<shoal_protocol::Stage>, Vec<shoal_protocol::Stage>, f64) {
    let missing: Vec<_> = target.iter().filter(|s| !holds(s)).cloned().collect();
    if missing.is_empty() {
        return (target, Vec::new(), cost);
    }
    let running = held.filter(|p| {
        p.stages
            .iter()
            .all(|s| members.contains(&s.node) && holds(s))
    });
    match running {
        Some(p) => (p.stages.clone(), missing, p.cost_s),
        None => (target, Vec::new(), cost),
    }
}

/// |new - old| / old, with a zero old value counting as no change unless new is non-zero.
fn relative(old: f64, new: f64) -> f64 {
    if old > 0.0 {
        (new - old).abs() / old
    } else if new > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests;
