//! Turns the node's view (members' capabilities, the link matrix) and the model's figures into
//! a planner [`Scenario`] (pure, no IO).
//!
//! Device ids are the members' base58 node ids. A directed link `a -> b` comes from `a`'s link
//! report; when only `b -> a` was measured or only it is plannable, it stands in for both
//! directions (links are close to symmetric, and a missing link would forbid the hop; a node
//! behind NAT answers no UDP echo, so its peers' figures towards it count every probe lost
//! while its own towards them are sound). Members that do not hold the
//! model are not devices.

use shoal_keys::NodeId;
use shoal_planner::{Device, Link, Model, Net, Scenario};
use shoal_protocol::Capability;

use super::model::ModelInfo;
use crate::config::PlannerConfig;
use crate::coordinator::LinkMatrix;

/// The devices of a scenario: members holding `model`, with their capabilities.
pub(crate) fn devices<'a>(
    model: &ModelInfo,
    members: impl IntoIterator<Item = (&'a NodeId, &'a Capability)>,
) -> Vec<(NodeId, &'a Capability)> {
    members
        .into_iter()
        .filter(|(_, c)| c.model.as_ref() == Some(&model.model_ref))
        .map(|(id, c)| (*id, c))
        .collect()
}

/// Builds the scenario; `origin` must be one of the devices.
pub(crate) fn build(
    model: &ModelInfo,
    devices: &[(NodeId, &Capability)],
    links: &LinkMatrix,
    origin: NodeId,
    cfg: &PlannerConfig,
) -> Scenario {
    let device_list = devices
        .iter()
        .map(|(id, c)| Device {
            id: id.to_string(),
            flops: c.flops,
            mem_bw: c.mem_bw,
            mem_bytes: c.mem_bytes as f64,
            overhead_s: c.overhead_s,
        })
        .collect();
    let mut link_list = Vec::new();
    for (a, _) in devices {
        for (b, _) in devices {
            if a == b {
                continue;
            }
            // A pair whose link the planner cannot use (e.g. every probe lost) gets no hop.
            let Some(m) = [links.get(&(*a, *b)), links.get(&(*b, *a))]
                .into_iter()
                .flatten()
                .find(|m| m.plannable())
            else {
                continue;
            };
            link_list.push(Link {
                from: a.to_string(),
                to: b.to_string(),
                rtt_s: m.rtt_s,
                jitter_s: m.jitter_s,
                bandwidth_bps: m.bandwidth_bps,
                loss: m.loss,
                symmetric: false,
            });
        }
    }
    Scenario {
        model: Model {
            name: model.model_ref.name.clone(),
            context_tokens: model.context_tokens,
            token_bytes: model.token_bytes,
            layers: model.layers.clone(),
        },
        devices: device_list,
        links: link_list,
        origin: origin.to_string(),
        net: Net {
            risk_kappa: cfg.risk_kappa,
            ..Net::default()
        },
        memory_fraction: cfg.memory_fraction,
        stage_penalty_s: cfg.stage_penalty_s,
        speculation: None,
    }
}

/// Whether every pair of devices has a measured link in at least one direction.
pub(crate) fn links_complete(devices: &[(NodeId, &Capability)], links: &LinkMatrix) -> bool {
    devices.iter().all(|(a, _)| {
        devices
            .iter()
            .all(|(b, _)| a == b || links.contains_key(&(*a, *b)) || links.contains_key(&(*b, *a)))
    })
}
