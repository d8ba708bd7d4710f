//! Kernel-stamped UDP receives, shared by the echo and the loss prober: [`stamp_arrivals`]
//! asks for `SO_TIMESTAMPNS`, [`recv_stamped`] reads a datagram with the kernel's receive time,
//! and [`wall_us`] is the wall clock those stamps are on (the fallback where the kernel gives
//! none). A busy machine may run the reading task many milliseconds late; the kernel's stamp
//! keeps that out of arrival times and round trips.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

/// Microseconds since the Unix epoch, now.
pub(super) fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, micros)
}

/// Asks the kernel to stamp each datagram `socket` receives (`SO_TIMESTAMPNS`), for
/// [`recv_stamped`]; false where the system does not.
pub(super) fn stamp_arrivals(socket: &UdpSocket) -> bool {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .is_ok()
}

/// Receives one datagram: its length, its sender and, when `stamped`, the kernel's receive
/// time in microseconds since the Unix epoch.
pub(super) async fn recv_stamped(
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

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
