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
//! Release time of a packet: `max(arrival + d, release of the previous packet of its flow)`
//! with `d = base - jitter + Exp(mean = jitter)`, so the mean one-way delay is `base`, its
//! standard deviation is `jitter`, the smallest delay is `base - jitter >= 0` and the tail is
//! long, as queueing and link-layer retries make it. A flow (protocol, addresses, ports) leaves
//! in order, so a TCP connection sees no reordering the imposed profile does not have, and its
//! closely spaced packets share the delay of a slow one before them. Flows do not wait for
//! each other: with one queue for the whole link, every packet of a busy link would queue
//! behind the slowest recent one and the link's mean delay would grow with its load (the
//! swarm's own probes put it 25-40% above the imposed RTT), so the bed would no longer impose
//! what it claims to.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
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
/// Flows whose last release is past are forgotten once a direction tracks this many.
const MAX_FLOWS: usize = 4096;

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
    /// Release time of the latest packet of each flow.
    last: HashMap<u64, Instant>,
}

impl Schedule {
    /// A schedule with mean delay `base` and one-way standard deviation `jitter`.
    pub fn new(base: Duration, jitter: Duration, seed: u64) -> Self {
        Schedule {
            base: base.as_secs_f64(),
            jitter: jitter.as_secs_f64().min(base.as_secs_f64()),
            rng: SplitMix::new(seed),
            last: HashMap::new(),
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

    /// When a packet of `flow` that arrived at `now` leaves: after its own delay and after
    /// the packet of the same flow before it (first in, first out within a flow).
    pub fn release(&mut self, now: Instant, flow: u64) -> Instant {
        if self.last.len() >= MAX_FLOWS {
            // A flow whose last packet has left constrains nothing.
            self.last.retain(|_, t| *t > now);
        }
        let mut at = now + self.sample();
        if let Some(&last) = self.last.get(&flow) {
            at = at.max(last);
        }
        self.last.insert(flow, at);
        at
    }
}

/// The flow of an IP packet: a hash of protocol, addresses and (for TCP and UDP) ports.
/// Anything unparsable (or a fragment) is flow 0.
pub fn flow_of(pkt: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let (proto, addrs, l4) = match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let fragment = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff != 0;
            let l4 = if fragment {
                &[][..]
            } else {
                pkt.get(ihl..).unwrap_or(&[])
            };
            (pkt[9], &pkt[12..20], l4)
        }
        Some(6) if pkt.len() >= 40 => (pkt[6], &pkt[8..40], &pkt[40..]),
        _ => return 0,
    };
    proto.hash(&mut h);
    addrs.hash(&mut h);
    if matches!(proto, 6 | 17) {
        l4.get(..4).hash(&mut h);
    }
    h.finish()
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
    /// Packets by release time; the sequence number keeps equal times first in, first out.
    held: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    held_bytes: usize,
    seq: u64,
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
                held: BinaryHeap::new(),
                held_bytes: 0,
                seq: 0,
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
            .filter_map(|q| q.held.peek().map(|h| h.0.0))
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
    while q.held.peek().is_some_and(|h| h.0.0 <= now) {
        let Some(Reverse((_, _, pkt))) = q.held.pop() else {
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
        let at = q.schedule.release(Instant::now(), flow_of(&buf[..n]));
        q.held_bytes += n;
        q.seq += 1;
        q.held.push(Reverse((at, q.seq, buf[..n].to_vec())));
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
    fn a_flow_leaves_in_arrival_order() {
        let mut s = Schedule::new(Duration::from_millis(20), Duration::from_millis(15), 3);
        let t0 = Instant::now();
        let mut prev = t0;
        for k in 0..10_000u64 {
            let at = s.release(t0 + Duration::from_micros(k * 100), 42);
            assert!(at >= prev);
            prev = at;
        }
    }

    /// Mean delay of a sparse flow (one packet every 20 ms, like shoal's echo probe) while a
    /// dense one (a packet every 100 µs) crosses the same link, as flow `sparse_flow`.
    fn sparse_mean_ms(sparse_flow: u64) -> f64 {
        let mut s = Schedule::new(Duration::from_millis(20), Duration::from_millis(10), 5);
        let t0 = Instant::now();
        let mut sparse = Vec::new();
        for k in 0..400_000u64 {
            let now = t0 + Duration::from_micros(k * 100);
            s.release(now, 1);
            if k % 200 == 0 {
                sparse.push((s.release(now, sparse_flow) - now).as_secs_f64() * 1e3);
            }
        }
        mean_sd(&sparse).0
    }

    #[test]
    fn a_busy_flow_does_not_delay_another() {
        // Its own flow: only its own slow packets hold it back (a 20 ms gap against 10 ms of
        // jitter: E[(Laplace(10 ms) - 20 ms)+] ~ 0.7 ms), within 5% of the imposed 20 ms.
        let own = sparse_mean_ms(2);
        assert!((own - 20.0).abs() < 1.0, "sparse flow mean delay {own} ms");
        // Sharing the dense flow's order (one queue per link), it waits behind the slowest
        // recent packet of the link.
        let shared = sparse_mean_ms(1);
        assert!(shared > 30.0, "one queue for all: mean delay {shared} ms");
    }

    #[test]
    fn flows_are_told_apart_by_ports_and_addresses() {
        let mut udp = vec![0u8; 28];
        udp[0] = 0x45;
        udp[9] = 17;
        udp[12..16].copy_from_slice(&[198, 18, 0, 2]);
        udp[16..20].copy_from_slice(&[198, 18, 1, 2]);
        udp[20..24].copy_from_slice(&[0x1f, 0x90, 0x1f, 0x91]);
        let mut other_port = udp.clone();
        other_port[23] = 0x92;
        let mut other_host = udp.clone();
        other_host[19] = 3;
        let f = flow_of(&udp);
        assert_ne!(f, flow_of(&other_port));
        assert_ne!(f, flow_of(&other_host));
        // The payload does not matter.
        let mut longer = udp.clone();
        longer.extend_from_slice(&[9; 100]);
        assert_eq!(f, flow_of(&longer));
        assert_eq!(flow_of(&[]), 0);
        assert_eq!(flow_of(&[0x45, 0]), 0);
    }

    #[test]
    fn zero_jitter_is_a_fixed_delay() {
        let mut s = Schedule::new(Duration::from_millis(5), Duration::ZERO, 1);
        assert!((0..100).all(|_| s.sample() == Duration::from_millis(5)));
    }
}
