//! shoal-planner: where each contiguous run of the model's layers goes.
//!
//! A [`Scenario`] (the model's layers, the devices, the directed links, the origin) goes in;
//! a [`Plan`] (stages in pipeline order, each a device and a half-open layer range) comes out.
//! Every strategy scores placements with the one cost model of DESIGN.md ([`evaluate`],
//! [`explain`]): roofline compute, hops whose cost depends on which devices are consecutive
//! (loss, jitter, recovery round trips), the origin's hops, memory limits, and either the
//! latency of one stream or the bottleneck of pipelined streams ([`Objective`]).
//!
//! [`Strategy::Milp`] is exact: latency is proven by a Lagrangian bound (`lagrange.rs`) and a
//! branch and bound over stage sequences (`elementary.rs`, `latency.rs`), with the
//! stage-segment MILP on HiGHS (`segments.rs`) on the pruned columns when the search gives up;
//! throughput is a bisection over the bottleneck (`bottleneck.rs`) whose feasibility checks
//! are an exact search (`search.rs`) or the segment MILP; the per-layer MILP (`milp.rs`) is
//! the cross-check. A relaxation (`relax.rs`) and heuristic incumbents
//! (`bound.rs`) prune columns that cannot be optimal. [`Strategy::Exhaustive`] is the
//! brute-force oracle the MILP is tested against; `even`, `memory` and `greedy` are the
//! network-blind placements peers use, kept for comparison. Pure code: no IO beyond
//! [`Scenario::load`], no async. See `planner/README.md`.

mod baseline;
pub mod bench;
mod bottleneck;
mod bound;
mod cost;
mod elementary;
mod error;
mod exhaustive;
mod feasibility;
mod lagrange;
mod latency;
mod milp;
mod plan;
mod relax;
mod scenario;
mod search;
mod segments;
pub mod synthetic;

use std::time::Instant;

pub use cost::{
    Breakdown, HopCost, HopDetail, StageCost, UNREACHABLE_FETCH_S, evaluate, explain, fetch_time,
    hop_cost, layer_memory, layer_time, layer_time_at,
};
pub use error::{PlanError, ScenarioError};
pub use exhaustive::{EXHAUSTIVE_LIMIT, candidates};
pub use plan::{Objective, Plan, Stage, Strategy, UnknownName};
pub use scenario::{
    Device, Energy, Fetch, Layer, Link, MIN_PRICED_LEVEL, Model, Net, OnBattery, Scenario,
    Speculation,
};

use cost::{IdxStage, Instance};

/// Knobs of [`plan_with`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    /// Wall-clock limit for the MILP in seconds; past it the best placement found so far is
    /// returned with `optimal: false` and its `mip_gap`. Default 30.
    pub time_limit_s: f64,
    /// Seed the MILP with the best heuristic placement and drop the columns that cannot beat
    /// it. Default true.
    pub warm_start: bool,
    /// Solve with the per-layer flow MILP (`x[layer][device]`, `milp.rs`; throughput as one
    /// min-`t` model) instead of the segment MILP (latency) and the bottleneck bisection
    /// (throughput). Both are exact; the per-layer model is much slower when memory is tight
    /// and for throughput, and is kept as a cross-check. Default false.
    pub per_layer_model: bool,
    /// Latency on the segment model with warm start: child evaluations the branch and bound
    /// over stage sequences (`elementary.rs`) may spend before the pruned segment MILP takes
    /// over; 0 goes straight to the MILP. Throughput on the segment model: nodes each
    /// feasibility check's search (`search.rs`) may spend before the segment MILP decides that
    /// check; 0 always asks the MILP. Default 20,000,000 (about a second).
    pub search_nodes: u64,
    /// Latency on the segment model with warm start: subgradient steps of the Lagrangian
    /// ascent (`lagrange.rs`) that tightens the bounds; 0 keeps the plain relaxation (with
    /// `search_nodes: 0` too, the solve is the earlier pruned segment MILP). Default 150.
    pub lagrange_steps: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            time_limit_s: 30.0,
            warm_start: true,
            per_layer_model: false,
            search_nodes: 20_000_000,
            lagrange_steps: 150,
        }
    }
}

/// Places the model with `strategy`, minimising `objective`, with default [`PlanOptions`].
pub fn plan(s: &Scenario, objective: Objective, strategy: Strategy) -> Result<Plan, PlanError> {
    plan_with(s, objective, strategy, &PlanOptions::default())
}

/// Places the model with `strategy`, minimising `objective`. Devices on battery below the
/// scenario's `energy.min_level` hold no layers unless no placement exists without them; then
/// the placement is made with them and the plan names them in `below_floor`.
pub fn plan_with(
    s: &Scenario,
    objective: Objective,
    strategy: Strategy,
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    let started = Instant::now();
    let inst = Instance::new(s)?;
    match place(&inst, objective, strategy, opts, started) {
        Err(PlanError::Infeasible { .. }) if inst.below_floor.iter().any(|&b| b) => {
            let inst = Instance::with_floor(s, false)?;
            let mut plan = place(&inst, objective, strategy, opts, started)?;
            plan.below_floor = plan
                .stages
                .iter()
                .filter(|st| s.energy.as_ref().is_some_and(|e| e.below_floor(&st.device)))
                .map(|st| st.device.clone())
                .collect();
            Ok(plan)
        }
        r => r,
    }
}

/// [`plan_with`] on one resolved instance.
fn place(
    inst: &Instance,
    objective: Objective,
    strategy: Strategy,
    opts: &PlanOptions,
    started: Instant,
) -> Result<Plan, PlanError> {
    let (stages, optimal, mip_gap) = match strategy {
        Strategy::Milp
            if objective == Objective::Latency && opts.warm_start && !opts.per_layer_model =>
        {
            let r = latency::solve(inst, opts, baselines(inst))?;
            (r.stages, r.optimal, r.mip_gap)
        }
        Strategy::Milp => {
            let (warm, prune) = if opts.warm_start {
                let relax = relax::Relaxation::new(inst, objective);
                let mut seeds = baselines(inst);
                seeds.extend(relax.path(inst));
                match bound::incumbent(inst, objective, seeds) {
                    Some((c, st)) => (Some((c, st)), bound::Prune::new(relax, c)),
                    None => (None, bound::Prune::none()),
                }
            } else {
                (None, bound::Prune::none())
            };
            let seed = warm.as_ref().map(|(_, st)| st.as_slice());
            let r = match (objective, opts.per_layer_model) {
                (_, true) => milp::solve(inst, objective, opts.time_limit_s, seed, &prune)?,
                (Objective::Latency, false) => {
                    segments::latency(inst, opts.time_limit_s, seed, &prune)?
                }
                (Objective::Throughput, false) => bottleneck::solve(
                    inst,
                    opts.time_limit_s - started.elapsed().as_secs_f64(),
                    opts.search_nodes,
                    warm.clone(),
                    &prune,
                )?,
            };
            (
                better(inst, objective, r.stages, warm),
                r.optimal,
                r.mip_gap,
            )
        }
        Strategy::Exhaustive => (exhaustive::solve(inst, objective)?, true, None),
        baseline => {
            let stages =
                baseline::place(inst, baseline).map_err(|reason| PlanError::Infeasible {
                    reason: format!("{baseline}: {reason}"),
                })?;
            (Some(stages), false, None)
        }
    };
    let stages = stages.ok_or_else(|| PlanError::Infeasible {
        reason: feasibility::reason(inst),
    })?;
    let cost_s = inst
        .score(&stages, objective)
        .map_err(|reason| match strategy {
            Strategy::Even | Strategy::Memory | Strategy::Greedy => PlanError::Infeasible {
                reason: format!("{strategy}: {reason}"),
            },
            _ => PlanError::Solver(format!(
                "{strategy} returned a placement that breaks a rule: {reason}"
            )),
        })?;
    Ok(Plan {
        objective,
        cost_s,
        stages: inst.publish(&stages),
        strategy,
        optimal,
        solve_ms: started.elapsed().as_secs_f64() * 1e3,
        mip_gap,
        below_floor: Vec::new(),
    })
}

/// A proven lower bound on the optimal cost of `objective` (seconds; infinite when not even
/// the relaxation of `relax.rs` has a placement): for latency the Lagrangian bound of
/// `lagrange.rs` that the exact solve proves optimality against, for throughput the
/// bottleneck relaxation's optimum. No placement costs less.
pub fn lower_bound(s: &Scenario, objective: Objective) -> Result<f64, PlanError> {
    let inst = Instance::new(s)?;
    let floored = bound_of(&inst, objective);
    if !inst.below_floor.iter().any(|&b| b) {
        return Ok(floored);
    }
    // The plan lifts the battery floor when nothing can be placed without it: a bound must
    // hold for that placement too.
    let lifted = bound_of(&Instance::with_floor(s, false)?, objective);
    Ok(floored.min(lifted))
}

fn bound_of(inst: &Instance, objective: Objective) -> f64 {
    match objective {
        Objective::Latency => {
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            let steps = PlanOptions::default().lagrange_steps;
            latency::lower_bound(inst, baselines(inst), steps, deadline)
        }
        Objective::Throughput => relax::Relaxation::new(inst, objective).lower,
    }
}

/// A placement whose throughput cost is at most `t` seconds (every stage, hop and origin hop
/// within `t`), or `None` when no placement is that fast: the exact check the throughput
/// bisection runs at every step (the search of `search.rs` within `opts.search_nodes` nodes,
/// then the segment MILP; `search_nodes: 0` asks the MILP alone). An error when
/// `opts.time_limit_s` runs out first.
pub fn throughput_within(
    s: &Scenario,
    t: f64,
    opts: &PlanOptions,
) -> Result<Option<Vec<Stage>>, PlanError> {
    let inst = Instance::new(s)?;
    let found = bottleneck::within(&inst, t, opts.time_limit_s, opts.search_nodes)?;
    if found.is_some() || !inst.below_floor.iter().any(|&b| b) {
        return Ok(found.map(|st| inst.publish(&st)));
    }
    // As `plan_with`: the floor gives way when nothing can be placed without the devices
    // below it.
    if bottleneck::within(&inst, f64::INFINITY, opts.time_limit_s, opts.search_nodes)?.is_some() {
        return Ok(None);
    }
    let unfloored = Instance::with_floor(s, false)?;
    let found = bottleneck::within(&unfloored, t, opts.time_limit_s, opts.search_nodes)?;
    Ok(found.map(|st| unfloored.publish(&st)))
}

/// Every baseline placement that can be built (scored later).
fn baselines(inst: &Instance) -> Vec<Vec<IdxStage>> {
    [Strategy::Greedy, Strategy::Memory, Strategy::Even]
        .into_iter()
        .filter_map(|b| baseline::place(inst, b).ok())
        .collect()
}

/// The MILP's placement unless the incumbent scores strictly lower under the exact cost model
/// (guards against solver tolerances; the pruned model always contains the incumbent).
fn better(
    inst: &Instance,
    objective: Objective,
    milp: Option<Vec<IdxStage>>,
    incumbent: Option<(f64, Vec<IdxStage>)>,
) -> Option<Vec<IdxStage>> {
    let milp_cost = milp
        .as_ref()
        .and_then(|st| inst.score(st, objective).ok())
        .unwrap_or(f64::INFINITY);
    match incumbent {
        Some((c, st)) if c < milp_cost => Some(st),
        _ => milp,
    }
}
