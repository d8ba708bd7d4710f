//! Datagram trains for the link rate: [`measure_train`] sends a burst-then-paced train of
//! [`TRAIN_DATAGRAM`]-sized [`TrainProbe`]s to a peer's echo, marks this node's
//! [`TrainActivity`] while it crosses, and collects the acks into a [`Train`] (receiver
//! arrival times and sizes), from which [`crate::links::train_rate`] computes the rate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_protocol::{MAX_TRAIN_ACK_BYTES, TrainAck, TrainProbe, decode, encode};
use tokio::net::UdpSocket;

use super::ProbeError;
use super::activity::{TRAIN_AFTERGLOW, TrainActivity};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
