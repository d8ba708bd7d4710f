//! The exact latency solve of [`crate::Strategy::Milp`] (segment model, warm start on),
//! cheapest proof first:
//!
//! 1. the relaxation (`relax.rs`) and the heuristic incumbents (`bound.rs`);
//! 2. Lagrangian ascent on "each device at most once" (`lagrange.rs`): often the bound meets
//!    the incumbent and the solve is over;
//! 3. branch and bound over stage sequences with those bounds (`elementary.rs`), within
//!    `PlanOptions::search_nodes` child evaluations;
//! 4. only if the search gave up: the segment MILP (`segments.rs`) on the columns whose
//!    Lagrangian bound is below the incumbent's cost.
//!
//! Every step keeps the optimum (each bound is a valid lower bound, each dropped column or
//! node has a bound at or above a known placement's cost), so the answer is the same as the
//! full MILP's. When the time limit stops a step, the incumbent comes back with
//! `optimal: false` and the proven gap `(cost - bound) / cost`.

use std::time::{Duration, Instant};

use crate::bound::{self, Prune};
use crate::cost::{IdxStage, Instance};
use crate::error::PlanError;
use crate::lagrange;
use crate::milp::Solved;
use crate::plan::Objective;
use crate::relax::Relaxation;
use crate::{PlanOptions, elementary, segments};

/// The latency placement, seeded with the baseline placements `seeds`.
pub(crate) fn solve(
    inst: &Instance,
    opts: &PlanOptions,
    seeds: Vec<Vec<IdxStage>>,
) -> Result<Solved, PlanError> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(opts.time_limit_s.clamp(0.0, 1e6));
    let mut relax = Relaxation::new(inst, Objective::Latency);
    if !relax.lower.is_finite() {
        // Not even the relaxation has a placement.
        return Ok(done(None));
    }
    let mut seeds = seeds;
    seeds.extend(relax.path(inst));
    let mut incumbent = bound::incumbent(inst, Objective::Latency, seeds);
    lagrange::ascend(
        inst,
        &mut relax,
        &mut incumbent,
        opts.lagrange_steps,
        deadline,
    );
    if incumbent
        .as_ref()
        .is_some_and(|x| lagrange::proven(x.0, relax.lower))
    {
        return Ok(done(incumbent));
    }
    if opts.search_nodes > 0 {
        let found = elementary::latency(inst, &relax, incumbent, opts.search_nodes, deadline);
        if found.complete {
            return Ok(done(found.best));
        }
        incumbent = found.best;
    }
    let left = opts.time_limit_s - started.elapsed().as_secs_f64();
    let lower = relax.lower;
    if left <= 0.0 {
        return stopped(incumbent, lower);
    }
    let prune = match &incumbent {
        Some((c, _)) => Prune::new(relax, *c),
        None => Prune::none(),
    };
    match segments::latency(inst, left, None, &prune) {
        Ok(r) if r.optimal => {
            // The pruned model holds every placement cheaper than the incumbent; when it
            // has none, the incumbent is optimal.
            if let Some(st) = r.stages {
                lagrange::offer(inst, &mut incumbent, st);
            }
            Ok(done(incumbent))
        }
        Ok(r) => {
            // Out of time: the better of the MILP's placement and the incumbent, with the
            // gap to the Lagrangian bound (HiGHS's own bound may be the weaker one).
            if let Some(st) = r.stages {
                lagrange::offer(inst, &mut incumbent, st);
            }
            let gap = r.mip_gap.unwrap_or(1.0);
            let mut out = stopped(incumbent, lower)?;
            out.mip_gap = out.mip_gap.map(|g| g.min(gap));
            Ok(out)
        }
        Err(_) if incumbent.is_some() => stopped(incumbent, lower),
        Err(e) => Err(e),
    }
}

/// The Lagrangian lower bound the latency solve proves optimality against (after the ascent
/// of `lagrange.rs`, seeded like [`solve`]); infinite when not even the relaxation has a
/// placement.
pub(crate) fn lower_bound(
    inst: &Instance,
    seeds: Vec<Vec<IdxStage>>,
    steps: usize,
    deadline: Instant,
) -> f64 {
    let mut relax = Relaxation::new(inst, Objective::Latency);
    if !relax.lower.is_finite() {
        return relax.lower;
    }
    let mut seeds = seeds;
    seeds.extend(relax.path(inst));
    let mut incumbent = bound::incumbent(inst, Objective::Latency, seeds);
    lagrange::ascend(inst, &mut relax, &mut incumbent, steps, deadline);
    relax.lower
}

/// A finished solve: optimal, or proven infeasible when `best` is `None`.
fn done(best: Option<(f64, Vec<IdxStage>)>) -> Solved {
    Solved {
        stages: best.map(|x| x.1),
        optimal: true,
        mip_gap: None,
    }
}

/// Out of time with `best` and the lower bound `lower`.
fn stopped(best: Option<(f64, Vec<IdxStage>)>, lower: f64) -> Result<Solved, PlanError> {
    match best {
        Some((c, st)) => Ok(Solved {
            stages: Some(st),
            optimal: false,
            mip_gap: Some(((c - lower) / c.abs().max(1e-300)).clamp(0.0, 1.0)),
        }),
        None => Err(PlanError::Solver(
            "no placement within the time limit".into(),
        )),
    }
}
