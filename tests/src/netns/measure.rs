//! Independent measurements of a bed's links, used to check that the imposed impairments are
//! what the links really do before any shoal figure is trusted: `ping` for round-trip time
//! and jitter, a paced UDP count for loss, a UDP stream above the shaped rate for bandwidth.
//! None of this uses shoal code.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Testbed;
use super::cmd::run_in;

/// IPv4 + UDP header bytes: what a shaper counts on top of the UDP payload.
const IP_UDP_HEADER: usize = 28;
/// How long a receiver keeps listening after the sender stopped (longest queue + delay).
const DRAIN: Duration = Duration::from_millis(1500);

/// Mean and sample standard deviation.
pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

/// The median (the mean of the middle two of an even count; NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Round-trip times in seconds of `count` pings from node `from` to node `to`, one every
/// `interval` (lost pings are simply missing).
pub fn ping_rtts(
    bed: &Testbed,
    from: usize,
    to: usize,
    count: u32,
    interval: Duration,
) -> Result<Vec<f64>> {
    // ping exits 1 when replies are missing, which lossy links make normal: `|| true`.
    let cmd = format!(
        "ping -n -c {count} -i {:.3} -W 2 {} || true",
        interval.as_secs_f64(),
        bed.addr(to)
    );
    let out = run_in(&bed.ns(from), "sh", &["-c", &cmd])?;
    Ok(parse_ping_times(&out))
}

/// The `time=X ms` figures of ping's output, in seconds.
pub fn parse_ping_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next())
        .filter_map(|t| t.parse::<f64>().ok())
        .map(|ms| ms / 1e3)
        .collect()
}

/// Spawns `f` on a thread inside namespace `ns`.
fn spawn_in<T, F>(ns: String, f: F) -> Result<JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    std::thread::Builder::new()
        .name(format!("measure-{ns}"))
        .spawn(move || {
            super::sys::enter_netns(&ns).with_context(|| format!("entering {ns}"))?;
            f()
        })
        .context("spawning a measurement thread")
}

fn join<T>(h: JoinHandle<Result<T>>) -> Result<T> {
    match h.join() {
        Ok(r) => r,
        Err(_) => bail!("a measurement thread panicked"),
    }
}

/// What a receiver saw: distinct sequence numbers and the arrival times of the first and last.
struct Received {
    seen: Vec<bool>,
    bytes_after_first: usize,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Sends `packets` UDP datagrams of `payload` bytes from node `from` to node `to` at
/// `rate_bps` (payload + headers) and returns what arrived. `port` must be free on `to`.
fn udp_stream(
    bed: &Testbed,
    from: usize,
    to: usize,
    port: u16,
    packets: usize,
    payload: usize,
    rate_bps: f64,
) -> Result<Received> {
    let dst = SocketAddrV4::new(bed.addr(to), port);
    let (ready_tx, ready_rx) = sync_channel::<()>(1);
    let (done_tx, done_rx) = sync_channel::<()>(1);
    let receiver = spawn_in(bed.ns(to), move || {
        let sock = UdpSocket::bind(dst).with_context(|| format!("binding {dst}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let _ = ready_tx.send(());
        let mut r = Received {
            seen: vec![false; packets],
            bytes_after_first: 0,
            first: None,
            last: None,
        };
        let mut buf = vec![0u8; 65_536];
        let mut deadline: Option<Instant> = None;
        loop {
            if deadline.is_none() && done_rx.try_recv().is_ok() {
                deadline = Some(Instant::now() + DRAIN);
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                return Ok(r);
            }
            let Ok(n) = sock.recv(&mut buf) else { continue };
            let now = Instant::now();
            let Some(seq) = buf
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
            else {
                continue;
            };
            let Some(slot) = r.seen.get_mut(seq as usize) else {
                continue;
            };
            *slot = true;
            if r.first.is_some() {
                r.bytes_after_first += n + IP_UDP_HEADER;
            } else {
                r.first = Some(now);
            }
            r.last = Some(now);
        }
    })?;
    ready_rx.recv().context("receiver did not start")?;
    let sender = spawn_in(bed.ns(from), move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        let mut pkt = vec![0u8; payload.max(8)];
        let per_packet = ((payload + IP_UDP_HEADER) * 8) as f64 / rate_bps;
        let start = Instant::now();
        let mut sent = 0usize;
        while sent < packets {
            let due = ((start.elapsed().as_secs_f64() / per_packet) as usize + 1).min(packets);
            while sent < due {
                pkt[..8].copy_from_slice(&(sent as u64).to_le_bytes());
                // A full shaper queue answers ENOBUFS: that packet is lost, like on a link.
                let _ = sock.send_to(&pkt, dst);
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    })?;
    join(sender)?;
    let _ = done_tx.send(());
    join(receiver)
}

/// One-way packet loss from node `from` to node `to`: `packets` small datagrams paced at
/// `rate_bps`, which must stay well below the path's bandwidth so only imposed loss counts.
pub fn udp_loss(
    bed: &Testbed,
    from: usize,
    to: usize,
    port: u16,
    packets: usize,
    rate_bps: f64,
) -> Result<f64> {
    let r = udp_stream(bed, from, to, port, packets, 100, rate_bps)?;
    let got = r.seen.iter().filter(|s| **s).count();
    Ok(1.0 - got as f64 / packets as f64)
}

/// Bottleneck bandwidth from node `from` to node `to` in bit/s (IP bytes): a stream offered
/// at `offered_bps` (above the shaped rate) for `secs`; the arrival rate of what got through,
/// divided by `1 - loss` because the imposed loss happens after the shaper.
pub fn udp_bandwidth(
    bed: &Testbed,
    from: usize,
    to: usize,
    port: u16,
    offered_bps: f64,
    secs: f64,
    loss: f64,
) -> Result<f64> {
    let payload = 1_200;
    let packets = (offered_bps * secs / ((payload + IP_UDP_HEADER) * 8) as f64).ceil() as usize;
    let r = udp_stream(bed, from, to, port, packets, payload, offered_bps)?;
    let (Some(first), Some(last)) = (r.first, r.last) else {
        bail!("no datagram arrived")
    };
    let span = last.duration_since(first).as_secs_f64();
    if span <= 0.0 {
        bail!("too few datagrams arrived to time the stream");
    }
    Ok(r.bytes_after_first as f64 * 8.0 / span / (1.0 - loss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_parses_to_seconds() {
        let out = "PING x\n64 bytes from 1.2.3.4: icmp_seq=1 ttl=64 time=40.5 ms\nRequest timeout\n\
                   64 bytes from 1.2.3.4: icmp_seq=3 ttl=64 time=0.051 ms\n";
        let t = parse_ping_times(out);
        assert_eq!(t.len(), 2);
        assert!((t[0] - 0.0405).abs() < 1e-12 && (t[1] - 0.000051).abs() < 1e-12);
        let (m, sd) = mean_sd(&[1.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (sd - 2f64.sqrt()).abs() < 1e-12);
    }
}
