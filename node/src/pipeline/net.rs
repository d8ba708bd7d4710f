//! What the pipeline needs of the network, defined here so the pipeline depends on no swarm
//! type: [`Network`] sends activation frames and reports misbehaving peers, [`Request`] is one
//! inbound frame with its way back. The composition root (`start.rs`) implements both for the
//! swarm's handle and requests; tests may implement them for anything else.
//!
//! [`Net`] is the cloneable handle the stage server and the origin hold.

use std::sync::Arc;

use futures::future::BoxFuture;
use libp2p::PeerId;
use shoal_keys::NodeId;

/// Why a frame could not be sent (the network's own error, as text: the pipeline only
/// reports it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SendError(pub String);

/// The network as the pipeline uses it.
pub trait Network: Send + Sync + 'static {
    /// Sends one activation-protocol frame to `peer` and resolves to its answer frame.
    fn send_activation(
        &self,
        peer: NodeId,
        frame: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, SendError>>;

    /// Lowers `peer`'s score for bad input (`reason` is a short stable label).
    fn report_misbehaviour(&self, peer: NodeId, reason: &'static str) -> BoxFuture<'static, ()>;

    /// [`Network::report_misbehaviour`] for a sender whose peer id is not a node id.
    fn penalise(&self, peer: PeerId, reason: &'static str) -> BoxFuture<'static, ()>;
}

/// One inbound request frame of a pipeline protocol, still undecoded.
pub trait Request: Send + 'static {
    /// The sending peer.
    fn peer(&self) -> PeerId;
    /// The frame (already within the protocol's size limit).
    fn data(&self) -> &[u8];
    /// Answers it; dropping the request instead fails the sender's request.
    fn respond(self, frame: Vec<u8>);
}

/// The pipeline's cloneable handle to the network.
#[derive(Clone)]
pub struct Net(Arc<dyn Network>);

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Net")
    }
}

impl Net {
    /// A handle on `network`.
    pub fn new(network: impl Network) -> Self {
        Net(Arc::new(network))
    }

    /// See [`Network::send_activation`].
    pub async fn send_activation(
        &self,
        peer: NodeId,
        frame: Vec<u8>,
    ) -> Result<Vec<u8>, SendError> {
        self.0.send_activation(peer, frame).await
    }

    /// See [`Network::report_misbehaviour`].
    pub async fn report_misbehaviour(&self, peer: NodeId, reason: &'static str) {
        self.0.report_misbehaviour(peer, reason).await
    }

    /// See [`Network::penalise`].
    pub async fn penalise(&self, peer: PeerId, reason: &'static str) {
        self.0.penalise(peer, reason).await
    }
}
