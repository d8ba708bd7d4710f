//! Gossip on the node task: decode and check every message before gossipsub may forward it,
//! then feed it to the membership table, the link reports or the plan gate; publish this
//! node's own capability and link report.
//!
//! Outcomes: a message that does not decode or verify is `Reject`ed (gossipsub penalises the
//! forwarder) and the forwarder's shoal score drops; an old sequence number or a plan that
//! loses at the gate is `Ignore`d (views legitimately differ for a moment); everything else is
//! `Accept`ed and forwarded.

use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::{Multiaddr, PeerId};
use sha2::{Digest, Sha256};
use shoal_keys::NodeId;
use shoal_protocol::{
    Capability, GossipMessage, LinkEntry, LinkReport, Plan, Signed, Topic, encode,
};

use super::state::{NodeTask, unix_ms};
use crate::coordinator::{Held, Refusal, Verdict};

impl NodeTask {
    pub(super) async fn on_gossip(
        &mut self,
        topic: Topic,
        from: PeerId,
        id: MessageId,
        data: &[u8],
    ) {
        let acceptance = match topic.decode(data) {
            Ok(GossipMessage::Capability(c)) => self.on_capability(c),
            Ok(GossipMessage::Links(l)) => self.on_link_report(l),
            Ok(GossipMessage::Plan(p)) => self.on_plan(p),
            Err(e) => {
                let reason = e.reason();
                tracing::info!(node = %self.me.short(), %topic, peer = %from, reason, error = %e, "refused gossip");
                self.count(&format!("{}_{reason}", topic_label(topic)));
                let _ = self.net.penalise(from, reason).await;
                MessageAcceptance::Reject
            }
        };
        let _ = self.net.report_validation(id, from, acceptance).await;
    }

    pub(super) fn count(&mut self, reason: &str) {
        *self.refused.entry(reason.to_string()).or_default() += 1;
    }

    fn on_capability(&mut self, signed: Signed<Capability>) -> MessageAcceptance {
        let (signer, cap) = (*signed.signer(), signed.unverified().clone());
        if signer == self.me {
            return MessageAcceptance::Ignore;
        }
        let newer = self
            .membership
            .get(&signer)
            .is_none_or(|m| cap.seq > m.info.seq);
        if !newer {
            return MessageAcceptance::Ignore;
        }
        let now = self.now();
        let addrs = cap.listen_addrs.clone();
        if let Some(ev) = self.membership.observe(signer, cap, now) {
            self.on_membership(ev);
            self.dial_if_unknown(signer, addrs);
            self.maybe_replan();
        }
        MessageAcceptance::Accept
    }

    /// A member we heard of through gossip but have no connection to: dial its announced
    /// addresses, so probes and activations can reach it directly.
    fn dial_if_unknown(&self, peer: NodeId, addrs: Vec<String>) {
        if self.connected.contains(&peer.to_peer_id()) {
            return;
        }
        let net = self.net.clone();
        tokio::spawn(async move {
            for a in addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                let _ = net.dial(crate::node::with_peer(&a, peer)).await;
            }
        });
    }

    fn on_link_report(&mut self, signed: Signed<LinkReport>) -> MessageAcceptance {
        let (from, report) = (*signed.signer(), signed.unverified().clone());
        if from == self.me || self.link_seq.get(&from).is_some_and(|s| report.seq <= *s) {
            return MessageAcceptance::Ignore;
        }
        self.link_seq.insert(from, report.seq);
        if self.membership.contains(&from) {
            self.reports.insert(from, report);
        }
        MessageAcceptance::Accept
    }

    fn on_plan(&mut self, signed: Signed<Plan>) -> MessageAcceptance {
        match self.gate_check(&signed) {
            Ok(Verdict::Adopt) => {
                self.adopt(signed);
                MessageAcceptance::Accept
            }
            Ok(Verdict::Duplicate) => MessageAcceptance::Accept,
            Err(r) => {
                let (epoch, signer) = (signed.unverified().epoch, *signed.signer());
                tracing::info!(
                    node = %self.me.short(), epoch, signer = %signer.short(),
                    held_epoch = self.gate.epoch(), reason = r.as_str(), "refused plan"
                );
                self.count(&format!("plan_{}", r.as_str()));
                if r == Refusal::NotCoordinator
                    && self.consistent_elsewhere(signed.unverified(), signer)
                {
                    self.saw_epoch(epoch);
                }
                match r {
                    Refusal::BadSignature => MessageAcceptance::Reject,
                    Refusal::NotCoordinator | Refusal::Stale => MessageAcceptance::Ignore,
                }
            }
        }
    }

    /// Passes `signed` through the plan gate under the current membership. The gate keeps
    /// only the digest of a plan it defers (see [`crate::coordinator::PlanGate::recheck`]);
    /// the signed plan is kept here, so every gate check goes through this. After a member
    /// left, the next epoch's coordinator can sign before our membership has dropped the
    /// member; waiting for the plan's next publication would stall the pipeline here.
    pub(super) fn gate_check(&mut self, signed: &Signed<Plan>) -> Result<Verdict, Refusal> {
        let held = held_of(signed);
        let verdict = self.gate.check(held, true, &self.membership.ids());
        match self.gate.deferred() {
            Some(d) if d == held => self.deferred_plan = Some(signed.clone()),
            Some(_) => {}
            None => self.deferred_plan = None,
        }
        verdict
    }

    /// Judges the deferred plan again under the current membership (called when it changes).
    pub(super) fn recheck_deferred_plan(&mut self) {
        let adopted = self.gate.recheck(&self.membership.ids());
        if self.gate.deferred().is_some() {
            return;
        }
        match (adopted, self.deferred_plan.take()) {
            (Some(held), Some(signed)) => {
                tracing::info!(node = %self.me.short(), epoch = held.epoch, "a plan refused earlier passes under the new membership");
                self.adopt(signed);
            }
            (Some(held), None) => {
                tracing::warn!(node = %self.me.short(), epoch = held.epoch, "the deferred plan is gone")
            }
            (None, _) => {}
        }
    }

    /// Whether a plan our gate refused is nevertheless what an honest coordinator with a
    /// different view would sign: its signer is the coordinator of its epoch among the members
    /// it lists, and all of those are members for us too. Such a plan shows the swarm has
    /// moved on (e.g. we were away); a plan signed by the wrong member does not.
    fn consistent_elsewhere(&self, plan: &Plan, signer: NodeId) -> bool {
        plan.members.iter().all(|m| self.membership.contains(m))
            && crate::coordinator::coordinator(plan.epoch, &plan.members) == Some(signer)
    }

    /// Makes `signed` the held plan: persists it, records the re-plan baseline, publishes the
    /// view. The caller has passed it through the gate.
    pub(super) fn adopt(&mut self, signed: Signed<Plan>) {
        let plan = signed.unverified();
        tracing::info!(
            node = %self.me.short(), epoch = plan.epoch, coordinator = %plan.coordinator.short(),
            stages = ?plan.stages.iter().map(|s| (s.node.short(), s.start, s.end)).collect::<Vec<_>>(),
            cost_s = plan.cost_s, "adopted plan"
        );
        if let Some(cause) = &plan.cause {
            tracing::info!(node = %self.me.short(), epoch = plan.epoch, "re-planned: {cause}");
        }
        if !plan.below_floor.is_empty() {
            tracing::warn!(
                epoch = plan.epoch,
                nodes = ?plan.below_floor.iter().map(|n| n.short()).collect::<Vec<_>>(),
                "on battery below the floor, yet holding layers: the model does not fit without them"
            );
        }
        match encode(&signed) {
            Ok(frame) => {
                if let Err(e) = self.store.put_plan(&frame) {
                    tracing::warn!(error = %e, "cannot store plan");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode plan"),
        }
        self.baseline = Some((self.link_matrix(), std::time::Instant::now()));
        self.power_baseline = self.power_states();
        self.failed_view = None;
        self.plan = Some(signed);
        self.publish_view();
    }

    /// Restores the last accepted plan from the store (verified again; a corrupt or forged
    /// entry is dropped). It is held until the swarm moves to a higher epoch.
    pub(super) fn restore_plan(&mut self) {
        let frame = match self.store.plan() {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read stored plan");
                return;
            }
        };
        match Topic::Plan.decode(&frame) {
            Ok(GossipMessage::Plan(signed)) => {
                let held = held_of(&signed);
                tracing::info!(node = %self.me.short(), epoch = held.epoch, "restored plan from store");
                self.gate = crate::coordinator::PlanGate::new(Some(held));
                self.plan = Some(signed);
            }
            Ok(_) | Err(_) => tracing::warn!("stored plan is unreadable; ignoring it"),
        }
    }

    pub(super) async fn publish_capability(&mut self) {
        match Signed::sign(&self.identity, self.own.clone()).and_then(|s| encode(&s)) {
            Ok(bytes) => self.publish(Topic::Capability, bytes).await,
            Err(e) => tracing::warn!(error = %e, "cannot sign capability"),
        }
    }

    pub(super) async fn publish_links(&mut self) {
        let seq = self.link_seq.get(&self.me).copied().unwrap_or(0) + 1;
        self.link_seq.insert(self.me, seq);
        let links = self
            .estimators
            .iter()
            .filter(|(id, _)| self.membership.contains(id))
            .filter_map(|(to, e)| {
                Some(LinkEntry {
                    to: *to,
                    rtt_s: e.rtt()?,
                    jitter_s: e.jitter(),
                    bandwidth_bps: e.bandwidth(),
                    loss: e.measured_loss(),
                    samples: e.rtt_samples(),
                    loss_samples: u32::try_from(e.probe_count()).unwrap_or(u32::MAX),
                    age_s: self
                        .last_sample
                        .get(to)
                        .map_or(0.0, |t| t.elapsed().as_secs_f64()),
                    via: self.routes.get(to).copied(),
                })
            })
            .take(shoal_protocol::MAX_SWARM)
            .collect::<Vec<LinkEntry>>();
        for l in &links {
            let l: &LinkEntry = l;
            tracing::debug!(
                target: "shoal_node::links", from = %self.me.short(), to = %l.to.short(),
                rtt_s = l.rtt_s, jitter_s = l.jitter_s, bandwidth_bps = ?l.bandwidth_bps,
                loss = ?l.loss, loss_samples = l.loss_samples, "link metrics"
            );
        }
        let report = LinkReport {
            from: self.me,
            seq,
            timestamp_ms: unix_ms(),
            links,
        };
        match Signed::sign(&self.identity, report).and_then(|s| encode(&s)) {
            Ok(bytes) => self.publish(Topic::Links, bytes).await,
            Err(e) => tracing::warn!(error = %e, "cannot sign link report"),
        }
    }

    pub(super) async fn publish(&mut self, topic: Topic, bytes: Vec<u8>) {
        if let Err(e) = self.net.publish(topic, bytes).await {
            // No peer subscribed yet is normal while the node is alone.
            tracing::debug!(node = %self.me.short(), %topic, error = %e, "publish failed");
        }
    }
}

/// Short label of a topic for refusal counters.
fn topic_label(t: Topic) -> &'static str {
    match t {
        Topic::Capability => "capability",
        Topic::Links => "links",
        Topic::Plan => "plan",
    }
}

/// What the plan gate keeps of `signed`: epoch, signer and a digest of the signed bytes.
fn held_of(signed: &Signed<Plan>) -> Held {
    Held {
        epoch: signed.unverified().epoch,
        signer: *signed.signer(),
        digest: Sha256::digest(signed.body_bytes()).into(),
    }
}
