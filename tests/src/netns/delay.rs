//! The delay line: latency and jitter without netem.
//!
//! The hub namespace routes every packet of an impaired access link through a TUN interface
//! (`up<i>` for packets leaving node i, `dn<i>` for packets going to it). One thread of the
//! test process owns all those TUN descriptors: it reads each packet, gives it a release time
//! and writes it back into the same TUN interface when that time comes; the kernel then sees
//! it arrive on the TUN interface and policy routing sends it on towards its destination.
//! Everything IP goes through it — TCP, QUIC/UDP, ICMP — so the whole link is impaired, as a
//! real Wi-Fi link would be.
//!
//! Release time of a packet: `max(arrival + d, release of the previous packet)` with
//! `d = base - jitter + Exp(mean = jitter)`, so the mean one-way delay is `base`, its standard
//! deviation is `jitter`, the smallest delay is `base - jitter >= 0` and the tail is long, as
//! queueing and link-layer retries make it. Packets leave in order (a Wi-Fi link retries in
//! order; reordering would make TCP see spurious losses that the imposed profile does not
//! have), so closely spaced packets share the delay of a slow one before them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use super::sys;

/// At most this many bytes wait in one direction; beyond it packets are dropped (the
/// delay line must stay bounded even if a test floods an unshaped link).
const MAX_QUEUED_BYTES: usize = 8 << 20;
/// The thread re-checks its stop flag at least this often.
const IDLE_WAKE: Duration = Duration::from_millis(20);
/// Largest packet a TUN read can return (IP packets up to 64 KiB).
const MAX_PACKET: usize = 65_536;

/// One direction of one access link: which TUN interface and what delay it adds.
#[derive(Clone, Debug)]
pub struct DelaySpec {
    /// TUN interface name in the hub namespace.
    pub tun: String,
    /// Mean one-way delay.
    pub base: Duration,
    /// Standard deviation of the one-way delay (at most `base`).
    pub jitter: Duration,
}

/// A small deterministic generator (splitmix64): the bed needs reproducible, not secret, noise.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    /// The next value, uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Release times of one direction (pure: no IO, driven with explicit instants in tests).
#[derive(Clone, Debug)]
pub struct Schedule {
    base: f64,
    jitter: f64,
    rng: SplitMix,
    last: Option<Instant>,
}

impl Schedule {
    /// A schedule with mean delay `base` and one-way standard deviation `jitter`.
    pub fn new(base: Duration, jitter: Duration, seed: u64) -> Self {
        Schedule {
            base: base.as_secs_f64(),
            jitter: jitter.as_secs_f64().min(base.as_secs_f64()),
            rng: SplitMix::new(seed),
            last: None,
        }
    }

    /// One delay sample: `base - jitter + Exp(jitter)`.
    pub fn sample(&mut self) -> Duration {
        if self.jitter == 0.0 {
            return Duration::from_secs_f64(self.base);
        }
        let exp = -self.jitter * (1.0 - self.rng.unit()).ln();
        Duration::from_secs_f64((self.base - self.jitter + exp).max(0.0))
    }

    /// When a packet that arrived at `now` leaves: after its own delay and after the packet
    /// before it (first in, first out).
    pub fn release(&mut self, now: Instant) -> Instant {
        let mut at = now + self.sample();
        if let Some(last) = self.last {
            at = at.max(last);
        }
        self.last = Some(at);
        at
    }
}

/// Counters of the delay line, shared with the owner for reports.
#[derive(Debug, Default)]
pub struct DelayStats {
    /// Packets written back after their delay.
    pub forwarded: AtomicU64,
    /// Packets dropped because a direction already held [`MAX_QUEUED_BYTES`].
    pub overflow: AtomicU64,
}

/// The running delay line; dropping it stops the thread and closes (removes) the TUN devices.
#[derive(Debug)]
pub struct DelayLine {
    stop: Arc<AtomicBool>,
    stats: Arc<DelayStats>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl DelayLine {
    /// Creates the TUN interfaces of `specs` inside namespace `ns` and starts forwarding.
    /// Returns once the interfaces exist (they still need to be set up and routed).
    pub fn start(ns: &str, specs: Vec<DelaySpec>, seed: u64) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(DelayStats::default());
        let (ready_tx, ready_rx) = sync_channel::<Result<()>>(1);
        let ns = ns.to_string();
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name(format!("delay-line-{ns}"))
            .spawn(move || {
                let opened = open_all(&ns, &specs, seed);
                let queues = match opened {
                    Ok(q) => {
                        let _ = ready_tx.send(Ok(()));
                        q
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                        return Err(e);
                    }
                };
                sys::make_thread_timely();
                run(queues, &stop2, &stats2)
            })
            .context("spawning the delay-line thread")?;
        ready_rx
            .recv()
            .context("delay-line thread died during start")??;
        Ok(DelayLine {
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// Packets forwarded and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.stats.forwarded.load(Ordering::Relaxed),
            self.stats.overflow.load(Ordering::Relaxed),
        )
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Err(e)) => eprintln!("netns: delay line stopped with an error: {e:#}"),
                Err(_) => eprintln!("netns: delay line thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

/// One direction in the loop: its device, its schedule and the packets it holds.
struct Queue {
    dev: File,
    schedule: Schedule,
    held: VecDeque<(Instant, Vec<u8>)>,
    held_bytes: usize,
}

fn open_all(ns: &str, specs: &[DelaySpec], seed: u64) -> Result<Vec<Queue>> {
    sys::enter_netns(ns).with_context(|| format!("entering namespace {ns}"))?;
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let dev = sys::open_tun(&s.tun).with_context(|| format!("creating TUN {}", s.tun))?;
            let schedule = Schedule::new(s.base, s.jitter, seed ^ ((i as u64 + 1) * 0x1000_0001));
            Ok(Queue {
                dev,
                schedule,
                held: VecDeque::new(),
                held_bytes: 0,
            })
        })
        .collect()
}

fn run(mut queues: Vec<Queue>, stop: &AtomicBool, stats: &DelayStats) -> Result<()> {
    let mut buf = vec![0u8; MAX_PACKET];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for q in &mut queues {
            release_due(q, now, stats);
        }
        let next = queues
            .iter()
            .filter_map(|q| q.held.front().map(|h| h.0))
            .min();
        let timeout = next.map_or(IDLE_WAKE, |t| t.saturating_duration_since(Instant::now()));
        let devs: Vec<&File> = queues.iter().map(|q| &q.dev).collect();
        let ready = sys::wait_readable(&devs, timeout.min(IDLE_WAKE)).context("ppoll")?;
        for (q, r) in queues.iter_mut().zip(ready) {
            if r {
                drain(q, &mut buf, stats)?;
            }
        }
    }
    Ok(())
}

fn release_due(q: &mut Queue, now: Instant, stats: &DelayStats) {
    while q.held.front().is_some_and(|h| h.0 <= now) {
        let Some((_, pkt)) = q.held.pop_front() else {
            break;
        };
        q.held_bytes -= pkt.len();
        // A TUN write hands the packet to the stack synchronously; a failure means the
        // stack refused this one packet, which is a loss like any other.
        if q.dev.write(&pkt).is_ok() {
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn drain(q: &mut Queue, buf: &mut [u8], stats: &DelayStats) -> Result<()> {
    // Bounded so that a flood on one device cannot delay releases on the others.
    for _ in 0..256 {
        let n = match q.dev.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading a TUN device"),
        };
        if q.held_bytes + n > MAX_QUEUED_BYTES {
            stats.overflow.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let at = q.schedule.release(Instant::now());
        q.held_bytes += n;
        q.held.push_back((at, buf[..n].to_vec()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_sd(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        (
            m,
            (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt(),
        )
    }

    #[test]
    fn samples_have_the_imposed_mean_and_deviation() {
        let mut s = Schedule::new(Duration::from_millis(20), Duration::from_millis(15), 7);
        let xs: Vec<f64> = (0..200_000)
            .map(|_| s.sample().as_secs_f64() * 1e3)
            .collect();
        let (m, sd) = mean_sd(&xs);
        assert!((m - 20.0).abs() < 0.3, "mean {m}");
        assert!((sd - 15.0).abs() < 0.3, "sd {sd}");
        assert!(
            xs.iter().all(|&x| x >= 5.0 - 1e-9),
            "a delay below base - jitter"
        );
    }

    #[test]
    fn packets_leave_in_arrival_order() {
        let mut s = Schedule::new(Duration::from_millis(20), Duration::from_millis(15), 3);
        let t0 = Instant::now();
        let mut prev = t0;
        for k in 0..10_000u64 {
            let at = s.release(t0 + Duration::from_micros(k * 100));
            assert!(at >= prev);
            prev = at;
        }
    }

    #[test]
    fn zero_jitter_is_a_fixed_delay() {
        let mut s = Schedule::new(Duration::from_millis(5), Duration::ZERO, 1);
        assert!((0..100).all(|_| s.sample() == Duration::from_millis(5)));
    }
}
