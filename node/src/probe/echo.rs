//! The UDP echo beside the swarm ([`UdpEcho`]), whose port is announced in the capability.
//!
//! Each datagram goes through [`answer`]: a [`LossProbe`] comes back with `echo` set, the
//! echo's holding time and whether this node's link carries a train; a [`TrainProbe`] gets a
//! [`TrainAck`] with its kernel-stamped arrival time and, from [`RecentTrains`], whether another
//! train overlapped it and the train's latest earlier arrivals (so a lost ack loses no
//! arrival). A received train marks this node's [`TrainActivity`]. Anything else is ignored.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_protocol::{
    Kind, LossProbe, MAX_ACK_EARLIER, MAX_TRAIN_DATAGRAM, TrainAck, TrainProbe, decode, encode,
    peek,
};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::ProbeError;
use super::activity::{TRAIN_AFTERGLOW, TrainActivity};
use super::stamp::{recv_stamped, stamp_arrivals, wall_us};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::test_support::loopback_echo;
    use crate::probe::train::{TRAIN_DATAGRAM, measure_train};

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
}
