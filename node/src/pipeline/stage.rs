//! The stage side of the pipeline: checks an inbound activation against the plan, runs this
//! node's layers on the runtime actor, and passes the result on.
//!
//! A request on `/shoal/activation/1` travels the whole pipeline before it is answered: stage
//! `k` runs its layers, sends its signed activation to stage `k + 1` and answers its own
//! request with whatever came back, so the last stage's signed [`TokenReturn`] reaches the
//! origin unchanged, and a failure anywhere comes back at once as an [`ErrorReply`] naming the
//! stage that failed (a killed process closes its connections, so the failure is seen in
//! milliseconds, not after a timeout). The last stage also sends the token straight to the
//! origin named in the activation (`reply_to`), so the origin has it one hop after the last
//! stage, not one hop per stage later; [`StageCtx::expect_return`] is where the origin waits
//! for it.
//!
//! [`StageCtx::handle`] is also called in-process when the origin itself runs stage 0.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_keys::{Identity, NodeId};
use shoal_model::StageOutput;
use shoal_protocol::{
    Activation, ErrorCode, PipelineMessage, Plan, Sampled, SessionEnd, Signed, TokenReturn,
};

use super::metrics::Metrics;
use super::net::Net;
use super::ordering::{Expect, Gate, Inbound, Refusal};
use super::runtime::RuntimeHandle;
use super::wire::{error_frame, float_tensor, input_len, stage_input};
use crate::view::View;

/// Sessions whose replay memory a stage keeps (per epoch).
const REPLAY_MEMORY: usize = 4096;
/// Origins of sessions remembered by the first stage (to accept their `SessionEnd`).
const ORIGIN_MEMORY: usize = 1024;

/// What the current plan asks of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The plan's epoch.
    pub epoch: u64,
    /// This node's stage index.
    pub index: usize,
    /// Planner layers `[a, b)` of the stage.
    pub layers: Range<usize>,
    /// The next stage's node, `None` on the last stage.
    pub next: Option<NodeId>,
    /// The previous stage's node, `None` on the first stage.
    pub prev: Option<NodeId>,
}

impl Assignment {
    /// This node's assignment in `plan`, if it runs a stage.
    pub fn of(plan: &Plan, me: &NodeId) -> Option<Self> {
        let index = plan.stage_of(me)?;
        let stage = &plan.stages[index];
        Some(Assignment {
            epoch: plan.epoch,
            index,
            layers: stage.start as usize..stage.end as usize,
            next: plan.stages.get(index + 1).map(|s| s.node),
            prev: index.checked_sub(1).map(|i| plan.stages[i].node),
        })
    }

    /// The layer range as a metrics label, e.g. `3-6`.
    pub fn label(&self) -> String {
        format!("{}-{}", self.layers.start, self.layers.end)
    }
}

struct State {
    gate: Gate<u64>,
    assignment: Option<Assignment>,
    origins: VecDeque<(u64, NodeId)>,
    /// The layer range the runtime loaded successfully.
    loaded: Option<Range<usize>>,
}

/// Where each waiting step of this node's own generations, by (session, step), wants its
/// token frame.
type Returns = HashMap<(u64, u64), tokio::sync::oneshot::Sender<Signed<TokenReturn>>>;

/// Everything a stage needs to serve activations; shared by the server task, its request
/// tasks and the local origin.
pub struct StageCtx {
    me: NodeId,
    identity: Arc<Identity>,
    net: Net,
    runtime: Option<RuntimeHandle>,
    metrics: Arc<Metrics>,
    hop_timeout: Duration,
    state: Mutex<State>,
    /// Steps of this node's own generations waiting for their token.
    returns: Mutex<Returns>,
}

impl std::fmt::Debug for StageCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageCtx")
            .field("me", &self.me.short())
            .finish()
    }
}

impl StageCtx {
    /// A stage context; `runtime` is `None` on a node without the model (it refuses all).
    pub fn new(
        identity: Arc<Identity>,
        net: Net,
        runtime: Option<RuntimeHandle>,
        metrics: Arc<Metrics>,
        hop_timeout: Duration,
    ) -> Self {
        StageCtx {
            me: identity.node_id(),
            identity,
            net,
            runtime,
            metrics,
            hop_timeout,
            state: Mutex::new(State {
                gate: Gate::new(REPLAY_MEMORY),
                assignment: None,
                origins: VecDeque::new(),
                loaded: None,
            }),
            returns: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a step of one of this node's generations: the token the last stage sends
    /// straight here arrives on the returned receiver. Call [`StageCtx::forget_return`]
    /// when the step is over either way.
    pub(crate) fn expect_return(
        &self,
        session: u64,
        step: u64,
    ) -> tokio::sync::oneshot::Receiver<Signed<TokenReturn>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.returns_lock().insert((session, step), tx);
        rx
    }

    /// Drops a step's registration.
    pub(crate) fn forget_return(&self, session: u64, step: u64) {
        self.returns_lock().remove(&(session, step));
    }

    fn returns_lock(&self) -> std::sync::MutexGuard<'_, Returns> {
        // A map of senders stays usable after a panic elsewhere.
        self.returns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A token sent straight to this node as a session's origin: handed to the waiting step
    /// (which checks signer, epoch, session and step as for any answer). One that no step
    /// waits for (it lost the race with the answer through the stages, or the step gave up)
    /// is dropped; so is one its sender did not sign.
    fn on_token(&self, peer: NodeId, s: &Signed<TokenReturn>) -> Vec<u8> {
        let t = s.unverified();
        if s.signer() != &peer {
            return self.refuse(peer, Some(t.session), Refusal::WrongSender);
        }
        match self.returns_lock().remove(&(t.session, t.step)) {
            Some(tx) => {
                let _ = tx.send(s.clone());
            }
            None => {
                tracing::debug!(node = %self.me.short(), peer = %peer.short(), session = t.session, step = t.step, "token nobody waits for")
            }
        }
        Vec::new()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Poisoning means a panic mid-check; the state is still consistent enough to refuse
        // or accept the next message.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current assignment.
    pub fn assignment(&self) -> Option<Assignment> {
        self.state().assignment.clone()
    }

    /// Installs the view's plan: the gate's epoch and expected sender, and loads the layers
    /// when they changed (awaits the load, so later activations find them).
    pub async fn on_view(&self, view: &View) {
        let Some(plan) = view.plan() else { return };
        let asg = Assignment::of(plan, &self.me);
        let expect = asg.as_ref().map(|a| match a.prev {
            Some(prev) => Expect::Peer(prev),
            None => {
                let mut any = plan.members.clone();
                any.extend(view.member_ids());
                any.push(self.me);
                Expect::AnyOf(any)
            }
        });
        let loaded = {
            let mut st = self.state();
            st.gate.set_plan(plan.epoch, expect);
            st.assignment = asg.clone();
            st.loaded.clone()
        };
        let (Some(a), Some(rt)) = (asg, &self.runtime) else {
            return;
        };
        if loaded.as_ref() == Some(&a.layers) {
            self.metrics.stage_loaded(a.epoch);
            return;
        }
        if !rt.on_disk(&a.layers) {
            // Joined without these layers: the follower fetches them, and the view that
            // announces them brings this stage back here.
            tracing::info!(node = %self.me.short(), epoch = a.epoch, layers = ?a.layers, "stage waits for its layers to arrive");
            return;
        }
        let t = Instant::now();
        match rt.load(a.layers.clone()).await {
            Ok(()) => {
                tracing::info!(node = %self.me.short(), epoch = a.epoch, stage = a.index, layers = ?a.layers, load_s = t.elapsed().as_secs_f64(), "stage ready");
                self.state().loaded = Some(a.layers.clone());
                self.metrics.stage_loaded(a.epoch);
            }
            Err(e) => {
                tracing::error!(node = %self.me.short(), layers = ?a.layers, error = %e, "cannot load the stage");
            }
        }
    }

    /// Counts a refusal, lowers the sender's score when an honest peer could not have caused
    /// it, and returns the error frame to answer.
    fn refuse(&self, peer: NodeId, session: Option<u64>, r: Refusal) -> Vec<u8> {
        self.metrics.refuse(r.label());
        tracing::info!(node = %self.me.short(), peer = %peer.short(), reason = r.label(), "refused pipeline message");
        if peer != self.me && r.is_misbehaviour() {
            let net = self.net.clone();
            tokio::spawn(async move { net.report_misbehaviour(peer, r.label()).await });
        }
        error_frame(session, ErrorCode::Refused, format!("{}: {r}", r.label()))
    }

    /// Serves one pipeline message from `peer` (signature already verified) and returns the
    /// response frame.
    pub async fn handle(&self, peer: NodeId, msg: &PipelineMessage) -> Vec<u8> {
        match msg {
            PipelineMessage::Activation(s) => self.on_activation(peer, s).await,
            PipelineMessage::End(s) => self.on_end(peer, s),
            PipelineMessage::Token(s) => self.on_token(peer, s),
        }
    }

    /// The gate's verdict for an activation, with the assignment it was checked against. The
    /// stage index is checked first, so a misaddressed message never uses up its step.
    fn admit(&self, peer: NodeId, s: &Signed<Activation>) -> Result<Assignment, Refusal> {
        let act = s.unverified();
        let mut st = self.state();
        // A message of another epoch is the gate's to refuse (stale or future).
        let asg = match st.assignment.clone() {
            Some(a) if a.epoch != act.epoch || a.index == act.stage as usize => a,
            _ => return Err(Refusal::NotOurStage),
        };
        st.gate.check(&Inbound {
            peer,
            signer: *s.signer(),
            // The inbound decoder (or, in-process, our own signing) verified it.
            signature_ok: true,
            epoch: act.epoch,
            session: act.session,
            step: act.step,
        })?;
        if asg.index == 0 && act.step == 0 {
            if st.origins.len() >= ORIGIN_MEMORY {
                st.origins.pop_front();
            }
            st.origins.push_back((act.session, peer));
        }
        Ok(asg)
    }

    async fn on_activation(&self, peer: NodeId, s: &Signed<Activation>) -> Vec<u8> {
        let act = s.unverified();
        let session = Some(act.session);
        tracing::trace!(from = %peer.short(), session = act.session, step = act.step, stage = act.stage, "activation in");
        let asg = match self.admit(peer, s) {
            Ok(a) => a,
            Err(r) => return self.refuse(peer, session, r),
        };
        let input = match stage_input(&act.tensor, asg.index == 0) {
            Ok(i) => i,
            Err(r) => return self.refuse(peer, session, r),
        };
        // A verify step's drafts are the last of its token ids, and it spans every position
        // it verifies.
        let outputs = act.verified_positions();
        let fits = match &input {
            shoal_model::StageInput::Tokens(ids) => {
                ids.ends_with(&act.draft) && ids.len() >= outputs
            }
            shoal_model::StageInput::Hidden(h) => h.shape.get(1).is_some_and(|s| *s >= outputs),
        };
        if !fits {
            return self.refuse(peer, session, Refusal::Malformed);
        }
        let Some(rt) = &self.runtime else {
            return error_frame(session, ErrorCode::WrongModel, "this node holds no model");
        };
        let seq = input_len(&input);
        let computed = rt
            .run(
                asg.layers.clone(),
                act.session,
                act.position as usize,
                input,
                outputs,
            )
            .await;
        let computed = match computed {
            Ok(c) => c,
            Err(e) => {
                let msg = format!(
                    "stage {} ({}) could not run: {e}",
                    asg.index,
                    self.me.short()
                );
                return error_frame(session, failure_code(asg.index, &e), msg);
            }
        };
        self.metrics
            .stage_compute(asg.index as u32, &asg.label(), computed.compute);
        if computed.batch > 1 {
            self.metrics.batched_step();
        }
        match (computed.output, asg.next) {
            (StageOutput::Hidden(h), Some(next)) => {
                let body = Activation {
                    epoch: act.epoch,
                    session: act.session,
                    step: act.step,
                    stage: act.stage + 1,
                    position: act.position,
                    tensor: float_tensor(&h),
                    sample: act.sample,
                    reply_to: act.reply_to,
                    draft: act.draft.clone(),
                };
                self.forward(&asg, next, body).await
            }
            (StageOutput::Logits(logits), None) => {
                let output = match &act.sample {
                    Some(s) if act.draft.is_empty() => {
                        Sampled::Token(sample_token(s, act.step, &logits))
                    }
                    // A greedy verify step: the agreeing drafts and the model's own token.
                    Some(s) if s.temperature <= 0.0 => {
                        Sampled::Tokens(verify_greedy(&act.draft, &logits))
                    }
                    _ => Sampled::Logits(float_tensor(&logits)),
                };
                let body = TokenReturn {
                    epoch: act.epoch,
                    session: act.session,
                    step: act.step,
                    output,
                };
                tracing::trace!(
                    session = act.session,
                    step = act.step,
                    seq,
                    "token step done"
                );
                let signed = match Signed::sign(&self.identity, body) {
                    Ok(t) => t,
                    Err(e) => return error_frame(session, ErrorCode::Internal, e.to_string()),
                };
                let frame = match PipelineMessage::Token(signed.clone()).encode() {
                    Ok(f) => f,
                    Err(e) => return error_frame(session, ErrorCode::Internal, e.to_string()),
                };
                self.send_return(peer, act.reply_to, &signed, &frame);
                frame
            }
            _ => error_frame(
                session,
                ErrorCode::Internal,
                format!(
                    "stage {} output does not fit its place in the plan",
                    asg.index
                ),
            ),
        }
    }

    /// Sends the last stage's token (`frame` is its encoding) straight to the session's
    /// origin, unless the answer to the request from `prev` reaches it as soon (the origin
    /// asked this stage itself) or there is no origin named.
    fn send_return(
        &self,
        prev: NodeId,
        origin: Option<NodeId>,
        token: &Signed<TokenReturn>,
        frame: &[u8],
    ) {
        let Some(origin) = origin.filter(|o| *o != prev) else {
            return;
        };
        if origin == self.me {
            // The origin is this node: hand it over in-process.
            self.on_token(self.me, token);
            return;
        }
        let (net, frame) = (self.net.clone(), frame.to_vec());
        tokio::spawn(async move {
            if let Err(e) = net.send_activation(origin, frame).await {
                tracing::debug!(error = %e, "token straight to the origin failed");
            }
        });
    }

    /// Signs `body`, sends it to `next` and returns its answer (or an error naming it).
    async fn forward(&self, asg: &Assignment, next: NodeId, body: Activation) -> Vec<u8> {
        let session = Some(body.session);
        let frame = match sign_frame(&self.identity, body, PipelineMessage::Activation) {
            Ok(f) => f,
            Err(e) => return error_frame(session, ErrorCode::Internal, e),
        };
        let t = Instant::now();
        tracing::trace!(to = %next.short(), session = ?session, "activation out");
        let sent =
            tokio::time::timeout(self.hop_timeout, self.net.send_activation(next, frame)).await;
        self.metrics.downstream(&next.short(), t.elapsed());
        let failed = |why: String| {
            let msg = format!("stage {} ({}) failed: {why}", asg.index + 1, next);
            tracing::warn!(node = %self.me.short(), "{msg}");
            error_frame(session, ErrorCode::StageFailed, msg)
        };
        match sent {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => failed(e.to_string()),
            Err(_) => failed(format!("no answer within {:?}", self.hop_timeout)),
        }
    }

    /// Frees a session: drops its cache and replay memory, and tells the next stage.
    fn on_end(&self, peer: NodeId, s: &Signed<SessionEnd>) -> Vec<u8> {
        let end = s.unverified();
        let verdict = if s.signer() != &peer {
            Err(Refusal::SignerMismatch)
        } else {
            let st = self.state();
            end_verdict(st.assignment.as_ref(), &st.origins, peer, end)
        };
        let asg = match verdict {
            Ok(Some(a)) => a,
            // No session of that name here: nothing to free.
            Ok(None) => return Vec::new(),
            Err(r) => return self.refuse(peer, Some(end.session), r),
        };
        self.state().gate.forget(&end.session);
        if let Some(rt) = &self.runtime {
            rt.drop_session(end.session);
        }
        if let Some(next) = asg.next {
            let body = SessionEnd {
                epoch: end.epoch,
                session: end.session,
            };
            if let Ok(frame) = sign_frame(&self.identity, body, PipelineMessage::End) {
                let net = self.net.clone();
                tokio::spawn(async move { net.send_activation(next, frame).await });
            }
        }
        Vec::new()
    }
}

/// Whether `peer` may end `end`'s session here (`asg`: this node's assignment; `origins`: who
/// started each recent session at the first stage): the previous stage, or at the first stage
/// the session's origin, under this node's epoch. As with activations, an end under an epoch
/// this node does not hold happens to honest peers while a plan spreads (each stage forwards
/// the end under the plan it holds), so only a wrong sender within the epoch is misbehaviour.
/// `Ok(None)`: the first stage never saw the session, so there is nothing to end.
fn end_verdict(
    asg: Option<&Assignment>,
    origins: &VecDeque<(u64, NodeId)>,
    peer: NodeId,
    end: &SessionEnd,
) -> Result<Option<Assignment>, Refusal> {
    let Some(asg) = asg else {
        return Err(Refusal::NotOurStage);
    };
    super::ordering::same_epoch(end.epoch, asg.epoch)?;
    let sender_ok = match asg.prev {
        Some(prev) => prev == peer,
        None => match origins.iter().find(|(session, _)| *session == end.session) {
            Some((_, origin)) => *origin == peer,
            None => return Ok(None),
        },
    };
    if sender_ok {
        Ok(Some(asg.clone()))
    } else {
        Err(Refusal::WrongSender)
    }
}

/// The token the last stage returns for `step` under `s`: the argmax when greedy, else a
/// draw from a sampler seeded with `s.seed` mixed with the step, so any stage that replays
/// the step after a failover draws the same token.
fn sample_token(s: &shoal_protocol::Sampling, step: u64, logits: &shoal_model::Activation) -> u32 {
    let v = logits.shape.last().copied().unwrap_or(0);
    let last = &logits.data[logits.data.len().saturating_sub(v)..];
    let config = shoal_model::SamplingConfig {
        seed: s.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ..super::sampling_config(s)
    };
    shoal_model::Sampler::new(config).sample(last)
}

/// A greedy verify step's answer from the logits of its verified positions (one row each):
/// the drafts that are the argmax at their position, then the argmax at the first
/// disagreement or after the last draft.
fn verify_greedy(draft: &[u32], logits: &shoal_model::Activation) -> Vec<u32> {
    let v = logits.shape.last().copied().unwrap_or(0).max(1);
    super::speculate::accept_greedy_rows(draft, logits.data.chunks_exact(v))
}

/// Signs `body` and encodes it as a pipeline frame.
pub fn sign_frame<T: shoal_protocol::Message>(
    identity: &Identity,
    body: T,
    wrap: fn(Signed<T>) -> PipelineMessage,
) -> Result<Vec<u8>, String> {
    let signed = Signed::sign(identity, body).map_err(|e| e.to_string())?;
    wrap(signed).encode().map_err(|e| e.to_string())
}

/// The wire code of a failed model run at stage `index`: input the model cannot take at the
/// first stage came from the request itself (token ids, length), so it is the request's error
/// and ends the generation at once; anything else is this stage's fault (docs/pipeline.md,
/// "Failure classes").
fn failure_code(index: usize, e: &super::runtime::RuntimeError) -> ErrorCode {
    match e {
        super::runtime::RuntimeError::Model(shoal_model::Error::BadInput(_)) if index == 0 => {
            ErrorCode::BadRequest
        }
        _ => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use shoal_keys::Identity;
    use shoal_protocol::{ModelRef, Objective, PlanStrategy, Stage};

    use super::*;

    fn node(seed: u8) -> NodeId {
        Identity::from_secret_bytes([seed; 32]).node_id()
    }

    fn plan(nodes: &[NodeId], cuts: &[u32]) -> Plan {
        let stages: Vec<Stage> = nodes
            .iter()
            .zip(cuts.windows(2))
            .map(|(n, w)| Stage {
                node: *n,
                start: w[0],
                end: w[1],
            })
            .collect();
        let mut members = nodes.to_vec();
        members.sort();
        Plan {
            epoch: 5,
            coordinator: nodes[0],
            model: ModelRef {
                name: "m".into(),
                manifest_sha256: [0; 32],
            },
            num_layers: *cuts.last().unwrap(),
            objective: Objective::Latency,
            cost_s: 0.01,
            stages,
            members,
            strategy: PlanStrategy::Milp,
            optimal: true,
            timestamp_ms: 0,
            prefetch: vec![],
            cause: None,
            below_floor: vec![],
        }
    }

    #[test]
    fn assignment_names_neighbours_and_layers() {
        let (a, b, c) = (node(1), node(2), node(3));
        let p = plan(&[a, b, c], &[0, 3, 5, 8]);
        let mid = Assignment::of(&p, &b).unwrap();
        assert_eq!(
            (mid.index, mid.layers.clone(), mid.prev, mid.next),
            (1, 3..5, Some(a), Some(c))
        );
        assert_eq!(mid.label(), "3-5");
        let first = Assignment::of(&p, &a).unwrap();
        assert_eq!((first.prev, first.next), (None, Some(b)));
        assert_eq!(Assignment::of(&p, &c).unwrap().next, None);
        assert_eq!(Assignment::of(&p, &node(9)), None);
    }

    #[test]
    fn last_stage_sampling_is_greedy_or_reproducible_per_step() {
        let logits = shoal_model::Activation::new(
            vec![1, 2, 4],
            vec![0.0, 9.0, 1.0, 2.0, 0.5, 0.1, 3.0, 0.2],
        )
        .unwrap();
        // Greedy takes the last position's argmax.
        assert_eq!(
            sample_token(&shoal_protocol::Sampling::GREEDY, 0, &logits),
            2
        );
        let s = shoal_protocol::Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 7,
        };
        let draws: Vec<u32> = (0..20)
            .map(|step| sample_token(&s, step, &logits))
            .collect();
        let again: Vec<u32> = (0..20)
            .map(|step| sample_token(&s, step, &logits))
            .collect();
        assert_eq!(draws, again, "a replayed step draws the same token");
        assert!(draws.iter().all(|&t| t < 4));
    }

    #[test]
    fn greedy_verification_returns_the_agreeing_drafts_and_one_token() {
        // Three positions over a vocabulary of 4: argmaxes 1, 2, 0.
        let logits = shoal_model::Activation::new(
            vec![1, 3, 4],
            vec![0.0, 9.0, 1.0, 2.0, 0.5, 0.1, 3.0, 0.2, 7.0, 0.0, 0.0, 0.0],
        )
        .unwrap();
        assert_eq!(verify_greedy(&[1, 2], &logits), vec![1, 2, 0]);
        assert_eq!(verify_greedy(&[1, 3], &logits), vec![1, 2]);
        assert_eq!(verify_greedy(&[0, 2], &logits), vec![1]);
    }

    #[test]
    fn ends_under_another_epoch_are_refused_without_blame_and_wrong_senders_with() {
        let (a, b, c, stranger) = (node(1), node(2), node(3), node(9));
        let p = plan(&[a, b, c], &[0, 2, 4, 6]);
        let first = Assignment::of(&p, &a).unwrap();
        let middle = Assignment::of(&p, &b).unwrap();
        let origins: VecDeque<(u64, NodeId)> = [(7, c)].into_iter().collect();
        let end = |epoch, session| SessionEnd { epoch, session };
        let verdict = |asg: Option<&Assignment>, peer, e: SessionEnd| {
            end_verdict(asg, &origins, peer, &e).map(|a| a.map(|a| a.index))
        };

        assert_eq!(verdict(Some(&middle), a, end(5, 7)), Ok(Some(1)));
        assert_eq!(verdict(Some(&first), c, end(5, 7)), Ok(Some(0)));
        assert_eq!(
            verdict(Some(&first), c, end(5, 8)),
            Ok(None),
            "unknown session"
        );

        // What an honest stage causes while a new plan spreads.
        for (asg, e, r) in [
            (None, end(6, 7), Refusal::NotOurStage),
            (Some(&middle), end(6, 7), Refusal::FutureEpoch),
            (Some(&middle), end(4, 7), Refusal::StaleEpoch),
        ] {
            assert_eq!(verdict(asg, a, e), Err(r));
            assert!(!r.is_misbehaviour(), "{r:?}");
        }
        // Ending someone else's session within the epoch.
        for (asg, peer) in [(&middle, stranger), (&first, stranger), (&first, b)] {
            assert_eq!(
                verdict(Some(asg), peer, end(5, 7)),
                Err(Refusal::WrongSender)
            );
        }
        assert!(Refusal::WrongSender.is_misbehaviour());
    }

    #[test]
    fn only_the_first_stages_bad_input_is_the_requests_error() {
        use super::super::runtime::RuntimeError;
        let bad = || RuntimeError::Model(shoal_model::Error::BadInput("token 9 >= vocab 4".into()));
        assert_eq!(failure_code(0, &bad()), ErrorCode::BadRequest);
        assert_eq!(failure_code(1, &bad()), ErrorCode::Internal);
        assert_eq!(failure_code(0, &RuntimeError::Stopped), ErrorCode::Internal);
    }
}
