//! The exact combinatorial test behind the throughput bisection: is there a placement with
//! every stage, every hop and both origin hops at most `T`?
//!
//! For a fixed `T` a device `j` starting at boundary `a` may end anywhere in `(a, r_j(a)]`,
//! where the reach `r_j(a)` is the furthest end whose stage cost stays within `T` and whose
//! layers fit in `j`'s memory (both grow with the end, so the allowed ends are a range). The
//! question becomes an interval cover with distinct devices along a path of allowed hops.
//!
//! The search walks device sequences, not stage ends: a node is the last device `i`, the set
//! `U` of devices used and the set `A` of every boundary at which some choice of ends of that
//! sequence can finish `i`'s stage (a bit set over boundaries). Appending `j` keeps the
//! boundaries of `A` where the hop `i -> j` is within `T` and maps each such `b` to
//! `(b, r_j(b)]`. So one node stands for every end choice of its sequence, and the branching
//! is over devices only. A node whose `A` holds the last boundary and whose device returns the
//! token within `T` is a placement (ends recovered backwards through the stored sets).
//!
//! Pruning, each dropping only nodes without a completion:
//! - reach: the devices a completion can use are unused, reachable from `i` through unused
//!   devices by allowed hops, and able to reach a device with an allowed way back likewise;
//!   their longest stages (from the earliest boundary in `A` on) must add up to the layers
//!   left, and there must be at least one of them;
//! - failures: a node `(i, U, A)` known to fail is not searched again (exact key);
//! - symmetry: of interchangeable devices (`Instance::classes`) only the first unused one
//!   is tried.
//!
//! Children are tried furthest-reaching first, so thresholds that admit a placement usually
//! resolve at the first leaf. The search checks the clock and gives up at the deadline or
//! past a node budget (the caller then has a bound but no verdict).

use std::collections::HashSet;
use std::time::Instant;

use crate::cost::{IdxStage, Instance};
use crate::plan::Objective;

/// Most devices the search takes (device sets are `u128` masks); larger swarms use the MILP.
pub(crate) const MAX_DEVICES: usize = 128;

/// Most layers the search takes (boundary sets are 256-bit masks); larger models use the MILP.
pub(crate) const MAX_LAYERS: usize = 255;

/// Nodes between two looks at the clock.
const CLOCK_EVERY: u64 = 1 << 12;

/// Failed nodes remembered at most (about 60 bytes each, so at most ~30 MB).
const MEMO: usize = 1 << 19;

/// Outcome of one check.
pub(crate) enum Check {
    /// A placement with every stage and hop at most `T` (re-scored with the cost model).
    Feasible(Vec<IdxStage>),
    /// Proven: no such placement.
    Infeasible,
    /// The deadline or the node budget stopped the search, or the instance is too large.
    Unknown,
}

/// Hop costs at every inner boundary, computed once per solve: `cost[group[b]][i * d + j]`
/// is the hop `i -> j` at boundary `b` (infinite without a link), boundaries that ship the
/// same bytes share a group.
pub(crate) struct Hops {
    group: Vec<usize>,
    cost: Vec<Vec<f64>>,
}

impl Hops {
    /// Every hop cost of `inst`.
    pub(crate) fn new(inst: &Instance) -> Self {
        let (d, l) = (inst.devices(), inst.layers());
        let mut group = vec![0; l];
        let mut cost: Vec<Vec<f64>> = Vec::new();
        let mut seen: Vec<f64> = Vec::new();
        for (b, slot) in group.iter_mut().enumerate().skip(1) {
            let bytes = inst.out_bytes[b - 1];
            if let Some(g) = seen.iter().position(|&x| x == bytes) {
                *slot = g;
                continue;
            }
            *slot = seen.len();
            seen.push(bytes);
            let hop = |ij: usize| match (ij / d, ij % d) {
                (i, j) if i == j => f64::INFINITY,
                (i, j) => inst.hop_after(b - 1, i, j).unwrap_or(f64::INFINITY),
            };
            cost.push((0..d * d).map(hop).collect());
        }
        Self { group, cost }
    }
}

/// A set of layer boundaries `0..=MAX_LAYERS`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
struct Marks([u64; 4]);

impl Marks {
    fn has(&self, b: usize) -> bool {
        self.0[b / 64] >> (b % 64) & 1 == 1
    }

    fn insert(&mut self, b: usize) {
        self.0[b / 64] |= 1 << (b % 64);
    }

    /// Inserts every boundary of `lo..=hi`.
    fn insert_range(&mut self, lo: usize, hi: usize) {
        for b in lo..=hi {
            self.insert(b);
        }
    }

    fn and(&self, other: &Marks) -> Marks {
        Marks(std::array::from_fn(|w| self.0[w] & other.0[w]))
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// The smallest boundary (the set is not empty).
    fn min(&self) -> usize {
        let w = self.0.iter().position(|&w| w != 0).unwrap_or(0);
        w * 64 + self.0[w].trailing_zeros() as usize
    }

    /// The largest boundary (the set is not empty).
    fn max(&self) -> usize {
        let w = self.0.iter().rposition(|&w| w != 0).unwrap_or(0);
        w * 64 + 63 - self.0[w].leading_zeros() as usize
    }

    /// The boundaries, ascending.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..4).flat_map(move |w| {
            let mut bits = self.0[w];
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let k = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    w * 64 + k
                })
            })
        })
    }
}

/// Devices as bits.
type Set = u128;

fn bit(j: usize) -> Set {
    1 << j
}

fn members(s: Set) -> impl Iterator<Item = usize> {
    let mut bits = s;
    std::iter::from_fn(move || {
        (bits != 0).then(|| {
            let k = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            k
        })
    })
}

/// Is there a placement with every stage and hop at most `t`? Stops at `deadline` or after
/// `budget` nodes (then [`Check::Unknown`]).
pub(crate) fn feasible(
    inst: &Instance,
    hops: &Hops,
    t: f64,
    deadline: Instant,
    budget: u64,
) -> Check {
    let (d, l) = (inst.devices(), inst.layers());
    if d > MAX_DEVICES || l > MAX_LAYERS || l == 0 {
        return Check::Unknown;
    }
    let mut s = Search::new(inst, hops, t, deadline, budget);
    let found = s.root();
    match found {
        Err(Stop) => Check::Unknown,
        Ok(false) => Check::Infeasible,
        Ok(true) => match s.placement() {
            Some(st) if inst.score(&st, Objective::Throughput).is_ok_and(|c| c <= t) => {
                Check::Feasible(st)
            }
            // Not expected: the tables use the cost model's own sums. Let the caller decide.
            _ => Check::Unknown,
        },
    }
}

/// The deadline or the budget ran out.
struct Stop;

/// The tables for one threshold and the search state.
struct Search<'a> {
    inst: &'a Instance,
    l: usize,
    /// `reach[j][a]`: see [`reach_table`].
    reach: Vec<Vec<usize>>,
    /// `span[j][a]`: the longest stage `j` can run starting at `a` or later.
    span: Vec<Vec<usize>>,
    /// `ok[i * d + j]`: boundaries at which the hop `i -> j` is within `t`.
    ok: Vec<Marks>,
    /// `out[i]`, `inn[j]`: devices `i` may hand over to at some boundary, and back.
    out: Vec<Set>,
    inn: Vec<Set>,
    /// Devices that can hold at least one layer within `t`.
    viable: Set,
    /// Devices the origin may send the token to, and those that may send it back.
    first: Set,
    last: Set,
    /// `earlier[j]`: devices interchangeable with `j` listed before it.
    earlier: Vec<Set>,
    used: Set,
    /// The sequence so far: device and the boundaries its stage can end at.
    stack: Vec<(usize, Marks)>,
    failed: HashSet<(usize, Set, Marks)>,
    nodes: u64,
    budget: u64,
    deadline: Instant,
}

impl<'a> Search<'a> {
    fn new(inst: &'a Instance, hops: &Hops, t: f64, deadline: Instant, budget: u64) -> Self {
        let (d, l) = (inst.devices(), inst.layers());
        let reach = reach_table(inst, t);
        let span: Vec<Vec<usize>> = reach
            .iter()
            .map(|r| {
                let mut span = vec![0; l + 1];
                for a in (0..l).rev() {
                    span[a] = span[a + 1].max(r[a] - a);
                }
                span
            })
            .collect();
        // Boundaries of each hop group, then the allowed boundaries per pair.
        let groups = hops.cost.len();
        let mut at = vec![Marks::default(); groups];
        for b in 1..l {
            at[hops.group[b]].insert(b);
        }
        let mut ok = vec![Marks::default(); d * d];
        for (g, cost) in hops.cost.iter().enumerate() {
            for (ij, &c) in cost.iter().enumerate() {
                if c.is_finite() && c <= t {
                    for w in 0..4 {
                        ok[ij].0[w] |= at[g].0[w];
                    }
                }
            }
        }
        let mut out = vec![0; d];
        let mut inn = vec![0; d];
        for i in 0..d {
            for j in 0..d {
                if !ok[i * d + j].is_empty() {
                    out[i] |= bit(j);
                    inn[j] |= bit(i);
                }
            }
        }
        let within = |h: Option<f64>| h.is_some_and(|h| h <= t);
        let viable = (0..d)
            .filter(|&j| span[j][0] > 0)
            .fold(0, |s, j| s | bit(j));
        let class = inst.classes();
        Self {
            inst,
            l,
            reach,
            span,
            ok,
            viable,
            out,
            inn,
            first: (0..d)
                .filter(|&j| within(inst.hop_in(j)))
                .fold(0, |s, j| s | bit(j)),
            last: (0..d)
                .filter(|&j| within(inst.hop_back(j)))
                .fold(0, |s, j| s | bit(j)),
            earlier: (0..d)
                .map(|j| {
                    (0..j)
                        .filter(|&i| class[i] == class[j])
                        .fold(0, |s, i| s | bit(i))
                })
                .collect(),
            used: 0,
            stack: Vec::with_capacity(d.min(l)),
            failed: HashSet::new(),
            nodes: 0,
            budget,
            deadline,
        }
    }

    /// The first stage: every device the origin may reach, from boundary 0.
    fn root(&mut self) -> Result<bool, Stop> {
        let start = Marks([1, 0, 0, 0]);
        let mut options = Vec::new();
        for j in members(self.first) {
            if self.earlier[j] & !self.used != 0 {
                continue;
            }
            let next = self.advance(j, &start);
            if !next.is_empty() {
                options.push((j, next));
            }
        }
        self.try_all(options)
    }

    /// Every child of the node on top of the stack.
    fn extend(&mut self) -> Result<bool, Stop> {
        self.tick()?;
        let Some(&(i, marks)) = self.stack.last() else {
            return Ok(false);
        };
        if marks.has(self.l) && self.last & bit(i) != 0 {
            return Ok(true);
        }
        let key = (i, self.used, marks);
        if self.failed.contains(&key) {
            return Ok(false);
        }
        let found = match self.useful(i, &marks) {
            None => false,
            Some(useful) => {
                let d = self.inst.devices();
                let mut options = Vec::new();
                for j in members(self.out[i] & useful) {
                    if self.earlier[j] & !self.used != 0 {
                        continue;
                    }
                    let from = marks.and(&self.ok[i * d + j]);
                    let next = self.advance(j, &from);
                    if !next.is_empty() {
                        options.push((j, next));
                    }
                }
                self.try_all(options)?
            }
        };
        if !found && self.failed.len() < MEMO {
            self.failed.insert(key);
        }
        Ok(found)
    }

    /// Tries the children furthest-reaching first.
    fn try_all(&mut self, mut options: Vec<(usize, Marks)>) -> Result<bool, Stop> {
        options.sort_by_key(|(j, m)| (std::cmp::Reverse(m.max()), *j));
        for (j, next) in options {
            self.used |= bit(j);
            self.stack.push((j, next));
            if self.extend()? {
                return Ok(true);
            }
            self.stack.pop();
            self.used &= !bit(j);
        }
        Ok(false)
    }

    /// The devices a completion after `i` (stage ends in `marks`) may use, or `None` when
    /// they cannot cover the layers left.
    fn useful(&self, i: usize, marks: &Marks) -> Option<Set> {
        let free = self.viable & !self.used;
        let ahead = closure(self.out[i] & free, free, &self.out);
        let behind = closure(self.last & free, free, &self.inn);
        let useful = ahead & behind;
        if useful == 0 {
            return None;
        }
        let (from, need) = (marks.min(), self.l - marks.max());
        let span = |j: usize| self.span[j][from];
        if members(useful).map(span).sum::<usize>() < need {
            return None;
        }
        let chain = chains(self.out[i] & useful, useful, &self.out, span);
        (chain >= need).then_some(useful)
    }

    /// The boundaries a stage on `j` can end at when it may start at any boundary of `from`.
    fn advance(&self, j: usize, from: &Marks) -> Marks {
        let mut out = Marks::default();
        let mut top = 0;
        for b in from.iter() {
            if b >= self.l {
                break;
            }
            let r = self.reach[j][b];
            let lo = (b + 1).max(top + 1);
            if r >= lo {
                out.insert_range(lo, r);
                top = r;
            }
        }
        out
    }

    fn tick(&mut self) -> Result<(), Stop> {
        self.nodes += 1;
        if self.nodes > self.budget
            || (self.nodes.is_multiple_of(CLOCK_EVERY) && Instant::now() >= self.deadline)
        {
            return Err(Stop);
        }
        Ok(())
    }

    /// The placement of the stack (which ends at the last boundary): ends recovered from the
    /// last stage backwards, each the end of a stage that the previous sets allow.
    fn placement(&self) -> Option<Vec<IdxStage>> {
        let d = self.inst.devices();
        let mut end = self.l;
        let mut out = Vec::with_capacity(self.stack.len());
        for k in (0..self.stack.len()).rev() {
            let j = self.stack[k].0;
            let start = if k == 0 {
                (self.reach[j][0] >= end).then_some(0)?
            } else {
                let (i, marks) = self.stack[k - 1];
                let allowed = marks.and(&self.ok[i * d + j]);
                allowed
                    .iter()
                    .find(|&b| b < end && self.reach[j][b] >= end)?
            };
            out.push((j, start, end));
            end = start;
        }
        out.reverse();
        Some(out)
    }
}

/// Devices of `free` reachable from `seeds` (included) along `edges` through `free`.
fn closure(seeds: Set, free: Set, edges: &[Set]) -> Set {
    let mut seen = seeds;
    let mut frontier = seeds;
    while frontier != 0 {
        let mut next = 0;
        for k in members(frontier) {
            next |= edges[k];
        }
        frontier = next & free & !seen;
        seen |= frontier;
    }
    seen
}

/// At least the most layers a simple path can collect when it starts at a device of `seeds`
/// and moves along `edges` inside `nodes`, device `j` holding at most `weight(j)` layers: the
/// heaviest chain of strongly connected components of `nodes` (Tarjan, which completes them
/// sinks first). A path never returns to a component it left, so it collects at most the
/// weights along one chain of components.
fn chains(seeds: Set, nodes: Set, edges: &[Set], weight: impl Fn(usize) -> usize) -> usize {
    const NONE: u8 = u8::MAX;
    let mut index = [NONE; MAX_DEVICES];
    let mut low = [0u8; MAX_DEVICES];
    let mut comp = [NONE; MAX_DEVICES];
    let mut best = [0usize; MAX_DEVICES];
    let (mut counter, mut comps) = (0u8, 0u8);
    let mut open: Set = 0;
    let mut stack: Vec<usize> = Vec::with_capacity(MAX_DEVICES);
    let mut calls: Vec<(usize, Set)> = Vec::with_capacity(MAX_DEVICES);
    for root in members(seeds & nodes) {
        if index[root] != NONE {
            continue;
        }
        index[root] = counter;
        low[root] = counter;
        counter += 1;
        stack.push(root);
        open |= bit(root);
        calls.push((root, edges[root] & nodes));
        while let Some(top) = calls.last_mut() {
            let v = top.0;
            if top.1 != 0 {
                let w = top.1.trailing_zeros() as usize;
                top.1 &= top.1 - 1;
                if index[w] == NONE {
                    index[w] = counter;
                    low[w] = counter;
                    counter += 1;
                    stack.push(w);
                    open |= bit(w);
                    calls.push((w, edges[w] & nodes));
                } else if open & bit(w) != 0 {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(p, _)) = calls.last() {
                low[p] = low[p].min(low[v]);
            }
            if low[v] != index[v] {
                continue;
            }
            // `v` roots a component: pop it, its successors are complete already.
            let mut members_of: Set = 0;
            while let Some(k) = stack.pop() {
                members_of |= bit(k);
                open &= !bit(k);
                comp[k] = comps;
                if k == v {
                    break;
                }
            }
            let mut after = 0;
            for k in members(members_of) {
                for n in members(edges[k] & nodes & !members_of) {
                    after = after.max(best[comp[n] as usize]);
                }
            }
            let own: usize = members(members_of).map(&weight).sum();
            best[comps as usize] = own + after;
            comps += 1;
        }
    }
    members(seeds & nodes)
        .map(|k| best[comp[k] as usize])
        .max()
        .unwrap_or(0)
}

/// `reach[j][a]`: the furthest boundary a stage on `j` starting at `a` reaches with cost at
/// most `t` and within memory (`a` itself when not even one layer does). Sums accumulate in
/// the same order as `Instance::stage_cost` and `Instance::seg_mem`, so every comparison is
/// bit-for-bit the one that scores placements; both are monotone in `a` and `b` (also in
/// floating point), so two pointers suffice.
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
