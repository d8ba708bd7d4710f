//! Activation acceptance: the pure rule that decides whether an inbound activation (or a
//! returned token) may be processed, with no IO.
//!
//! DESIGN.md: a receiver accepts an activation only from the peer that the current signed plan
//! puts one stage before it, only for the current epoch, only once per (session, step), and
//! only if the signature holds. [`Gate::check`] applies these rules in a fixed order and returns
//! a typed [`Refusal`] otherwise; the driver counts the reason and lowers the sender's score.
//!
//! Steps of one session reach a stage strictly in order (the origin sends step `n + 1` only
//! after step `n`'s token came back), so the replay memory keeps one counter per session: the
//! next step it expects. A step below it is a replay, a step above it is a gap. The memory is
//! bounded ([`Gate::new`]'s capacity); the least recently used session is forgotten first, and
//! a forgotten session can only be restarted at step 0 within the current epoch, because any
//! epoch change clears the memory and refuses the old epoch outright.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use shoal_keys::NodeId;

/// Why an inbound activation or token was refused. Each reason is a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// The signature does not verify for the claimed signer.
    #[error("bad signature")]
    BadSignature,
    /// The envelope's signer is not the peer that delivered it.
    #[error("signer is not the sending peer")]
    SignerMismatch,
    /// This node holds no plan yet, or the plan gives it no stage.
    #[error("no plan puts this node on the stage")]
    NotOurStage,
    /// The activation names an epoch older than the current plan's.
    #[error("stale epoch")]
    StaleEpoch,
    /// The activation names an epoch this node has not accepted (yet).
    #[error("unknown future epoch")]
    FutureEpoch,
    /// The sender is not the peer the plan puts one stage before this one.
    #[error("sender is not the previous stage")]
    WrongSender,
    /// The (session, step) was already processed.
    #[error("replayed step")]
    Replay,
    /// The step skips ahead of the next expected one.
    #[error("step out of order")]
    OutOfOrder,
    /// The bytes did not decode or the tensor does not fit the stage.
    #[error("malformed activation")]
    Malformed,
}

/// A message of `epoch` at a node holding the plan of `held`: refused as stale or future
/// unless the two are equal (both happen to honest peers while a plan spreads).
pub fn same_epoch(epoch: u64, held: u64) -> Result<(), Refusal> {
    match epoch.cmp(&held) {
        std::cmp::Ordering::Less => Err(Refusal::StaleEpoch),
        std::cmp::Ordering::Greater => Err(Refusal::FutureEpoch),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

impl Refusal {
    /// Every reason, in a fixed order (metrics print all of them, zero or not).
    pub const ALL: [Refusal; 9] = [
        Refusal::BadSignature,
        Refusal::SignerMismatch,
        Refusal::NotOurStage,
        Refusal::StaleEpoch,
        Refusal::FutureEpoch,
        Refusal::WrongSender,
        Refusal::Replay,
        Refusal::OutOfOrder,
        Refusal::Malformed,
    ];

    /// Whether an honest peer cannot cause this refusal, so it lowers the sender's score.
    /// Epoch mismatches and a stage this node does not (yet) hold happen to honest peers while
    /// a new plan spreads; they are counted but not held against the sender (a stage retried
    /// during a re-plan would otherwise be banned).
    pub fn is_misbehaviour(self) -> bool {
        !matches!(
            self,
            Refusal::StaleEpoch | Refusal::FutureEpoch | Refusal::NotOurStage
        )
    }

    /// The metrics label, e.g. `bad_signature`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::BadSignature => "bad_signature",
            Refusal::SignerMismatch => "signer_mismatch",
            Refusal::NotOurStage => "not_our_stage",
            Refusal::StaleEpoch => "stale_epoch",
            Refusal::FutureEpoch => "future_epoch",
            Refusal::WrongSender => "wrong_sender",
            Refusal::Replay => "replay",
            Refusal::OutOfOrder => "out_of_order",
            Refusal::Malformed => "malformed",
        }
    }
}

/// Who the receiver expects a message from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// One peer only: the previous stage, or (at the origin) the last stage.
    Peer(NodeId),
    /// Any of these peers: the first stage takes token ids from whichever member is the
    /// origin of a request.
    AnyOf(Vec<NodeId>),
}

impl Expect {
    fn allows(&self, peer: &NodeId) -> bool {
        match self {
            Expect::Peer(p) => p == peer,
            Expect::AnyOf(set) => set.contains(peer),
        }
    }
}

/// The facts about one inbound message that the rule looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound<S> {
    /// The peer that delivered the message (authenticated by the transport).
    pub peer: NodeId,
    /// The signer named in the envelope.
    pub signer: NodeId,
    /// Whether the envelope's signature verified for `signer`.
    pub signature_ok: bool,
    /// The plan epoch the message names.
    pub epoch: u64,
    /// The generation session.
    pub session: S,
    /// The step within the session (0 = prefill).
    pub step: u64,
}

/// Acceptance state of one receiving role (a stage, or the origin awaiting tokens).
#[derive(Debug)]
pub struct Gate<S> {
    epoch: Option<u64>,
    expect: Option<Expect>,
    next_step: HashMap<S, u64>,
    order: VecDeque<S>,
    capacity: usize,
}

impl<S: Eq + Hash + Clone> Gate<S> {
    /// A gate with no plan that remembers at most `capacity` sessions (at least 1).
    pub fn new(capacity: usize) -> Self {
        Gate {
            epoch: None,
            expect: None,
            next_step: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Installs the current plan's epoch and whom to expect; `None` when the plan gives this
    /// role nothing. A new epoch forgets every session: old-epoch messages are refused anyway.
    pub fn set_plan(&mut self, epoch: u64, expect: Option<Expect>) {
        if self.epoch != Some(epoch) {
            self.next_step.clear();
            self.order.clear();
        }
        self.epoch = Some(epoch);
        self.expect = expect;
    }

    /// The current epoch, if a plan is installed.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Number of sessions remembered (never above the capacity).
    pub fn remembered(&self) -> usize {
        self.next_step.len()
    }

    /// Applies the rule; on success the step is recorded, so the same (session, step) is
    /// refused as a replay from now on.
    pub fn check(&mut self, msg: &Inbound<S>) -> Result<(), Refusal> {
        if !msg.signature_ok {
            return Err(Refusal::BadSignature);
        }
        if msg.signer != msg.peer {
            return Err(Refusal::SignerMismatch);
        }
        let (Some(epoch), Some(expect)) = (self.epoch, self.expect.as_ref()) else {
            return Err(Refusal::NotOurStage);
        };
        same_epoch(msg.epoch, epoch)?;
        if !expect.allows(&msg.peer) {
            return Err(Refusal::WrongSender);
        }
        self.record(&msg.session, msg.step)
    }

    /// Forgets a finished session early (frees its slot; a later step 0 would be new).
    pub fn forget(&mut self, session: &S) {
        if self.next_step.remove(session).is_some() {
            self.order.retain(|s| s != session);
        }
    }

    fn record(&mut self, session: &S, step: u64) -> Result<(), Refusal> {
        let next = self.next_step.get(session).copied().unwrap_or(0);
        if step < next {
            return Err(Refusal::Replay);
        }
        if step > next {
            return Err(Refusal::OutOfOrder);
        }
        if step == 0 {
            self.admit(session.clone());
        } else {
            self.touch(session);
        }
        self.next_step.insert(session.clone(), step + 1);
        Ok(())
    }

    fn admit(&mut self, session: S) {
        while self.next_step.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.next_step.remove(&old);
                }
                None => break,
            }
        }
        self.order.push_back(session);
    }

    fn touch(&mut self, session: &S) {
        if let Some(pos) = self.order.iter().position(|s| s == session)
            && let Some(s) = self.order.remove(pos)
        {
            self.order.push_back(s);
        }
    }
}

#[cfg(test)]
#[path = "ordering_tests.rs"]
mod tests;
