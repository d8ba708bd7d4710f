//! Upper bounds for the MILP: cheap heuristic placements (the baselines, every one- and
//! two-device placement, a bottleneck-balanced chain, the relaxation's optimum when it uses
//! distinct devices) give an incumbent cost `U`, and [`Prune`] drops every MILP column whose
//! lower bound from the relaxation (`relax.rs`) already exceeds `U`. Dropping
//! such a column cannot remove a placement that costs `U` or less, so the MILP stays exact;
//! it only gets smaller.

use crate::cost::{IdxStage, Instance, prefix_sums};
use crate::plan::Objective;
use crate::relax::Relaxation;

/// Relative slack on `U` so that float rounding never prunes the incumbent itself.
const SLACK: f64 = 1e-9;

/// The cheapest of the heuristic placements, with its cost.
pub(crate) fn incumbent(
    inst: &Instance,
    obj: Objective,
    seeds: Vec<Vec<IdxStage>>,
) -> Option<(f64, Vec<IdxStage>)> {
    let mut cands = seeds;
    cands.extend(one_and_two_device(inst, obj == Objective::Latency));
    if obj == Objective::Throughput {
        cands.extend(balanced(inst));
    }
    cands
        .into_iter()
        .filter_map(|st| inst.score(&st, obj).ok().map(|c| (c, st)))
        .min_by(|x, y| x.0.total_cmp(&y.0))
}

/// Every placement on one device and, for latency, the best cut for every ordered pair of
/// devices.
fn one_and_two_device(inst: &Instance, pairs: bool) -> Vec<Vec<IdxStage>> {
    let (d, l) = (inst.devices(), inst.layers());
    let mut out: Vec<Vec<IdxStage>> = (0..d).map(|i| vec![(i, 0, l)]).collect();
    if !pairs {
        return out;
    }
    let mem = prefix_sums(&inst.mem);
    // Approximate (prefix sums); every candidate is re-scored exactly by `incumbent`.
    let fits = |i: usize, a: usize, b: usize| mem[b] - mem[a] <= inst.cap[i];
    let prefix: Vec<Vec<f64>> = (0..d).map(|i| prefix_sums(&inst.compute[i])).collect();
    let total = mem[l];
    for i in (0..d).filter(|&i| inst.hop_in(i).is_some()) {
        for j in (0..d).filter(|&j| j != i && inst.hop_back(j).is_some()) {
            if inst.cap[i] + inst.cap[j] < total * (1.0 - 1e-9) {
                // Together they cannot hold the model.
                continue;
            }
            let best = (1..l)
                .filter(|&k| inst.hop_after(k - 1, i, j).is_some())
                .map(|k| {
                    let hop = inst.hop_after(k - 1, i, j).unwrap_or(f64::INFINITY);
                    let cost = prefix[i][k] + prefix[j][l] - prefix[j][k] + hop;
                    (cost, k)
                })
                .filter(|&(_, k)| fits(i, 0, k) && fits(j, k, l))
                .min_by(|x, y| x.0.total_cmp(&y.0));
            if let Some((_, k)) = best {
                out.push(vec![(i, 0, k), (j, k, l)]);
            }
        }
    }
    out
}

/// Bottleneck-balanced chains: for a target `T`, repeatedly take the fastest unused device
/// reachable from the last one and give it as many layers as keep its stage within `T` and
/// its memory; the smallest `T` that works (bisection) is returned.
fn balanced(inst: &Instance) -> Option<Vec<IdxStage>> {
    let total: f64 = (0..inst.devices())
        .map(|i| inst.stage_cost(i, 0, inst.layers()))
        .fold(0.0, f64::max);
    let (mut lo, mut hi) = (0.0, total.max(1e-9) * 2.0);
    let mut best = None;
    for _ in 0..16 {
        let mid = (lo + hi) / 2.0;
        match chain_within(inst, mid) {
            Some(st) => {
                best = Some(st);
                hi = mid;
            }
            None => lo = mid,
        }
    }
    best
}

/// A placement with every stage and hop at most `target`, if a bounded depth-first search
/// finds one: each device in turn takes as many layers as fit within `target`, candidates are
/// tried furthest-reaching first, and a branch is abandoned when the unused devices' longest
/// stages cannot cover the rest. A heuristic (it gives up after [`DFS_BUDGET`] stages).
pub(crate) fn chain_within(inst: &Instance, target: f64) -> Option<Vec<IdxStage>> {
    let (d, l) = (inst.devices(), inst.layers());
    let table = reach_table(inst, target);
    let reach = |j: usize, a: usize| table[j][a];
    let longest: Vec<usize> = (0..d)
        .map(|j| (0..l).map(|a| table[j][a] - a).max().unwrap_or(0))
        .collect();
    let mut dfs = Dfs {
        inst,
        target,
        reach: &reach,
        longest,
        used: vec![false; d],
        stack: Vec::new(),
        budget: DFS_BUDGET,
    };
    dfs.extend(0).then_some(dfs.stack)
}

/// `table[j][a]`: the furthest boundary a stage on `j` starting at `a` reaches within
/// `target` and memory (prefix sums, two pointers; the search validates what it returns).
fn reach_table(inst: &Instance, target: f64) -> Vec<Vec<usize>> {
    let (d, l) = (inst.devices(), inst.layers());
    let mem = prefix_sums(&inst.mem);
    (0..d)
        .map(|j| {
            let cost = prefix_sums(&inst.compute[j]);
            let mut b = 0;
            (0..l)
                .map(|a| {
                    b = b.max(a);
                    while b < l
                        && cost[b + 1] - cost[a] + inst.overhead[j] <= target
                        && mem[b + 1] - mem[a] <= inst.cap[j]
                    {
                        b += 1;
                    }
                    b
                })
                .collect()
        })
        .collect()
}

/// Stages the heuristic search may place before giving up.
const DFS_BUDGET: usize = 4000;

struct Dfs<'a> {
    inst: &'a Instance,
    target: f64,
    reach: &'a dyn Fn(usize, usize) -> usize,
    longest: Vec<usize>,
    used: Vec<bool>,
    stack: Vec<IdxStage>,
    budget: usize,
}

impl Dfs<'_> {
    fn extend(&mut self, a: usize) -> bool {
        let (inst, t) = (self.inst, self.target);
        let l = inst.layers();
        if a == l {
            return self
                .stack
                .last()
                .is_some_and(|s| inst.hop_back(s.0).is_some_and(|h| h <= t))
                && inst
                    .score(&self.stack, Objective::Throughput)
                    .is_ok_and(|c| c <= t);
        }
        let spare: usize = (0..self.used.len())
            .filter(|&j| !self.used[j])
            .map(|j| self.longest[j])
            .sum();
        if spare < l - a {
            return false;
        }
        let mut options: Vec<(usize, usize)> = (0..inst.devices())
            .filter(|&j| !self.used[j])
            .filter(|&j| match self.stack.last() {
                None => inst.hop_in(j).is_some_and(|h| h <= t),
                Some(&(i, _, b)) => inst.hop_after(b - 1, i, j).is_some_and(|h| h <= t),
            })
            .map(|j| (j, (self.reach)(j, a)))
            .filter(|&(_, b)| b > a)
            .collect();
        options.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
        for (j, b) in options {
            if self.budget == 0 {
                return false;
            }
            self.budget -= 1;
            self.used[j] = true;
            self.stack.push((j, a, b));
            if self.extend(b) {
                return true;
            }
            self.stack.pop();
            self.used[j] = false;
        }
        false
    }
}

/// Which MILP columns may appear in a placement costing at most the incumbent's `U`, by the
/// bounds of the [`Relaxation`]; without an incumbent every column is kept.
pub(crate) struct Prune {
    relax: Option<(Relaxation, Vec<Vec<f64>>)>,
    limit: f64,
}

impl Prune {
    /// Keeps everything.
    pub(crate) fn none() -> Self {
        Self {
            relax: None,
            limit: f64::INFINITY,
        }
    }

    /// Bounds from `relax` against the incumbent cost `upper`.
    pub(crate) fn new(relax: Relaxation, upper: f64) -> Self {
        let layers = relax.layer_bounds();
        Self {
            relax: Some((relax, layers)),
            limit: upper * (1.0 + SLACK) + 1e-12,
        }
    }

    /// The relaxation's optimum: no placement costs less (0 without a relaxation).
    pub(crate) fn lower(&self) -> f64 {
        self.relax.as_ref().map_or(0.0, |r| r.0.lower)
    }

    /// Whether layer `l` on device `i` can be part of a placement within the bound.
    pub(crate) fn keep_x(&self, l: usize, i: usize) -> bool {
        self.relax.as_ref().is_none_or(|r| r.1[l][i] <= self.limit)
    }

    /// Whether the first stage may be on `i`.
    pub(crate) fn keep_in(&self, i: usize) -> bool {
        self.relax
            .as_ref()
            .is_none_or(|r| r.0.first(i) <= self.limit)
    }

    /// Whether the last stage may be on `i`.
    pub(crate) fn keep_back(&self, i: usize) -> bool {
        self.relax
            .as_ref()
            .is_none_or(|r| r.0.last(i) <= self.limit)
    }

    /// Whether a hop `i -> j` after layer `k` may be used.
    pub(crate) fn keep_hop(&self, k: usize, i: usize, j: usize) -> bool {
        self.relax
            .as_ref()
            .is_none_or(|r| r.0.hop(k + 1, i, j) <= self.limit)
    }

    /// Whether device `i` may run layers `[a, b)`.
    pub(crate) fn keep_segment(&self, i: usize, a: usize, b: usize) -> bool {
        self.relax
            .as_ref()
            .is_none_or(|r| r.0.segment(i, a, b) <= self.limit)
    }

    /// The same bounds against a tighter limit (bisection thresholds).
    pub(crate) fn with_limit(&self, upper: f64) -> PruneAt<'_> {
        PruneAt {
            inner: self,
            limit: upper * (1.0 + SLACK) + 1e-12,
        }
    }
}

/// [`Prune`] against another limit.
pub(crate) struct PruneAt<'a> {
    inner: &'a Prune,
    limit: f64,
}

impl PruneAt<'_> {
    /// See [`Prune::keep_segment`].
    pub(crate) fn keep_segment(&self, i: usize, a: usize, b: usize) -> bool {
        self.inner
            .relax
            .as_ref()
            .is_none_or(|r| r.0.segment(i, a, b) <= self.limit)
    }

    /// See [`Prune::keep_hop`] (`b` is the boundary, one past the sender's last layer).
    pub(crate) fn keep_boundary_hop(&self, b: usize, i: usize, j: usize) -> bool {
        self.inner
            .relax
            .as_ref()
            .is_none_or(|r| r.0.hop(b, i, j) <= self.limit)
    }
}
