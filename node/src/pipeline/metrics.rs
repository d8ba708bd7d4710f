//! The node's pipeline metrics and their Prometheus text rendering (`GET /metrics`).
//!
//! One [`Metrics`] per node, shared by `Arc`: the stage server adds compute time and refusals,
//! the origin adds generated tokens, generation time, step round trips and failovers. Counters
//! are plain atomics or short `Mutex`-guarded maps (updated a few times per token, never held
//! across an await). [`Metrics::render`] writes the text exposition format 0.0.4; the caller
//! passes the facts that live in the node's view (epoch, link round trips of the plan's hops).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::ordering::Refusal;

/// A running sum and count of durations.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Total seconds.
    pub sum_s: f64,
    /// Observations.
    pub count: u64,
}

impl Summary {
    fn observe(&mut self, d: Duration) {
        self.sum_s += d.as_secs_f64();
        self.count += 1;
    }
}

/// A hop of the current plan with its measured round-trip time, for rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct HopRtt {
    /// Sending node (short id).
    pub from: String,
    /// Receiving node (short id).
    pub to: String,
    /// Smoothed ping round trip, seconds.
    pub rtt_s: f64,
}

/// Pipeline counters of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    tokens: AtomicU64,
    generations: AtomicU64,
    generation_errors: AtomicU64,
    failovers: AtomicU64,
    batched_steps: AtomicU64,
    in_flight: AtomicU64,
    loaded_epoch: AtomicU64,
    generation_s: Mutex<f64>,
    last_tokens_per_s: Mutex<f64>,
    refused: Mutex<BTreeMap<String, u64>>,
    /// Compute time per stage label (`stage`, `layers`).
    compute: Mutex<BTreeMap<(u32, String), Summary>>,
    /// Round trip of requests to the next stage (includes everything downstream), per peer.
    downstream: Mutex<BTreeMap<String, Summary>>,
    /// Round trip of whole steps seen by the origin.
    step: Mutex<Summary>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of a counter; the
    // counter is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// Counts a refused message by its reason label.
    pub fn refuse(&self, reason: &str) {
        *lock(&self.refused).entry(reason.to_string()).or_default() += 1;
    }

    /// Refusals counted so far, by reason.
    pub fn refused(&self) -> BTreeMap<String, u64> {
        lock(&self.refused).clone()
    }

    /// Records the compute time of one step on this node's stage.
    pub fn stage_compute(&self, stage: u32, layers: &str, d: Duration) {
        lock(&self.compute)
            .entry((stage, layers.to_string()))
            .or_default()
            .observe(d);
    }

    /// Total compute time of this node's stages, seconds, and steps.
    pub fn compute_total(&self) -> Summary {
        lock(&self.compute)
            .values()
            .fold(Summary::default(), |a, s| Summary {
                sum_s: a.sum_s + s.sum_s,
                count: a.count + s.count,
            })
    }

    /// Records a request round trip to the next stage `peer`.
    pub fn downstream(&self, peer: &str, d: Duration) {
        lock(&self.downstream)
            .entry(peer.to_string())
            .or_default()
            .observe(d);
    }

    /// Records a whole step's round trip at the origin.
    pub fn step(&self, d: Duration) {
        lock(&self.step).observe(d);
    }

    /// Records a finished generation at the origin.
    pub fn generation(&self, tokens: u64, elapsed: Duration) {
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
        self.generations.fetch_add(1, Ordering::Relaxed);
        *lock(&self.generation_s) += elapsed.as_secs_f64();
        let secs = elapsed.as_secs_f64();
        if secs > 0.0 {
            *lock(&self.last_tokens_per_s) = tokens as f64 / secs;
        }
    }

    /// Records that this node's stage of plan `epoch` is loaded and serving.
    pub fn stage_loaded(&self, epoch: u64) {
        self.loaded_epoch.fetch_max(epoch, Ordering::Relaxed);
    }

    /// Counts a generation that ended in an error.
    pub fn generation_error(&self) {
        self.generation_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failover (a new attempt on a new plan).
    pub fn failover(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a stage step that ran in one model call with other sessions' steps.
    pub fn batched_step(&self) {
        self.batched_steps.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a generation as started; the guard marks it finished when dropped.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// The Prometheus text of every metric; `epoch` and `hops` come from the node's view.
    pub fn render(&self, epoch: u64, hops: &[HopRtt]) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        family(
            &mut out,
            "shoal_epoch",
            "gauge",
            "Epoch of the plan in force.",
            [format!(" {epoch}")],
        );
        let simple = [
            (
                "shoal_generated_tokens_total",
                "counter",
                "Tokens generated for requests that started here.",
                load(&self.tokens) as f64,
            ),
            (
                "shoal_generation_seconds_total",
                "counter",
                "Wall time of generations that started here.",
                *lock(&self.generation_s),
            ),
            (
                "shoal_tokens_per_second",
                "gauge",
                "Tokens per second of the last finished generation.",
                *lock(&self.last_tokens_per_s),
            ),
            (
                "shoal_generations_total",
                "counter",
                "Finished generations that started here.",
                load(&self.generations) as f64,
            ),
            (
                "shoal_generation_errors_total",
                "counter",
                "Generations that ended with an error.",
                load(&self.generation_errors) as f64,
            ),
            (
                "shoal_failovers_total",
                "counter",
                "Retries of a generation on a new plan.",
                load(&self.failovers) as f64,
            ),
            (
                "shoal_batched_steps_total",
                "counter",
                "Stage steps computed in one model call with other sessions' steps.",
                load(&self.batched_steps) as f64,
            ),
            (
                "shoal_generations_in_flight",
                "gauge",
                "Generations running now.",
                load(&self.in_flight) as f64,
            ),
            (
                "shoal_stage_loaded_epoch",
                "gauge",
                "Latest plan epoch whose stage this node has loaded (0: none).",
                load(&self.loaded_epoch) as f64,
            ),
        ];
        for (name, kind, help, v) in simple {
            family(&mut out, name, kind, help, [format!(" {v}")]);
        }
        let compute = lock(&self.compute).clone();
        family(
            &mut out,
            "shoal_stage_compute_seconds",
            "summary",
            "Compute time of this node's stage, per step.",
            compute.iter().flat_map(|((stage, layers), s)| {
                summary_lines(&format!("{{stage=\"{stage}\",layers=\"{layers}\"}}"), s)
            }),
        );
        let downstream = lock(&self.downstream).clone();
        family(
            &mut out,
            "shoal_downstream_seconds",
            "summary",
            "Round trip of requests to the next stage, everything downstream included.",
            downstream
                .iter()
                .flat_map(|(peer, s)| summary_lines(&format!("{{to=\"{peer}\"}}"), s)),
        );
        let step = *lock(&self.step);
        family(
            &mut out,
            "shoal_step_seconds",
            "summary",
            "Round trip of one step through the whole pipeline, seen by the origin.",
            summary_lines("", &step),
        );
        family(
            &mut out,
            "shoal_hop_rtt_seconds",
            "gauge",
            "Ping round trip of each hop between consecutive stages of the plan.",
            hops.iter()
                .map(|h| format!("{{from=\"{}\",to=\"{}\"}} {}", h.from, h.to, h.rtt_s)),
        );
        let mut refused = lock(&self.refused).clone();
        for r in Refusal::ALL {
            refused.entry(r.label().to_string()).or_default();
        }
        family(
            &mut out,
            "shoal_refused_total",
            "counter",
            "Pipeline messages refused, by reason.",
            refused
                .iter()
                .map(|(k, v)| format!("{{reason=\"{k}\"}} {v}")),
        );
        out
    }
}

/// Writes one metric family: HELP, TYPE, then each sample as `name` + `suffix`, where a
/// suffix is `_sum{..} v`, `{..} v` or ` v`.
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = String>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for s in samples {
        let _ = writeln!(out, "{name}{s}");
    }
}

/// `_sum` and `_count` sample suffixes of a summary with `labels` (`{..}` or empty).
fn summary_lines(labels: &str, s: &Summary) -> [String; 2] {
    [
        format!("_sum{labels} {}", s.sum_s),
        format!("_count{labels} {}", s.count),
    ]
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_samples_under_its_header() {
        let m = Metrics::default();
        m.refuse("replay");
        m.refuse("replay");
        m.stage_compute(1, "3-5", Duration::from_millis(20));
        m.downstream("abc", Duration::from_millis(5));
        m.generation(10, Duration::from_secs(2));
        let text = m.render(
            4,
            &[HopRtt {
                from: "a".into(),
                to: "b".into(),
                rtt_s: 0.001,
            }],
        );
        assert!(text.contains("shoal_epoch 4\n"), "{text}");
        assert!(
            text.contains("shoal_refused_total{reason=\"replay\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("shoal_refused_total{reason=\"bad_signature\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("shoal_stage_compute_seconds_count{stage=\"1\",layers=\"3-5\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("shoal_tokens_per_second 5\n"), "{text}");
        assert!(
            text.contains("shoal_hop_rtt_seconds{from=\"a\",to=\"b\"} 0.001\n"),
            "{text}"
        );
        // Every sample line follows its own family's TYPE line.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split_whitespace().next().unwrap().to_string();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&family), "{line} after {family}");
            }
        }
    }
}
