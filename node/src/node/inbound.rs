//! Inbound pipeline traffic: decodes and verifies every `/shoal/activation/1` and
//! `/shoal/generate/1` frame before the pipeline sees it. A frame that does not decode (or
//! whose signature fails) is dropped, counted in the log and lowers the sender's score; the
//! pipeline receives typed [`Inbound`] messages and only has to apply its stateful checks
//! (the plan's stage order, replays).
//!
//! Decoding runs here, on its own task per protocol, so a 64 MiB activation never stalls the
//! swarm task.

use shoal_keys::NodeId;
use shoal_protocol::{GenerateRequest, PipelineMessage, ProtocolError, decode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::swarm::{INBOUND_CAPACITY, InboundRequest, NetworkHandle};

/// A decoded, verified inbound request and the way to answer it.
#[derive(Debug)]
pub struct Inbound<T> {
    /// The sending node.
    pub peer: NodeId,
    /// The message.
    pub msg: T,
    request: InboundRequest,
}

impl<T> Inbound<T> {
    /// Sends the response frame (an encoded protocol message).
    pub fn respond(self, frame: Vec<u8>) {
        self.request.respond(frame);
    }
}

/// Spawns the decoder of one protocol; returns the typed receiver for the pipeline.
pub(crate) fn spawn_decoder<T: Send + 'static>(
    mut raw: mpsc::Receiver<InboundRequest>,
    decode_fn: fn(&[u8]) -> Result<T, ProtocolError>,
    net: NetworkHandle,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    cancel: CancellationToken,
) -> mpsc::Receiver<Inbound<T>> {
    let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
    tokio::spawn(async move {
        loop {
            let req = tokio::select! {
                _ = cancel.cancelled() => return,
                r = raw.recv() => match r { Some(r) => r, None => return },
            };
            let Ok(peer) = NodeId::from_peer_id(req.peer) else {
                let _ = net.penalise(req.peer, "not_ed25519").await;
                continue;
            };
            match decode_fn(&req.data) {
                Ok(msg) => {
                    // Full: the pipeline is saturated; dropping fails the sender's request,
                    // which is its backpressure signal.
                    let _ = tx.try_send(Inbound {
                        peer,
                        msg,
                        request: req,
                    });
                }
                Err(e) => {
                    tracing::info!(peer = %peer.short(), reason = e.reason(), error = %e, "refused inbound request");
                    metrics.refuse(e.reason());
                    let _ = net.report_misbehaviour(peer, e.reason()).await;
                }
            }
        }
    });
    rx
}

/// Decoder of `/shoal/activation/1` frames (signature verified).
pub(crate) fn decode_pipeline(bytes: &[u8]) -> Result<PipelineMessage, ProtocolError> {
    PipelineMessage::decode(bytes)
}

/// Decoder of `/shoal/generate/1` requests.
pub(crate) fn decode_generate(bytes: &[u8]) -> Result<GenerateRequest, ProtocolError> {
    decode::<GenerateRequest>(bytes)
}
