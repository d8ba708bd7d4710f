//! Upper bounds for the MILP: cheap heuristic placements (the baselines, every one- and
//! two-device placement, a bottleneck-balanced chain) give an incumbent cost `U`, and
//! [`Prune`] drops every MILP column whose own lower bound already exceeds `U`. Dropping
//! such a column cannot remove a placement that costs `U` or less, so the MILP stays exact;
//! it only gets smaller.

use crate::cost::{IdxStage, Instance};
use crate::plan::Objective;

/// Relative slack on `U` so that float rounding never prunes the incumbent itself.
const SLACK: f64 = 1e-9;

/// The cheapest of the heuristic placements, with its cost.
pub(crate) fn incumbent(
    inst: &Instance,
    obj: Objective,
    seeds: Vec<Vec<IdxStage>>,
) -> Option<(f64, Vec<IdxStage>)> {
    let mut cands = seeds;
    cands.extend(one_and_two_device(inst));
    if obj == Objective::Throughput {
        cands.extend(balanced(inst));
    }
    cands
        .into_iter()
        .filter_map(|st| inst.score(&st, obj).ok().map(|c| (c, st)))
        .min_by(|x, y| x.0.total_cmp(&y.0))
}

/// Every placement on one device and the best cut for every ordered pair of devices
/// (by latency; both objectives score them afterwards).
fn one_and_two_device(inst: &Instance) -> Vec<Vec<IdxStage>> {
    let (d, l) = (inst.devices(), inst.layers());
    let mut out: Vec<Vec<IdxStage>> = (0..d).map(|i| vec![(i, 0, l)]).collect();
    let prefix: Vec<Vec<f64>> = (0..d)
        .map(|i| {
            std::iter::once(0.0)
                .chain(inst.compute[i].iter().scan(0.0, |acc, x| {
                    *acc += x;
                    Some(*acc)
                }))
                .collect()
        })
        .collect();
    for i in (0..d).filter(|&i| inst.hop_in(i).is_some()) {
        for j in (0..d).filter(|&j| j != i && inst.hop_back(j).is_some()) {
            let best = (1..l)
                .filter(|&k| inst.hop_after(k - 1, i, j).is_some())
                .map(|k| {
                    let hop = inst.hop_after(k - 1, i, j).unwrap_or(f64::INFINITY);
                    let cost = prefix[i][k] + prefix[j][l] - prefix[j][k] + hop;
                    (cost, k)
                })
                .filter(|&(_, k)| inst.fits(i, 0, k) && inst.fits(j, k, l))
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
    for _ in 0..50 {
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

fn chain_within(inst: &Instance, target: f64) -> Option<Vec<IdxStage>> {
    let (d, l) = (inst.devices(), inst.layers());
    let speed = |i: usize| inst.compute[i].iter().sum::<f64>();
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&x, &y| speed(x).total_cmp(&speed(y)));
    let mut used = vec![false; d];
    let mut out: Vec<IdxStage> = Vec::new();
    let mut a = 0;
    while a < l {
        let reach = |j: usize| match out.last() {
            None => inst.hop_in(j).is_some_and(|h| h <= target),
            Some(&(i, _, b)) => inst.hop_after(b - 1, i, j).is_some_and(|h| h <= target),
        };
        let (j, b) = order
            .iter()
            .copied()
            .filter(|&j| !used[j] && reach(j))
            .find_map(|j| {
                let mut b = a;
                while b < l && inst.fits(j, a, b + 1) && inst.stage_cost(j, a, b + 1) <= target {
                    b += 1;
                }
                (b > a).then_some((j, b))
            })?;
        used[j] = true;
        out.push((j, a, b));
        a = b;
    }
    let last = out.last()?.0;
    inst.hop_back(last)
        .is_some_and(|h| h <= target)
        .then_some(out)
}

/// Lower bounds per MILP column against the incumbent cost.
pub(crate) struct Prune<'a> {
    inst: &'a Instance,
    obj: Objective,
    limit: f64,
    /// Latency: sum over layers of the fastest device's time, plus the cheapest way in and out.
    base: f64,
    /// Fastest time of each layer.
    fastest: Vec<f64>,
    min_in: f64,
    min_back: f64,
}

impl<'a> Prune<'a> {
    /// Bounds against `upper` (no pruning when `None`).
    pub(crate) fn new(inst: &'a Instance, obj: Objective, upper: Option<f64>) -> Self {
        let (d, l) = (inst.devices(), inst.layers());
        let fastest: Vec<f64> = (0..l)
            .map(|k| {
                (0..d)
                    .map(|i| inst.compute[i][k])
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let min_of =
            |f: &dyn Fn(usize) -> Option<f64>| (0..d).filter_map(f).fold(f64::INFINITY, f64::min);
        let min_in = min_of(&|i| inst.hop_in(i));
        let min_back = min_of(&|i| inst.hop_back(i));
        Self {
            inst,
            obj,
            limit: upper.map_or(f64::INFINITY, |u| u * (1.0 + SLACK) + 1e-12),
            base: fastest.iter().sum(),
            fastest,
            min_in,
            min_back,
        }
    }

    /// Whether layer `l` on device `i` can be part of a placement within the bound.
    pub(crate) fn keep_x(&self, l: usize, i: usize) -> bool {
        let own = self.inst.compute[i][l] + self.inst.overhead[i];
        match self.obj {
            Objective::Throughput => own <= self.limit,
            Objective::Latency => {
                self.base - self.fastest[l] + own + self.min_in + self.min_back <= self.limit
            }
        }
    }

    /// Whether the origin may hand the token to `i` (hop `h`) within the bound.
    pub(crate) fn keep_in(&self, i: usize, h: f64) -> bool {
        let inst = self.inst;
        match self.obj {
            Objective::Throughput => h <= self.limit,
            Objective::Latency => {
                let own = inst.compute[i][0] + inst.overhead[i];
                self.base - self.fastest[0] + own + h + self.min_back <= self.limit
            }
        }
    }

    /// Whether `i` may return the token to the origin (hop `h`) within the bound.
    pub(crate) fn keep_back(&self, i: usize, h: f64) -> bool {
        let inst = self.inst;
        let last = inst.layers() - 1;
        match self.obj {
            Objective::Throughput => h <= self.limit,
            Objective::Latency => {
                let own = inst.compute[i][last] + inst.overhead[i];
                self.base - self.fastest[last] + own + h + self.min_in <= self.limit
            }
        }
    }

    /// Whether a hop `i -> j` after layer `k` costing `h` fits within the bound.
    pub(crate) fn keep_hop(&self, k: usize, i: usize, j: usize, h: f64) -> bool {
        let inst = self.inst;
        match self.obj {
            Objective::Throughput => h <= self.limit,
            Objective::Latency => {
                let own = inst.compute[i][k]
                    + inst.overhead[i]
                    + inst.compute[j][k + 1]
                    + inst.overhead[j];
                let rest = self.base - self.fastest[k] - self.fastest[k + 1];
                rest + own + h + inst.stage_penalty + self.min_in + self.min_back <= self.limit
            }
        }
    }
}
