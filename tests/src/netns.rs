//! The weak-network test bed: real `shoal` processes in Linux network namespaces whose links
//! have the bandwidth, loss, latency and jitter of phones on Wi-Fi.
//!
//! # Topology
//! One hub namespace routes between N node namespaces, each attached by a veth pair; the
//! host's own namespace is never touched (see [`bed`] for names and addresses).
//!
//! # How each impairment is made (this kernel has no netem)
//! - **Bandwidth**: `tbf` on the egress of each direction: the node's `eth0` for what it
//!   sends, the hub's `dn{i}` TUN interface for what it receives.
//! - **Loss**: nftables in the hub, `numgen random mod 100 < P drop`, on each direction after
//!   the shaper (a lost frame still used air time, as on Wi-Fi).
//! - **Latency and jitter**: a userspace delay line ([`delay`]) in the test process. Policy
//!   routing in the hub sends every packet of an impaired link through a TUN interface; the
//!   delay line holds it for `rtt/2 - jitter + Exp(jitter)` (mean `rtt/2`, standard deviation
//!   `jitter`), in order, and writes it back. It impairs every IP packet: TCP, QUIC/UDP,
//!   ICMP, shoal's UDP loss probe.
//!
//! Alternatives that were checked on this kernel and why they were not used: tc BPF with
//! earliest-departure timestamps needs the `fq` qdisc (`CONFIG_NET_SCH_FQ` is not set, so
//! `skb->tstamp` would be ignored); nftables `queue` is not built (`CONFIG_NFT_QUEUE` unset;
//! only the xtables NFQUEUE target exists); an impairment layer inside shoal's transport
//! would not impair the swarm's own probes the same way and would test shoal against itself.
//!
//! # Root
//! Namespaces, tc and nftables need root. Tests call [`skip_unless_root`] first; without root
//! it prints `SKIP: ... needs root` to stderr and the test returns. CI runs as root.

pub mod bed;
pub mod cmd;
pub mod delay;
pub mod http;
pub mod measure;
pub mod predict;
pub mod proc;
pub mod profile;
pub mod runs;
pub mod swarm;
mod sys;
pub mod wait;

pub use bed::{Nat, ProcId, Testbed};
pub use profile::{LinkProfile, PathFigures, Plant};

/// Whether this process may build beds (effective uid 0).
pub fn is_root() -> bool {
    sys::is_root()
}

/// Returns `true` when the test must stop because it is not root, after printing a visible
/// `SKIP` line naming the test.
///
/// # Panics
/// As root, when `ip`, `tc` or `nft` is missing: CI runs as root after `scripts/setup.sh`,
/// so a missing tool there is a broken set-up, not a reason to skip.
pub fn skip_unless_root(test: &str) -> bool {
    if !is_root() {
        eprintln!("SKIP: {test} needs root (network namespaces, tc, nftables); CI runs as root");
        return true;
    }
    for tool in ["ip", "tc", "nft"] {
        assert!(
            cmd::available(tool),
            "{test}: `{tool}` is missing; run scripts/setup.sh"
        );
    }
    false
}
