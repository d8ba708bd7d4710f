//! Exact throughput placement by bisection over the bottleneck, each step an exact
//! feasibility check: the combinatorial search of `search.rs`, and a HiGHS feasibility MILP on
//! stage segments when the search gives up.
//!
//! The throughput objective is the largest of finitely many numbers (stage costs of device
//! segments, hop costs, origin hops), so the optimum is one of them: the smallest candidate
//! value `T` for which a placement with every stage and hop at most `T` exists. Feasibility
//! is monotone in `T`, so a binary search over the sorted candidates finds it exactly. It
//! starts between the incumbent's cost (feasible) and the larger of the relaxation's optimum
//! and the capacity bound (below them nothing is); a feasible check moves the top down to the
//! cost of the placement it found, which may beat the threshold. At the deadline the best
//! placement comes back with the gap to the smallest value not yet proven infeasible.
//!
//! The feasibility MILP for a threshold `T` has one binary `w[i][a][b]` per segment "device
//! `i` runs layers `[a, b)`" that fits in memory with stage cost at most `T` (and, at the ends,
//! origin hops at most `T`), and continuous hop arcs `y[b][i][j]` at boundary `b` only where
//! `hop(i, j, out_bytes[b - 1]) <= T` and a link exists. Rows: one unit of flow leaves
//! boundary 0; at every inner boundary the segments ending on `i` feed its hop arcs and the
//! hop arcs into `j` feed the segments starting on `j`; each device holds at most one segment.
//! Costs and memory are checked in Rust with the same functions that score placements, so the
//! solver only decides combinatorics and no tolerance can change the answer.

use std::time::{Duration, Instant};

use crate::bound::Prune;
use crate::cost::{IdxStage, Instance, prefix_sums};
use crate::error::PlanError;
use crate::milp::Solved;
use crate::plan::Objective;
use crate::search::{self, Check, Hops};
use crate::segments::{self, Outcome, SegCost};

/// The optimal throughput placement, seeded with a known placement and its cost. Each
/// feasibility check is the search of `search.rs` within `search_nodes` nodes, then the
/// segment MILP; past `time_limit_s` the best placement comes back with its proven gap.
pub(crate) fn solve(
    inst: &Instance,
    time_limit_s: f64,
    search_nodes: u64,
    incumbent: Option<(f64, Vec<IdxStage>)>,
    prune: &Prune,
) -> Result<Solved, PlanError> {
    let deadline = Instant::now() + Duration::from_secs_f64(time_limit_s.clamp(0.0, 1e6));
    let checker = Checker {
        inst,
        hops: Hops::new(inst),
        prune,
        deadline,
        search_nodes,
    };
    let (upper, mut best) = match incumbent {
        Some(inc) => inc,
        None => match checker.check(f64::INFINITY)? {
            Step::Feasible(st) => match inst.score(&st, Objective::Throughput) {
                Ok(c) => (c, st),
                Err(reason) => return Err(PlanError::Solver(reason)),
            },
            Step::Infeasible => return Ok(no_placement()),
            Step::OutOfTime => {
                return Err(PlanError::Solver("time limit before any placement".into()));
            }
        },
    };
    let cands = candidates(inst, upper, prune);
    // cands[hi] is always achievable (it is at least the incumbent's cost); nothing below
    // the relaxation's optimum or the capacity bound is.
    let floor = prune.lower() * (1.0 - 1e-9);
    let mut lo = cands.partition_point(|&c| c < floor);
    lo = lo.max(capacity_floor(inst, &cands));
    let mut hi = cands.len().saturating_sub(1);
    lo = lo.min(hi);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match checker.check(cands[mid])? {
            Step::Feasible(st) => {
                let cost = inst
                    .score(&st, Objective::Throughput)
                    .map_err(PlanError::Solver)?;
                // The placement may beat the threshold: the first candidate at or above its
                // cost is feasible too.
                hi = cands.partition_point(|&c| c < cost).clamp(lo, mid);
                best = st;
            }
            Step::Infeasible => lo = mid + 1,
            Step::OutOfTime => {
                let cost = inst
                    .score(&best, Objective::Throughput)
                    .map_err(PlanError::Solver)?;
                return Ok(Solved {
                    stages: Some(best),
                    optimal: false,
                    mip_gap: Some(((cost - cands[lo]) / cost).max(0.0)),
                });
            }
        }
    }
    Ok(Solved {
        stages: Some(best),
        optimal: true,
        mip_gap: None,
    })
}

/// A placement with every stage, hop and origin hop at most `t`, or `None` when none exists
/// (the check of one bisection step, without pruning); an error when the time limit stops it.
pub(crate) fn within(
    inst: &Instance,
    t: f64,
    time_limit_s: f64,
    search_nodes: u64,
) -> Result<Option<Vec<IdxStage>>, PlanError> {
    let prune = Prune::none();
    let checker = Checker {
        inst,
        hops: Hops::new(inst),
        prune: &prune,
        deadline: Instant::now() + Duration::from_secs_f64(time_limit_s.clamp(0.0, 1e6)),
        search_nodes,
    };
    match checker.check(t)? {
        Step::Feasible(st) => Ok(Some(st)),
        Step::Infeasible => Ok(None),
        Step::OutOfTime => Err(PlanError::Solver(
            "time limit before the check was decided".into(),
        )),
    }
}

/// What one feasibility check needs.
struct Checker<'a> {
    inst: &'a Instance,
    hops: Hops,
    prune: &'a Prune,
    deadline: Instant,
    search_nodes: u64,
}

impl Checker<'_> {
    /// Is there a placement with every stage and hop at most `t`? The search first; when it
    /// gives up with time left, the heuristic chain and then the segment MILP.
    fn check(&self, t: f64) -> Result<Step, PlanError> {
        let inst = self.inst;
        match search::feasible(inst, &self.hops, t, self.deadline, self.search_nodes) {
            Check::Feasible(st) => return Ok(Step::Feasible(st)),
            Check::Infeasible => return Ok(Step::Infeasible),
            Check::Unknown => {}
        }
        let left = self
            .deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        if left <= 0.0 {
            return Ok(Step::OutOfTime);
        }
        if let Some(st) = crate::bound::chain_within(inst, t) {
            return Ok(Step::Feasible(st));
        }
        feasible(inst, t, self.prune, left)
    }
}

fn no_placement() -> Solved {
    Solved {
        stages: None,
        optimal: true,
        mip_gap: None,
    }
}

/// Every value the bottleneck can take up to `upper`, sorted and deduplicated, from the
/// largest lower bound on (every layer's cheapest stage) upward. The last value is `upper`'s.
fn candidates(inst: &Instance, upper: f64, prune: &Prune) -> Vec<f64> {
    let (d, l) = (inst.devices(), inst.layers());
    let lower = (0..l)
        .map(|k| {
            (0..d)
                .map(|i| inst.compute[i][k] + inst.overhead[i])
                .fold(f64::INFINITY, f64::min)
        })
        .fold(0.0, f64::max);
    let mut out = Vec::new();
    let mut push = |v: f64| {
        if (lower..=upper).contains(&v) {
            out.push(v);
        }
    };
    for i in 0..d {
        for a in 0..l {
            // Same summation order as `Instance::stage_cost` and `seg_mem`.
            let (mut sum, mut mem) = (0.0, 0.0);
            for b in a + 1..=l {
                sum += inst.compute[i][b - 1];
                mem += inst.mem[b - 1];
                let c = sum + inst.overhead[i];
                if c > upper || mem > inst.cap[i] {
                    break;
                }
                if prune.keep_segment(i, a, b) {
                    push(c);
                }
            }
        }
        inst.hop_in(i).into_iter().for_each(&mut push);
        inst.hop_back(i).into_iter().for_each(&mut push);
    }
    for k in 0..l.saturating_sub(1) {
        for i in 0..d {
            for j in (0..d).filter(|&j| j != i && prune.keep_hop(k, i, j)) {
                inst.hop_after(k, i, j).into_iter().for_each(&mut push);
            }
        }
    }
    push(upper);
    out.sort_by(f64::total_cmp);
    out.dedup();
    out
}

/// Index of the first candidate `T` at which the devices' longest allowed stages (cost at
/// most `T`, fitting in memory) add up to the whole model: below it no placement exists,
/// whatever the order and links.
fn capacity_floor(inst: &Instance, cands: &[f64]) -> usize {
    let (d, l) = (inst.devices(), inst.layers());
    let prefix: Vec<Vec<f64>> = (0..d).map(|i| prefix_sums(&inst.compute[i])).collect();
    let mem = prefix_sums(&inst.mem);
    // Slightly permissive comparisons keep this a true lower bound despite rounding.
    let ok = |i: usize, a: usize, b: usize, t: f64| {
        prefix[i][b] - prefix[i][a] + inst.overhead[i] <= t * (1.0 + 1e-9)
            && mem[b] - mem[a] <= inst.cap[i] * (1.0 + 1e-12)
    };
    let covers = |t: f64| {
        let mut total = 0;
        for i in 0..d {
            let (mut b, mut longest) = (0, 0);
            for a in 0..l {
                b = b.max(a);
                while b < l && ok(i, a, b + 1, t) {
                    b += 1;
                }
                longest = longest.max(b - a);
            }
            total += longest;
        }
        total >= l
    };
    cands.partition_point(|&t| !covers(t))
}

/// Outcome of one feasibility check.
enum Step {
    Feasible(Vec<IdxStage>),
    Infeasible,
    OutOfTime,
}

/// Is there a placement with every stage and hop cost at most `t`? (The segment model of
/// `segments.rs` with zero costs.)
fn feasible(inst: &Instance, t: f64, prune: &Prune, seconds: f64) -> Result<Step, PlanError> {
    if seconds <= 0.0 {
        return Ok(Step::OutOfTime);
    }
    let l = inst.layers();
    let at = prune.with_limit(t);
    let seg = |i: usize, a: usize, b: usize| {
        if a == 0 && !inst.hop_in(i).is_some_and(|h| h <= t) {
            return SegCost::Stop;
        }
        if inst.stage_cost(i, a, b) > t || !inst.fits(i, a, b) {
            return SegCost::Stop;
        }
        if (b == l && !inst.hop_back(i).is_some_and(|h| h <= t)) || !at.keep_segment(i, a, b) {
            return SegCost::Skip;
        }
        SegCost::Cost(0.0)
    };
    let arc = |b: usize, i: usize, j: usize| {
        (at.keep_boundary_hop(b, i, j) && inst.hop_after(b - 1, i, j).is_some_and(|h| h <= t))
            .then_some(0.0)
    };
    let Some(model) = segments::build(inst, seg, arc) else {
        return Ok(Step::Infeasible);
    };
    Ok(match segments::solve(model, seconds, 0.0, None)? {
        Outcome::Found { stages, .. } => Step::Feasible(stages),
        Outcome::Infeasible => Step::Infeasible,
        Outcome::OutOfTime => Step::OutOfTime,
    })
}
