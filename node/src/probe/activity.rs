//! When a link carried a bandwidth train: [`TrainActivity`], this node's own record (marked by
//! the train's sender and by the echo that receives one), and [`BusySpans`], the intervals
//! behind it, which the loss prober also keeps per peer from the peer's echoes. Round trips
//! measured across a busy link include the train's queue, so loss probing leaves them out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long after a bandwidth train's last datagram this node's link still counts as busy
/// (its queue drains).
pub(super) const TRAIN_AFTERGLOW: Duration = Duration::from_millis(300);

/// Times a link was busy with a bandwidth train, as intervals, oldest first; the latest
/// [`BUSY_SPANS`] are kept (a loss probe's flight is far shorter than the time they cover).
#[derive(Debug, Clone, Default)]
pub(super) struct BusySpans(VecDeque<(Instant, Instant)>);

/// Busy intervals a [`BusySpans`] remembers.
const BUSY_SPANS: usize = 16;

impl BusySpans {
    /// Records the link busy from `start` to `end`: the latest interval grows when `start` is
    /// at most `gap` past its end, else a new one begins.
    pub(super) fn add(&mut self, start: Instant, end: Instant, gap: Duration) {
        match self.0.back_mut() {
            Some((_, e)) if start <= *e + gap => *e = (*e).max(end),
            _ => {
                self.0.push_back((start, end));
                while self.0.len() > BUSY_SPANS {
                    self.0.pop_front();
                }
            }
        }
    }

    /// Whether the link was busy at any time from `from` to `to`.
    pub(super) fn meets(&self, from: Instant, to: Instant) -> bool {
        self.0.iter().any(|&(a, b)| a <= to && from <= b)
    }
}

/// When this node's own link carried a bandwidth train lately (sent or received). Round trips
/// measured meanwhile include the train's queue, not the link's delay, so the loss probe
/// leaves them out, and the echo tells the prober so in its answers. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TrainActivity {
    spans: std::sync::Arc<std::sync::Mutex<BusySpans>>,
}

impl TrainActivity {
    fn spans(&self) -> std::sync::MutexGuard<'_, BusySpans> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the link busy for `for_` from now (never shortens an earlier mark).
    pub fn mark(&self, for_: Duration) {
        let now = Instant::now();
        self.spans().add(now, now + for_, Duration::ZERO);
    }

    /// Whether the link carries (or just carried) a train.
    pub fn busy(&self) -> bool {
        let now = Instant::now();
        self.busy_during(now, now)
    }

    /// Whether the link was busy at any time from `from` to `to`.
    pub fn busy_during(&self, from: Instant, to: Instant) -> bool {
        self.spans().meets(from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_remembers_when_the_link_was_busy() {
        let a = TrainActivity::default();
        let before = Instant::now();
        assert!(!a.busy() && !a.busy_during(before, before + Duration::from_secs(9)));
        a.mark(Duration::from_secs(60));
        assert!(a.busy());
        // A probe sent before the train started, still out when it began, is disturbed.
        assert!(a.busy_during(before, Instant::now()));
        // One back before the mark is not.
        assert!(!a.busy_during(before - Duration::from_secs(2), before));
    }
}
