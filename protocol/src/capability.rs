//! `Capability`: what a node can do, gossiped on `shoal/1/capability`.
//!
//! A node announces its measured compute speed and memory bandwidth (the inputs of the cost
//! model), the memory it offers, its per-stage overhead, its battery state, the model it holds
//! and where to reach it. It re-announces periodically and on change with a higher `seq`;
//! receivers keep the highest `seq` per node and use the arrival time for liveness. The
//! announcement must be signed by the node it describes ([`Message::author`]).

use serde::{Deserialize, Serialize};
use shoal_keys::{Domain, NodeId};

use crate::check::{fraction, max_len, max_text, non_negative, positive};
use crate::{Kind, Message, ProtocolError};

/// Most listen addresses one announcement carries.
pub const MAX_LISTEN_ADDRS: usize = 16;
/// Longest listen address (a multiaddr in text form), in bytes.
pub const MAX_ADDR_LEN: usize = 256;
/// Longest model name, in bytes.
pub const MAX_MODEL_NAME_LEN: usize = 128;
/// Most layer ranges one announcement lists as held on disk.
pub const MAX_HELD_RANGES: usize = 64;

/// A model a node holds: the manifest's name and the sha256 of `manifest.json`, which is
/// what identifies it (two nodes run the same model only if the hashes match).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// Human-readable model name from the manifest.
    pub name: String,
    /// sha256 of the model's `manifest.json`.
    #[serde(with = "serde_bytes")]
    pub manifest_sha256: [u8; 32],
}

impl ModelRef {
    pub(crate) fn check(&self, kind: Kind) -> Result<(), ProtocolError> {
        max_text(kind, "model name", &self.name, MAX_MODEL_NAME_LEN)
    }
}

/// Battery state, where the operating system reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Battery {
    /// True when running on battery (not plugged in).
    pub on_battery: bool,
    /// Charge level in `[0, 1]`, if known.
    pub level: Option<f64>,
    /// Watts the device draws while it computes, in `(0, MAX_WATTS]`: measured where the OS
    /// reports it, else the figure of the device's class (`node/src/power.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watts: Option<f64>,
}

/// Largest [`Battery::watts`] an announcement may carry.
pub const MAX_WATTS: f64 = 1000.0;
/// The range of [`Capability::temp_c`], degrees Celsius.
pub const TEMP_RANGE_C: std::ops::RangeInclusive<f64> = -60.0..=200.0;

/// What speculative decoding achieved on a node as origin (a running mean over its recent
/// passes), for the planner's cost of a pass ([`Capability::speculation`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFigures {
    /// Positions verified per pass (drafts plus one), in `[1, MAX_DRAFT + 1]`.
    pub positions: f64,
    /// Tokens gained per pass, in `[1, positions]`.
    pub tokens_per_pass: f64,
}

impl SpecFigures {
    pub(crate) fn check(&self, kind: Kind) -> Result<(), ProtocolError> {
        let top = (crate::MAX_DRAFT + 1) as f64;
        let (p, t) = (self.positions, self.tokens_per_pass);
        if !(p.is_finite() && (1.0..=top).contains(&p)) {
            return Err(ProtocolError::invalid(
                kind,
                format!("speculation positions {p} outside [1, {top}]"),
            ));
        }
        if !(t.is_finite() && t >= 1.0 && t <= p) {
            return Err(ProtocolError::invalid(
                kind,
                format!("speculation tokens per pass {t} outside [1, {p}]"),
            ));
        }
        Ok(())
    }
}

/// A node's capability announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capability {
    /// The announcing node; must be the signer.
    pub node: NodeId,
    /// Increases with every announcement of this node; receivers keep the highest.
    pub seq: u64,
    /// Sender's wall clock at announcement, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The model the node holds shards of, if any.
    pub model: Option<ModelRef>,
    /// Effective compute speed, FLOP/s (> 0).
    pub flops: f64,
    /// Effective memory bandwidth, bytes/s (> 0), if measured.
    pub mem_bw: Option<f64>,
    /// Memory the node offers to model layers and K/V caches, bytes.
    pub mem_bytes: u64,
    /// Fixed cost of running one stage on this node, seconds (>= 0).
    pub overhead_s: f64,
    /// Battery state, if the OS reports one.
    pub battery: Option<Battery>,
    /// Multiaddrs (text form) the node listens on; at most [`MAX_LISTEN_ADDRS`].
    pub listen_addrs: Vec<String>,
    /// UDP port of the node's loss-probe echo ([`crate::LossProbe`]), if it runs one.
    pub loss_probe_port: Option<u16>,
    /// Speculative decoding's measured figures on this node as origin; absent when it has
    /// run no speculative pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation: Option<SpecFigures>,
    /// The planner layers of `model` whose files the node holds on disk, as ascending,
    /// disjoint, non-empty half-open ranges (at most [`MAX_HELD_RANGES`]); absent: every layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Vec<(u32, u32)>>,
    /// The hottest temperature the OS reports (`/sys/class/thermal`), degrees Celsius, in
    /// [`TEMP_RANGE_C`]; absent where none is readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_c: Option<f64>,
    /// The node's compute speed while serving as a share of `flops` and `mem_bw`, in
    /// `(0, 1)`, when its own step times show a sustained slowdown (throttling); absent at
    /// full speed. The planner uses `flops * throttle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<f64>,
}

impl Capability {
    /// Whether the node holds planner layer `layer` of its model on disk.
    pub fn holds(&self, layer: u32) -> bool {
        self.model.is_some()
            && self
                .held
                .as_ref()
                .is_none_or(|r| r.iter().any(|&(a, b)| (a..b).contains(&layer)))
    }
}

impl Message for Capability {
    const KIND: Kind = Kind::Capability;
    const DOMAIN: Domain = Domain::CAPABILITY;
    const MAX_BYTES: usize = 16 * 1024;

    fn validate(&self) -> Result<(), ProtocolError> {
        let k = Self::KIND;
        positive(k, "flops", self.flops)?;
        if let Some(bw) = self.mem_bw {
            positive(k, "mem_bw", bw)?;
        }
        non_negative(k, "overhead_s", self.overhead_s)?;
        if let Some(level) = self.battery.and_then(|b| b.level) {
            fraction(k, "battery level", level)?;
        }
        if let Some(w) = self.battery.and_then(|b| b.watts) {
            positive(k, "battery watts", w)?;
            if w > MAX_WATTS {
                return Err(ProtocolError::invalid(
                    k,
                    format!("battery watts {w} exceeds {MAX_WATTS}"),
                ));
            }
        }
        if let Some(t) = self.temp_c
            && !(t.is_finite() && TEMP_RANGE_C.contains(&t))
        {
            return Err(ProtocolError::invalid(
                k,
                format!("temperature {t} outside {TEMP_RANGE_C:?} C"),
            ));
        }
        if let Some(t) = self.throttle
            && !(t.is_finite() && t > 0.0 && t < 1.0)
        {
            return Err(ProtocolError::invalid(
                k,
                format!("throttle {t} outside (0, 1)"),
            ));
        }
        if let Some(s) = &self.speculation {
            s.check(k)?;
        }
        if let Some(model) = &self.model {
            model.check(k)?;
        }
        if let Some(held) = &self.held {
            max_len(k, "held", held.len(), MAX_HELD_RANGES)?;
            let mut next = 0u32;
            for &(a, b) in held {
                if a < next || b <= a || b > crate::MAX_LAYERS {
                    return Err(ProtocolError::invalid(
                        k,
                        format!("held range [{a}, {b}) not ascending, disjoint and non-empty"),
                    ));
                }
                next = b;
            }
        }
        max_len(k, "listen_addrs", self.listen_addrs.len(), MAX_LISTEN_ADDRS)?;
        for addr in &self.listen_addrs {
            max_text(k, "listen address", addr, MAX_ADDR_LEN)?;
        }
        Ok(())
    }

    fn author(&self) -> Option<&NodeId> {
        Some(&self.node)
    }
}
