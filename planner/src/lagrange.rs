//! Lagrangian ascent on the one rule the relaxation (`relax.rs`) drops for latency: "each
//! device holds at most one stage".
//!
//! For multipliers `lambda >= 0` the relaxation's optimum minus `sum lambda` is a lower bound
//! on the latency optimum (a placement using each device at most once pays at most
//! `sum lambda` in extra stage costs). A projected subgradient step raises `lambda[i]` on
//! every device the relaxed optimum uses more than once and lowers it on unused ones, with the
//! Polyak step towards the incumbent's cost; the best multipliers found are left in the
//! relaxation, so every column bound and the search of `elementary.rs` use them. Relaxed
//! optima that happen to use distinct devices are real placements and improve the incumbent.
//! When the bound meets the incumbent, the incumbent is proven optimal.

use std::time::Instant;

use crate::cost::{IdxStage, Instance};
use crate::plan::Objective;
use crate::relax::Relaxation;

/// Steps without a better bound before the step size is halved.
const PATIENCE: usize = 5;

/// Step factor at which the ascent gives up.
const MIN_THETA: f64 = 1e-3;

/// Relative gap at which incumbent and bound count as equal (the MILP's `GAP`).
pub(crate) const PROVEN: f64 = 1e-9;

/// Whether `upper` is within [`PROVEN`] of `lower`.
pub(crate) fn proven(upper: f64, lower: f64) -> bool {
    upper <= lower + PROVEN * upper.abs().max(1e-12)
}

/// Raises the bound of `relax` (latency) by subgradient ascent until it meets the incumbent,
/// the step size dies out, `steps` steps (each one forward and one backward pass) are done
/// or `deadline` passes. `incumbent` takes every
/// better placement met on the way. The relaxation is left at the best multipliers.
pub(crate) fn ascend(
    inst: &Instance,
    relax: &mut Relaxation,
    incumbent: &mut Option<(f64, Vec<IdxStage>)>,
    steps: usize,
    deadline: Instant,
) {
    let d = inst.devices();
    if !relax.lower.is_finite() {
        return;
    }
    let mut lambda = vec![0.0; d];
    let (mut best_lower, mut best_lambda) = (relax.lower, lambda.clone());
    let (mut theta, mut stall) = (1.0, 0);
    for _ in 0..steps {
        let upper = incumbent.as_ref().map_or(f64::INFINITY, |x| x.0);
        if proven(upper, best_lower) || theta < MIN_THETA || Instant::now() >= deadline {
            break;
        }
        let Some(path) = relax.raw_path() else { break };
        let mut uses = vec![0usize; d];
        path.iter().for_each(|s| uses[s.0] += 1);
        if uses.iter().all(|&u| u <= 1) {
            offer(inst, incumbent, path);
        }
        // Projected subgradient of `sum lambda (uses - 1)`.
        let g: Vec<f64> = (0..d)
            .map(|i| match uses[i] as f64 - 1.0 {
                x if x < 0.0 && lambda[i] <= 0.0 => 0.0,
                x => x,
            })
            .collect();
        let norm2: f64 = g.iter().map(|x| x * x).sum();
        if norm2 == 0.0 {
            // Distinct devices and no multiplier on an unused one: the relaxed optimum is the
            // real optimum (it was offered above).
            break;
        }
        let upper = incumbent.as_ref().map_or(f64::INFINITY, |x| x.0);
        let target = if upper.is_finite() {
            upper
        } else {
            relax.lower + 0.1 * relax.lower.abs().max(1e-3)
        };
        let step = theta * (target - relax.lower).max(0.0) / norm2;
        for (l, gi) in lambda.iter_mut().zip(&g) {
            *l = (*l + step * gi).max(0.0);
        }
        relax.set_penalty(&lambda);
        if relax.lower > best_lower {
            (best_lower, stall) = (relax.lower, 0);
            best_lambda.copy_from_slice(&lambda);
        } else {
            stall += 1;
            if stall >= PATIENCE {
                (theta, stall) = (theta / 2.0, 0);
            }
        }
    }
    if relax.lower < best_lower {
        relax.set_penalty(&best_lambda);
    }
}

/// Takes `stages` as the incumbent if it is a valid placement cheaper than the current one.
pub(crate) fn offer(
    inst: &Instance,
    incumbent: &mut Option<(f64, Vec<IdxStage>)>,
    stages: Vec<IdxStage>,
) {
    if let Ok(c) = inst.score(&stages, Objective::Latency)
        && incumbent.as_ref().is_none_or(|x| c < x.0)
    {
        *incumbent = Some((c, stages));
    }
}
