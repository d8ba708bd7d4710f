//! The few Linux system calls the test bed needs that std does not wrap: entering a network
//! namespace on the current thread (`setns`), creating a TUN device (`TUNSETIFF`), waiting on
//! several descriptors with a nanosecond timeout (`ppoll`) and asking for real-time scheduling.
//!
//! This is the only file of the test bed with `unsafe`; every block says why it is sound.
//! Everything else works with the safe wrappers below and `std::fs::File`.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

/// `_IOW('T', 202, int)` from `<linux/if_tun.h>`: attach a TUN/TAP descriptor to an interface.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// A layer-3 TUN device (IP packets, no Ethernet header).
const IFF_TUN: libc::c_short = 0x0001;
/// No 4-byte packet-information prefix on reads and writes: each read is one bare IP packet.
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags in the first union member.
#[repr(C)]
struct IfReqFlags {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Moves the calling thread (only this thread) into the named network namespace
/// (`/run/netns/NAME`, as created by `ip netns add`). Sockets and TUN devices the thread
/// creates afterwards belong to that namespace for their whole life.
pub(crate) fn enter_netns(name: &str) -> io::Result<()> {
    let ns = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: `ns` is an open descriptor for the namespace file that outlives the call;
    // setns only reads it and changes the calling thread's namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates the non-persistent TUN interface `name` in the calling thread's network namespace
/// and returns its non-blocking descriptor. The interface disappears when the descriptor closes,
/// so a crashed test cannot leave it behind.
pub(crate) fn open_tun(name: &str) -> io::Result<File> {
    if name.is_empty() || name.len() > 15 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name must be 1..=15 bytes",
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReqFlags {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `req` is a properly laid out, NUL-terminated `struct ifreq` (40 bytes, the name
    // is at most 15 bytes) that lives across the call; the kernel reads it and writes the
    // final name back into it.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Waits until one of `fds` is readable or `timeout` passes; returns which ones are readable.
/// Interrupted waits count as timeouts.
pub(crate) fn wait_readable(fds: &[&File], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `polls` is a valid array of `polls.len()` pollfd structs and `ts` a valid
    // timespec, both alive for the duration of the call; a null signal mask means "unchanged".
    let rc = unsafe {
        libc::ppoll(
            polls.as_mut_ptr(),
            polls.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(err);
    }
    Ok(polls
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLERR) != 0)
        .collect())
}

/// Best effort: gives the calling thread real-time (FIFO) priority and a 1 µs timer slack so
/// that release times of the delay line stay accurate while the nodes load both cores. The
/// thread always blocks in `ppoll`, so it cannot starve the machine. Failure is harmless.
pub(crate) fn make_thread_timely() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: plain syscalls on the calling thread with a valid, live `sched_param`.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &param);
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong);
    }
}

/// Whether the process runs with effective user id 0 (namespaces, tc and nft need it).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
