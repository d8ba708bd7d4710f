//! Timed transfers on `/shoal/probe/1`, for bandwidth: [`serve_probes`] answers inbound
//! [`BandwidthProbe`]s (malformed ones lower the sender's score), and [`measure_bandwidth`]
//! times an activation-sized and a 1 MiB transfer to one peer through the swarm's
//! [`NetworkHandle`]; the [`TransferPair`] goes to [`crate::links::LinkEstimator::on_transfers`].

use std::time::Instant;

use rand::Rng;
use shoal_keys::NodeId;
use shoal_protocol::{BandwidthProbe, BandwidthProbeReply, decode, encode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ProbeError;
use crate::swarm::{InboundRequest, NetworkHandle, Proto};

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
