//! Exact latency placement by depth-first branch and bound over stage sequences, bounded by
//! the Lagrangian relaxation (`relax.rs`, `lagrange.rs`).
//!
//! A node is a prefix of the placement: stages on distinct devices covering layers `[0, b)`,
//! its real cost `g` (origin hop, stages, hops, stage penalties) and the set of devices used.
//! Its children append one stage `[b, e)` on an unused device `j` that can hold it and that
//! the last device (or the origin) can reach. A child that finishes the model is a complete
//! placement, scored with the cost model. Any other child is bounded by
//! `g' + fin(e, j) - free`, where `fin` is the relaxation's cheapest completion (with the
//! multipliers of the stages to come) and `free` the sum of the multipliers of the devices
//! still unused: a completion on unused devices pays at most `free` in multipliers, so no
//! completion is cheaper. Children are tried cheapest bound first and dropped once their bound
//! reaches the incumbent's cost, so when the search runs to the end the incumbent is optimal
//! (within [`crate::lagrange::PROVEN`]); a budget of child evaluations and the deadline stop it
//! early, and then it is only the best placement found.
//!
//! Two prefixes that end at the same boundary on the same device with the same set of used
//! devices have the same completions, so the dearer one is dropped (a memo of the cheapest
//! cost per state, for swarms of at most 128 devices, at most [`MEMO`] states). When nearly
//! every device is needed, many orders of the same devices reach the same state.

use std::collections::HashMap;

use std::time::Instant;

use crate::cost::{IdxStage, Instance, prefix_sums};
use crate::relax::Relaxation;

/// Child evaluations between two looks at the clock.
const CLOCK_EVERY: u64 = 1 << 14;

/// States the memo keeps at most (about 50 bytes each).
const MEMO: usize = 1 << 20;

/// Relative margin below the incumbent a bound must reach for its node to be explored.
const MARGIN: f64 = 1e-10;

/// What the search found.
pub(crate) struct Found {
    /// The best placement known at the end, with its cost.
    pub(crate) best: Option<(f64, Vec<IdxStage>)>,
    /// The search ran to the end: `best` is optimal (or no placement exists).
    pub(crate) complete: bool,
}

/// Searches for a placement cheaper than `incumbent`, spending at most `budget` child
/// evaluations and stopping at `deadline`.
pub(crate) fn latency(
    inst: &Instance,
    relax: &Relaxation,
    incumbent: Option<(f64, Vec<IdxStage>)>,
    budget: u64,
    deadline: Instant,
) -> Found {
    let (d, l) = (inst.devices(), inst.layers());
    let mut s = Search {
        inst,
        relax,
        prefix: (0..d).map(|i| prefix_sums(&inst.compute[i])).collect(),
        reach: reach(inst),
        used: vec![false; d],
        set: 0,
        memo: HashMap::new(),
        free: (0..d).map(|i| relax.penalty(i)).sum(),
        stack: Vec::with_capacity(l),
        best: incumbent,
        budget,
        deadline,
        stopped: false,
    };
    if l > 0 {
        s.extend(0, None, 0.0);
    }
    Found {
        complete: !s.stopped,
        best: s.best,
    }
}

/// `reach[j][a]`: the largest `e` such that device `j` can hold layers `[a, e)` (the memory
/// rule exactly as `Instance::fits` sums it; `a` itself when not even one layer fits).
fn reach(inst: &Instance) -> Vec<Vec<usize>> {
    let (d, l) = (inst.devices(), inst.layers());
    (0..d)
        .map(|j| {
            (0..l)
                .map(|a| {
                    let mut e = a;
                    while e < l && inst.fits(j, a, e + 1) {
                        e += 1;
                    }
                    e
                })
                .collect()
        })
        .collect()
}

/// The search state.
struct Search<'a> {
    inst: &'a Instance,
    relax: &'a Relaxation,
    prefix: Vec<Vec<f64>>,
    reach: Vec<Vec<usize>>,
    used: Vec<bool>,
    /// `used` as bits (meaningful for at most 128 devices).
    set: u128,
    /// Cheapest known cost per state (boundary, last device, used set).
    memo: HashMap<(u32, u32, u128), f64>,
    /// Sum of the multipliers of the unused devices.
    free: f64,
    stack: Vec<IdxStage>,
    best: Option<(f64, Vec<IdxStage>)>,
    budget: u64,
    deadline: Instant,
    stopped: bool,
}

/// A child: bound, device, end, cost so far.
type Child = (f64, usize, usize, f64);

impl Search<'_> {
    /// Bounds at or above this cannot improve on the incumbent.
    fn limit(&self) -> f64 {
        self.best
            .as_ref()
            .map_or(f64::INFINITY, |b| b.0 - MARGIN * b.0.abs())
    }

    /// Explores every placement that extends the stack, which covers `[0, b)`, ends on `prev`
    /// and costs `g` so far.
    fn extend(&mut self, b: usize, prev: Option<usize>, g: f64) {
        let children = self.children(b, prev, g);
        for (bound, j, e, c) in children {
            if self.stopped {
                return;
            }
            if bound >= self.limit() {
                // Sorted by bound: no later child can do better either.
                return;
            }
            if self.dominated(e, j, c) {
                continue;
            }
            let pj = self.relax.penalty(j);
            self.used[j] = true;
            self.set ^= bit(j);
            self.free -= pj;
            self.stack.push((j, b, e));
            self.extend(e, Some(j), c);
            self.stack.pop();
            self.free += pj;
            self.set ^= bit(j);
            self.used[j] = false;
        }
    }

    /// The children of a node worth exploring, cheapest bound first; complete placements met
    /// on the way are offered to the incumbent instead.
    fn children(&mut self, b: usize, prev: Option<usize>, g: f64) -> Vec<Child> {
        let (inst, relax) = (self.inst, self.relax);
        let l = inst.layers();
        let mut out: Vec<Child> = Vec::new();
        for j in 0..inst.devices() {
            if self.used[j] {
                continue;
            }
            let hop = match prev {
                None => inst.hop_in(j).unwrap_or(f64::INFINITY),
                Some(i) => relax.hop_cost(b, i, j),
            };
            if !hop.is_finite() {
                continue;
            }
            let free_after = self.free - relax.penalty(j);
            // Nothing that starts on j here completes below this.
            if g + hop + relax.start(b, j) - self.free >= self.limit() {
                continue;
            }
            let base = g + hop + inst.overhead[j] - self.prefix[j][b];
            for e in b + 1..=self.reach[j][b] {
                let c = base + self.prefix[j][e];
                if e == l {
                    self.complete(j, b, c);
                    continue;
                }
                let bound = c + relax.fin(e, j) - free_after;
                if bound < self.limit() {
                    out.push((bound, j, e, c));
                }
            }
            self.spend((self.reach[j][b] - b) as u64);
        }
        out.sort_by(|x, y| x.0.total_cmp(&y.0));
        out
    }

    /// A placement that ends with `[b, l)` on `j`, about `c` before the way back.
    fn complete(&mut self, j: usize, b: usize, c: f64) {
        let Some(back) = self.inst.hop_back(j) else {
            return;
        };
        if c + back >= self.limit() {
            return;
        }
        let mut stages = self.stack.clone();
        stages.push((j, b, self.inst.layers()));
        crate::lagrange::offer(self.inst, &mut self.best, stages);
    }

    /// Whether another prefix reached "ends at `e` on `j`, with the used devices and `j`"
    /// for at most `c`; otherwise `c` is remembered for that state.
    fn dominated(&mut self, e: usize, j: usize, c: f64) -> bool {
        if self.used.len() > 128 {
            return false;
        }
        let key = (e as u32, j as u32, self.set | bit(j));
        match self.memo.get_mut(&key) {
            Some(old) if c >= *old => true,
            Some(old) => {
                *old = c;
                false
            }
            None => {
                if self.memo.len() < MEMO {
                    self.memo.insert(key, c);
                }
                false
            }
        }
    }

    /// Counts `n` child evaluations against the budget and the clock.
    fn spend(&mut self, n: u64) {
        let before = self.budget;
        self.budget = self.budget.saturating_sub(n);
        let look = before / CLOCK_EVERY != self.budget / CLOCK_EVERY;
        if self.budget == 0 || (look && Instant::now() >= self.deadline) {
            self.stopped = true;
        }
    }
}

/// The bit of device `j` in a used set (0 past 128 devices, where the memo is off).
fn bit(j: usize) -> u128 {
    if j < 128 { 1u128 << j } else { 0 }
}
