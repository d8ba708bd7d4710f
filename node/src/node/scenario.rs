//! Turns the node's view (members' capabilities, the link matrix) and the model's figures into
//! a planner [`Scenario`] (pure, no IO).
//!
//! Device ids are the members' base58 node ids. A directed link `a -> b` comes from `a`'s link
//! report; when only `b -> a` was measured or only it is plannable, it stands in for both
//! directions (links are close to symmetric, and a missing link would forbid the hop; a node
//! behind NAT answers no UDP echo, so its peers' figures towards it count every probe lost
//! while its own towards them are sound). Members that do not hold the
//! model are not devices. A throttled member's speed is its announced share of what it
//! measured; members on battery fill the energy term.

use shoal_keys::NodeId;
use shoal_planner::{Device, Energy, Fetch, Link, Model, Net, OnBattery, Scenario, Speculation};
use shoal_protocol::Capability;

use super::model::ModelInfo;
use crate::config::PlannerConfig;
use crate::coordinator::{LinkMatrix, UNKNOWN_LEVEL};

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
    fetch_share: f64,
) -> Scenario {
    let device_list = devices
        .iter()
        .map(|(id, c)| Device {
            id: id.to_string(),
            // A throttled node computes at its announced share of its measured speed.
            flops: c.flops * c.throttle.unwrap_or(1.0),
            mem_bw: c.mem_bw.map(|b| b * c.throttle.unwrap_or(1.0)),
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
        speculation: speculation(devices),
        fetch: fetch(model, devices, cfg, fetch_share),
        energy: energy(devices, cfg),
    }
}

/// The planner's energy term: the members on battery with their charge (a member that does
/// not report it counts as [`UNKNOWN_LEVEL`]) and draw (the class figure of
/// `crate::power::default_watts` for a laptop when it announces none); `None` when every
/// member is on mains.
pub(crate) fn energy(devices: &[(NodeId, &Capability)], cfg: &PlannerConfig) -> Option<Energy> {
    let batteries: std::collections::BTreeMap<String, OnBattery> = devices
        .iter()
        .filter_map(|(id, c)| {
            let b = c.battery.filter(|b| b.on_battery)?;
            Some((
                id.to_string(),
                OnBattery {
                    level: b.level.unwrap_or(UNKNOWN_LEVEL).clamp(0.0, 1.0),
                    watts: b.watts.unwrap_or(crate::power::LAPTOP_WATTS),
                },
            ))
        })
        .collect();
    if batteries.is_empty() {
        return None;
    }
    let finite = |x: f64, default: f64| if x.is_finite() { x } else { default };
    Some(Energy {
        price_s_per_j: finite(cfg.energy_price_s_per_j, 0.0).max(0.0),
        min_level: (finite(cfg.min_battery_percent, 0.0) / 100.0).clamp(0.0, 1.0),
        batteries,
    })
}

/// The planner's fetch term: which layers each device holds on disk (from `Capability.held`),
/// spread over `fetch_horizon_tokens`, at `share` of a link's rate (the follower's pace);
/// `None` when every device holds every layer.
pub(crate) fn fetch(
    model: &ModelInfo,
    devices: &[(NodeId, &Capability)],
    cfg: &PlannerConfig,
    share: f64,
) -> Option<Fetch> {
    let n = model.layers.len();
    let holds: std::collections::BTreeMap<String, Vec<[usize; 2]>> = devices
        .iter()
        .filter_map(|(id, c)| {
            let held = c.held.as_ref()?;
            let ranges = held
                .iter()
                .map(|&(a, b)| [a as usize, (b as usize).min(n)])
                .filter(|[a, b]| a < b)
                .collect();
            Some((id.to_string(), ranges))
        })
        .collect();
    if holds.is_empty() {
        return None;
    }
    Some(Fetch {
        horizon_tokens: cfg.fetch_horizon_tokens.max(1.0),
        holds,
        layer_bytes: None,
        rate_share: share,
    })
}

/// The speculation a pass of the plan is expected to have: the mean of the figures the
/// devices measured as origins and announce (`None` when none speculates; then each pass is
/// one position and one token, as without speculation).
pub(crate) fn speculation(devices: &[(NodeId, &Capability)]) -> Option<Speculation> {
    let figures: Vec<_> = devices.iter().filter_map(|(_, c)| c.speculation).collect();
    if figures.is_empty() {
        return None;
    }
    let n = figures.len() as f64;
    let positions = figures.iter().map(|f| f.positions).sum::<f64>() / n;
    let tokens = figures.iter().map(|f| f.tokens_per_pass).sum::<f64>() / n;
    Some(Speculation {
        positions: positions.max(1.0),
        tokens_per_pass: tokens.clamp(1.0, positions.max(1.0)),
    })
}

/// Whether every pair of devices has a measured link in at least one direction.
pub(crate) fn links_complete(devices: &[(NodeId, &Capability)], links: &LinkMatrix) -> bool {
    devices.iter().all(|(a, _)| {
        devices
            .iter()
            .all(|(b, _)| a == b || links.contains_key(&(*a, *b)) || links.contains_key(&(*b, *a)))
    })
}

#[cfg(test)]
mod tests {
    use shoal_keys::Identity;
    use shoal_protocol::SpecFigures;

    use super::*;

    fn cap(spec: Option<(f64, f64)>) -> Capability {
        Capability {
            node: Identity::from_secret_bytes([1; 32]).node_id(),
            seq: 0,
            timestamp_ms: 0,
            model: None,
            flops: 1e9,
            mem_bw: None,
            mem_bytes: 1 << 30,
            overhead_s: 0.0,
            battery: None,
            listen_addrs: Vec::new(),
            loss_probe_port: None,
            speculation: spec.map(|(positions, tokens_per_pass)| SpecFigures {
                positions,
                tokens_per_pass,
            }),
            held: None,
            temp_c: None,
            throttle: None,
        }
    }

    #[test]
    fn members_on_battery_fill_the_energy_term() {
        let id = |b: u8| Identity::from_secret_bytes([b; 32]).node_id();
        let cfg = PlannerConfig::default();
        let mains = cap(None);
        let unplugged = |level, watts| Capability {
            battery: Some(shoal_protocol::Battery {
                on_battery: true,
                level,
                watts,
            }),
            ..cap(None)
        };
        let charging = Capability {
            battery: Some(shoal_protocol::Battery {
                on_battery: false,
                level: Some(0.1),
                watts: Some(4.0),
            }),
            ..cap(None)
        };
        assert_eq!(energy(&[(id(1), &mains), (id(2), &charging)], &cfg), None);
        let (phone, laptop) = (unplugged(Some(0.18), Some(4.0)), unplugged(None, None));
        let e = energy(&[(id(1), &mains), (id(2), &phone), (id(3), &laptop)], &cfg).unwrap();
        assert_eq!((e.price_s_per_j, e.min_level), (0.02, 0.2));
        assert_eq!(
            e.batteries[&id(2).to_string()],
            OnBattery {
                level: 0.18,
                watts: 4.0
            }
        );
        assert_eq!(
            e.batteries[&id(3).to_string()],
            OnBattery {
                level: UNKNOWN_LEVEL,
                watts: crate::power::LAPTOP_WATTS
            }
        );
        assert!(e.below_floor(&id(2).to_string()) && !e.below_floor(&id(3).to_string()));
    }

    #[test]
    fn the_plan_speculates_as_the_devices_measured() {
        let id = |b: u8| Identity::from_secret_bytes([b; 32]).node_id();
        let (a, b, c) = (cap(Some((5.0, 3.0))), cap(None), cap(Some((3.0, 2.0))));
        let none = [(id(1), &b)];
        assert_eq!(
            speculation(&none),
            None,
            "nobody speculates: DESIGN.md's model"
        );
        let some = [(id(1), &a), (id(2), &b), (id(3), &c)];
        assert_eq!(
            speculation(&some),
            Some(Speculation {
                positions: 4.0,
                tokens_per_pass: 2.5
            })
        );
    }
}
