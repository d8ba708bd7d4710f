//! Packet loss by UDP datagrams (reliable streams hide loss, datagrams do not):
//! [`LossProber`] sends a [`LossProbe`] to every target's echo at a fixed rate and, once the
//! timeout has passed, reports each probe as a [`LossSample`] on a bounded channel: answered
//! (with its kernel-stamped round trip, less the echo's holding time) or lost. Probes that
//! crossed a link carrying a train (this node's, as its [`TrainActivity`] says, or the peer's,
//! as its echoes say, kept per peer in [`BusySpans`]) are marked disturbed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_keys::NodeId;
use shoal_protocol::{LossProbe, MAX_LOSS_PROBE_BYTES, decode, encode};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::ProbeError;
use super::activity::{BusySpans, TRAIN_AFTERGLOW, TrainActivity};
use super::stamp::{recv_stamped, stamp_arrivals, wall_us};

/// One loss-probe outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossSample {
    /// The probed peer.
    pub peer: NodeId,
    /// True when no echo came back within the timeout.
    pub lost: bool,
    /// Round-trip time of the answered probe (`None` when lost).
    pub rtt: Option<Duration>,
    /// The probe crossed a link that was carrying a bandwidth train (this node's, as
    /// `activity` says, or the peer's, as its echoes say): its fate says nothing about the
    /// link, and the estimator leaves it out.
    pub disturbed: bool,
}

/// Sends loss probes to every target and reports the outcomes.
#[derive(Debug)]
pub struct LossProber {
    socket: UdpSocket,
    targets: watch::Receiver<BTreeMap<NodeId, SocketAddr>>,
    out: mpsc::Sender<LossSample>,
    interval: Duration,
    timeout: Duration,
    activity: TrainActivity,
}

/// A probe awaiting its echo.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    peer: NodeId,
    /// When it was sent, for the timeout.
    at: Instant,
    /// When it was sent, on the wall clock the kernel stamps arrivals with (µs).
    sent_us: u64,
    /// Once the echo is back: the round trip, and whether the probe is already known to be
    /// disturbed (this node's link was busy meanwhile, or the echo held it too long).
    answer: Option<(Duration, bool)>,
}

type Pending = HashMap<u32, Outstanding>;

/// An echo that held a probe longer than this (its machine was busy) says little about the
/// link: the sample is left out. It also bounds how much closer than it is a lying echo can
/// make itself look.
const MAX_HELD: Duration = Duration::from_millis(20);

/// A probe sent this long before the first one whose echo said the peer's link was busy may
/// have met the train's queue too (the train had reached the queue; the echo that says so
/// came through later): such probes are left out as well.
const PEER_BUSY_LEAD: Duration = Duration::from_millis(100);

impl LossProber {
    /// A prober on a fresh UDP socket bound to `bind` (port 0 is fine); `activity` is this
    /// node's own train activity.
    pub async fn new(
        bind: SocketAddr,
        targets: watch::Receiver<BTreeMap<NodeId, SocketAddr>>,
        out: mpsc::Sender<LossSample>,
        (rate_hz, timeout): (u32, Duration),
        activity: TrainActivity,
    ) -> Result<Self, ProbeError> {
        Ok(LossProber {
            socket: UdpSocket::bind(bind).await?,
            targets,
            out,
            interval: Duration::from_secs_f64(1.0 / f64::from(rate_hz.max(1))),
            timeout,
            activity,
        })
    }

    /// Probes until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let nonce: u64 = rand::rng().random();
        let mut seq = 0u32;
        // Echoes are stamped by the kernel on arrival, so that the round trip does not
        // include how late this busy machine runs this task.
        let stamped = stamp_arrivals(&self.socket);
        let mut pending = Pending::new();
        // Per peer: the send times of probes its echoes said crossed a train, as intervals,
        // and the latest round trip (how long a lost probe would have been in flight).
        let mut peer_busy: HashMap<NodeId, BusySpans> = HashMap::new();
        let mut flight: HashMap<NodeId, Duration> = HashMap::new();
        let mut tick = tokio::time::interval(self.interval);
        let mut buf = [0u8; MAX_LOSS_PROBE_BYTES];
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    self.settle(&mut pending, &peer_busy, &flight);
                    let targets = self.targets.borrow().clone();
                    for (peer, addr) in targets {
                        seq = seq.wrapping_add(1);
                        let sent_us = wall_us();
                        let probe = LossProbe { nonce, seq, sent_us, echo: false, busy: false, held_us: 0 };
                        let at = Instant::now();
                        if let Ok(bytes) = encode(&probe)
                            && self.socket.send_to(&bytes, addr).await.is_ok()
                        {
                            pending.insert(seq, Outstanding { peer, at, sent_us, answer: None });
                        }
                    }
                }
                r = recv_stamped(&self.socket, &mut buf, stamped) => {
                    let Ok((n, _, stamp)) = r else { continue };
                    let Ok(echo) = decode::<LossProbe>(&buf[..n]) else { continue };
                    if !echo.echo || echo.nonce != nonce {
                        continue;
                    }
                    if let Some(o) = pending.get_mut(&echo.seq).filter(|o| o.answer.is_none()) {
                        if echo.busy {
                            note_busy(peer_busy.entry(o.peer).or_default(), o.at);
                        }
                        let held = Duration::from_micros(u64::from(echo.held_us));
                        // A train that started crossing this node's link while the probe was
                        // out delays its echo as much as one under way when it left.
                        let own_busy = self.activity.busy_during(o.at, Instant::now());
                        let rtt = echo_rtt(o, stamp.unwrap_or_else(wall_us), held);
                        flight.insert(o.peer, rtt);
                        o.answer = Some((rtt, own_busy || held > MAX_HELD));
                    }
                }
            }
        }
    }

    /// Reports every probe sent more than the timeout ago: answered, or lost. Both are judged
    /// disturbed by the same rule, so that leaving them out does not bias the loss: this
    /// node's link was busy while the probe was out (for a lost one: within the peer's latest
    /// round trip), or it was sent while the peer's echoes said the peer's link was busy, or
    /// shortly before (those echoes come later, hence the wait).
    fn settle(
        &self,
        pending: &mut Pending,
        peer_busy: &HashMap<NodeId, BusySpans>,
        flight: &HashMap<NodeId, Duration>,
    ) {
        let timeout = self.timeout;
        let due: Vec<u32> = pending
            .iter()
            .filter(|(_, o)| o.at.elapsed() > timeout)
            .map(|(s, _)| *s)
            .collect();
        for s in due {
            let Some(o) = pending.remove(&s) else {
                continue;
            };
            let peer_was_busy = peer_busy
                .get(&o.peer)
                .is_some_and(|spans| in_busy_span(spans, o.at));
            let sample = match o.answer {
                Some((rtt, own)) => LossSample {
                    peer: o.peer,
                    lost: false,
                    rtt: Some(rtt),
                    disturbed: own || peer_was_busy,
                },
                None => {
                    let back = o.at + flight.get(&o.peer).copied().unwrap_or(timeout);
                    LossSample {
                        peer: o.peer,
                        lost: true,
                        rtt: None,
                        disturbed: self.activity.busy_during(o.at, back) || peer_was_busy,
                    }
                }
            };
            let _ = self.out.try_send(sample);
        }
    }
}

/// Whether a probe sent at `at` falls in one of the peer's busy spans (send times of probes
/// whose echoes said so), or up to [`PEER_BUSY_LEAD`] before one.
fn in_busy_span(spans: &BusySpans, at: Instant) -> bool {
    spans.meets(at, at + PEER_BUSY_LEAD)
}

/// The round trip of the probe `o` whose echo arrived at `arrived_us` (wall clock, µs) after
/// the echo held it for `held`. Should the wall clock have stepped back meanwhile, the
/// monotonic clock (less exact: it includes this task's scheduling) stands in.
fn echo_rtt(o: &Outstanding, arrived_us: u64, held: Duration) -> Duration {
    let rtt = match arrived_us.checked_sub(o.sent_us) {
        Some(us) if Duration::from_micros(us) <= o.at.elapsed() + MAX_HELD => {
            Duration::from_micros(us)
        }
        _ => o.at.elapsed(),
    };
    rtt.saturating_sub(held.min(MAX_HELD))
}

/// Records that the probe sent at `at` crossed the peer's busy link: it extends the latest
/// interval when within [`TRAIN_AFTERGLOW`] of it, else starts one.
fn note_busy(spans: &mut BusySpans, at: Instant) {
    spans.add(at, at, TRAIN_AFTERGLOW);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::test_support::loopback_echo;
    use shoal_keys::Identity;

    #[tokio::test]
    async fn echo_answers_and_silence_counts_as_loss() {
        let cancel = CancellationToken::new();
        let port = loopback_echo(TrainActivity::default(), &cancel)
            .await
            .port();
        // A bound socket that never answers stands in for a link that loses everything.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let good = Identity::from_secret_bytes([1; 32]).node_id();
        let dead = Identity::from_secret_bytes([2; 32]).node_id();
        let targets = BTreeMap::from([
            (good, SocketAddr::from(([127, 0, 0, 1], port))),
            (dead, silent.local_addr().unwrap()),
        ]);
        let (_tx, targets_rx) = watch::channel(targets);
        let (out, mut rx) = mpsc::channel(1024);
        let prober = LossProber::new(
            "127.0.0.1:0".parse().unwrap(),
            targets_rx,
            out,
            (200, Duration::from_millis(100)),
            TrainActivity::default(),
        )
        .await
        .unwrap();
        tokio::spawn(prober.run(cancel.clone()));
        let (mut good_ok, mut good_lost, mut dead_lost) = (0, 0, 0);
        while good_ok < 20 || dead_lost < 20 {
            let s = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            match (s.peer == good, s.lost) {
                (true, false) => good_ok += 1,
                (true, true) => good_lost += 1,
                (false, true) => dead_lost += 1,
                (false, false) => panic!("an echo from a socket that never answers"),
            }
        }
        assert!(good_lost <= 2, "{good_lost} probes lost on loopback");
        cancel.cancel();
    }

    /// A peer whose link carries a train says so in its echoes, and the prober marks those
    /// samples disturbed.
    #[tokio::test]
    async fn probes_across_a_link_carrying_a_train_are_disturbed() {
        let cancel = CancellationToken::new();
        let peer_link = TrainActivity::default();
        let addr = loopback_echo(peer_link.clone(), &cancel).await;
        let peer = Identity::from_secret_bytes([3; 32]).node_id();
        let (_tx, targets_rx) = watch::channel(BTreeMap::from([(peer, addr)]));
        let (out, mut rx) = mpsc::channel(1024);
        let own_link = TrainActivity::default();
        let prober = LossProber::new(
            "127.0.0.1:0".parse().unwrap(),
            targets_rx,
            out,
            (200, Duration::from_millis(100)),
            own_link.clone(),
        )
        .await
        .unwrap();
        tokio::spawn(prober.run(cancel.clone()));
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap()
        };
        // Quiet links: answered and undisturbed.
        let s = next().await;
        assert!(!s.lost && !s.disturbed, "{s:?}");
        peer_link.mark(Duration::from_secs(30));
        let mut seen = 0;
        while seen < 5 {
            let s = next().await;
            // Probes answered before the mark may still be in flight.
            if s.disturbed {
                seen += 1;
            }
        }
        cancel.cancel();
    }

    /// The echo's holding time comes off the round trip, but no more than MAX_HELD of it: a
    /// lying echo cannot make itself look arbitrarily close.
    #[test]
    fn the_echos_holding_time_comes_off_the_round_trip_within_a_bound() {
        let o = Outstanding {
            peer: Identity::from_secret_bytes([4; 32]).node_id(),
            at: Instant::now() - Duration::from_millis(500),
            sent_us: 1_000_000,
            answer: None,
        };
        let ms = Duration::from_millis;
        assert_eq!(echo_rtt(&o, 1_080_000, ms(0)), ms(80));
        assert_eq!(echo_rtt(&o, 1_080_000, ms(5)), ms(75));
        assert_eq!(echo_rtt(&o, 1_080_000, ms(500)), ms(80) - MAX_HELD);
        // A wall clock that stepped back: the monotonic clock stands in.
        assert!(echo_rtt(&o, 900_000, ms(0)) >= ms(500));
    }

    #[test]
    fn probes_just_before_a_peers_busy_span_count_as_disturbed() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let ms = Duration::from_millis;
        let mut spans = BusySpans::default();
        note_busy(&mut spans, t0);
        note_busy(&mut spans, t0 + ms(40));
        assert!(in_busy_span(&spans, t0 + ms(20)));
        // Met the train's queue before any echo could say so.
        assert!(in_busy_span(&spans, t0 - ms(60)));
        assert!(!in_busy_span(&spans, t0 - PEER_BUSY_LEAD - ms(1)));
        assert!(!in_busy_span(&spans, t0 + ms(41)));
    }

    /// Forwards datagrams from the prober to `echo` and back, dropping each one towards the
    /// echo with probability `p` (seeded), like a lossy link.
    async fn lossy_relay(
        echo: SocketAddr,
        p: f64,
        seed: u64,
        cancel: CancellationToken,
    ) -> SocketAddr {
        use rand::SeedableRng;
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut prober = None;
            let mut buf = [0u8; 256];
            loop {
                let (n, from) = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = sock.recv_from(&mut buf) => r.unwrap(),
                };
                if from == echo {
                    if let Some(to) = prober {
                        let _ = sock.send_to(&buf[..n], to).await;
                    }
                } else {
                    prober = Some(from);
                    if !rng.random_bool(p) {
                        let _ = sock.send_to(&buf[..n], echo).await;
                    }
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn real_datagrams_tell_five_from_ten_percent_loss() {
        let cancel = CancellationToken::new();
        let echo_addr = loopback_echo(TrainActivity::default(), &cancel).await;
        let five = Identity::from_secret_bytes([5; 32]).node_id();
        let ten = Identity::from_secret_bytes([10; 32]).node_id();
        let targets = BTreeMap::from([
            (five, lossy_relay(echo_addr, 0.05, 1, cancel.clone()).await),
            (ten, lossy_relay(echo_addr, 0.10, 2, cancel.clone()).await),
        ]);
        let (_tx, targets_rx) = watch::channel(targets);
        let (out, mut rx) = mpsc::channel(4096);
        let prober = LossProber::new(
            "127.0.0.1:0".parse().unwrap(),
            targets_rx,
            out,
            (1000, Duration::from_millis(200)),
            TrainActivity::default(),
        )
        .await
        .unwrap();
        tokio::spawn(prober.run(cancel.clone()));
        let window = 1500;
        let mut est = BTreeMap::from([
            (five, crate::links::LinkEstimator::new(0.25, window)),
            (ten, crate::links::LinkEstimator::new(0.25, window)),
        ]);
        while est.values().any(|e| e.probe_count() < window) {
            let s = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            est.get_mut(&s.peer).unwrap().on_probe(s.lost);
        }
        cancel.cancel();
        // The relay drops one direction only, so the round-trip share is the imposed figure.
        let (l5, l10) = (est[&five].round_trip_loss(), est[&ten].round_trip_loss());
        assert!(
            l5 < 0.075 && l10 > 0.075,
            "5% link measured {l5}, 10% link measured {l10}"
        );
    }
}
