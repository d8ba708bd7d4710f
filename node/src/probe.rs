//! Link probing IO: timed transfers on `/shoal/probe/1` for bandwidth, and a UDP echo beside
//! the swarm for packet loss and link rate (reliable streams hide loss, datagrams do not).
//!
//! Each mechanism has its own submodule; callers use the re-exports here:
//!
//! - `transfer`: [`serve_probes`] answers inbound [`shoal_protocol::BandwidthProbe`]s;
//!   [`measure_bandwidth`] times an activation-sized and a 1 MiB transfer to one peer, and the
//!   [`TransferPair`] goes to [`crate::links::LinkEstimator::on_transfers`].
//! - `echo`: [`UdpEcho`] echoes [`shoal_protocol::LossProbe`] datagrams and acknowledges
//!   [`shoal_protocol::TrainProbe`] datagrams with their arrival time; its port is announced in
//!   the capability.
//! - `train`: [`measure_train`] sends a datagram train to a peer's echo and returns the
//!   arrivals as a [`Train`], from which [`crate::links::train_rate`] computes the link rate.
//! - `loss`: [`LossProber`] sends probes to every target's echo at a fixed rate and reports
//!   each one as a [`LossSample`]: answered (with its round-trip time) or lost (unanswered
//!   within the timeout), on a bounded channel.
//! - `activity` (shared): [`TrainActivity`], when this node's link carried a train; the train's
//!   sender and the receiving echo mark it, the echo reports it in its answers and the prober
//!   leaves out samples that crossed it.
//! - `stamp` (shared): kernel-stamped receives and the wall clock they are on, for the echo's
//!   arrival times and the prober's round trips.
//!
//! Data flow: the node task calls `measure_bandwidth` (requests through the swarm to the
//! peer's `serve_probes`) and `measure_train` (datagrams to the peer's `UdpEcho`, acks back)
//! and hands the results to [`crate::links`]; the `LossProber` task probes the peers'
//! `UdpEcho`s and reports `LossSample`s on its channel. The node's one `TrainActivity` is shared
//! by the train sender, the echo and the prober.

mod activity;
mod echo;
mod loss;
mod stamp;
mod train;
mod transfer;

pub use activity::TrainActivity;
pub use echo::UdpEcho;
pub use loss::{LossProber, LossSample};
pub use train::{TRAIN_DATAGRAM, Train, measure_train};
pub use transfer::{TransferPair, measure_bandwidth, serve_probes};

use crate::swarm::NetError;

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

#[cfg(test)]
mod test_support {
    //! Helpers shared by the probe tests.

    use std::net::SocketAddr;

    use tokio_util::sync::CancellationToken;

    use super::{TrainActivity, UdpEcho};

    /// A running echo on loopback that records trains in `activity`; stops with `cancel`.
    pub(super) async fn loopback_echo(
        activity: TrainActivity,
        cancel: &CancellationToken,
    ) -> SocketAddr {
        let echo = UdpEcho::bind("127.0.0.1:0".parse().unwrap(), activity)
            .await
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], echo.port().unwrap()));
        tokio::spawn(echo.run(cancel.clone()));
        addr
    }
}
