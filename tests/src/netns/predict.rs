//! DESIGN.md's latency objective evaluated for a plan that a bed's swarm settled on, with the
//! link figures the bed imposes ([`Links::Imposed`]) or the ones shoal measured
//! ([`Links::Measured`]). Comparing both with the measured per-token latency separates errors
//! of the cost model from errors of shoal's link measurements.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use shoal_planner::{Device, Link, Net, hop_cost, layer_time};

use super::Testbed;
use super::swarm::BedNode;

/// The latency objective of a plan under the bed's imposed links.
#[derive(Clone, Copy, Debug)]
pub struct Prediction {
    /// Expected per-token latency: compute plus the hops' mean times.
    pub mean_s: f64,
    /// The objective as the planner scores it: mean plus `risk_kappa` standard deviations.
    pub cost_s: f64,
    /// The compute part of `mean_s`.
    pub compute_s: f64,
}

/// A planner link from the bed's imposed path `a -> b` (a clean veth counts as 0.1 ms and
/// 10 Gbit/s, since the planner needs finite figures).
pub fn imposed_link(bed: &Testbed, a: usize, b: usize) -> Link {
    let p = bed.path(a, b);
    Link {
        from: a.to_string(),
        to: b.to_string(),
        rtt_s: p.rtt_s.max(1e-4),
        jitter_s: p.jitter_s,
        bandwidth_bps: p.bandwidth_bps.min(1e10),
        loss: p.loss,
        symmetric: false,
    }
}

/// Where the link figures of a prediction come from.
#[derive(Clone, Copy, Debug)]
pub enum Links<'a> {
    /// What the bed imposes.
    Imposed,
    /// What shoal reports in this `/v1/status` document (`links`).
    Measured(&'a Value),
}

/// A planner link from the `links` shoal reports in `status` for bed nodes `a -> b`.
pub fn measured_link(status: &Value, nodes: &[BedNode], a: usize, b: usize) -> Result<Link> {
    let id = |i: usize| {
        nodes
            .iter()
            .find(|n| n.index == i)
            .map(|n| n.id.as_str())
            .with_context(|| format!("no bed node {i}"))
    };
    let (from, to) = (id(a)?, id(b)?);
    let l = status["links"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["from"] == from && l["to"] == to))
        .with_context(|| format!("shoal reports no link {a} -> {b}"))?;
    let f = |k: &str| {
        l[k].as_f64()
            .with_context(|| format!("link {a} -> {b} without {k}"))
    };
    Ok(Link {
        from: a.to_string(),
        to: b.to_string(),
        rtt_s: f("rtt_s")?,
        jitter_s: f("jitter_s")?,
        bandwidth_bps: f("bandwidth_bps")?,
        loss: f("loss")?,
        symmetric: false,
    })
}

/// Evaluates the plan in `status` (a `/v1/status` document) for requests entering at bed node
/// `origin`, with compute figures from the members' gossiped capabilities, layer figures
/// from the model at `model_dir` and links from `links`.
pub fn predict(
    bed: &Testbed,
    nodes: &[BedNode],
    (status, links): (&Value, Links<'_>),
    model_dir: &Path,
    origin: usize,
    risk_kappa: f64,
) -> Result<Prediction> {
    let link = |a: usize, b: usize| match links {
        Links::Imposed => Ok(imposed_link(bed, a, b)),
        Links::Measured(doc) => measured_link(doc, nodes, a, b),
    };
    let info =
        shoal_node::node::model::ModelInfo::load(model_dir).context("loading the model figures")?;
    let net = Net {
        risk_kappa,
        ..Net::default()
    };
    let empty = Vec::new();
    let stages = status["plan"]["stages"].as_array().unwrap_or(&empty);
    if stages.is_empty() {
        bail!("status has no plan");
    }
    let (mut compute, mut mean, mut cost) = (0.0, 0.0, 0.0);
    let mut at = origin;
    let mut bytes = info.token_bytes;
    for s in stages {
        let id = s["device"].as_str().context("stage without device")?;
        let node = nodes
            .iter()
            .find(|n| n.id == id)
            .with_context(|| format!("device {id} is not a bed node"))?;
        let dev = device(status, id)?;
        let (a, b) = (
            s["layers"][0].as_u64().unwrap_or(0) as usize,
            s["layers"][1].as_u64().unwrap_or(0) as usize,
        );
        let layers = info
            .layers
            .get(a..b)
            .with_context(|| format!("layers {a}..{b} out of range"))?;
        let t = layers.iter().map(|l| layer_time(l, &dev)).sum::<f64>() + dev.overhead_s;
        compute += t;
        mean += t;
        cost += t;
        if node.index != at {
            let h = hop_cost(&link(at, node.index)?, bytes, &net);
            mean += h.mean_s;
            cost += h.total_s;
        }
        at = node.index;
        bytes = layers.last().map_or(bytes, |l| l.out_bytes);
    }
    if at != origin {
        let h = hop_cost(&link(at, origin)?, info.token_bytes, &net);
        mean += h.mean_s;
        cost += h.total_s;
    }
    Ok(Prediction {
        mean_s: mean,
        cost_s: cost,
        compute_s: compute,
    })
}

/// A member's capability from a status document, as a planner device.
fn device(status: &Value, id: &str) -> Result<Device> {
    let m = status["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == id))
        .with_context(|| format!("member {id} missing from status"))?;
    Ok(Device {
        id: id.to_string(),
        flops: m["flops"].as_f64().context("member without flops")?,
        mem_bw: m["mem_bw"].as_f64(),
        mem_bytes: m["mem_bytes"].as_f64().unwrap_or(0.0),
        overhead_s: m["overhead_s"].as_f64().unwrap_or(0.0),
    })
}
