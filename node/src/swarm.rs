//! The libp2p swarm and its handle.
//!
//! One task ([`task::SwarmTask`]) owns the `Swarm`; everything else holds a cloneable
//! [`NetworkHandle`] that sends a [`Command`] on a bounded channel and awaits a `oneshot`
//! reply. What the swarm hears flows out on bounded channels: [`NetEvent`]s (gossip, pings,
//! peer addresses) to the node, and [`InboundRequest`]s per protocol (probe, activation,
//! generate) to whoever serves them. Activations travel on long-lived per-peer streams
//! (`lanes.rs`), probes and client requests on request/response exchanges. The swarm task
//! never waits on a consumer: a full channel drops the item and counts it, so a slow consumer
//! cannot stall the network or deadlock with a command it is waiting on.
//!
//! Gossip is published signed (gossipsub `MessageAuthenticity::Signed`) and forwarded only
//! after the node has decoded and checked it and called [`NetworkHandle::report_validation`].

mod behaviour;
pub(crate) mod codec;
mod lanes;
mod score;
mod task;
mod transport;

use std::time::Duration;

use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::{Multiaddr, PeerId};
use shoal_keys::NodeId;
use shoal_protocol::Topic;
use tokio::sync::{mpsc, oneshot};

pub(crate) use behaviour::BehaviourOptions;
pub use score::{BAN_SCORE, PENALTY, PeerScores, RECOVERY_PER_S};
pub use task::SwarmError;
pub(crate) use task::{SwarmParts, spawn};

/// Capacity of the command channel of the swarm task.
pub(crate) const COMMAND_CAPACITY: usize = 256;
/// Capacity of the event channel from the swarm to the node.
pub(crate) const EVENT_CAPACITY: usize = 1024;
/// Capacity of each inbound-request channel (per protocol).
pub const INBOUND_CAPACITY: usize = 64;

/// Largest payload of an activation frame: the largest activation with room for its envelope.
/// A lane frame announcing more is refused from its header and costs the sender score.
pub const ACTIVATION_FRAME_MAX: usize = shoal_protocol::MAX_ACTIVATION_BYTES + (1 << 20);

/// A request protocol of shoal (activations on lanes, the others request/response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// `/shoal/probe/1`: timed transfers for bandwidth.
    Probe,
    /// `/shoal/activation/1`: activations along the pipeline.
    Activation,
    /// `/shoal/generate/1`: client requests forwarded to a node.
    Generate,
    /// `/shoal/layers/1`: chunks of model files.
    Layers,
}

impl Proto {
    /// Every protocol.
    pub const ALL: [Proto; 4] = [
        Proto::Probe,
        Proto::Activation,
        Proto::Generate,
        Proto::Layers,
    ];

    /// The protocol name negotiated on the stream.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Probe => shoal_protocol::PROBE_PROTOCOL,
            Proto::Activation => shoal_protocol::ACTIVATION_PROTOCOL,
            Proto::Generate => shoal_protocol::GENERATE_PROTOCOL,
            Proto::Layers => shoal_protocol::LAYERS_PROTOCOL,
        }
    }
}

/// Errors of network commands.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    /// The swarm task has stopped.
    #[error("the swarm task has stopped")]
    Closed,
    /// Dialing failed.
    #[error("dial failed: {0}")]
    Dial(String),
    /// Publishing to a gossip topic failed (e.g. no peers subscribed yet).
    #[error("publish failed: {0}")]
    Publish(String),
    /// A request failed: unreachable peer, timeout, refused or malformed response.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer asked.
        peer: PeerId,
        /// What went wrong.
        reason: String,
    },
    /// A listen address could not be used.
    #[error("listen failed: {0}")]
    Listen(String),
}

/// Something the swarm heard, for the node.
#[derive(Debug)]
pub enum NetEvent {
    /// A gossip message awaiting validation: answer with [`NetworkHandle::report_validation`].
    Gossip {
        /// Its topic.
        topic: Topic,
        /// The peer that forwarded it to us (penalised if it is invalid).
        propagation: PeerId,
        /// Gossipsub's id of the message.
        id: MessageId,
        /// The author that signed the gossipsub envelope.
        author: Option<PeerId>,
        /// The payload.
        data: Vec<u8>,
    },
    /// A ping round trip to a connected peer.
    Rtt {
        /// The peer.
        peer: PeerId,
        /// The measured round-trip time.
        rtt: Duration,
    },
    /// A peer's listen addresses (from identify), worth remembering.
    Addresses {
        /// The peer.
        peer: PeerId,
        /// Its addresses.
        addrs: Vec<Multiaddr>,
    },
    /// A connection to a peer was established (first one).
    Connected(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
    /// How a peer is reached changed: `via` is the relay when every connection to it is a
    /// relayed circuit, `None` once a direct connection exists (or none is left).
    Route {
        /// The peer.
        peer: PeerId,
        /// Its relay, if only relayed.
        via: Option<PeerId>,
    },
}

/// A request that arrived on one of shoal's request protocols.
#[derive(Debug)]
pub struct InboundRequest {
    /// Who sent it.
    pub peer: PeerId,
    /// The raw frame (a shoal-protocol message; its length is already within the limit).
    pub data: Vec<u8>,
    reply: oneshot::Sender<Vec<u8>>,
}

impl InboundRequest {
    /// Sends the response frame; dropping the request instead fails the sender's request.
    pub fn respond(self, data: Vec<u8>) {
        // The requester may have given up; nothing to do then.
        let _ = self.reply.send(data);
    }
}

/// Per-protocol receivers of inbound requests, handed out once by the node.
#[derive(Debug)]
pub struct InboundStreams {
    /// `/shoal/probe/1` (served by the node's prober).
    pub probe: mpsc::Receiver<InboundRequest>,
    /// `/shoal/activation/1` (served by the pipeline).
    pub activation: mpsc::Receiver<InboundRequest>,
    /// `/shoal/generate/1` (served by the pipeline).
    pub generate: mpsc::Receiver<InboundRequest>,
    /// `/shoal/layers/1` (served by the node's file server, `layers/serve.rs`).
    pub layers: mpsc::Receiver<InboundRequest>,
}

/// What the swarm task can be asked to do.
#[derive(Debug)]
pub(crate) enum Command {
    Publish {
        topic: Topic,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Validate {
        id: MessageId,
        propagation: PeerId,
        acceptance: MessageAcceptance,
    },
    Request {
        peer: PeerId,
        proto: Proto,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    AddAddress {
        peer: PeerId,
        addr: Multiaddr,
    },
    Misbehaved {
        peer: PeerId,
        reason: &'static str,
    },
    Score {
        peer: PeerId,
        reply: oneshot::Sender<PeerScoreInfo>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Connected {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
}

/// A peer's scores: ours (lowered on bad input) and gossipsub's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerScoreInfo {
    /// shoal's own score: 0 for a well-behaved peer, lowered per misbehaviour, banned at
    /// [`BAN_SCORE`].
    pub app: f64,
    /// Gossipsub's peer score, if the peer is known to gossipsub.
    pub gossipsub: Option<f64>,
    /// Whether the peer is banned (disconnected and blocked).
    pub banned: bool,
}

/// A cloneable handle to the swarm task.
#[derive(Debug, Clone)]
pub struct NetworkHandle {
    local: NodeId,
    tx: mpsc::Sender<Command>,
    lanes: std::sync::Arc<lanes::Lanes>,
}

impl NetworkHandle {
    pub(crate) fn new(
        local: NodeId,
        tx: mpsc::Sender<Command>,
        lanes: std::sync::Arc<lanes::Lanes>,
    ) -> Self {
        NetworkHandle { local, tx, lanes }
    }

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        self.local
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| NetError::Closed)?;
        rx.await.map_err(|_| NetError::Closed)
    }

    async fn tell(&self, cmd: Command) -> Result<(), NetError> {
        self.tx.send(cmd).await.map_err(|_| NetError::Closed)
    }

    /// Publishes `data` (an encoded protocol message) on a gossip topic.
    pub async fn publish(&self, topic: Topic, data: Vec<u8>) -> Result<(), NetError> {
        self.ask(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// Reports the outcome of checking a gossip message: `Accept` forwards it, `Reject`
    /// drops it and penalises the propagation source, `Ignore` drops it quietly.
    pub async fn report_validation(
        &self,
        id: MessageId,
        propagation: PeerId,
        acceptance: MessageAcceptance,
    ) -> Result<(), NetError> {
        self.tell(Command::Validate {
            id,
            propagation,
            acceptance,
        })
        .await
    }

    /// Sends one request frame on `proto` and waits for the response frame (activations go
    /// over the peer's activation lane).
    pub async fn request(
        &self,
        peer: PeerId,
        proto: Proto,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, NetError> {
        if proto == Proto::Activation {
            return self.lanes.request(peer, data).await;
        }
        self.ask(|reply| Command::Request {
            peer,
            proto,
            data,
            reply,
        })
        .await?
    }

    /// Sends an activation-protocol frame (e.g. an encoded `Signed<Activation>`) to `peer` on
    /// its activation lane (one long-lived stream, see `swarm/lanes.rs`).
    pub async fn send_activation(&self, peer: NodeId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        let peer = peer.to_peer_id();
        self.lanes.request(peer, data).await
    }

    /// Sends a generate-protocol frame (an encoded `GenerateRequest`) to `peer`.
    pub async fn send_generate(&self, peer: NodeId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        self.request(peer.to_peer_id(), Proto::Generate, data).await
    }

    /// Dials a multiaddr (ending in `/p2p/<id>` or not).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }

    /// Teaches the swarm (Kademlia) an address of a peer.
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), NetError> {
        self.tell(Command::AddAddress { peer, addr }).await
    }

    /// Lowers `peer`'s score for bad input (`reason` is a short stable label, e.g.
    /// `bad_signature`); a peer whose score falls to the ban level is disconnected and blocked.
    pub async fn report_misbehaviour(
        &self,
        peer: NodeId,
        reason: &'static str,
    ) -> Result<(), NetError> {
        self.penalise(peer.to_peer_id(), reason).await
    }

    /// [`NetworkHandle::report_misbehaviour`] for a peer id that may not be a valid node id.
    pub async fn penalise(&self, peer: PeerId, reason: &'static str) -> Result<(), NetError> {
        self.tell(Command::Misbehaved { peer, reason }).await
    }

    /// The scores of `peer`.
    pub async fn score(&self, peer: PeerId) -> Result<PeerScoreInfo, NetError> {
        self.ask(|reply| Command::Score { peer, reply }).await
    }

    /// The addresses the swarm listens on now.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Peers with an open connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NetError> {
        self.ask(|reply| Command::Connected { reply }).await
    }
}
