//! Link probing IO: timed transfers on `/shoal/probe/1` for bandwidth, and a UDP echo beside
//! the swarm for packet loss (reliable streams hide loss, datagrams do not).
//!
//! - [`serve_probes`] answers inbound [`BandwidthProbe`]s; malformed ones lower the sender's
//!   score.
//! - [`measure_bandwidth`] times an activation-sized and a 1 MiB transfer to one peer; the
//!   pair goes to [`crate::links::LinkEstimator::on_transfers`].
//! - [`UdpEcho`] echoes [`LossProbe`] datagrams and acknowledges [`TrainProbe`] datagrams
//!   with their arrival time; its port is announced in the capability.
//! - [`measure_train`] sends a datagram train to a peer's echo and returns the arrivals, from
//!   which [`crate::links::train_rate`] computes the link rate.
//! - [`LossProber`] sends probes to every target at a fixed rate and reports each one as
//!   answered (with its round-trip time) or lost (unanswered within the timeout) on a bounded
//!   channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_keys::NodeId;
use shoal_protocol::{
    BandwidthProbe, BandwidthProbeReply, Kind, LossProbe, MAX_ACK_EARLIER, MAX_LOSS_PROBE_BYTES,
    MAX_TRAIN_ACK_BYTES, MAX_TRAIN_DATAGRAM, TrainAck, TrainProbe, decode, encode, peek,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::swarm::{InboundRequest, NetError, NetworkHandle, Proto};

/// Errors of probing.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The request failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The peer's answer is malformed or does not match the probe.
    #[error("bad probe reply: {0}")]
    BadReply(String),
    /// A socket error.
    #[error("udp: {0}")]
    Io(#[from] std::io::Error),
}

/// Answers inbound bandwidth probes until cancelled.
pub async fn serve_probes(
    mut rx: mpsc::Receiver<InboundRequest>,
    net: NetworkHandle,
    cancel: CancellationToken,
) {
    loop {
        let req = tokio::select! {
            _ = cancel.cancelled() => return,
            req = rx.recv() => match req { Some(r) => r, None => return },
        };
        match decode::<BandwidthProbe>(&req.data) {
            Ok(p) => {
                let reply = BandwidthProbeReply {
                    nonce: p.nonce,
                    received_bytes: u32::try_from(p.payload.len()).unwrap_or(u32::MAX),
                    payload: vec![0; p.reply_bytes as usize],
                };
                match encode(&reply) {
                    Ok(bytes) => req.respond(bytes),
                    Err(e) => tracing::warn!(error = %e, "cannot encode probe reply"),
                }
            }
            Err(e) => {
                tracing::debug!(peer = %req.peer, error = %e, "bad bandwidth probe");
                let _ = net.penalise(req.peer, e.reason()).await;
            }
        }
    }
}

/// One timed transfer of `bytes` to `peer`; returns the elapsed seconds.
async fn timed_transfer(
    net: &NetworkHandle,
    peer: NodeId,
    bytes: usize,
) -> Result<f64, ProbeError> {
    let nonce = rand::rng().random();
    let frame = encode(&BandwidthProbe {
        nonce,
        reply_bytes: 0,
        payload: vec![0; bytes],
    })
    .map_err(|e| ProbeError::BadReply(e.to_string()))?;
    let start = Instant::now();
    let answer = net.request(peer.to_peer_id(), Proto::Probe, frame).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let reply =
        decode::<BandwidthProbeReply>(&answer).map_err(|e| ProbeError::BadReply(e.to_string()))?;
    if reply.nonce != nonce || reply.received_bytes as usize != bytes {
        return Err(ProbeError::BadReply("nonce or size mismatch".into()));
    }
    Ok(elapsed)
}

/// Two timed transfers, `((small_bytes, small_s), (large_bytes, large_s))`.
pub type TransferPair = ((u64, f64), (u64, f64));

/// Times a `small` (activation-sized) and a `large` transfer to `peer`.
pub async fn measure_bandwidth(
    net: &NetworkHandle,
    peer: NodeId,
    small: usize,
    large: usize,
) -> Result<TransferPair, ProbeError> {
    // A warm-up transfer opens the stream machinery so the timed ones measure the link.
    timed_transfer(net, peer, small).await?;
    let s = timed_transfer(net, peer, small).await?;
    let l = timed_transfer(net, peer, large).await?;
    Ok(((small as u64, s), (large as u64, l)))
}

/// How long after a bandwidth train's last datagram this node's link still counts as busy
/// (its queue drains).
const TRAIN_AFTERGLOW: Duration = Duration::from_millis(300);

/// Times a link was busy with a bandwidth train, as intervals, oldest first; the latest
/// [`BUSY_SPANS`] are kept (a loss probe's flight is far shorter than the time they cover).
#[derive(Debug, Clone, Default)]
struct BusySpans(VecDeque<(Instant, Instant)>);

/// Busy intervals a [`BusySpans`] remembers.
const BUSY_SPANS: usize = 16;

impl BusySpans {
    /// Records the link busy from `start` to `end`: the latest interval grows when `start` is
    /// at most `gap` past its end, else a new one begins.
    fn add(&mut self, start: Instant, end: Instant, gap: Duration) {
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
    fn meets(&self, from: Instant, to: Instant) -> bool {
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

/// The UDP echo socket of the loss probe.
#[derive(Debug)]
pub struct UdpEcho {
    socket: UdpSocket,
    activity: TrainActivity,
}

impl UdpEcho {
    /// Binds the echo socket; trains it receives are recorded in `activity`, and its echoes
    /// say whether `activity` is busy.
    pub async fn bind(addr: SocketAddr, activity: TrainActivity) -> Result<Self, ProbeError> {
        Ok(UdpEcho {
            socket: UdpSocket::bind(addr).await?,
            activity,
        })
    }

    /// The bound port (announced in the capability).
    pub fn port(&self) -> Result<u16, ProbeError> {
        Ok(self.socket.local_addr()?.port())
    }

    /// Echoes loss probes and acknowledges train datagrams until cancelled; anything else is
    /// ignored (UDP senders can be spoofed, so there is no one to blame).
    ///
    /// A train's arrival times are the kernel's receive timestamps (`SO_TIMESTAMPNS`) where
    /// the system gives them: on a busy machine this task may read a datagram many
    /// milliseconds after it arrived, and a batch read late would look like a burst the link
    /// never carried.
    pub async fn run(self, cancel: CancellationToken) {
        let stamped = stamp_arrivals(&self.socket);
        // A receive buffer as large as the system allows: a train arrives faster than a busy
        // machine may schedule this task, and a datagram dropped here would read as the
        // link's loss and thin the train's rate.
        let _ = nix::sys::socket::setsockopt(
            &self.socket,
            nix::sys::socket::sockopt::RcvBuf,
            &(8 << 20),
        );
        let mut buf = [0u8; MAX_TRAIN_DATAGRAM];
        let mut trains = RecentTrains::default();
        loop {
            let (n, from, stamp) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = recv_stamped(&self.socket, &mut buf, stamped) => match r {
                    Ok(x) => x,
                    Err(e) => { tracing::debug!(error = %e, "udp echo recv"); continue; }
                },
            };
            // The kernel's stamp and the fallback are both wall-clock time, so the acks of
            // one train stay comparable should the kernel ever leave one out.
            let recv_us = stamp.unwrap_or_else(wall_us);
            let busy = self.activity.busy();
            let on_train = |train, arrival| {
                self.activity.mark(TRAIN_AFTERGLOW);
                trains.arrived(train, arrival, Instant::now())
            };
            let Some(answer) = answer(&buf[..n], recv_us, busy, on_train) else {
                continue;
            };
            let _ = self.socket.send_to(&answer, from).await;
        }
    }
}

/// Microseconds since the Unix epoch, now.
fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, micros)
}

/// Asks the kernel to stamp each datagram `socket` receives (`SO_TIMESTAMPNS`), for
/// [`recv_stamped`]; false where the system does not.
fn stamp_arrivals(socket: &UdpSocket) -> bool {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .is_ok()
}

/// Receives one datagram: its length, its sender and, when `stamped`, the kernel's receive
/// time in microseconds since the Unix epoch.
async fn recv_stamped(
    socket: &UdpSocket,
    buf: &mut [u8],
    stamped: bool,
) -> std::io::Result<(usize, SocketAddr, Option<u64>)> {
    if !stamped {
        let (n, from) = socket.recv_from(buf).await?;
        return Ok((n, from, None));
    }
    loop {
        socket.readable().await?;
        let r = socket.try_io(tokio::io::Interest::READABLE, || {
            use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
            use std::os::fd::AsRawFd;
            let mut iov = [std::io::IoSliceMut::new(&mut *buf)];
            let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
            let msg = recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            )
            .map_err(std::io::Error::from)?;
            let stamp = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmTimestampns(t) => {
                        let us = t.tv_sec() * 1_000_000 + t.tv_nsec() / 1_000;
                        u64::try_from(us).ok()
                    }
                    _ => None,
                })
            });
            let from = msg
                .address
                .and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| SocketAddr::from((v4.ip(), v4.port())))
                        .or_else(|| {
                            a.as_sockaddr_in6()
                                .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
                        })
                })
                .ok_or_else(|| std::io::Error::other("datagram without a sender address"))?;
            Ok((msg.bytes, from, stamp))
        });
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// One arrival of a train datagram at an echo: `(seq, bytes, recv_us)`, as
/// [`TrainAck::earlier`] carries it.
type Arrival = (u32, u32, u64);

/// A train an echo saw lately: the prober's nonce, the train, when its latest datagram came
/// and its latest arrivals (newest first).
#[derive(Debug)]
struct RecentTrain {
    nonce: u64,
    train: u32,
    at: Instant,
    arrivals: VecDeque<Arrival>,
}

/// The trains an echo saw lately: enough to tell when two overlap, and to repeat each one's
/// latest arrivals in the next ack.
#[derive(Debug, Default)]
struct RecentTrains {
    /// A handful at most; old ones are dropped.
    recent: Vec<RecentTrain>,
}

impl RecentTrains {
    /// Records a datagram of the train `(nonce, train)` that arrived as `arrival`. Returns
    /// whether another train's datagram arrived within [`TRAIN_OVERLAP`], and the train's
    /// arrivals before this one (newest first, at most [`MAX_ACK_EARLIER`]).
    fn arrived(
        &mut self,
        (nonce, train): (u64, u32),
        arrival: Arrival,
        now: Instant,
    ) -> (bool, Vec<Arrival>) {
        self.recent
            .retain(|r| now.saturating_duration_since(r.at) < TRAIN_OVERLAP);
        let shared = self.recent.iter().any(|r| r.nonce != nonce);
        let i = match self.recent.iter().position(|r| r.nonce == nonce) {
            Some(i) => i,
            None if self.recent.len() < 16 => {
                self.recent.push(RecentTrain {
                    nonce,
                    train,
                    at: now,
                    arrivals: VecDeque::new(),
                });
                self.recent.len() - 1
            }
            None => return (shared, Vec::new()),
        };
        let r = &mut self.recent[i];
        if r.train != train {
            r.train = train;
            r.arrivals.clear();
        }
        r.at = now;
        let earlier = r.arrivals.iter().copied().collect();
        r.arrivals.push_front(arrival);
        r.arrivals.truncate(MAX_ACK_EARLIER);
        (shared, earlier)
    }
}

/// Two trains whose datagrams reach an echo this close together shared its link.
const TRAIN_OVERLAP: Duration = Duration::from_millis(100);

/// The echo's answer to one datagram: the loss probe with `echo` set (and `busy` when this
/// node's link carries a train), or a [`TrainAck`]; `on_train` is told the train and the
/// datagram's arrival, and says whether another train overlapped it (`shared`) and which
/// arrivals of the train the ack repeats. `None` for anything else.
fn answer(
    datagram: &[u8],
    recv_us: u64,
    busy: bool,
    on_train: impl FnOnce((u64, u32), Arrival) -> (bool, Vec<Arrival>),
) -> Option<Vec<u8>> {
    match peek(datagram).ok()?.kind {
        Kind::LossProbe => {
            let mut probe = decode::<LossProbe>(datagram).ok()?;
            if probe.echo {
                return None;
            }
            probe.echo = true;
            probe.busy = busy;
            probe.held_us = u32::try_from(wall_us().saturating_sub(recv_us)).unwrap_or(u32::MAX);
            encode(&probe).ok()
        }
        Kind::TrainProbe => {
            let probe = decode::<TrainProbe>(datagram).ok()?;
            let bytes = u32::try_from(datagram.len()).ok()?;
            let (shared, earlier) =
                on_train((probe.nonce, probe.train), (probe.seq, bytes, recv_us));
            let ack = encode(&TrainAck {
                nonce: probe.nonce,
                train: probe.train,
                seq: probe.seq,
                bytes,
                recv_us,
                shared,
                earlier,
            })
            .ok()?;
            // Never answer with more than was sent (no amplification towards a spoofed source).
            (ack.len() <= datagram.len()).then_some(ack)
        }
        _ => None,
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What a train measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Train {
    /// `(receiver clock in µs, datagram bytes)` per datagram that arrived, in no order.
    pub arrivals: Vec<(u64, u32)>,
    /// The receiver saw another train at the same time (the sample says little).
    pub shared: bool,
}

/// Size of each train datagram, bytes (below any path's MTU with IPv6 and UDP headers).
pub const TRAIN_DATAGRAM: usize = 1200;

/// How long the train's sender waits for more acks after the last one came in.
const TRAIN_QUIET: Duration = Duration::from_millis(1000);
/// The longest a train measurement may take.
const TRAIN_DEADLINE: Duration = Duration::from_secs(15);

/// Sends `bytes` worth of [`TrainProbe`] datagrams to the UDP echo at `to`, the first quarter
/// back to back and the rest paced at `pace_bps` (bits per second on the wire; `None`: all
/// back to back), and collects the acks:
/// `(receiver clock in µs, datagram bytes)` per datagram that arrived, in no particular order.
/// Datagrams the local queue or the path drop are simply missing.
pub async fn measure_train(
    to: SocketAddr,
    bytes: usize,
    pace_bps: Option<f64>,
    activity: &TrainActivity,
) -> Result<Train, ProbeError> {
    let bind: SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    // A send buffer as large as the system allows: when this node's own uplink is the
    // narrowest link, a full buffer stops the sender until half of it has drained, and a busy
    // machine that resumes late leaves the link idle (such trains read up to 20% low).
    let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::SndBuf, &(8 << 20));
    socket.connect(to).await?;
    let nonce: u64 = rand::rng().random();
    let train: u32 = rand::rng().random();
    let probe = |seq: u32| TrainProbe {
        nonce,
        train,
        seq,
        pad: Vec::new(),
    };
    // The filler that brings a datagram to TRAIN_DATAGRAM bytes (the filler's own length
    // prefix grows with it, hence the second look).
    let size = |pad: usize| {
        let mut p = probe(u32::MAX);
        p.pad = vec![0; pad];
        encode(&p)
            .map(|f| f.len())
            .map_err(|e| ProbeError::BadReply(e.to_string()))
    };
    let guess = TRAIN_DATAGRAM.saturating_sub(size(0)?);
    let pad = vec![0u8; guess.saturating_sub(size(guess)?.saturating_sub(TRAIN_DATAGRAM))];
    let count = u32::try_from(bytes.div_ceil(TRAIN_DATAGRAM).max(1)).unwrap_or(u32::MAX);
    let started = Instant::now();
    let wire_bits = 8.0 * (TRAIN_DATAGRAM as f64 + f64::from(crate::links::TRAIN_HEADER_BYTES));
    let spacing = pace_bps
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(|r| Duration::from_secs_f64(wire_bits / r));
    // The first quarter goes out back to back: it builds a queue at the narrowest link, so
    // that a pause of this (busy, small) machine does not leave the link idle; the receiver's
    // estimate ignores that quarter anyway. The rest is paced so the queue grows slowly.
    let burst = count / 4;
    let mut paced_from = started;
    for seq in 0..count {
        if seq == burst {
            paced_from = Instant::now();
        }
        if let Some(gap) = spacing.filter(|_| seq >= burst) {
            // Sleeping has millisecond grain: catch up in small bursts, which the narrowest
            // link's queue smooths out.
            let due = paced_from + gap * (seq - burst);
            if due > Instant::now() + Duration::from_millis(1) {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        activity.mark(TRAIN_AFTERGLOW);
        let mut p = probe(seq);
        p.pad.clone_from(&pad);
        let frame = encode(&p).map_err(|e| ProbeError::BadReply(e.to_string()))?;
        // A full local queue refuses or drops a datagram: that one is missing, as on the path.
        let _ = socket.send(&frame).await;
    }
    let mut arrivals = Vec::with_capacity(count as usize);
    let mut shared = false;
    let mut seen = std::collections::HashSet::new();
    let mut buf = [0u8; MAX_TRAIN_ACK_BYTES];
    while arrivals.len() < count as usize && started.elapsed() < TRAIN_DEADLINE {
        let n = match tokio::time::timeout(TRAIN_QUIET, socket.recv(&mut buf)).await {
            Err(_) => break,
            // E.g. the peer's port is closed (ICMP unreachable): nothing more will come.
            Ok(Err(e)) if arrivals.is_empty() => return Err(e.into()),
            Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
        };
        let Ok(ack) = decode::<TrainAck>(&buf[..n]) else {
            continue;
        };
        if ack.nonce != nonce || ack.train != train {
            continue;
        }
        // The train is still crossing (or queued on) this node's link until its last ack
        // is back: a sender's mark alone ends while the narrowest link's queue still holds
        // the train's tail, and probes then would read that queue as the link's delay.
        activity.mark(TRAIN_AFTERGLOW);
        shared |= ack.shared;
        let own = (ack.seq, ack.bytes, ack.recv_us);
        for (seq, bytes, recv_us) in std::iter::once(own).chain(ack.earlier) {
            if seq < count && seen.insert(seq) {
                arrivals.push((recv_us, bytes));
            }
        }
    }
    if arrivals.is_empty() {
        return Err(ProbeError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no datagram of the train was acknowledged",
        )));
    }
    Ok(Train { arrivals, shared })
}

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
    use shoal_keys::Identity;

    /// A running echo on loopback that records trains in `activity`; stops with `cancel`.
    async fn loopback_echo(activity: TrainActivity, cancel: &CancellationToken) -> SocketAddr {
        let echo = UdpEcho::bind("127.0.0.1:0".parse().unwrap(), activity)
            .await
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], echo.port().unwrap()));
        tokio::spawn(echo.run(cancel.clone()));
        addr
    }

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

    #[tokio::test]
    async fn the_echo_acknowledges_every_train_datagram_with_less() {
        let cancel = CancellationToken::new();
        let addr = loopback_echo(TrainActivity::default(), &cancel).await;
        let train = measure_train(addr, 48 * TRAIN_DATAGRAM, None, &TrainActivity::default())
            .await
            .unwrap();
        assert!(!train.shared);
        let arrivals = train.arrivals;
        // Paced at 20 Mbit/s after a burst of 12, 36 datagrams take about 18 ms to send.
        let t = Instant::now();
        let paced = measure_train(
            addr,
            48 * TRAIN_DATAGRAM,
            Some(20e6),
            &TrainActivity::default(),
        )
        .await
        .unwrap()
        .arrivals;
        assert_eq!(paced.len(), 48);
        assert!(
            t.elapsed() >= Duration::from_millis(15),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(arrivals.len(), 48);
        // Arrival times are wall-clock microseconds (the kernel's receive stamps).
        let now = wall_us();
        assert!(
            arrivals
                .iter()
                .all(|&(t, _)| t <= now && now - t < 10_000_000),
            "{arrivals:?} vs {now}"
        );
        // Sizes differ by the few bytes a small sequence number saves.
        assert!(
            arrivals
                .iter()
                .all(|&(_, b)| (TRAIN_DATAGRAM - 8..=TRAIN_DATAGRAM).contains(&(b as usize))),
            "{arrivals:?}"
        );
        // No amplification: a datagram smaller than its ack gets none.
        let frame = |pad: usize| {
            encode(&TrainProbe {
                nonce: 1,
                train: 2,
                seq: 3,
                pad: vec![0; pad],
            })
            .unwrap()
        };
        assert!(answer(&frame(0), u64::MAX, false, |_, _| (false, Vec::new())).is_none());
        let ack = answer(&frame(64), u64::MAX, false, |_, _| (false, Vec::new())).unwrap();
        assert!(ack.len() <= frame(64).len());
        // Echoes and acks are never answered (no loops between two echoes).
        assert!(answer(&ack, 0, false, |_, _| (false, Vec::new())).is_none());
        let echoed = answer(
            &encode(&LossProbe {
                nonce: 1,
                seq: 1,
                sent_us: 1,
                echo: false,
                busy: false,
                held_us: 0,
            })
            .unwrap(),
            0,
            true,
            |_, _| (false, Vec::new()),
        )
        .unwrap();
        // The echo says whether its node's link carried a train.
        assert!(decode::<LossProbe>(&echoed).unwrap().busy);
        assert!(answer(&echoed, 0, false, |_, _| (false, Vec::new())).is_none());
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

    #[test]
    fn overlapping_trains_are_told_apart_from_one() {
        let mut r = RecentTrains::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let shared = |r: &mut RecentTrains, nonce, at| r.arrived((nonce, 0), (0, 0, 0), at).0;
        assert!(!shared(&mut r, 1, t0));
        assert!(!shared(&mut r, 1, t0 + ms(2)));
        // A second prober's train while the first still arrives.
        assert!(shared(&mut r, 2, t0 + ms(3)));
        assert!(shared(&mut r, 1, t0 + ms(4)));
        // Long after both: a lone train again.
        assert!(!shared(&mut r, 3, t0 + ms(500)));
    }

    #[test]
    fn acks_repeat_the_trains_latest_arrivals() {
        let mut r = RecentTrains::default();
        let t0 = Instant::now();
        let mut earlier = |key, seq: u32| r.arrived(key, (seq, 1200, u64::from(seq) * 10), t0).1;
        assert!(earlier((1, 7), 0).is_empty());
        assert_eq!(earlier((1, 7), 1), [(0, 1200, 0)]);
        assert_eq!(earlier((1, 7), 2), [(1, 1200, 10), (0, 1200, 0)]);
        assert_eq!(earlier((1, 7), 3).len(), MAX_ACK_EARLIER);
        assert_eq!(earlier((1, 7), 4)[0], (3, 1200, 30));
        assert_eq!(earlier((1, 7), 4).len(), MAX_ACK_EARLIER);
        // Another prober's train, and the next train of the same prober, start afresh.
        assert!(earlier((2, 7), 9).is_empty());
        assert!(earlier((1, 8), 0).is_empty());
    }

    /// An arrival whose own ack is lost still reaches the prober through a later ack.
    #[test]
    fn a_lost_ack_loses_no_arrival() {
        let mut r = RecentTrains::default();
        let t0 = Instant::now();
        let frame = |seq| {
            encode(&TrainProbe {
                nonce: 5,
                train: 6,
                seq,
                pad: vec![0; 1000],
            })
            .unwrap()
        };
        let acks: Vec<TrainAck> = (0..4)
            .map(|seq| {
                let bytes = answer(&frame(seq), 100 + u64::from(seq), false, |k, a| {
                    r.arrived(k, a, t0)
                })
                .unwrap();
                decode::<TrainAck>(&bytes).unwrap()
            })
            .collect();
        // Acks 1 and 2 are lost: ack 3 still tells when datagrams 1 and 2 arrived.
        assert_eq!(
            acks[3].earlier[..2],
            [(2, acks[2].bytes, 102), (1, acks[1].bytes, 101)]
        );
    }

    #[tokio::test]
    async fn a_train_to_a_closed_port_fails() {
        let closed = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let started = Instant::now();
        assert!(
            measure_train(addr, 10 * TRAIN_DATAGRAM, None, &TrainActivity::default())
                .await
                .is_err()
        );
        assert!(started.elapsed() < TRAIN_DEADLINE);
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
