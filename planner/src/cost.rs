//! The normative cost model of DESIGN.md: roofline compute per layer, the hop formula
//! (effective payload, binomial loss mean and variance, one recovery round trip, jitter,
//! `risk_kappa` penalty), the memory rule and both objectives; with the scenario's
//! `speculation`, per accepted token of a pass that verifies several positions
//! ([`crate::scenario::Speculation`]).
//!
//! Data flow: a validated [`Scenario`] becomes an [`Instance`] (ids resolved to indices, compute
//! times, memory and hop costs precomputed). Every strategy scores its placement with
//! [`Instance::score`], so the MILP, the oracle and the baselines agree on what a placement costs.

use crate::error::PlanError;
use crate::plan::{Objective, Stage};
use crate::scenario::{Device, Fetch, Layer, Link, Net, Scenario, Speculation};

/// Seconds charged for fetching a layer to a device no link reaches (it then never wins
/// while anything else fits).
pub const UNREACHABLE_FETCH_S: f64 = 1e9;

/// Compute seconds of one layer on one device: `max(flops_l / flops_i, read_bytes_l / mem_bw_i)`.
pub fn layer_time(layer: &Layer, device: &Device) -> f64 {
    layer_time_at(layer, device, 1.0)
}

/// Compute seconds of one pass of `positions` positions through one layer: the flops scale
/// with the positions, the weights are read once: `max(positions * flops_l / flops_i,
/// read_bytes_l / mem_bw_i)`.
pub fn layer_time_at(layer: &Layer, device: &Device, positions: f64) -> f64 {
    let compute = positions * layer.flops / device.flops;
    let read = layer.read_bytes.unwrap_or(layer.param_bytes);
    match device.mem_bw {
        Some(bw) => compute.max(read / bw),
        None => compute,
    }
}

/// Bytes a layer occupies on a device: `param_bytes + kv_bytes_per_token * context_tokens`.
pub fn layer_memory(layer: &Layer, context_tokens: f64) -> f64 {
    layer.param_bytes + layer.kv_bytes_per_token * context_tokens
}

/// Seconds to fetch `bytes` over `link` using `share` of its bandwidth:
/// `rtt_s + 8 * bytes / (share * bandwidth_bps * (1 - loss))` (one request round trip; lost
/// packets are sent again, so loss takes its share of the rate).
pub fn fetch_time(link: &Link, bytes: f64, share: f64) -> f64 {
    link.rtt_s + 8.0 * bytes / (share * link.bandwidth_bps * (1.0 - link.loss))
}

/// `fetch[i][l]`: one-time seconds for device `i` to fetch layer `l`: 0 when it holds the
/// layer, else the fastest [`fetch_time`] over a link into `i` from a device holding it
/// (from any device when no holder has a link: the bytes are relayed), else
/// [`UNREACHABLE_FETCH_S`].
pub(crate) fn fetch_matrix(s: &Scenario, f: &Fetch) -> Vec<Vec<f64>> {
    let layers = &s.model.layers;
    let bytes = |l: usize| {
        f.layer_bytes
            .as_ref()
            .map_or(layers[l].param_bytes, |b| b[l])
    };
    // (sender, link) of every link into `to`, either listed that way or symmetric.
    let into = |to: &str| -> Vec<(&str, &Link)> {
        s.links
            .iter()
            .filter_map(|k| {
                if k.to == to {
                    Some((k.from.as_str(), k))
                } else if k.symmetric && k.from == to {
                    Some((k.to.as_str(), k))
                } else {
                    None
                }
            })
            .collect()
    };
    s.devices
        .iter()
        .map(|dev| {
            (0..layers.len())
                .map(|l| {
                    if f.holds(&dev.id, l) {
                        return 0.0;
                    }
                    let best = |holder_only: bool| {
                        into(&dev.id)
                            .into_iter()
                            .filter(|(from, _)| !holder_only || f.holds(from, l))
                            .map(|(_, k)| fetch_time(k, bytes(l), f.rate_share))
                            .fold(f64::INFINITY, f64::min)
                    };
                    let t = best(true);
                    let t = if t.is_finite() { t } else { best(false) };
                    if t.is_finite() {
                        t
                    } else {
                        UNREACHABLE_FETCH_S
                    }
                })
                .collect()
        })
        .collect()
}

/// The terms of one hop's cost (DESIGN.md "hop(i, j, B)").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HopCost {
    /// Packets `n = max(1, ceil(B / payload_bytes))`.
    pub packets: f64,
    /// Bytes on the wire, `B + n * header_bytes`.
    pub wire_bytes: f64,
    /// Expected seconds: half the RTT, serialisation, resent packets, one recovery round trip.
    pub mean_s: f64,
    /// Standard deviation in seconds (jitter, binomial loss, recovery).
    pub sd_s: f64,
    /// The link-quality penalty `risk_kappa * sd`.
    pub penalty_s: f64,
    /// `mean + penalty`: what the objectives use.
    pub total_s: f64,
}

/// Cost of sending `bytes` over `link` with the packetisation of `net`.
pub fn hop_cost(link: &Link, bytes: f64, net: &Net) -> HopCost {
    let n = (bytes / net.payload_bytes).ceil().max(1.0);
    let wire = bytes + n * net.header_bytes;
    let t_ser = 8.0 * wire / link.bandwidth_bps;
    let t_pkt = t_ser / n;
    let p = link.loss;
    let ek = n * p;
    let vk = n * p * (1.0 - p);
    let q = 1.0 - (1.0 - p).powf(n);
    let mean = link.rtt_s / 2.0 + t_ser + ek * t_pkt + q * link.rtt_s;
    let var = link.jitter_s.powi(2) + vk * t_pkt.powi(2) + q * (1.0 - q) * link.rtt_s.powi(2);
    let sd = var.max(0.0).sqrt();
    let penalty = net.risk_kappa * sd;
    HopCost {
        packets: n,
        wire_bytes: wire,
        mean_s: mean,
        sd_s: sd,
        penalty_s: penalty,
        total_s: mean + penalty,
    }
}

/// A stage by indices: device index and half-open layer range `[start, end)`.
pub(crate) type IdxStage = (usize, usize, usize);

/// A scenario resolved to indices with every cost the strategies need precomputed.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    /// Device ids in scenario order.
    pub(crate) ids: Vec<String>,
    /// Index of the origin device.
    pub(crate) origin: usize,
    /// `compute[i][l]`: seconds of layer `l` on device `i` (times `1 + energy[i]` on battery),
    /// plus its fetch time spread over the horizon when `i` must fetch it.
    pub(crate) compute: Vec<Vec<f64>>,
    /// `fetch[i][l]`: one-time seconds for `i` to fetch layer `l` (all 0 without `fetch`).
    fetch: Vec<Vec<f64>>,
    /// Tokens a fetch is spread over (1 without `fetch`).
    horizon: f64,
    /// Per device: watts drawn from its battery while computing (0 on mains).
    watts: Vec<f64>,
    /// Per device: the energy price factor (`Energy::factor`; 0 on mains): `compute` carries
    /// each layer's time times `1 + factor`.
    energy: Vec<f64>,
    /// Devices on battery below the scenario's `min_level`.
    pub(crate) below_floor: Vec<bool>,
    /// Per-device stage overhead in seconds.
    pub(crate) overhead: Vec<f64>,
    /// Bytes each layer occupies.
    pub(crate) mem: Vec<f64>,
    /// Usable bytes per device (`memory_fraction * mem_bytes`).
    pub(crate) cap: Vec<f64>,
    /// `links[i * d + j]`: the link i -> j, if any.
    links: Vec<Option<Link>>,
    /// Bytes each layer sends to the next stage.
    pub(crate) out_bytes: Vec<f64>,
    token_bytes: f64,
    net: Net,
    /// Seconds per stage boundary (latency only).
    pub(crate) stage_penalty: f64,
    /// `1 / tokens_per_pass`: every cost above is per pass, times this per token.
    per_token: f64,
}

/// A placement's cost split into its parts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Breakdown {
    /// The objective of `cost_s`.
    pub objective: Objective,
    /// The objective value in seconds.
    pub cost_s: f64,
    /// Per stage, in pipeline order.
    pub stages: Vec<StageCost>,
    /// Per hop: origin -> first stage, between stages, last stage -> origin.
    pub hops: Vec<HopDetail>,
    /// `stage_penalty_s * (stages - 1)` (counted in latency only).
    pub stage_penalty_s: f64,
}

/// One stage's compute and memory.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StageCost {
    /// The device id.
    pub device: String,
    /// Half-open layer range.
    pub layers: [usize; 2],
    /// Sum of the layers' roofline times.
    pub compute_s: f64,
    /// One-time seconds to fetch the layers the device does not hold (scenario `fetch`); the
    /// objective charges it spread over the horizon.
    pub fetch_s: f64,
    /// Joules per token the stage draws from the device's battery (scenario `energy`; 0 on
    /// mains).
    pub energy_j: f64,
    /// What those joules cost in the objective, seconds (counted in the objective's compute).
    pub energy_s: f64,
    /// The device's per-stage overhead.
    pub overhead_s: f64,
    /// Bytes held (weights plus KV cache).
    pub memory_bytes: f64,
    /// Bytes the device may fill (`memory_fraction * mem_bytes`).
    pub memory_limit_bytes: f64,
}

/// One hop's cost; a hop from a device to itself has every figure 0.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HopDetail {
    /// Sending device id.
    pub from: String,
    /// Receiving device id.
    pub to: String,
    /// Payload bytes.
    pub bytes: f64,
    /// Expected seconds.
    pub mean_s: f64,
    /// `risk_kappa * sd` seconds.
    pub penalty_s: f64,
}

/// `[0, x0, x0 + x1, ...]`: the sum of any run `a..b` of `xs` is `p[b] - p[a]`.
pub(crate) fn prefix_sums(xs: &[f64]) -> Vec<f64> {
    std::iter::once(0.0)
        .chain(xs.iter().scan(0.0, |acc, x| {
            *acc += x;
            Some(*acc)
        }))
        .collect()
}

impl Instance {
    /// Resolves a validated scenario with the battery floor in force: a device on battery
    /// below `energy.min_level` may hold nothing.
    pub(crate) fn new(s: &Scenario) -> Result<Self, PlanError> {
        Self::with_floor(s, true)
    }

    /// Resolves a validated scenario; `floor: false` lets devices below the battery floor
    /// hold layers (costs are the same either way).
    pub(crate) fn with_floor(s: &Scenario, floor: bool) -> Result<Self, PlanError> {
        s.validate()?;
        let d = s.devices.len();
        let index = |id: &str| s.devices.iter().position(|x| x.id == id);
        let mut links = vec![None; d * d];
        for l in &s.links {
            if let (Some(a), Some(b)) = (index(&l.from), index(&l.to)) {
                links[a * d + b] = Some(l.clone());
                if l.symmetric {
                    links[b * d + a] = Some(l.clone());
                }
            }
        }
        let origin = index(&s.origin).ok_or_else(|| PlanError::Placement {
            reason: format!("origin {:?} is not a device", s.origin),
        })?;
        let layers = &s.model.layers;
        // Speculation: a pass runs `positions` positions and yields `tokens_per_pass` tokens;
        // every cost is per token (without speculation both are 1 and nothing changes).
        let spec = s.speculation.clone().unwrap_or(Speculation::NONE);
        let per_token = 1.0 / spec.tokens_per_pass;
        let positions = spec.positions;
        let (fetch, horizon) = match &s.fetch {
            Some(f) => (fetch_matrix(s, f), f.horizon_tokens),
            None => (vec![vec![0.0; layers.len()]; d], 1.0),
        };
        let on_battery = |id: &str| s.energy.as_ref().and_then(|e| e.batteries.get(id));
        let watts: Vec<f64> = s
            .devices
            .iter()
            .map(|x| on_battery(&x.id).map_or(0.0, |b| b.watts))
            .collect();
        let energy: Vec<f64> = s
            .devices
            .iter()
            .map(|x| s.energy.as_ref().map_or(0.0, |e| e.factor(&x.id)))
            .collect();
        let below_floor: Vec<bool> = s
            .devices
            .iter()
            .map(|x| s.energy.as_ref().is_some_and(|e| e.below_floor(&x.id)))
            .collect();
        Ok(Self {
            ids: s.devices.iter().map(|x| x.id.clone()).collect(),
            origin,
            compute: s
                .devices
                .iter()
                .zip(&fetch)
                .zip(&energy)
                .map(|((dev, fetch), e)| {
                    layers
                        .iter()
                        .zip(fetch)
                        .map(|(l, f)| {
                            layer_time_at(l, dev, spec.positions) * per_token * (1.0 + e)
                                + f / horizon
                        })
                        .collect()
                })
                .collect(),
            fetch,
            horizon,
            watts,
            energy,
            overhead: s.devices.iter().map(|x| x.overhead_s * per_token).collect(),
            mem: layers
                .iter()
                .map(|l| layer_memory(l, s.model.context_tokens))
                .collect(),
            cap: s
                .devices
                .iter()
                .zip(&below_floor)
                .map(|(x, &low)| {
                    if floor && low {
                        0.0
                    } else {
                        s.memory_fraction * x.mem_bytes
                    }
                })
                .collect(),
            below_floor,
            links,
            out_bytes: layers.iter().map(|l| l.out_bytes * positions).collect(),
            token_bytes: s.model.token_bytes * positions,
            net: s.net.clone(),
            stage_penalty: s.stage_penalty_s * per_token,
            per_token,
        })
    }

    /// Number of devices.
    pub(crate) fn devices(&self) -> usize {
        self.ids.len()
    }

    /// Number of layers.
    pub(crate) fn layers(&self) -> usize {
        self.mem.len()
    }

    /// Whether `i` may send to `j` (a device may always "send" to itself).
    pub(crate) fn linked(&self, i: usize, j: usize) -> bool {
        i == j || self.links[i * self.devices() + j].is_some()
    }

    /// Hop details for `bytes` from `i` to `j`; zero for `i == j`, `None` without a link.
    pub(crate) fn hop_detail(&self, i: usize, j: usize, bytes: f64) -> Option<HopCost> {
        if i == j {
            return Some(HopCost {
                packets: 0.0,
                wire_bytes: 0.0,
                mean_s: 0.0,
                sd_s: 0.0,
                penalty_s: 0.0,
                total_s: 0.0,
            });
        }
        let link = self.links[i * self.devices() + j].as_ref()?;
        let h = hop_cost(link, bytes, &self.net);
        if self.per_token == 1.0 {
            return Some(h);
        }
        let k = self.per_token;
        Some(HopCost {
            mean_s: h.mean_s * k,
            sd_s: h.sd_s * k,
            penalty_s: h.penalty_s * k,
            total_s: h.total_s * k,
            ..h
        })
    }

    /// `hop(i, j, bytes)` in seconds, `None` when there is no link.
    pub(crate) fn hop(&self, i: usize, j: usize, bytes: f64) -> Option<f64> {
        self.hop_detail(i, j, bytes).map(|h| h.total_s)
    }

    /// Origin -> device `i` with the token; `None` without a link.
    pub(crate) fn hop_in(&self, i: usize) -> Option<f64> {
        self.hop(self.origin, i, self.token_bytes)
    }

    /// Device `i` -> origin with the token; `None` without a link.
    pub(crate) fn hop_back(&self, i: usize) -> Option<f64> {
        self.hop(i, self.origin, self.token_bytes)
    }

    /// Hop after layer `l` from `i` to `j` (ships `out_bytes[l]`).
    pub(crate) fn hop_after(&self, l: usize, i: usize, j: usize) -> Option<f64> {
        self.hop(i, j, self.out_bytes[l])
    }

    /// `class[j]`: the smallest index of a device interchangeable with `j` (same compute
    /// times, overhead and memory, same links to and from every other device, the link between
    /// them the same both ways, neither the origin). Swapping two such devices in any
    /// placement leaves its cost unchanged, so searches need try only one of them.
    pub(crate) fn classes(&self) -> Vec<usize> {
        let d = self.devices();
        let figures = |l: &Option<Link>| {
            l.as_ref()
                .map(|l| (l.rtt_s, l.jitter_s, l.bandwidth_bps, l.loss))
        };
        let link = |i: usize, j: usize| figures(&self.links[i * d + j]);
        let same = |i: usize, j: usize| {
            i != self.origin
                && j != self.origin
                && self.compute[i] == self.compute[j]
                && self.overhead[i] == self.overhead[j]
                && self.cap[i] == self.cap[j]
                && link(i, j) == link(j, i)
                && (0..d)
                    .filter(|&k| k != i && k != j)
                    .all(|k| link(i, k) == link(j, k) && link(k, i) == link(k, j))
        };
        let mut class: Vec<usize> = (0..d).collect();
        for j in 0..d {
            if let Some(i) = (0..j).find(|&i| class[i] == i && same(i, j)) {
                class[j] = i;
            }
        }
        class
    }

    /// The fetch seconds of layers `[a, b)` on `i` as `compute` carries them (over the horizon).
    fn fetch_spread(&self, i: usize, a: usize, b: usize) -> f64 {
        self.fetch[i][a..b].iter().sum::<f64>() / self.horizon
    }

    /// Bytes held by a run of layers.
    pub(crate) fn seg_mem(&self, a: usize, b: usize) -> f64 {
        self.mem[a..b].iter().sum()
    }

    /// Whether device `i` can hold layers `[a, b)`.
    pub(crate) fn fits(&self, i: usize, a: usize, b: usize) -> bool {
        self.seg_mem(a, b) <= self.cap[i]
    }

    /// Stage cost of layers `[a, b)` on device `i` (compute plus overhead).
    pub(crate) fn stage_cost(&self, i: usize, a: usize, b: usize) -> f64 {
        self.compute[i][a..b].iter().sum::<f64>() + self.overhead[i]
    }

    /// The objective value of a placement, or the rule it breaks.
    pub(crate) fn score(&self, stages: &[IdxStage], obj: Objective) -> Result<f64, String> {
        self.check(stages)?;
        let hops = self.hop_costs(stages)?;
        let stage_costs = stages.iter().map(|&(i, a, b)| self.stage_cost(i, a, b));
        Ok(match obj {
            Objective::Latency => {
                stage_costs.sum::<f64>()
                    + hops.iter().sum::<f64>()
                    + self.stage_penalty * (stages.len() - 1) as f64
            }
            Objective::Throughput => stage_costs.chain(hops).fold(0.0, f64::max),
        })
    }

    /// Costs of every hop: origin in, between stages, back to the origin.
    fn hop_costs(&self, stages: &[IdxStage]) -> Result<Vec<f64>, String> {
        let mut out = Vec::with_capacity(stages.len() + 1);
        let (first, last) = (stages[0].0, stages[stages.len() - 1].0);
        out.push(
            self.hop_in(first)
                .ok_or_else(|| self.no_link(self.origin, first))?,
        );
        for w in stages.windows(2) {
            let (i, _, b) = w[0];
            let j = w[1].0;
            out.push(
                self.hop_after(b - 1, i, j)
                    .ok_or_else(|| self.no_link(i, j))?,
            );
        }
        out.push(
            self.hop_back(last)
                .ok_or_else(|| self.no_link(last, self.origin))?,
        );
        Ok(out)
    }

    fn no_link(&self, i: usize, j: usize) -> String {
        format!("no link {} -> {}", self.ids[i], self.ids[j])
    }

    /// Coverage, distinct devices and memory.
    fn check(&self, stages: &[IdxStage]) -> Result<(), String> {
        if stages.is_empty() {
            return Err("no stages".into());
        }
        let mut next = 0;
        let mut used = vec![false; self.devices()];
        for &(i, a, b) in stages {
            if a != next || b <= a || b > self.layers() {
                return Err(format!(
                    "stage on {} has layers [{a}, {b}) but must start at layer {next}, be \
                     non-empty and end by layer {}",
                    self.ids[i],
                    self.layers()
                ));
            }
            if std::mem::replace(&mut used[i], true) {
                return Err(format!("device {} holds more than one stage", self.ids[i]));
            }
            if !self.fits(i, a, b) {
                return Err(format!(
                    "device {} needs {:.0} bytes for layers [{a}, {b}) but may use {:.0}",
                    self.ids[i],
                    self.seg_mem(a, b),
                    self.cap[i]
                ));
            }
            next = b;
        }
        if next != self.layers() {
            return Err(format!("layers [{next}, {}) are not placed", self.layers()));
        }
        Ok(())
    }

    /// Converts public stages to indices.
    pub(crate) fn resolve(&self, stages: &[Stage]) -> Result<Vec<IdxStage>, PlanError> {
        stages
            .iter()
            .map(|s| {
                let i = self
                    .ids
                    .iter()
                    .position(|x| *x == s.device)
                    .ok_or_else(|| PlanError::Placement {
                        reason: format!("unknown device {:?}", s.device),
                    })?;
                Ok((i, s.layers[0], s.layers[1]))
            })
            .collect()
    }

    /// Converts index stages to public ones.
    pub(crate) fn publish(&self, stages: &[IdxStage]) -> Vec<Stage> {
        stages
            .iter()
            .map(|&(i, a, b)| Stage {
                device: self.ids[i].clone(),
                layers: [a, b],
            })
            .collect()
    }

    /// The full breakdown of a valid placement.
    pub(crate) fn breakdown(
        &self,
        stages: &[IdxStage],
        obj: Objective,
    ) -> Result<Breakdown, PlanError> {
        let cost_s = self
            .score(stages, obj)
            .map_err(|reason| PlanError::Placement { reason })?;
        let per_stage = stages
            .iter()
            .map(|&(i, a, b)| {
                let spent = self.compute[i][a..b].iter().sum::<f64>() - self.fetch_spread(i, a, b);
                // `spent` is the compute time times `1 + energy[i]`.
                let compute_s = spent / (1.0 + self.energy[i]);
                StageCost {
                    device: self.ids[i].clone(),
                    layers: [a, b],
                    compute_s,
                    fetch_s: self.fetch[i][a..b].iter().sum(),
                    energy_j: self.watts[i] * compute_s,
                    energy_s: spent - compute_s,
                    overhead_s: self.overhead[i],
                    memory_bytes: self.seg_mem(a, b),
                    memory_limit_bytes: self.cap[i],
                }
            })
            .collect();
        let mut route = vec![(self.origin, stages[0].0, self.token_bytes)];
        for w in stages.windows(2) {
            route.push((w[0].0, w[1].0, self.out_bytes[w[0].2 - 1]));
        }
        route.push((stages[stages.len() - 1].0, self.origin, self.token_bytes));
        let mut hops = Vec::with_capacity(route.len());
        for (i, j, bytes) in route {
            let h = self
                .hop_detail(i, j, bytes)
                .ok_or_else(|| PlanError::Placement {
                    reason: self.no_link(i, j),
                })?;
            hops.push(HopDetail {
                from: self.ids[i].clone(),
                to: self.ids[j].clone(),
                bytes: if i == j { 0.0 } else { bytes },
                mean_s: h.mean_s,
                penalty_s: h.penalty_s,
            });
        }
        Ok(Breakdown {
            objective: obj,
            cost_s,
            stages: per_stage,
            hops,
            stage_penalty_s: self.stage_penalty * (stages.len() - 1) as f64,
        })
    }
}

/// The objective value of a placement under the cost model.
/// The battery floor is a placement rule of the planner, not a cost: a placement that puts
/// layers on a device below it is scored like any other.
pub fn evaluate(s: &Scenario, stages: &[Stage], obj: Objective) -> Result<f64, PlanError> {
    let inst = Instance::with_floor(s, false)?;
    let idx = inst.resolve(stages)?;
    inst.score(&idx, obj)
        .map_err(|reason| PlanError::Placement { reason })
}

/// Per-stage compute and memory and per-hop mean and penalty of a placement.
pub fn explain(s: &Scenario, stages: &[Stage], obj: Objective) -> Result<Breakdown, PlanError> {
    let inst = Instance::with_floor(s, false)?;
    let idx = inst.resolve(stages)?;
    inst.breakdown(&idx, obj)
}
