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

use super::metrics::Metrics;
use super::net::{Net, Request};

/// Decoded requests waiting for the pipeline, per protocol (beyond it the sender's request
/// fails: the pipeline is saturated).
pub const INBOUND_CAPACITY: usize = 64;

/// A decoded, verified inbound request and the way to answer it.
pub struct Inbound<T> {
    /// The sending node.
    pub peer: NodeId,
    /// The message.
    pub msg: T,
    reply: Box<dyn FnOnce(Vec<u8>) + Send>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Inbound<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("peer", &self.peer.short())
            .field("msg", &self.msg)
            .finish()
    }
}

impl<T> Inbound<T> {
    /// Sends the response frame (an encoded protocol message).
    pub fn respond(self, frame: Vec<u8>) {
        (self.reply)(frame);
    }
}

/// Spawns the decoder of one protocol; returns the typed receiver for the pipeline.
pub(crate) fn spawn_decoder<T: Send + 'static, R: Request>(
    mut raw: mpsc::Receiver<R>,
    decode_fn: fn(&[u8]) -> Result<T, ProtocolError>,
    net: Net,
    metrics: std::sync::Arc<Metrics>,
    cancel: CancellationToken,
) -> mpsc::Receiver<Inbound<T>> {
    let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
    tokio::spawn(async move {
        loop {
            let req = tokio::select! {
                _ = cancel.cancelled() => return,
                r = raw.recv() => match r { Some(r) => r, None => return },
            };
            let Ok(peer) = NodeId::from_peer_id(req.peer()) else {
                net.penalise(req.peer(), "not_ed25519").await;
                continue;
            };
            match decode_fn(req.data()) {
                Ok(msg) => {
                    // Full: the pipeline is saturated; dropping fails the sender's request,
                    // which is its backpressure signal.
                    let reply = Box::new(move |frame| req.respond(frame));
                    let _ = tx.try_send(Inbound { peer, msg, reply });
                }
                Err(e) => {
                    tracing::info!(peer = %peer.short(), reason = e.reason(), error = %e, "refused inbound request");
                    metrics.refuse(e.reason());
                    net.report_misbehaviour(peer, e.reason()).await;
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
