//! What one node's access link to the bed's hub looks like: added round-trip time, jitter,
//! bandwidth and packet loss, and how two access links combine into the figures the planner
//! sees for the path between two nodes.
//!
//! Every direction of an impaired access link is the same pipeline: `tbf` at `rate_bps`, then
//! nftables drops `loss_pct`% of packets, then the delay line holds each packet for
//! `rtt / 2` plus jitter (see [`crate::netns`] for where each stage sits).

use std::time::Duration;

use anyhow::{Result, bail};

/// Impairment of one node's access link (applied to both directions, independently).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkProfile {
    /// Added round-trip time: each direction delays packets by `rtt / 2` on average.
    pub rtt: Duration,
    /// Standard deviation of the one-way delay (DESIGN.md's `jitter_s`), per direction.
    /// At most `rtt / 2`, so that no packet needs a negative delay.
    pub jitter: Duration,
    /// Bandwidth in bits per second of each direction, `None` for unshaped.
    pub rate_bps: Option<u64>,
    /// Packet loss per direction, in whole percent (nftables `numgen` works in whole percent).
    pub loss_pct: u32,
}

impl LinkProfile {
    /// An unimpaired link: straight veth to the hub, no delay line in the path.
    pub const CLEAN: LinkProfile = LinkProfile {
        rtt: Duration::ZERO,
        jitter: Duration::ZERO,
        rate_bps: None,
        loss_pct: 0,
    };

    /// A profile from the figures people quote: RTT and jitter in ms, Mbit/s, loss in percent.
    pub fn new(rtt_ms: f64, jitter_ms: f64, mbit: f64, loss_pct: u32) -> Self {
        LinkProfile {
            rtt: Duration::from_secs_f64(rtt_ms / 1e3),
            jitter: Duration::from_secs_f64(jitter_ms / 1e3),
            rate_bps: Some((mbit * 1e6).round() as u64),
            loss_pct,
        }
    }

    /// Whether any impairment is set (a clean link bypasses the delay line entirely).
    pub fn is_clean(&self) -> bool {
        *self == Self::CLEAN
    }

    /// Checks that the profile can be imposed as described.
    pub fn validate(&self) -> Result<()> {
        if self.jitter > self.rtt / 2 {
            bail!(
                "jitter {:?} exceeds the one-way delay {:?}",
                self.jitter,
                self.rtt / 2
            );
        }
        if self.loss_pct > 100 {
            bail!("loss {}% is not a percentage", self.loss_pct);
        }
        if matches!(self.rate_bps, Some(r) if r < 8_000) {
            bail!(
                "rate {:?} bit/s is below what tbf can shape with an MTU burst",
                self.rate_bps
            );
        }
        Ok(())
    }

    /// A short label for tables: `40ms±15ms 2Mbit 10%`.
    pub fn label(&self) -> String {
        if self.is_clean() {
            return "clean".to_string();
        }
        let rate = match self.rate_bps {
            Some(r) => format!("{}Mbit", r as f64 / 1e6),
            None => "unshaped".to_string(),
        };
        format!(
            "{:.0}ms±{:.0}ms {rate} {}%",
            self.rtt.as_secs_f64() * 1e3,
            self.jitter.as_secs_f64() * 1e3,
            self.loss_pct
        )
    }
}

/// A deliberate error between what a bed claims to impose and what it imposes, to check that
/// a test judging measured figures still fails when they are wrong (`SHOAL_BED_PLANT`, read
/// by [`crate::netns::Testbed`]). Each field scales one figure of every impaired link; the
/// tests keep judging against the nominal profiles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plant {
    /// Factor on the round-trip time.
    pub rtt: f64,
    /// Factor on the jitter.
    pub jitter: f64,
    /// Factor on the rate.
    pub rate: f64,
    /// Percentage points added to the loss.
    pub loss_points: i32,
}

impl Plant {
    /// No error: the bed imposes what it claims.
    pub const NONE: Plant = Plant {
        rtt: 1.0,
        jitter: 1.0,
        rate: 1.0,
        loss_points: 0,
    };

    /// Parses `rtt=1.3,rate=0.7,jitter=2,loss=+3` (any subset; empty is [`Plant::NONE`]).
    pub fn parse(text: &str) -> Result<Plant> {
        let mut plant = Plant::NONE;
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                bail!("plant {item:?} is not key=value");
            };
            let factor = || -> Result<f64> {
                match value.parse::<f64>() {
                    Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
                    _ => bail!("plant {item:?}: {value:?} is not a positive factor"),
                }
            };
            match key {
                "rtt" => plant.rtt = factor()?,
                "jitter" => plant.jitter = factor()?,
                "rate" => plant.rate = factor()?,
                "loss" => {
                    plant.loss_points = value.trim_start_matches('+').parse().map_err(|_| {
                        anyhow::anyhow!("plant {item:?}: {value:?} is not whole points")
                    })?
                }
                _ => bail!("plant {item:?}: unknown figure {key:?} (rtt, jitter, rate, loss)"),
            }
        }
        Ok(plant)
    }

    /// What the bed really imposes for the nominal profile `p` (clean links stay clean).
    pub fn apply(&self, p: &LinkProfile) -> LinkProfile {
        if p.is_clean() {
            return *p;
        }
        LinkProfile {
            rtt: p.rtt.mul_f64(self.rtt),
            jitter: p.jitter.mul_f64(self.jitter),
            rate_bps: p.rate_bps.map(|r| (r as f64 * self.rate).round() as u64),
            loss_pct: (p.loss_pct as i32 + self.loss_points).clamp(0, 100) as u32,
        }
    }
}

/// The figures of the path between two nodes, in the planner's units (DESIGN.md links).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PathFigures {
    /// Round-trip time in seconds (impairment only; the bare veth adds tens of µs).
    pub rtt_s: f64,
    /// Standard deviation of the one-way delay in seconds.
    pub jitter_s: f64,
    /// Bottleneck bandwidth in bit/s (`f64::INFINITY` when neither link is shaped).
    pub bandwidth_bps: f64,
    /// Per-packet loss probability of one direction.
    pub loss: f64,
}

/// Combines the access links of two nodes: a packet from `a` to `b` crosses `a`'s uplink
/// and `b`'s downlink, so delays add, independent jitters add in variance, the slower rate is
/// the bottleneck and losses compound.
pub fn path(a: &LinkProfile, b: &LinkProfile) -> PathFigures {
    let rate = |p: &LinkProfile| p.rate_bps.map_or(f64::INFINITY, |r| r as f64);
    let loss = |p: &LinkProfile| f64::from(p.loss_pct) / 100.0;
    PathFigures {
        rtt_s: a.rtt.as_secs_f64() + b.rtt.as_secs_f64(),
        jitter_s: (a.jitter.as_secs_f64().powi(2) + b.jitter.as_secs_f64().powi(2)).sqrt(),
        bandwidth_bps: rate(a).min(rate(b)),
        loss: 1.0 - (1.0 - loss(a)) * (1.0 - loss(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_combine_delay_variance_bottleneck_and_loss() {
        let a = LinkProfile::new(40.0, 3.0, 2.0, 10);
        let b = LinkProfile::new(20.0, 4.0, 50.0, 10);
        let p = path(&a, &b);
        assert!((p.rtt_s - 0.06).abs() < 1e-9);
        assert!((p.jitter_s - 0.005).abs() < 1e-9);
        assert_eq!(p.bandwidth_bps, 2e6);
        assert!((p.loss - 0.19).abs() < 1e-9);
        let clean = path(&LinkProfile::CLEAN, &LinkProfile::CLEAN);
        assert!(clean.bandwidth_bps.is_infinite() && clean.loss == 0.0 && clean.rtt_s == 0.0);
    }

    #[test]
    fn a_plant_scales_impaired_links_only() {
        let p = LinkProfile::new(40.0, 10.0, 10.0, 3);
        assert_eq!(Plant::parse("").unwrap(), Plant::NONE);
        let planted = Plant::parse("rtt=1.5, rate=0.5,loss=+2").unwrap().apply(&p);
        assert_eq!(planted, LinkProfile::new(60.0, 10.0, 5.0, 5));
        assert_eq!(
            Plant::parse("rate=0.5").unwrap().apply(&LinkProfile::CLEAN),
            LinkProfile::CLEAN
        );
        assert!(Plant::parse("rate=-1").is_err());
        assert!(Plant::parse("speed=2").is_err());
        assert!(Plant::parse("rtt").is_err());
    }

    #[test]
    fn validation_refuses_jitter_beyond_the_one_way_delay() {
        assert!(LinkProfile::new(40.0, 15.0, 2.0, 10).validate().is_ok());
        assert!(LinkProfile::new(20.0, 15.0, 2.0, 10).validate().is_err());
        assert!(LinkProfile::new(20.0, 1.0, 2.0, 101).validate().is_err());
        assert_eq!(
            LinkProfile::new(40.0, 15.0, 2.0, 10).label(),
            "40ms±15ms 2Mbit 10%"
        );
    }
}
