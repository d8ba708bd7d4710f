//! A dynamic-programming relaxation of the placement problem that yields a lower bound for
//! every MILP column and, often, the optimum itself.
//!
//! Dropping one rule, "each device holds at most one stage", leaves a shortest-path problem
//! over states (layer boundary, device): a stage `[a, b)` on `i` moves from "entered `i` at
//! `a`" to "finished `i` at `b`", a hop moves from "finished `i` at `b`" to "entered `j` at
//! `b`". Costs combine by `+` for latency and by `max` for throughput. A forward pass gives
//! the cheapest way to reach each state, a backward pass the cheapest way to finish from it;
//! their combination around a column (a stage, a hop, a layer on a device) is a lower bound on
//! every placement that uses it. Columns whose bound exceeds a known placement's cost can be
//! dropped without losing the optimum; when the relaxation's own optimum uses distinct
//! devices it is the optimum of the real problem.
//!
//! Latency also takes Lagrange multipliers `lambda[i] >= 0` on the dropped rule
//! (`lagrange.rs`): every stage on `i` costs `lambda[i]` more and every bound subtracts
//! `sum lambda`. For any such multipliers a placement that uses each device at most once pays
//! at most `sum lambda` extra, so every bound stays valid; good multipliers make a fast device
//! that the plain relaxation reuses too expensive to reuse, and the bounds much tighter.

use crate::cost::{IdxStage, Instance, prefix_sums};
use crate::plan::Objective;

/// Forward and backward values of the relaxation.
pub(crate) struct Relaxation {
    obj: Objective,
    d: usize,
    l: usize,
    /// `compute prefix[i][k]`: seconds of layers `[0, k)` on `i`.
    prefix: Vec<Vec<f64>>,
    mem_prefix: Vec<f64>,
    cap: Vec<f64>,
    overhead: Vec<f64>,
    /// Lagrange multiplier of "device `i` at most once" (all 0 for throughput).
    penalty: Vec<f64>,
    /// `sum penalty`, subtracted from every bound.
    shift: f64,
    /// `hops[b][i * d + j]`: hop (plus stage penalty for latency) at inner boundary `b`.
    hops: Vec<Vec<f64>>,
    hop_in: Vec<f64>,
    hop_back: Vec<f64>,
    /// Cheapest way to have entered `j` at boundary `a` (its stage not counted).
    enter: Vec<Vec<f64>>,
    /// Cheapest way to have finished a stage on `i` at boundary `b`.
    done: Vec<Vec<f64>>,
    /// Cheapest completion after entering `j` at `a` (its stage counted).
    start: Vec<Vec<f64>>,
    /// Cheapest completion after finishing a stage on `i` at `b`.
    fin: Vec<Vec<f64>>,
    /// The relaxation's optimal value (a lower bound on the real optimum).
    pub(crate) lower: f64,
}

const INF: f64 = f64::INFINITY;

impl Relaxation {
    /// Runs both passes.
    pub(crate) fn new(inst: &Instance, obj: Objective) -> Self {
        let (d, l) = (inst.devices(), inst.layers());
        let pen = if obj == Objective::Latency {
            inst.stage_penalty
        } else {
            0.0
        };
        let prefix = (0..d).map(|i| prefix_sums(&inst.compute[i])).collect();
        let mut hops: Vec<Vec<f64>> = vec![Vec::new(); l];
        for b in 1..l {
            if b > 1 && inst.out_bytes[b - 1] == inst.out_bytes[b - 2] {
                // Same bytes at every cut (real models): the same hop costs.
                hops[b] = hops[b - 1].clone();
                continue;
            }
            hops[b] = (0..d * d)
                .map(|ij| {
                    let (i, j) = (ij / d, ij % d);
                    if i == j {
                        return INF;
                    }
                    inst.hop_after(b - 1, i, j).map_or(INF, |h| h + pen)
                })
                .collect();
        }
        let mut r = Self {
            obj,
            d,
            l,
            prefix,
            mem_prefix: prefix_sums(&inst.mem),
            cap: inst.cap.clone(),
            overhead: inst.overhead.clone(),
            penalty: vec![0.0; d],
            shift: 0.0,
            hops,
            hop_in: (0..d).map(|i| inst.hop_in(i).unwrap_or(INF)).collect(),
            hop_back: (0..d).map(|i| inst.hop_back(i).unwrap_or(INF)).collect(),
            enter: vec![vec![INF; d]; l + 1],
            done: vec![vec![INF; d]; l + 1],
            start: vec![vec![INF; d]; l + 1],
            fin: vec![vec![INF; d]; l + 1],
            lower: INF,
        };
        r.solve();
        r
    }

    /// Runs both passes again with multipliers `penalty` (latency only; one per device).
    pub(crate) fn set_penalty(&mut self, penalty: &[f64]) {
        if self.obj != Objective::Latency || penalty.len() != self.d {
            return;
        }
        self.penalty.copy_from_slice(penalty);
        self.shift = penalty.iter().sum();
        for table in [
            &mut self.enter,
            &mut self.done,
            &mut self.start,
            &mut self.fin,
        ] {
            table.iter_mut().for_each(|row| row.fill(INF));
        }
        self.solve();
    }

    /// Forward and backward passes and the optimum.
    fn solve(&mut self) {
        self.forward();
        self.backward();
        self.lower = (0..self.d)
            .map(|i| self.comb(self.hop_in[i], self.start[0][i]))
            .fold(INF, f64::min)
            - self.shift;
    }

    /// The hop `i -> j` at inner boundary `b` with the stage penalty (latency), infinite
    /// without a link or for `i == j`.
    pub(crate) fn hop_cost(&self, b: usize, i: usize, j: usize) -> f64 {
        self.hops[b][i * self.d + j]
    }

    /// The multiplier of device `i`.
    pub(crate) fn penalty(&self, i: usize) -> f64 {
        self.penalty[i]
    }

    /// Cheapest relaxed completion after a stage on `i` ends at boundary `b` (the token's way
    /// back included), with the multipliers of the stages still to come and without the
    /// `sum lambda` shift: a placement whose unused devices have multipliers summing to `free`
    /// finishes for at least `fin(b, i) - free`.
    pub(crate) fn fin(&self, b: usize, i: usize) -> f64 {
        self.fin[b][i]
    }

    /// Like [`Relaxation::fin`], from entering `j` at boundary `a` (its stage counted, with
    /// its multiplier).
    pub(crate) fn start(&self, a: usize, j: usize) -> f64 {
        self.start[a][j]
    }

    fn comb(&self, x: f64, y: f64) -> f64 {
        match self.obj {
            Objective::Latency => x + y,
            Objective::Throughput => x.max(y),
        }
    }

    /// Stage cost of `[a, b)` on `i` if it fits in memory (with a hair of slack so rounding
    /// never makes the relaxation stricter than the real rule).
    fn stage(&self, i: usize, a: usize, b: usize) -> Option<f64> {
        let mem = self.mem_prefix[b] - self.mem_prefix[a];
        (mem <= self.cap[i] * (1.0 + 1e-12))
            .then(|| self.prefix[i][b] - self.prefix[i][a] + self.overhead[i] + self.penalty[i])
    }

    fn forward(&mut self) {
        let (d, l) = (self.d, self.l);
        self.enter[0] = self.hop_in.clone();
        for a in 0..l {
            if a > 0 {
                for j in 0..d {
                    self.enter[a][j] = (0..d)
                        .map(|i| self.comb(self.done[a][i], self.hops[a][i * d + j]))
                        .fold(INF, f64::min);
                }
            }
            for i in 0..d {
                let e = self.enter[a][i];
                if e == INF {
                    continue;
                }
                for b in a + 1..=l {
                    let Some(c) = self.stage(i, a, b) else { break };
                    let v = self.comb(e, c);
                    if v < self.done[b][i] {
                        self.done[b][i] = v;
                    }
                }
            }
        }
    }

    fn backward(&mut self) {
        let (d, l) = (self.d, self.l);
        self.fin[l] = self.hop_back.clone();
        for b in (1..=l).rev() {
            if b < l {
                for i in 0..d {
                    self.fin[b][i] = (0..d)
                        .map(|j| self.comb(self.hops[b][i * d + j], self.start[b][j]))
                        .fold(INF, f64::min);
                }
            }
            for j in 0..d {
                let f = self.fin[b][j];
                if f == INF {
                    continue;
                }
                for a in (0..b).rev() {
                    let Some(c) = self.stage(j, a, b) else { break };
                    let v = self.comb(c, f);
                    if v < self.start[a][j] {
                        self.start[a][j] = v;
                    }
                }
            }
        }
    }

    /// Bound on placements that run `[a, b)` on `i`.
    pub(crate) fn segment(&self, i: usize, a: usize, b: usize) -> f64 {
        match self.stage(i, a, b) {
            Some(c) => self.comb(self.comb(self.enter[a][i], c), self.fin[b][i]) - self.shift,
            None => INF,
        }
    }

    /// Bound on placements that hop from `i` to `j` at inner boundary `b`.
    pub(crate) fn hop(&self, b: usize, i: usize, j: usize) -> f64 {
        let h = self.hops[b][i * self.d + j];
        self.comb(self.comb(self.done[b][i], h), self.start[b][j]) - self.shift
    }

    /// Bound on placements whose first stage is on `i`.
    pub(crate) fn first(&self, i: usize) -> f64 {
        self.comb(self.hop_in[i], self.start[0][i]) - self.shift
    }

    /// Bound on placements whose last stage is on `i`.
    pub(crate) fn last(&self, i: usize) -> f64 {
        self.comb(self.done[self.l][i], self.hop_back[i]) - self.shift
    }

    /// `bounds[k][i]`: bound on placements that run layer `k` on `i`.
    pub(crate) fn layer_bounds(&self) -> Vec<Vec<f64>> {
        let (d, l) = (self.d, self.l);
        let mut out = vec![vec![INF; d]; l];
        #[allow(clippy::needless_range_loop)] // i indexes the inner dimension of `out`
        for i in 0..d {
            for a in 0..l {
                if self.enter[a][i] == INF {
                    continue;
                }
                // Longest stage from a that fits; then sweep b downwards keeping the best bound
                // of any stage [a, b') with b' >= b, which covers layer b - 1.
                let top = (a + 1..=l)
                    .take_while(|&b| self.stage(i, a, b).is_some())
                    .last()
                    .unwrap_or(a);
                let mut best = INF;
                for b in (a + 1..=top).rev() {
                    best = best.min(self.segment(i, a, b));
                    let slot = &mut out[b - 1][i];
                    *slot = slot.min(best);
                }
            }
        }
        out
    }

    /// The relaxation's optimal placement, if it uses each device at most once.
    pub(crate) fn path(&self, inst: &Instance) -> Option<Vec<IdxStage>> {
        let out = self.raw_path()?;
        let mut seen = vec![false; self.d];
        let distinct = out
            .iter()
            .all(|&(i, _, _)| !std::mem::replace(&mut seen[i], true));
        (distinct && inst.score(&out, self.obj).is_ok()).then_some(out)
    }

    /// The relaxation's optimal stage sequence, devices possibly repeated (`None` when no
    /// relaxed placement exists or rounding hides the way back).
    pub(crate) fn raw_path(&self) -> Option<Vec<IdxStage>> {
        let (d, l) = (self.d, self.l);
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1e-12);
        let raw_last = |i: usize| self.comb(self.done[l][i], self.hop_back[i]);
        let mut i = (0..d)
            .filter(|&i| raw_last(i) < INF)
            .min_by(|&x, &y| raw_last(x).total_cmp(&raw_last(y)))?;
        let mut b = l;
        let mut out = Vec::new();
        loop {
            let a = (0..b).rev().find(|&a| {
                self.enter[a][i] < INF
                    && self
                        .stage(i, a, b)
                        .is_some_and(|c| close(self.comb(self.enter[a][i], c), self.done[b][i]))
            })?;
            out.push((i, a, b));
            if a == 0 {
                break;
            }
            i = (0..d).find(|&k| {
                self.done[a][k] < INF
                    && close(
                        self.comb(self.done[a][k], self.hops[a][k * d + i]),
                        self.enter[a][i],
                    )
            })?;
            b = a;
        }
        out.reverse();
        Some(out)
    }
}
