//! Link estimates (pure logic, no IO): smoothed RTT, jitter, bandwidth and loss of the link
//! from this node to one peer.
//!
//! Samples come from the IO shell: ping RTTs (libp2p ping), timed transfer pairs on
//! `/shoal/probe/1` and UDP echo probes (`probe.rs`). RTT, jitter and bandwidth are
//! exponentially weighted moving averages with weight `alpha` per new sample; loss is the share
//! of lost probes among the last `window` probes, because a loss rate needs counting, not
//! smoothing. Telling 5% from 10% needs the 7.5% midpoint at least three standard errors from
//! both: sqrt(0.1 * 0.9 / n) <= 0.025 / 3 gives n >= 1296, hence the default window of 1500.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Metrics of one directed link, in the planner's units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkMetrics {
    /// Round-trip time, seconds.
    pub rtt_s: f64,
    /// Standard deviation of the one-way delay, seconds.
    pub jitter_s: f64,
    /// Bandwidth, bits per second.
    pub bandwidth_bps: f64,
    /// Packet loss probability, 0..1.
    pub loss: f64,
}

/// The running estimate of one link.
#[derive(Debug, Clone)]
pub struct LinkEstimator {
    alpha: f64,
    rtt: Option<f64>,
    rtt_samples: u32,
    delay_var: f64,
    bandwidth: Option<f64>,
    window: usize,
    probes: VecDeque<bool>,
    lost: usize,
}

impl LinkEstimator {
    /// A fresh estimator: `alpha` in (0, 1] is the weight of a new sample; `window` the number
    /// of loss probes counted.
    pub fn new(alpha: f64, window: usize) -> Self {
        LinkEstimator {
            alpha: alpha.clamp(f64::MIN_POSITIVE, 1.0),
            rtt: None,
            rtt_samples: 0,
            delay_var: 0.0,
            bandwidth: None,
            window: window.max(1),
            probes: VecDeque::new(),
            lost: 0,
        }
    }

    /// Adds an RTT sample (seconds). Jitter is the EWMA standard deviation of the one-way
    /// delay, taken as half the RTT.
    pub fn on_rtt(&mut self, rtt_s: f64) {
        if !rtt_s.is_finite() || rtt_s < 0.0 {
            return;
        }
        self.rtt_samples = self.rtt_samples.saturating_add(1);
        match self.rtt {
            None => self.rtt = Some(rtt_s),
            Some(mean) => {
                let d = (rtt_s - mean) / 2.0;
                self.delay_var = (1.0 - self.alpha) * self.delay_var + self.alpha * d * d;
                self.rtt = Some((1.0 - self.alpha) * mean + self.alpha * rtt_s);
            }
        }
    }

    /// Adds a bandwidth measurement from two timed transfers of different sizes: the
    /// difference cancels the fixed cost (round trip, request handling) both share. When noise
    /// makes the larger one no slower, the larger transfer alone gives a lower bound.
    pub fn on_transfers(&mut self, small: (u64, f64), large: (u64, f64)) {
        let (sb, st) = small;
        let (lb, lt) = large;
        let sample = if lb > sb && lt > st {
            8.0 * (lb - sb) as f64 / (lt - st)
        } else if lt > 0.0 {
            8.0 * lb as f64 / lt
        } else {
            return;
        };
        if !sample.is_finite() || sample <= 0.0 {
            return;
        }
        self.bandwidth = Some(match self.bandwidth {
            None => sample,
            Some(b) => (1.0 - self.alpha) * b + self.alpha * sample,
        });
    }

    /// Records one loss probe: `lost` if it went unanswered within the probe timeout.
    pub fn on_probe(&mut self, lost: bool) {
        self.probes.push_back(lost);
        self.lost += usize::from(lost);
        while self.probes.len() > self.window {
            if self.probes.pop_front() == Some(true) {
                self.lost -= 1;
            }
        }
    }

    /// Number of RTT samples so far.
    pub fn rtt_samples(&self) -> u32 {
        self.rtt_samples
    }

    /// Number of loss probes in the window.
    pub fn probe_count(&self) -> usize {
        self.probes.len()
    }

    /// Current RTT estimate (seconds).
    pub fn rtt(&self) -> Option<f64> {
        self.rtt
    }

    /// Current bandwidth estimate (bits per second).
    pub fn bandwidth(&self) -> Option<f64> {
        self.bandwidth
    }

    /// Share of lost probes in the window (0 without probes).
    pub fn loss(&self) -> f64 {
        if self.probes.is_empty() {
            0.0
        } else {
            self.lost as f64 / self.probes.len() as f64
        }
    }

    /// The metrics, once both an RTT and a bandwidth have been measured.
    pub fn metrics(&self) -> Option<LinkMetrics> {
        Some(LinkMetrics {
            rtt_s: self.rtt?,
            jitter_s: self.delay_var.sqrt(),
            bandwidth_bps: self.bandwidth?,
            loss: self.loss(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn needs_rtt_and_bandwidth() {
        let mut e = LinkEstimator::new(0.25, 500);
        assert!(e.metrics().is_none());
        e.on_rtt(0.02);
        assert!(e.metrics().is_none());
        e.on_transfers(
            (4096, 0.0205),
            (1 << 20, 0.0205 + 8.0 * (1048576.0 - 4096.0) / 1e8),
        );
        let m = e.metrics().unwrap();
        assert!((m.bandwidth_bps - 1e8).abs() < 1.0, "{m:?}");
        assert_eq!(m.rtt_s, 0.02);
        assert_eq!(m.jitter_s, 0.0);
    }

    #[test]
    fn ewma_converges_and_jitter_tracks_spread() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut e = LinkEstimator::new(0.1, 500);
        for _ in 0..2000 {
            // Uniform in 40 ms +- 10 ms: one-way delay sd = 10 ms / sqrt(3) / 2.
            e.on_rtt(0.04 + rng.random_range(-0.01..0.01));
        }
        let rtt = e.rtt().unwrap();
        assert!((rtt - 0.04).abs() < 0.003, "{rtt}");
        let j = e.metrics().map_or(e.delay_var.sqrt(), |m| m.jitter_s);
        let want = 0.01 / 3f64.sqrt() / 2.0;
        assert!((j - want).abs() < want * 0.3, "{j} vs {want}");
    }

    #[test]
    fn loss_window_tells_five_from_ten_percent() {
        for seed in 0..50 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut five = LinkEstimator::new(0.25, 1500);
            let mut ten = LinkEstimator::new(0.25, 1500);
            for _ in 0..3000 {
                five.on_probe(rng.random_bool(0.05));
                ten.on_probe(rng.random_bool(0.10));
            }
            assert_eq!(five.probe_count(), 1500);
            assert!(
                five.loss() < 0.075 && ten.loss() > 0.075,
                "seed {seed}: {} {}",
                five.loss(),
                ten.loss()
            );
        }
    }

    #[test]
    fn garbage_samples_are_ignored() {
        let mut e = LinkEstimator::new(0.25, 10);
        e.on_rtt(f64::NAN);
        e.on_rtt(-1.0);
        assert!(e.rtt().is_none());
        e.on_transfers((10, 0.0), (20, 0.0));
        assert!(e.bandwidth().is_none());
    }
}
