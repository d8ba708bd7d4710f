//! An exact combinatorial test of "is there a placement with every stage and hop at most `T`"
//! for models whose inner boundaries all ship the same number of bytes (every real model: the
//! hidden state), used by the throughput bisection before it falls back to a MILP.
//!
//! With equal `out_bytes`, whether `i` may hand over to `j` does not depend on where the cut
//! is, so the state after a stage is just (boundary, last device, used set). A depth-first
//! search over devices and stage ends (furthest first, so feasible thresholds resolve
//! quickly) enumerates every placement whose stages and hops stay within `T`; it prunes only
//! what cannot work: branches where the unused devices' longest stages cannot cover the
//! layers left, states already known to fail, and all but the first unused device of a
//! group of interchangeable ones. It gives up (returns `None`) past a node
//! budget, and the caller then asks the MILP.

use std::collections::HashSet;

use crate::cost::{IdxStage, Instance};
use crate::plan::Objective;

/// Stage placements the exact search may try before handing over to the MILP (about a second
/// in an optimised build on a phone-class core).
const BUDGET: usize = 3_000_000;

/// Remembered failures at most (bounds the memory: about 100 bytes each).
const MEMO: usize = 200_000;

/// `Some(Some(placement))`: feasible; `Some(None)`: proven infeasible; `None`: not
/// applicable (unequal `out_bytes`) or out of budget.
pub(crate) fn feasible(
    inst: &Instance,
    t: f64,
    reach: &[Vec<usize>],
) -> Option<Option<Vec<IdxStage>>> {
    let l = inst.layers();
    let inner = &inst.out_bytes[..l.saturating_sub(1)];
    if inner.windows(2).any(|w| w[0] != w[1]) {
        return None;
    }
    let d = inst.devices();
    // Allowed hand-overs at every inner boundary (all equal, so boundary 1 stands for all).
    let link: Vec<bool> = (0..d * d)
        .map(|ij| {
            let (i, j) = (ij / d, ij % d);
            i != j && l > 1 && inst.hop_after(0, i, j).is_some_and(|h| h <= t)
        })
        .collect();
    let class = inst.classes();
    let mut s = Search {
        inst,
        t,
        earlier: (0..d)
            .map(|j| (0..j).filter(|&i| class[i] == class[j]).collect())
            .collect(),
        reach,
        longest: (0..d)
            .map(|j| (0..l).map(|a| reach[j][a] - a).max().unwrap_or(0))
            .collect(),
        link,
        used: vec![0u64; d.div_ceil(64)],
        stack: Vec::new(),
        failed: HashSet::new(),
        budget: BUDGET,
    };
    let found = s.extend(0);
    if s.budget == 0 && !found {
        return None;
    }
    Some(found.then_some(s.stack))
}

struct Search<'a> {
    inst: &'a Instance,
    t: f64,
    /// `earlier[j]`: devices interchangeable with `j` and listed before it; `j` is tried only
    /// when all of them are in use (symmetry breaking, see `Instance::classes`).
    earlier: Vec<Vec<usize>>,
    reach: &'a [Vec<usize>],
    longest: Vec<usize>,
    link: Vec<bool>,
    used: Vec<u64>,
    stack: Vec<IdxStage>,
    /// `(boundary, last device, used set)` from which finishing failed.
    failed: HashSet<(usize, usize, Vec<u64>)>,
    budget: usize,
}

impl Search<'_> {
    fn is_used(&self, j: usize) -> bool {
        self.used[j / 64] >> (j % 64) & 1 == 1
    }

    fn flip(&mut self, j: usize) {
        self.used[j / 64] ^= 1 << (j % 64);
    }

    fn extend(&mut self, a: usize) -> bool {
        let (inst, t, d, l) = (self.inst, self.t, self.inst.devices(), self.inst.layers());
        if a == l {
            return self.finish();
        }
        let last = self.stack.last().map(|s| s.0);
        if let Some(j) = last
            && self.failed.contains(&(a, j, self.used.clone()))
        {
            return false;
        }
        let spare: usize = (0..d)
            .filter(|&j| !self.is_used(j))
            .map(|j| self.longest[j])
            .sum();
        if spare >= l - a {
            let mut options: Vec<(usize, usize)> = (0..d)
                .filter(|&j| !self.is_used(j))
                .filter(|&j| self.earlier[j].iter().all(|&i| self.is_used(i)))
                .filter(|&j| match last {
                    None => inst.hop_in(j).is_some_and(|h| h <= t),
                    Some(i) => self.link[i * d + j],
                })
                .map(|j| (j, self.reach[j][a]))
                .filter(|&(_, b)| b > a)
                .collect();
            options.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
            // Every end, furthest first: a device that ends early may leave a layer to one
            // that could not take the next.
            let ends = |&(j, top): &(usize, usize)| (a + 1..=top).rev().map(move |b| (j, b));
            let tries: Vec<(usize, usize)> = options.iter().flat_map(ends).collect();
            for (j, b) in tries {
                if self.budget == 0 {
                    return false;
                }
                self.budget -= 1;
                self.flip(j);
                self.stack.push((j, a, b));
                if self.extend(b) {
                    return true;
                }
                self.stack.pop();
                self.flip(j);
            }
        }
        if let Some(j) = last
            && self.budget > 0
            && self.failed.len() < MEMO
        {
            self.failed.insert((a, j, self.used.clone()));
        }
        false
    }

    /// The last device must return the token within `t`; the whole placement is re-scored.
    fn finish(&self) -> bool {
        let inst = self.inst;
        self.stack
            .last()
            .is_some_and(|s| inst.hop_back(s.0).is_some_and(|h| h <= self.t))
            && inst
                .score(&self.stack, Objective::Throughput)
                .is_ok_and(|c| c <= self.t)
    }
}

/// `reach[j][a]`: the furthest boundary a stage on `j` starting at `a` reaches with cost at
/// most `t` and within memory. Sums accumulate in the same order as `Instance::stage_cost`
/// and `Instance::seg_mem`, so every comparison is bit-for-bit the one that scores
/// placements; both are monotone in `a` and `b` (also in floating point), so two pointers
/// suffice.
pub(crate) fn reach_table(inst: &Instance, t: f64) -> Vec<Vec<usize>> {
    let (d, l) = (inst.devices(), inst.layers());
    (0..d)
        .map(|j| {
            let compute = &inst.compute[j];
            let mut b = 0;
            (0..l)
                .map(|a| {
                    b = b.max(a);
                    let mut cost: f64 = compute[a..b].iter().sum();
                    let mut mem: f64 = inst.mem[a..b].iter().sum();
                    while b < l {
                        let (c, m) = (cost + compute[b], mem + inst.mem[b]);
                        if m > inst.cap[j] || c + inst.overhead[j] > t {
                            break;
                        }
                        (cost, mem, b) = (c, m, b + 1);
                    }
                    b
                })
                .collect()
        })
        .collect()
}
