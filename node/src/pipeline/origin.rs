//! The origin side: runs one generation over the pipeline of the current plan, and fails
//! over to a new plan when a stage dies.
//!
//! Step 0 sends the prompt's token ids to the first stage; every later step sends the last
//! token. Each step is one request that travels the whole pipeline and comes back as the last
//! stage's signed answer; the last stage also sends that answer straight to the origin (the
//! activation's `reply_to`), and the origin takes whichever comes first and checks it
//! (signer = the plan's last stage, epoch, session, step, once). Greedy sessions ask the last stage for the token itself (4 bytes on
//! the way back, as the cost model assumes); other sessions get the logits and the origin
//! samples, so the seeded sampler's state stays here and survives failover.
//!
//! Failover: an attempt is one session on one plan. When a stage fails (its connection
//! closed, no answer within the step timeout, or a stage reports the failure downstream), the
//! origin waits for a plan with a higher epoch (the coordinator re-plans when the member
//! leaves), opens a new session on it and replays the history step by step: the prompt, then
//! every token generated so far, exactly the computations of the undisturbed run, so greedy
//! output is identical. Transient refusals (a stage that has not seen the new plan yet) are
//! retried after a short pause. Retries are bounded; then the caller gets a clear error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_keys::{Identity, NodeId};
use shoal_model::{Sampler, SamplingConfig};
use shoal_protocol::{
    Activation, ErrorCode, FinishReason, MAX_DRAFT, PipelineMessage, Plan, Sampled, Sampling,
    SessionEnd, Signed, SpecFigures, TokenReturn,
};
use tokio::sync::{mpsc, watch};

use super::draft::DraftModel;
use super::metrics::Metrics;
use super::net::Net;
use super::ordering::{Expect, Gate, Inbound, Refusal};
use super::speculate::{
    Adaptive, DrafterKind, accept_greedy_rows, accept_sampled, ngram_draft, plausible_greedy,
};
use super::stage::{StageCtx, sign_frame};
use super::wire::{Reply, decode_reply, logits_rows, tokens_tensor};
use super::{GenerateError, Options};
use crate::view::View;

/// A generation request as the origin runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Prompt token ids (templated, BOS included as the model wants).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// How to pick tokens.
    pub sampling: SamplingConfig,
    /// Tokens that end the generation (not included in the output).
    pub stop: Vec<u32>,
    /// `Some(k)`: report each generated token's log-probability and the `k` most likely
    /// tokens at its position ([`Generated::logprobs`]); the last stage then returns the
    /// logits even for greedy decoding. At most [`MAX_TOP_LOGPROBS`].
    pub logprobs: Option<usize>,
    /// Speculative decoding's drafter for this generation; `None`: the node's default
    /// (`[pipeline] drafter`).
    pub drafter: Option<DrafterKind>,
}

/// Most alternatives [`GenerateParams::logprobs`] may ask for (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The log-probabilities of one generated token (natural log, of the model's distribution
/// before temperature and top-p).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The token generated.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprobs {
    /// `token`'s log-probability under `logits` and the `k` most likely tokens.
    pub fn from_logits(logits: &[f32], token: u32, k: usize) -> TokenLogprobs {
        let max = logits
            .iter()
            .copied()
            .filter(|x| !x.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits
            .iter()
            .filter(|x| !x.is_nan())
            .map(|x| f64::from(x - max).exp())
            .sum();
        let log_z = f64::from(max) + sum.ln();
        let lp = |i: usize| (f64::from(logits[i]) - log_z) as f32;
        let mut top: Vec<usize> = Vec::with_capacity(k + 1);
        for (i, x) in logits.iter().enumerate() {
            if x.is_nan() || k == 0 {
                continue;
            }
            if top.len() < k || *x > logits[top[top.len() - 1]] {
                let at = top.partition_point(|j| logits[*j] >= *x);
                top.insert(at, i);
                top.truncate(k);
            }
        }
        TokenLogprobs {
            token,
            logprob: logits
                .get(token as usize)
                .map_or(f32::NEG_INFINITY, |_| lp(token as usize)),
            top: top.into_iter().map(|i| (i as u32, lp(i))).collect(),
        }
    }
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub finish: FinishReason,
    /// Wall time from start to the last token.
    pub elapsed: Duration,
    /// Time of the first step (prefill) of the first attempt.
    pub prefill: Duration,
    /// The plan epoch that produced the last token.
    pub epoch: u64,
    /// Attempts beyond the first (failovers and retries).
    pub retries: u32,
    /// One entry per generated token when [`GenerateParams::logprobs`] asked for them.
    pub logprobs: Vec<TokenLogprobs>,
    /// The drafter that ran and its counts.
    pub drafter: DrafterKind,
    /// Passes, drafts and accepted drafts.
    pub spec: SpecStats,
}

/// What the last stage returned for a step.
enum Next {
    /// The token it picked (greedy sessions).
    Token(u32),
    /// A greedy verify step's accepted drafts and the model's own token.
    Tokens(Vec<u32>),
    /// The logits of each verified position (one row without drafts); the origin samples.
    Logits(Vec<Vec<f32>>),
}

/// A step's drafts and what the drafter knew of them.
#[derive(Default)]
struct Drafted {
    tokens: Vec<u32>,
    /// The draft model's distribution at each draft (`None`: a deterministic drafter).
    proposal: Option<Vec<Vec<(u32, f32)>>>,
    /// The drafter's first proposal when the controller chose not to draft (compared with
    /// the token that comes, to keep the acceptance rate measured).
    shadow: Option<u32>,
}

/// Why one attempt ended without finishing.
#[derive(Debug)]
enum AttemptError {
    /// A stage is gone or silent: wait for a new plan, then replay.
    StageFailed(String),
    /// A stage refused or was not ready (e.g. behind on the plan): retry soon.
    Transient(String),
    /// A newer plan replaced the attempt's plan mid-step: move to it and replay (counted as
    /// a failover, within the quick-retry budget so link-driven re-plans of a long
    /// generation do not exhaust the failover budget).
    Replanned(String),
    /// Retrying cannot help.
    Fatal(GenerateError),
}

/// What the origin needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct Origin {
    pub(crate) identity: Arc<Identity>,
    pub(crate) net: Net,
    pub(crate) view: watch::Receiver<Arc<View>>,
    pub(crate) stage: Arc<StageCtx>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) options: Options,
    /// The draft model, when `[pipeline] draft_model` is set.
    pub(crate) draft_model: Option<Arc<DraftModel>>,
    /// Where the measured speculation figures go (the node's capability).
    pub(crate) spec_report: Option<Arc<SpecReport>>,
}

/// Weight of the latest generation in the reported running means.
const SPEC_REPORT_WEIGHT: f64 = 0.3;

/// The running means of positions and tokens per pass over this origin's speculative
/// generations, sent to the node whenever one ends.
pub(crate) struct SpecReport {
    tx: super::SpecReporter,
    mean: std::sync::Mutex<Option<SpecFigures>>,
}

impl SpecReport {
    pub(crate) fn new(tx: super::SpecReporter) -> Self {
        SpecReport {
            tx,
            mean: std::sync::Mutex::new(None),
        }
    }

    /// Folds one generation's counts in (none without speculative passes).
    fn record(&self, s: &SpecStats) {
        let Some(now) = figures(s) else { return };
        let mut mean = self.mean.lock().unwrap_or_else(|e| e.into_inner());
        let next = match *mean {
            None => now,
            Some(m) => SpecFigures {
                positions: m.positions + SPEC_REPORT_WEIGHT * (now.positions - m.positions),
                tokens_per_pass: m.tokens_per_pass
                    + SPEC_REPORT_WEIGHT * (now.tokens_per_pass - m.tokens_per_pass),
            },
        };
        *mean = Some(next);
        self.tx.send_replace(Some(next));
    }
}

/// A generation's positions and tokens per pass, when it drafted at all.
fn figures(s: &SpecStats) -> Option<SpecFigures> {
    if s.passes == 0 || s.drafted == 0 {
        return None;
    }
    let passes = s.passes as f64;
    Some(SpecFigures {
        positions: (passes + s.drafted as f64) / passes,
        tokens_per_pass: (passes + s.accepted as f64) / passes,
    })
}

/// Progress through one generation, kept across attempts.
struct Progress<'a> {
    params: &'a GenerateParams,
    tokens: Vec<u32>,
    sampler: Sampler,
    stream: Option<&'a mpsc::Sender<u32>>,
    started: Instant,
    prefill: Option<Duration>,
    logprobs: Vec<TokenLogprobs>,
    drafter: DrafterKind,
    /// Drafts per pass, across attempts.
    adaptive: Option<Adaptive>,
    /// Passes, drafts sent and drafts accepted.
    spec: SpecStats,
}

/// Counts of a generation's speculation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecStats {
    /// Passes through the pipeline after the prefill (each yields at least one token).
    pub passes: u64,
    /// Draft tokens sent for verification.
    pub drafted: u64,
    /// Draft tokens accepted.
    pub accepted: u64,
}

impl Origin {
    fn me(&self) -> NodeId {
        self.identity.node_id()
    }

    /// Runs `params` to the end; each new token is also sent on `stream` when given.
    pub(crate) async fn generate(
        &self,
        params: &GenerateParams,
        stream: Option<&mpsc::Sender<u32>>,
    ) -> Result<Generated, GenerateError> {
        if params.prompt.is_empty() {
            return Err(GenerateError::BadRequest("empty prompt".into()));
        }
        let drafter = params.drafter.unwrap_or(self.options.drafter);
        if drafter == DrafterKind::Model && self.draft_model.is_none() {
            return Err(GenerateError::BadRequest(
                "the model drafter needs [pipeline] draft_model on this node".into(),
            ));
        }
        let _guard = self.metrics.in_flight();
        let mut p = Progress {
            params,
            tokens: Vec::with_capacity(params.max_tokens),
            sampler: Sampler::new(params.sampling),
            stream,
            started: Instant::now(),
            prefill: None,
            logprobs: Vec::new(),
            drafter,
            adaptive: None,
            spec: SpecStats::default(),
        };
        let result = self.run(&mut p).await;
        if let (Ok(g), Some(r)) = (&result, &self.spec_report) {
            r.record(&g.spec);
        }
        match &result {
            Ok(g) => self.metrics.generation(g.tokens.len() as u64, g.elapsed),
            Err(_) => self.metrics.generation_error(),
        }
        result
    }

    async fn run(&self, p: &mut Progress<'_>) -> Result<Generated, GenerateError> {
        let o = &self.options;
        let mut plan = self
            .wait_plan(0, o.plan_wait())
            .await
            .ok_or(GenerateError::NoPlan)?;
        let (mut failovers, mut transients) = (0u32, 0u32);
        loop {
            let session: u64 = rand::rng().random();
            match self.attempt(&plan, session, p).await {
                Ok(finish) => {
                    return Ok(Generated {
                        tokens: std::mem::take(&mut p.tokens),
                        finish,
                        elapsed: p.started.elapsed(),
                        prefill: p.prefill.unwrap_or_default(),
                        epoch: plan.epoch,
                        retries: failovers + transients,
                        logprobs: std::mem::take(&mut p.logprobs),
                        drafter: p.drafter,
                        spec: p.spec,
                    });
                }
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::StageFailed(why)) => {
                    failovers += 1;
                    self.metrics.failover();
                    tracing::warn!(node = %self.me().short(), epoch = plan.epoch, attempt = failovers, done = p.tokens.len(), "stage failed: {why}; waiting for a new plan");
                    if failovers > o.max_failovers {
                        return Err(GenerateError::Failed {
                            attempts: failovers,
                            last: why,
                        });
                    }
                    // A newer plan if one comes in time; else retry the current one.
                    plan = match self.wait_plan(plan.epoch + 1, o.failover_wait()).await {
                        Some(p) => p,
                        None => self
                            .wait_plan(0, o.plan_wait())
                            .await
                            .ok_or(GenerateError::NoPlan)?,
                    };
                }
                Err(e @ (AttemptError::Transient(_) | AttemptError::Replanned(_))) => {
                    let why = match e {
                        AttemptError::Replanned(why) => {
                            self.metrics.failover();
                            why
                        }
                        AttemptError::Transient(why) => why,
                        _ => String::new(),
                    };
                    transients += 1;
                    tracing::info!(node = %self.me().short(), epoch = plan.epoch, "retrying: {why}");
                    if transients > o.max_transient {
                        return Err(GenerateError::Failed {
                            attempts: transients,
                            last: why,
                        });
                    }
                    // A newer plan ends the pause early (we were behind); otherwise retry
                    // the current one (a stage was behind, or busy).
                    plan = match self.wait_plan(plan.epoch + 1, o.transient_pause()).await {
                        Some(p) => p,
                        None => self
                            .wait_plan(0, o.plan_wait())
                            .await
                            .ok_or(GenerateError::NoPlan)?,
                    };
                }
            }
        }
    }

    /// The current plan once its epoch is at least `min_epoch`, or `None` after `wait`.
    async fn wait_plan(&self, min_epoch: u64, wait: Duration) -> Option<Plan> {
        let mut rx = self.view.clone();
        let fut = async {
            loop {
                let plan = rx.borrow_and_update().plan().cloned();
                if let Some(plan) = plan.filter(|p| p.epoch >= min_epoch) {
                    return Some(plan);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(wait, fut).await.ok().flatten()
    }

    /// One session on one plan: replays what is known, then generates until done.
    ///
    /// Step 0 sends the prompt. After it, the stages hold `fed` positions of the history
    /// (prompt then generated tokens); each later step sends the history from `fed` on. A
    /// replayed token (known from an earlier attempt) goes alone and its answer is already
    /// known; the last token goes with the step's drafts, and the answer's tokens (at least
    /// one) extend the history. The stages keep the positions of the accepted drafts and roll
    /// the rest back when the next step starts below them (docs/pipeline.md, "Speculative
    /// decoding").
    async fn attempt(
        &self,
        plan: &Plan,
        session: u64,
        p: &mut Progress<'_>,
    ) -> Result<FinishReason, AttemptError> {
        let Some(last) = plan.stages.last().map(|s| s.node) else {
            return Err(AttemptError::Fatal(GenerateError::NoPlan));
        };
        let mut gate: Gate<u64> = Gate::new(1);
        gate.set_plan(plan.epoch, Some(Expect::Peer(last)));
        let prompt_len = p.params.prompt.len();
        let greedy = p.params.sampling.is_greedy() && p.params.logprobs.is_none();
        let sample = greedy.then_some(Sampling::GREEDY);
        if p.drafter != DrafterKind::Off && p.adaptive.is_none() {
            let max = self.options.max_draft.clamp(1, MAX_DRAFT);
            p.adaptive = Some(Adaptive::new(max, plan.cost_s));
        }
        let draft_session: u64 = rand::rng().random();
        let mut step = 0u64;
        let mut fed = 0usize;
        let result = loop {
            if p.tokens.len() >= p.params.max_tokens {
                break Ok(FinishReason::Length);
            }
            let t0 = Instant::now();
            let known = prompt_len + p.tokens.len();
            let replay = step > 0 && fed + 1 < known;
            let drafted = if step == 0 || replay {
                Drafted::default()
            } else {
                let room = p.params.max_tokens - p.tokens.len() - 1;
                match self.draft(p, draft_session, room).await {
                    Ok(d) => d,
                    Err(e) => break Err(e),
                }
            };
            let mut input: Vec<u32> = if step == 0 {
                p.params.prompt.clone()
            } else {
                let at = fed - prompt_len;
                vec![p.tokens[at]]
            };
            input.extend_from_slice(&drafted.tokens);
            let position = fed;
            let next = match self
                .step(
                    plan,
                    &mut gate,
                    (session, step),
                    (&input, position),
                    sample,
                    &drafted.tokens,
                )
                .await
            {
                Ok(l) => l,
                Err(e) => break Err(e),
            };
            if step == 0 && p.prefill.is_none() {
                p.prefill = Some(p.started.elapsed());
            }
            step += 1;
            fed = if position == 0 { prompt_len } else { fed + 1 };
            if replay || (position == 0 && !p.tokens.is_empty()) {
                continue; // replayed a known step: its token is already in the history
            }
            let (new, logprobs) = match self.accept(p, &drafted, next) {
                Ok(x) => x,
                Err(e) => break Err(e),
            };
            // The accepted drafts are in the stages' caches; the last token is not.
            let accepted = new.len() - 1;
            if position > 0 {
                fed += accepted;
                p.spec.passes += 1;
                p.spec.drafted += drafted.tokens.len() as u64;
                p.spec.accepted += accepted as u64;
                if let Some(a) = p.adaptive.as_mut() {
                    a.record(drafted.tokens.len(), accepted, t0.elapsed().as_secs_f64());
                    if let Some(s) = drafted.shadow {
                        a.shadow(s, new[0]);
                    }
                }
            }
            let mut finished = None;
            for (i, tok) in new.into_iter().enumerate() {
                if p.params.stop.contains(&tok) {
                    finished = Some(FinishReason::Stop);
                    break;
                }
                p.tokens.push(tok);
                if let Some(lp) = logprobs.get(i) {
                    p.logprobs.push(lp.clone());
                }
                if let Some(tx) = p.stream {
                    // A client that went away stops the generation.
                    if tx.send(tok).await.is_err() {
                        finished = Some(FinishReason::Stop);
                        break;
                    }
                }
                if p.tokens.len() >= p.params.max_tokens {
                    finished = Some(FinishReason::Length);
                    break;
                }
            }
            if let Some(f) = finished {
                break Ok(f);
            }
        };
        self.end_session(plan, session);
        if let Some(d) = &self.draft_model {
            d.end(draft_session);
        }
        result
    }

    /// The drafts of the next pass: as many as the controller wants (at most `room`, the
    /// tokens the request still allows after the pass's own).
    async fn draft(
        &self,
        p: &mut Progress<'_>,
        draft_session: u64,
        room: usize,
    ) -> Result<Drafted, AttemptError> {
        let Some(adaptive) = p.adaptive.as_ref() else {
            return Ok(Drafted::default());
        };
        let history: Vec<u32> = p.params.prompt.iter().chain(&p.tokens).copied().collect();
        let max = adaptive.choose(room.min(MAX_DRAFT));
        match p.drafter {
            DrafterKind::Off => Ok(Drafted::default()),
            DrafterKind::Ngram => {
                if max == 0 {
                    let shadow = ngram_draft(&history, 1).first().copied();
                    return Ok(Drafted {
                        shadow,
                        ..Drafted::default()
                    });
                }
                Ok(Drafted {
                    tokens: ngram_draft(&history, max),
                    ..Drafted::default()
                })
            }
            DrafterKind::Model => {
                let Some(model) = &self.draft_model else {
                    return Ok(Drafted::default());
                };
                if max == 0 {
                    return Ok(Drafted::default());
                }
                let sampler = (!p.params.sampling.is_greedy()).then_some(&mut p.sampler);
                match model.propose(draft_session, &history, max, sampler).await {
                    Ok((tokens, proposal)) => Ok(Drafted {
                        tokens,
                        proposal,
                        shadow: None,
                    }),
                    Err(e) => {
                        // The pass goes without drafts; the generation is not at stake.
                        tracing::warn!(node = %self.me().short(), "the draft model failed: {e}");
                        Ok(Drafted::default())
                    }
                }
            }
        }
    }

    /// The tokens a step's answer yields (at least one) and their log-probabilities when the
    /// request asked for them.
    fn accept(
        &self,
        p: &mut Progress<'_>,
        drafted: &Drafted,
        next: Next,
    ) -> Result<(Vec<u32>, Vec<TokenLogprobs>), AttemptError> {
        let draft = &drafted.tokens;
        let rows = draft.len() + 1;
        match next {
            Next::Token(t) if draft.is_empty() => Ok((vec![t], Vec::new())),
            Next::Tokens(v) if plausible_greedy(draft, &v) => Ok((v, Vec::new())),
            Next::Logits(l) if l.len() == rows => {
                let new = if p.params.sampling.is_greedy() {
                    accept_greedy_rows(draft, l.iter().map(Vec::as_slice))
                } else if draft.is_empty() {
                    vec![p.sampler.sample(&l[0])]
                } else {
                    let target: Vec<Vec<(u32, f32)>> =
                        l.iter().map(|r| p.sampler.distribution(r)).collect();
                    accept_sampled(&target, draft, drafted.proposal.as_deref(), &mut p.sampler)
                };
                let logprobs = match p.params.logprobs {
                    Some(k) => new
                        .iter()
                        .zip(&l)
                        .map(|(t, row)| {
                            TokenLogprobs::from_logits(row, *t, k.min(MAX_TOP_LOGPROBS))
                        })
                        .collect(),
                    None => Vec::new(),
                };
                Ok((new, logprobs))
            }
            _ => Err(AttemptError::Transient(format!(
                "the last stage's answer does not fit a step of {} drafts",
                draft.len()
            ))),
        }
    }

    /// One step: send `input` at `position` to the first stage and check the answer.
    async fn step(
        &self,
        plan: &Plan,
        gate: &mut Gate<u64>,
        (session, step): (u64, u64),
        (input, position): (&[u32], usize),
        sample: Option<Sampling>,
        draft: &[u32],
    ) -> Result<Next, AttemptError> {
        let first = plan.stages[0].node;
        let body = Activation {
            epoch: plan.epoch,
            session,
            step,
            stage: 0,
            position: u32::try_from(position).map_err(|_| fatal("prompt too long"))?,
            tensor: tokens_tensor(input),
            sample,
            reply_to: Some(self.me()),
            draft: draft.to_vec(),
        };
        let t = Instant::now();
        // The token comes straight from the last stage, or as the answer through the stages,
        // whichever is first (the answer also carries any stage's failure). A bad copy sent
        // straight here does not end the step.
        let mut direct = self.stage.expect_return(session, step);
        let mut direct_open = true;
        let chain = self.send_first(first, body);
        let replaced = self.plan_replaced(plan.epoch);
        tokio::pin!(chain, replaced);
        let outcome = loop {
            tokio::select! {
                r = &mut chain => {
                    break r.and_then(|reply| self.check_reply(gate, session, step, &reply));
                }
                d = &mut direct, if direct_open => {
                    direct_open = false;
                    let Ok(token) = d else { continue };
                    match self.check_token(gate, session, step, &token) {
                        Ok(next) => break Ok(next),
                        // Not from the plan's last stage (or not for this step): ignore it
                        // and wait for the answer through the stages.
                        Err(e) => self.refused_direct(plan, &token, &e).await,
                    }
                }
                // A newer plan (a member left, or the links moved) ends the step at once: the
                // stages that adopted it refuse this epoch anyway, and a departed stage may
                // never answer.
                () = &mut replaced => {
                    break Err(AttemptError::Replanned(format!(
                        "plan epoch {} was replaced",
                        plan.epoch
                    )));
                }
            }
        };
        self.stage.forget_return(session, step);
        tracing::trace!(
            session,
            step,
            ok = outcome.is_ok(),
            elapsed_ms = t.elapsed().as_secs_f64() * 1e3,
            "step done"
        );
        if outcome.is_ok() {
            self.metrics.step(t.elapsed());
        }
        outcome
    }

    /// A token sent straight here that did not pass the checks: its signer (who sent it, as
    /// the stage side made sure) loses score unless it is the plan's last stage.
    async fn refused_direct(&self, plan: &Plan, token: &Signed<TokenReturn>, why: &AttemptError) {
        tracing::info!(node = %self.me().short(), "token sent straight here refused: {why:?}");
        let signer = *token.signer();
        if plan.stages.last().is_some_and(|s| s.node != signer) {
            self.net.report_misbehaviour(signer, "wrong_sender").await;
        }
    }

    /// Sends the step's activation to the first stage (in-process when that is this node)
    /// and waits for the answer frame, at most the step timeout.
    async fn send_first(&self, first: NodeId, body: Activation) -> Result<Vec<u8>, AttemptError> {
        let limit = self.options.step_timeout();
        let late =
            || AttemptError::StageFailed(format!("stage 0 ({first}): no answer within {limit:?}"));
        if first == self.me() {
            let signed = Signed::sign(&self.identity, body).map_err(|e| fatal(e.to_string()))?;
            let msg = PipelineMessage::Activation(signed);
            return tokio::time::timeout(limit, self.stage.handle(first, &msg))
                .await
                .map_err(|_| late());
        }
        let frame = sign_frame(&self.identity, body, PipelineMessage::Activation).map_err(fatal)?;
        match tokio::time::timeout(limit, self.net.send_activation(first, frame)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(AttemptError::StageFailed(format!("stage 0 ({first}): {e}"))),
            Err(_) => Err(late()),
        }
    }

    /// Resolves once the view holds a plan newer than `epoch` (never, if the node stops).
    async fn plan_replaced(&self, epoch: u64) {
        let mut rx = self.view.clone();
        loop {
            if rx.borrow_and_update().epoch() > epoch {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Checks a step's answer and returns the last position's logits.
    fn check_reply(
        &self,
        gate: &mut Gate<u64>,
        session: u64,
        step: u64,
        reply: &[u8],
    ) -> Result<Next, AttemptError> {
        let token = match decode_reply(reply) {
            Ok(Reply::Token(t)) => t,
            Ok(Reply::Error(e)) => {
                let why = format!("{:?}: {}", e.code, e.message);
                return Err(match e.code {
                    ErrorCode::StageFailed | ErrorCode::Timeout => AttemptError::StageFailed(why),
                    ErrorCode::BadRequest => AttemptError::Fatal(GenerateError::BadRequest(
                        format!("the model cannot run this request: {}", e.message),
                    )),
                    ErrorCode::WrongModel => AttemptError::Fatal(GenerateError::Failed {
                        attempts: 0,
                        last: why,
                    }),
                    _ => AttemptError::Transient(why),
                });
            }
            Ok(Reply::Ack) => return Err(AttemptError::Transient("empty answer".into())),
            Err(e) => {
                self.metrics.refuse(e.reason());
                return Err(AttemptError::Transient(format!("undecodable answer: {e}")));
            }
        };
        self.check_token(gate, session, step, &token)
    }

    /// Checks the last stage's token for this step and returns what it carries.
    fn check_token(
        &self,
        gate: &mut Gate<u64>,
        session: u64,
        step: u64,
        token: &Signed<TokenReturn>,
    ) -> Result<Next, AttemptError> {
        let body = token.unverified();
        let verdict = if body.session != session || body.step != step {
            Err(Refusal::OutOfOrder)
        } else {
            gate.check(&Inbound {
                peer: *token.signer(),
                signer: *token.signer(),
                // PipelineMessage::decode verified the last stage's signature.
                signature_ok: true,
                epoch: body.epoch,
                session,
                step,
            })
        };
        if let Err(r) = verdict {
            self.metrics.refuse(r.label());
            return Err(AttemptError::Transient(format!("answer refused: {r}")));
        }
        match &body.output {
            Sampled::Logits(t) => logits_rows(t)
                .map(Next::Logits)
                .ok_or_else(|| AttemptError::Transient("logits malformed".into())),
            Sampled::Token(t) => Ok(Next::Token(*t)),
            Sampled::Tokens(t) => Ok(Next::Tokens(t.clone())),
        }
    }

    /// Tells the first stage (and through it the rest) that `session` is over; best effort.
    fn end_session(&self, plan: &Plan, session: u64) {
        let first = plan.stages[0].node;
        let body = SessionEnd {
            epoch: plan.epoch,
            session,
        };
        let Ok(signed) = Signed::sign(&self.identity, body) else {
            return;
        };
        let msg = PipelineMessage::End(signed);
        let this = self.clone();
        tokio::spawn(async move {
            if first == this.me() {
                this.stage.handle(first, &msg).await;
            } else if let Ok(frame) = msg.encode() {
                let _ = this.net.send_activation(first, frame).await;
            }
        });
    }
}

fn fatal(e: impl Into<String>) -> AttemptError {
    AttemptError::Fatal(GenerateError::Failed {
        attempts: 0,
        last: e.into(),
    })
}
