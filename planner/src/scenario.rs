//! The scenario file of DESIGN.md ("Scenario file"): the model's layers, the devices, the
//! directed links between them, the origin and the network constants. Parsing rejects unknown
//! keys; [`Scenario::validate`] rejects bad values with one message that names the field
//! (for example `links[2].loss: must be in [0, 1), got 1`).
//!
//! Data flow: JSON text -> [`Scenario::from_json`] (serde + validation) -> the cost model
//! (`cost.rs`) resolves ids to indices and precomputes per-layer and per-hop costs.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ScenarioError;

/// One planning problem: what to place, where, and over which links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The model to place.
    pub model: Model,
    /// The devices that may hold layers.
    pub devices: Vec<Device>,
    /// Directed links; a device pair without a link cannot be consecutive. Default: none.
    #[serde(default)]
    pub links: Vec<Link>,
    /// The device that sends the token in and receives the next token back.
    pub origin: String,
    /// Packetisation and risk constants.
    #[serde(default)]
    pub net: Net,
    /// Share of each device's memory the planner may fill, in (0, 1]. Default 0.8.
    #[serde(default = "default_memory_fraction")]
    pub memory_fraction: f64,
    /// Extra seconds per stage boundary in the latency objective (>= 0). Default 0.
    #[serde(default)]
    pub stage_penalty_s: f64,
    /// Speculative decoding: what one pass through the pipeline verifies and yields. Absent:
    /// one position and one token per pass, DESIGN.md's model as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation: Option<Speculation>,
    /// Which layers each device holds on disk and what fetching the others costs. Absent:
    /// every device holds every layer, DESIGN.md's model as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch: Option<Fetch>,
    /// Which devices run on battery and what their energy costs. Absent: every device is on
    /// mains, DESIGN.md's model as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<Energy>,
}

/// The energy term (planner/README.md, "Energy"): a device on battery pays for the joules its
/// layers draw, `watts * t(l, i)` per layer, at a price in seconds per joule that rises as its
/// charge falls, `price_s_per_j / max(level, MIN_PRICED_LEVEL)`; a device below `min_level`
/// holds no layers unless the model cannot be placed without it. Devices not listed in
/// `batteries` are on mains and pay nothing extra.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Energy {
    /// Seconds of objective one joule drawn from a full battery costs (>= 0). Default 0.02.
    #[serde(default = "default_price_s_per_j")]
    pub price_s_per_j: f64,
    /// Charge in [0, 1] below which a device on battery holds no layers if the model fits
    /// without it. Default 0.2.
    #[serde(default = "default_min_level")]
    pub min_level: f64,
    /// Per device id on battery: its charge and the power it draws while computing.
    #[serde(default)]
    pub batteries: std::collections::BTreeMap<String, OnBattery>,
}

/// A device running on its battery.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnBattery {
    /// Charge in [0, 1].
    pub level: f64,
    /// Watts the device draws while it computes (> 0).
    pub watts: f64,
}

/// The charge below which the price stops rising: an empty battery costs as much as one at 5%.
pub const MIN_PRICED_LEVEL: f64 = 0.05;

fn default_price_s_per_j() -> f64 {
    0.02
}

fn default_min_level() -> f64 {
    0.2
}

impl Energy {
    /// The price factor of device `id`: seconds of objective per second of its compute
    /// (`watts * price_s_per_j / max(level, MIN_PRICED_LEVEL)`; 0 on mains).
    pub fn factor(&self, id: &str) -> f64 {
        self.batteries.get(id).map_or(0.0, |b| {
            b.watts * self.price_s_per_j / b.level.max(MIN_PRICED_LEVEL)
        })
    }

    /// Whether device `id` is on battery below `min_level`.
    pub fn below_floor(&self, id: &str) -> bool {
        self.batteries
            .get(id)
            .is_some_and(|b| b.level < self.min_level)
    }
}

/// The fetch term (planner/README.md, "Layers on disk"): a device given a layer it does not
/// hold must first fetch the layer's files from a device that does. The transfer's seconds are
/// charged once, spread over the `horizon_tokens` the plan is expected to serve, so a short
/// horizon keeps layers where they are and a long one moves them to faster devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fetch {
    /// Tokens the plan is expected to serve (> 0).
    pub horizon_tokens: f64,
    /// Per device id, the half-open layer ranges its disk holds; a device not listed holds
    /// every layer.
    #[serde(default)]
    pub holds: std::collections::BTreeMap<String, Vec<[usize; 2]>>,
    /// Bytes to transfer per layer (its files); absent: each layer's `param_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_bytes: Option<Vec<f64>>,
    /// Share of a link's bandwidth a fetch uses, in (0, 1] (the node paces fetches so that
    /// activations keep room). Default 1.
    #[serde(default = "default_rate_share")]
    pub rate_share: f64,
}

fn default_rate_share() -> f64 {
    1.0
}

impl Fetch {
    /// Whether device `id` holds layer `l` on disk.
    pub fn holds(&self, id: &str, l: usize) -> bool {
        self.holds
            .get(id)
            .is_none_or(|r| r.iter().any(|&[a, b]| (a..b).contains(&l)))
    }
}

/// What one pass of speculative decoding costs and yields (docs/pipeline.md, "Speculative
/// decoding"). A pass runs `positions` positions through every stage (the last token and the
/// drafts), so each layer's compute is `max(positions * flops_l / flops_i, read_bytes_l /
/// mem_bw_i)` (the weights are read once per pass), the hops carry `positions` times their
/// bytes, and every cost is divided by `tokens_per_pass`: the objectives are per accepted
/// token. `positions = 1, tokens_per_pass = 1` is the model without speculation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Speculation {
    /// Positions verified per pass: the drafts plus one, `>= 1` (a mean over passes when the
    /// number of drafts adapts).
    pub positions: f64,
    /// Expected tokens per pass, in `[1, positions]` (from the measured acceptance rate
    /// `alpha` with `k` drafts: `(1 - alpha^(k+1)) / (1 - alpha)`).
    pub tokens_per_pass: f64,
}

impl Speculation {
    /// No speculation: one position, one token.
    pub const NONE: Speculation = Speculation {
        positions: 1.0,
        tokens_per_pass: 1.0,
    };
}

/// The model: an ordered list of layers (embedding, decoder layers, head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// A label for tables and logs.
    pub name: String,
    /// Tokens of context whose KV cache each device must hold. Default 512.
    #[serde(default = "default_context_tokens")]
    pub context_tokens: f64,
    /// Bytes of one token id sent from and back to the origin. Default 4.
    #[serde(default = "default_token_bytes")]
    pub token_bytes: f64,
    /// The layers in execution order; at least one.
    pub layers: Vec<Layer>,
}

/// One layer's cost figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// Floating-point operations per decoded token.
    pub flops: f64,
    /// Bytes of weights the device must hold.
    pub param_bytes: f64,
    /// Bytes of weights a decode step reads; absent means `param_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_bytes: Option<f64>,
    /// KV-cache bytes per token of context. Default 0.
    #[serde(default)]
    pub kv_bytes_per_token: f64,
    /// Bytes this layer's output sends to the next stage.
    pub out_bytes: f64,
}

/// One device's capability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Unique id (the node id in a live swarm).
    pub id: String,
    /// Sustained floating-point operations per second.
    pub flops: f64,
    /// Memory bandwidth in bytes per second; absent means no bandwidth term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_bw: Option<f64>,
    /// Memory in bytes.
    pub mem_bytes: f64,
    /// Fixed seconds per stage on this device (dispatch, copies). Default 0.
    #[serde(default)]
    pub overhead_s: f64,
}

/// One directed link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Sending device id.
    pub from: String,
    /// Receiving device id.
    pub to: String,
    /// Round-trip time in seconds.
    pub rtt_s: f64,
    /// Standard deviation of the one-way delay in seconds. Default 0.
    #[serde(default)]
    pub jitter_s: f64,
    /// Bandwidth in bits per second (> 0).
    pub bandwidth_bps: f64,
    /// Per-packet loss probability in [0, 1). Default 0.
    #[serde(default)]
    pub loss: f64,
    /// Also add the reverse direction with the same figures. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub symmetric: bool,
}

/// Packetisation and risk constants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Net {
    /// Payload bytes per packet (> 0). Default 1200.
    #[serde(default = "default_payload_bytes")]
    pub payload_bytes: f64,
    /// Header bytes added to every packet (>= 0). Default 48.
    #[serde(default = "default_header_bytes")]
    pub header_bytes: f64,
    /// Standard deviations of hop time added as the link-quality penalty (>= 0). Default 1.
    #[serde(default = "default_risk_kappa")]
    pub risk_kappa: f64,
}

impl Default for Net {
    fn default() -> Self {
        Self {
            payload_bytes: default_payload_bytes(),
            header_bytes: default_header_bytes(),
            risk_kappa: default_risk_kappa(),
        }
    }
}

fn default_memory_fraction() -> f64 {
    0.8
}
fn default_context_tokens() -> f64 {
    512.0
}
fn default_token_bytes() -> f64 {
    4.0
}
fn default_payload_bytes() -> f64 {
    1200.0
}
fn default_header_bytes() -> f64 {
    48.0
}
fn default_risk_kappa() -> f64 {
    1.0
}

impl Scenario {
    /// Parses and validates a scenario from JSON text.
    pub fn from_json(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = serde_json::from_str(text).map_err(|e| ScenarioError::Parse {
            reason: e.to_string(),
        })?;
        s.validate()?;
        Ok(s)
    }

    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text)
    }

    /// Checks every value; the error names the first offending field.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        self.validate_model()?;
        if self.devices.is_empty() {
            return Err(bad("devices", "at least one device is required"));
        }
        let mut ids = HashSet::new();
        for (k, d) in self.devices.iter().enumerate() {
            let f = |name: &str| format!("devices[{k}].{name}");
            if d.id.is_empty() {
                return Err(bad(&f("id"), "must not be empty"));
            }
            if !ids.insert(d.id.as_str()) {
                return Err(bad(&f("id"), &format!("duplicate device id {:?}", d.id)));
            }
            positive(&f("flops"), d.flops)?;
            positive(&f("mem_bytes"), d.mem_bytes)?;
            if let Some(bw) = d.mem_bw {
                positive(&f("mem_bw"), bw)?;
            }
            non_negative(&f("overhead_s"), d.overhead_s)?;
        }
        self.validate_links(&ids)?;
        if !ids.contains(self.origin.as_str()) {
            return Err(bad(
                "origin",
                &format!("{:?} is not the id of any device", self.origin),
            ));
        }
        positive("net.payload_bytes", self.net.payload_bytes)?;
        non_negative("net.header_bytes", self.net.header_bytes)?;
        non_negative("net.risk_kappa", self.net.risk_kappa)?;
        let mf = self.memory_fraction;
        if !(mf.is_finite() && mf > 0.0 && mf <= 1.0) {
            return Err(bad(
                "memory_fraction",
                &format!("must be in (0, 1], got {mf}"),
            ));
        }
        non_negative("stage_penalty_s", self.stage_penalty_s)?;
        if let Some(f) = &self.fetch {
            self.validate_fetch(f, &ids)?;
        }
        if let Some(e) = &self.energy {
            validate_energy(e, &ids)?;
        }
        if let Some(sp) = &self.speculation {
            let p = sp.positions;
            if !(p.is_finite() && p >= 1.0) {
                return Err(bad(
                    "speculation.positions",
                    &format!("must be at least 1, got {p}"),
                ));
            }
            let t = sp.tokens_per_pass;
            if !(t.is_finite() && t >= 1.0 && t <= p) {
                return Err(bad(
                    "speculation.tokens_per_pass",
                    &format!("must be in [1, positions = {}], got {t}", sp.positions),
                ));
            }
        }
        Ok(())
    }

    fn validate_model(&self) -> Result<(), ScenarioError> {
        let m = &self.model;
        non_negative("model.context_tokens", m.context_tokens)?;
        non_negative("model.token_bytes", m.token_bytes)?;
        if m.layers.is_empty() {
            return Err(bad("model.layers", "at least one layer is required"));
        }
        for (k, l) in m.layers.iter().enumerate() {
            let f = |name: &str| format!("model.layers[{k}].{name}");
            non_negative(&f("flops"), l.flops)?;
            non_negative(&f("param_bytes"), l.param_bytes)?;
            if let Some(r) = l.read_bytes {
                non_negative(&f("read_bytes"), r)?;
            }
            non_negative(&f("kv_bytes_per_token"), l.kv_bytes_per_token)?;
            non_negative(&f("out_bytes"), l.out_bytes)?;
        }
        Ok(())
    }

    fn validate_fetch(&self, f: &Fetch, ids: &HashSet<&str>) -> Result<(), ScenarioError> {
        positive("fetch.horizon_tokens", f.horizon_tokens)?;
        if !(f.rate_share.is_finite() && f.rate_share > 0.0 && f.rate_share <= 1.0) {
            return Err(bad(
                "fetch.rate_share",
                &format!("must be in (0, 1], got {}", f.rate_share),
            ));
        }
        let n = self.model.layers.len();
        for (id, ranges) in &f.holds {
            let field = format!("fetch.holds.{id}");
            if !ids.contains(id.as_str()) {
                return Err(bad(&field, &format!("unknown device {id:?}")));
            }
            if ranges.iter().any(|&[a, b]| b <= a || b > n) {
                return Err(bad(
                    &field,
                    &format!("every range [a, b) must have a < b <= {n} layers"),
                ));
            }
        }
        if let Some(k) = (0..n).find(|&k| self.devices.iter().all(|d| !f.holds(&d.id, k))) {
            return Err(bad(
                "fetch.holds",
                &format!("layer {k} is held by no device, so none can fetch it"),
            ));
        }
        if let Some(bytes) = &f.layer_bytes {
            if bytes.len() != n {
                return Err(bad(
                    "fetch.layer_bytes",
                    &format!("{} entries for {n} layers", bytes.len()),
                ));
            }
            for (k, &b) in bytes.iter().enumerate() {
                non_negative(&format!("fetch.layer_bytes[{k}]"), b)?;
            }
        }
        Ok(())
    }

    fn validate_links(&self, ids: &HashSet<&str>) -> Result<(), ScenarioError> {
        let mut seen = HashSet::new();
        for (k, l) in self.links.iter().enumerate() {
            let f = |name: &str| format!("links[{k}].{name}");
            for (name, end) in [("from", &l.from), ("to", &l.to)] {
                if !ids.contains(end.as_str()) {
                    return Err(bad(&f(name), &format!("unknown device {end:?}")));
                }
            }
            if l.from == l.to {
                return Err(bad(&f("to"), "a link must join two different devices"));
            }
            non_negative(&f("rtt_s"), l.rtt_s)?;
            non_negative(&f("jitter_s"), l.jitter_s)?;
            positive(&f("bandwidth_bps"), l.bandwidth_bps)?;
            if !(l.loss.is_finite() && (0.0..1.0).contains(&l.loss)) {
                return Err(bad(
                    &f("loss"),
                    &format!("must be in [0, 1), got {}", l.loss),
                ));
            }
            let mut dirs = vec![(l.from.as_str(), l.to.as_str())];
            if l.symmetric {
                dirs.push((l.to.as_str(), l.from.as_str()));
            }
            for (a, b) in dirs {
                if !seen.insert((a, b)) {
                    return Err(bad(&f("from"), &format!("duplicate link {a} -> {b}")));
                }
            }
        }
        Ok(())
    }
}

fn validate_energy(e: &Energy, ids: &HashSet<&str>) -> Result<(), ScenarioError> {
    non_negative("energy.price_s_per_j", e.price_s_per_j)?;
    unit("energy.min_level", e.min_level)?;
    for (id, b) in &e.batteries {
        let f = |name: &str| format!("energy.batteries.{id}.{name}");
        if !ids.contains(id.as_str()) {
            return Err(bad("energy.batteries", &format!("unknown device {id:?}")));
        }
        unit(&f("level"), b.level)?;
        positive(&f("watts"), b.watts)?;
    }
    Ok(())
}

fn unit(field: &str, v: f64) -> Result<(), ScenarioError> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(bad(field, &format!("must be in [0, 1], got {v}")))
    }
}

fn bad(field: &str, reason: &str) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

fn positive(field: &str, v: f64) -> Result<(), ScenarioError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(bad(field, &format!("must be a finite number > 0, got {v}")))
    }
}

fn non_negative(field: &str, v: f64) -> Result<(), ScenarioError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(bad(
            field,
            &format!("must be a finite number >= 0, got {v}"),
        ))
    }
}
