//! Planning on the node task: when this node is the coordinator of the next epoch and a
//! re-plan trigger fires (see `crate::coordinator::replan_trigger`), build a scenario from the
//! view, solve it on a blocking thread (within `solve_time_limit_s`), then sign, adopt and
//! publish the plan. The coordinator of the held plan re-publishes it periodically so late
//! joiners and lagging views accept it. When the held plan is not proven optimal (the solve hit
//! its limit), the next epoch's coordinator solves the same view again in the background for
//! up to `improve_time_limit_s`, and publishes the result at the next epoch only if it is
//! better by `improve_margin` and nothing changed meanwhile ([`improvement_accepted`]).

use std::sync::Arc;
use std::time::Instant;

use shoal_protocol::{Plan, Signed, Stage, Topic, encode};

use super::scenario;
use super::state::{NodeTask, SolveOutcome, unix_ms};
use crate::config::ms;
use crate::coordinator::{
    Power, PowerState, ReplanPolicy, Trigger, coordinator, membership_cause, phase, power_trigger,
    replan_trigger,
};
use crate::view::{LinkView, MemberView, View};

/// A refused plan moves our idea of the swarm's epoch at most this far ahead of the held one,
/// so a misbehaving member cannot push epochs towards `u64::MAX`.
const MAX_EPOCH_JUMP: u64 = 1_000;

/// A view whose solve failed is solved again after this long even if nothing countable
/// changed.
const FAILED_PLAN_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

impl NodeTask {
    /// The epoch of the next plan: one past both the held plan and any newer epoch a member
    /// has signed that we refused (a node that was away may hold an old plan while the swarm
    /// moved on; planning the old epoch + 1 would be refused as stale everywhere).
    pub(super) fn next_epoch(&self) -> u64 {
        self.gate.epoch().max(self.seen_epoch) + 1
    }

    /// Records the epoch of a well-signed plan from a member that did not pass the gate.
    pub(super) fn saw_epoch(&mut self, epoch: u64) {
        let cap = self.gate.epoch().saturating_add(MAX_EPOCH_JUMP);
        self.seen_epoch = self.seen_epoch.max(epoch.min(cap));
    }

    fn policy(&self) -> ReplanPolicy {
        let p = &self.cfg.planner;
        ReplanPolicy {
            rtt_change: p.rtt_change,
            bandwidth_change: p.bandwidth_change,
            loss_change: p.loss_change,
            min_interval: ms(p.min_replan_interval_ms),
        }
    }

    /// How power states are bucketed for re-planning.
    fn power_policy(&self) -> Power {
        let p = &self.cfg.planner;
        Power {
            min_level: p.min_battery_percent / 100.0,
            step: p.battery_step_percent / 100.0,
        }
    }

    /// Every member's power state now.
    pub(super) fn power_states(
        &self,
    ) -> std::collections::BTreeMap<shoal_keys::NodeId, PowerState> {
        self.membership
            .iter()
            .map(|(id, m)| (*id, PowerState::of(&m.info)))
            .collect()
    }

    /// Starts a solve if this node is the next epoch's coordinator and a trigger fires.
    pub(super) fn maybe_replan(&mut self) {
        let Some(model) = self.model.clone() else {
            return;
        };
        if self.solving || self.clock.elapsed() < ms(self.cfg.membership.settle_ms) {
            return;
        }
        let members = self.membership.ids();
        let epoch = self.next_epoch();
        if coordinator(epoch, &members) != Some(self.me) {
            return;
        }
        let links = self.link_matrix();
        let plan_members = self.plan.as_ref().map(|p| p.unverified().members.clone());
        let baseline = plan_members
            .as_deref()
            .zip(self.baseline.as_ref().map(|(m, _)| m));
        let since = self
            .baseline
            .as_ref()
            .map_or(std::time::Duration::MAX, |(_, t)| t.elapsed());
        let policy = self.policy();
        let trigger = match (baseline, plan_members.as_deref()) {
            (Some(b), _) => replan_trigger(Some(b), &members, &links, since, &policy),
            // A plan without a local baseline (restored from the store): membership only.
            (None, Some(pm)) => {
                replan_trigger(Some((pm, &links)), &members, &links, since, &policy)
            }
            (None, None) => Some(Trigger::NoPlan),
        };
        // A member's power change names the cause before a link's drift (a throttled node's
        // hops slow down too); a battery re-plans at once, a speed change waits out the
        // hysteresis interval as a link's does.
        let power = plan_members
            .as_ref()
            .and_then(|_| {
                power_trigger(
                    &self.power_baseline,
                    &self.power_states(),
                    &self.power_policy(),
                )
            })
            .filter(|t| since >= policy.min_interval || !t.is_speed());
        let trigger = match trigger {
            None | Some(Trigger::LinkDrift { .. }) if power.is_some() => power,
            t => t,
        };
        let trigger = trigger
            .or((self.seen_epoch > self.gate.epoch()).then_some(Trigger::Behind))
            .or(self.prefetch_done().then_some(Trigger::Fetched));
        let Some(trigger) = trigger else {
            self.maybe_improve(&model, &members, &links, epoch);
            return;
        };
        if self.failed_view.as_ref().is_some_and(|(m, n, at)| {
            *m == members && *n == links.len() && at.elapsed() < FAILED_PLAN_RETRY
        }) {
            return;
        }
        let entries: Vec<_> = self
            .membership
            .iter()
            .map(|(id, m)| (id, &m.info))
            .collect();
        let devices = scenario::devices(&model, entries);
        if devices.is_empty() || !devices.iter().any(|(d, _)| *d == self.me) {
            return;
        }
        // Give the probes time to measure every pair, but not forever.
        let patience = ms(self.cfg.membership.settle_ms + self.cfg.membership.liveness_timeout_ms);
        if !scenario::links_complete(&devices, &links) && self.clock.elapsed() < patience {
            return;
        }
        let scen = scenario::build(
            &model,
            &devices,
            &links,
            self.me,
            &self.cfg.planner,
            self.cfg.layers.share(),
        );
        let (objective, strategy) = match self.objective_strategy() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "bad planner config");
                return;
            }
        };
        let cause = match (&trigger, plan_members.as_deref()) {
            (Trigger::NoPlan, _) => None,
            (Trigger::Membership, Some(before)) => Some(membership_cause(before, &members)),
            (t, _) => Some(t.to_string()),
        };
        tracing::info!(node = %self.me.short(), epoch, ?trigger, devices = devices.len(), "re-planning");
        self.solving = true;
        let limit = self.cfg.planner.solve_time_limit_s;
        self.spawn_solve(
            scen,
            (objective, strategy),
            limit,
            epoch,
            members,
            (None, cause),
        );
    }

    /// Whether the held plan ordered prefetches and every ordered node now holds its layers.
    fn prefetch_done(&self) -> bool {
        let Some(plan) = self.plan.as_ref().map(|p| p.unverified()) else {
            return false;
        };
        !plan.prefetch.is_empty() && plan.prefetch.iter().all(|s| self.holds(s))
    }

    /// Whether the stage's node announces every layer of the stage as on disk.
    fn holds(&self, s: &Stage) -> bool {
        self.membership
            .iter()
            .find(|(id, _)| **id == s.node)
            .is_some_and(|(_, m)| (s.start..s.end).all(|l| m.info.holds(l)))
    }

    /// Solves `scen` on a blocking thread within `limit_s` and sends the outcome to the task.
    fn spawn_solve(
        &self,
        scen: shoal_planner::Scenario,
        (objective, strategy): (shoal_planner::Objective, shoal_planner::Strategy),
        limit_s: f64,
        epoch: u64,
        members: Vec<shoal_keys::NodeId>,
        (improves, cause): (Option<(u64, f64)>, Option<String>),
    ) {
        let tx = self.solve_tx.clone();
        tokio::spawn(async move {
            let solved = tokio::task::spawn_blocking(move || {
                let opts = shoal_planner::PlanOptions {
                    time_limit_s: limit_s,
                    ..shoal_planner::PlanOptions::default()
                };
                shoal_planner::plan_with(&scen, objective, strategy, &opts)
                    .map_err(|e| e.to_string())
            })
            .await;
            let result = solved.unwrap_or_else(|e| Err(format!("solver thread: {e}")));
            let _ = tx
                .send(SolveOutcome {
                    epoch,
                    members,
                    result,
                    improves,
                    cause,
                })
                .await;
        });
    }

    /// Starts the background improvement of a held plan that is not proven optimal, once per
    /// held epoch, when this node coordinates the next epoch and the view has the plan's
    /// members (`maybe_replan` found no re-plan trigger).
    fn maybe_improve(
        &mut self,
        model: &super::model::ModelInfo,
        members: &[shoal_keys::NodeId],
        links: &crate::coordinator::LinkMatrix,
        epoch: u64,
    ) {
        let limit = self.cfg.planner.improve_time_limit_s;
        let Some(held) = self.plan.as_ref().map(|p| p.unverified()) else {
            return;
        };
        if held.optimal
            || limit <= 0.0
            || self.improving
            || self.improved_epoch == Some(held.epoch)
            || held.members != members
        {
            return;
        }
        // Baselines are not optimal by design, and solving them again gives the same placement.
        let Ok((objective, strategy)) = self.objective_strategy() else {
            return;
        };
        if strategy != shoal_planner::Strategy::Milp {
            return;
        }
        let held_epoch = held.epoch;
        let (scen, held_cost) = self.view_cost(model, links, held, objective);
        self.improved_epoch = Some(held_epoch);
        let held_cost = match held_cost {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(epoch = held_epoch, error = %e, "held plan not scorable in this view; not improving it");
                return;
            }
        };
        tracing::info!(
            node = %self.me.short(), held = held_epoch, held_cost, limit_s = limit,
            "improving a plan not proven optimal in the background"
        );
        self.improving = true;
        let improves = Some((held_epoch, held_cost));
        self.spawn_solve(
            scen,
            (objective, strategy),
            limit,
            epoch,
            members.to_vec(),
            (
                improves,
                Some("a better placement was found in the background".into()),
            ),
        );
    }

    fn objective_strategy(
        &self,
    ) -> Result<(shoal_planner::Objective, shoal_planner::Strategy), String> {
        let o = self
            .cfg
            .planner
            .objective
            .parse()
            .map_err(|e: shoal_planner::UnknownName| e.to_string())?;
        let s = self
            .cfg
            .planner
            .strategy
            .parse()
            .map_err(|e: shoal_planner::UnknownName| e.to_string())?;
        Ok((o, s))
    }

    /// Signs, adopts and publishes a solved plan if it is still for the next epoch.
    pub(super) async fn on_solved(&mut self, out: SolveOutcome) {
        match out.improves {
            Some(_) => self.improving = false,
            None => self.solving = false,
        }
        if let Some((held_epoch, held_cost)) = out.improves {
            let p = match &out.result {
                Ok(p) => p,
                Err(e) => {
                    tracing::info!(held = held_epoch, error = %e, "background improvement failed");
                    return;
                }
            };
            let margin = self.cfg.planner.improve_margin;
            if !improvement_accepted((held_epoch, held_cost), self.gate.epoch(), p.cost_s, margin)
                || self.solving
            {
                tracing::info!(
                    held = held_epoch,
                    held_cost,
                    found = p.cost_s,
                    optimal = p.optimal,
                    "background improvement not published (not better by the margin, or the plan moved on)"
                );
                return;
            }
        }
        if out.epoch != self.next_epoch() {
            tracing::info!(
                epoch = out.epoch,
                held = self.gate.epoch(),
                "solve overtaken by another plan"
            );
            return;
        }
        let solved = match out.result {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(node = %self.me.short(), epoch = out.epoch, error = %e, "planning failed");
                self.failed_view = Some((out.members, self.link_matrix().len(), Instant::now()));
                return;
            }
        };
        let Some(model) = self.model.clone() else {
            return;
        };
        let stages: Option<Vec<Stage>> = solved
            .stages
            .iter()
            .map(|s| {
                Some(Stage {
                    node: s.device.parse().ok()?,
                    start: u32::try_from(s.layers[0]).ok()?,
                    end: u32::try_from(s.layers[1]).ok()?,
                })
            })
            .collect();
        let Some(stages) = stages else {
            tracing::error!("planner returned an unknown device");
            return;
        };
        // The held plan counts only while it places the same model.
        let held = self
            .plan
            .as_ref()
            .map(|p| p.unverified())
            .filter(|p| p.model == model.model_ref);
        let (stages, prefetch, cost_s) =
            phase(stages, solved.cost_s, held, &out.members, |s| self.holds(s));
        if !prefetch.is_empty() {
            tracing::info!(
                node = %self.me.short(), epoch = out.epoch,
                prefetch = ?prefetch.iter().map(|s| (s.node.short(), s.start, s.end)).collect::<Vec<_>>(),
                "the best placement needs layers fetched first; the held plan keeps serving"
            );
        }
        let plan = Plan {
            epoch: out.epoch,
            coordinator: self.me,
            model: model.model_ref.clone(),
            num_layers: u32::try_from(model.layers.len()).unwrap_or(u32::MAX),
            objective: convert_objective(solved.objective),
            cost_s,
            members: out.members.clone(),
            strategy: convert_strategy(solved.strategy),
            optimal: solved.optimal,
            timestamp_ms: unix_ms(),
            below_floor: solved
                .below_floor
                .iter()
                .filter_map(|d| d.parse().ok())
                .filter(|n| stages.iter().any(|s| s.node == *n))
                .collect(),
            stages,
            prefetch,
            cause: out.cause.clone(),
        };
        let signed = match Signed::sign(&self.identity, plan) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign plan");
                self.failed_view = Some((out.members, self.link_matrix().len(), Instant::now()));
                return;
            }
        };
        if let Err(r) = self.gate_check(&signed) {
            tracing::info!(
                reason = r.as_str(),
                "own plan no longer valid in the current view"
            );
            return;
        }
        tracing::info!(
            node = %self.me.short(), epoch = out.epoch, cost_s = solved.cost_s,
            solve_ms = solved.solve_ms, strategy = %solved.strategy, "placement decided"
        );
        self.adopt(signed.clone());
        self.republish(&signed).await;
    }

    /// Re-publishes the held plan if this node signed it and the interval passed.
    pub(super) async fn maybe_republish(&mut self) {
        let Some(plan) = self.plan.clone() else {
            return;
        };
        if *plan.signer() != self.me
            || self.last_republish.elapsed() < ms(self.cfg.planner.republish_interval_ms)
        {
            return;
        }
        self.republish(&plan).await;
    }

    async fn republish(&mut self, plan: &Signed<Plan>) {
        self.last_republish = Instant::now();
        match encode(plan) {
            Ok(bytes) => self.publish(Topic::Plan, bytes).await,
            Err(e) => tracing::warn!(error = %e, "cannot encode plan"),
        }
    }

    /// Publishes the current [`View`].
    pub(super) fn publish_view(&mut self) {
        let now = self.now();
        let members: Vec<MemberView> = self
            .membership
            .iter()
            .map(|(id, m)| MemberView {
                id: *id,
                capability: m.info.clone(),
                age_s: now.saturating_sub(m.last_seen).as_secs_f64(),
            })
            .collect();
        let matrix = self.link_matrix();
        let ids = self.membership.ids();
        let view = View {
            local: self.me,
            members,
            links: matrix
                .iter()
                .map(|(&(from, to), &metrics)| LinkView { from, to, metrics })
                .collect(),
            predicted_latency_s: self.predicted_latency(&matrix),
            plan: self.plan.clone(),
            next_coordinator: coordinator(self.next_epoch(), &ids),
            refused: self.refused.clone(),
            relayed: self.routes.clone(),
        };
        self.view_tx.send_if_modified(|v| {
            let changed = **v != view;
            if changed {
                *v = Arc::new(view);
            }
            changed
        });
    }

    /// The held plan's per-token latency under the current metrics.
    fn predicted_latency(&self, links: &crate::coordinator::LinkMatrix) -> Option<f64> {
        let model = self.model.as_ref()?;
        let plan = self.plan.as_ref()?.unverified();
        let (_, cost) = self.view_cost(model, links, plan, shoal_planner::Objective::Latency);
        cost.ok()
    }

    /// The planner scenario of the current view and `plan`'s cost in it under `objective`.
    fn view_cost(
        &self,
        model: &super::model::ModelInfo,
        links: &crate::coordinator::LinkMatrix,
        plan: &Plan,
        objective: shoal_planner::Objective,
    ) -> (
        shoal_planner::Scenario,
        Result<f64, shoal_planner::PlanError>,
    ) {
        let entries: Vec<_> = self
            .membership
            .iter()
            .map(|(id, m)| (id, &m.info))
            .collect();
        let devices = scenario::devices(model, entries);
        let scen = scenario::build(
            model,
            &devices,
            links,
            self.me,
            &self.cfg.planner,
            self.cfg.layers.share(),
        );
        let stages: Vec<shoal_planner::Stage> = plan
            .stages
            .iter()
            .map(|s| shoal_planner::Stage {
                device: s.node.to_string(),
                layers: [s.start as usize, s.end as usize],
            })
            .collect();
        let cost = shoal_planner::evaluate(&scen, &stages, objective);
        (scen, cost)
    }
}

/// Whether a placement of cost `found`, solved in the background against the held plan of
/// epoch `held_epoch` (cost `held_cost` in the same view), should be published: the held plan
/// is still `gate_epoch`'s and `found` is lower by at least `margin` of `held_cost`.
pub(super) fn improvement_accepted(
    (held_epoch, held_cost): (u64, f64),
    gate_epoch: u64,
    found: f64,
    margin: f64,
) -> bool {
    held_epoch == gate_epoch && found.is_finite() && found <= held_cost * (1.0 - margin)
}

fn convert_objective(o: shoal_planner::Objective) -> shoal_protocol::Objective {
    match o {
        shoal_planner::Objective::Latency => shoal_protocol::Objective::Latency,
        shoal_planner::Objective::Throughput => shoal_protocol::Objective::Throughput,
    }
}

fn convert_strategy(s: shoal_planner::Strategy) -> shoal_protocol::PlanStrategy {
    match s {
        shoal_planner::Strategy::Milp => shoal_protocol::PlanStrategy::Milp,
        shoal_planner::Strategy::Even => shoal_protocol::PlanStrategy::Even,
        shoal_planner::Strategy::Memory => shoal_protocol::PlanStrategy::Memory,
        shoal_planner::Strategy::Greedy => shoal_protocol::PlanStrategy::Greedy,
        shoal_planner::Strategy::Exhaustive => shoal_protocol::PlanStrategy::Exhaustive,
    }
}

#[cfg(test)]
mod tests {
    use super::improvement_accepted;

    #[test]
    fn an_improvement_is_published_only_past_the_margin_and_for_the_held_epoch() {
        // 5% margin on a 100 ms plan: 95 ms passes, 96 ms does not.
        assert!(improvement_accepted((7, 0.100), 7, 0.095, 0.05));
        assert!(!improvement_accepted((7, 0.100), 7, 0.096, 0.05));
        // The held plan moved on (a re-plan or another coordinator's plan): dropped.
        assert!(!improvement_accepted((7, 0.100), 8, 0.050, 0.05));
        assert!(!improvement_accepted((7, 0.100), 7, f64::NAN, 0.05));
        assert!(improvement_accepted((7, 0.100), 7, 0.100, 0.0));
    }
}
