//! The swarm task: owns the libp2p `Swarm`, runs commands, and turns swarm events into
//! [`NetEvent`]s and [`InboundRequest`]s. Each `select!` arm is one line calling an `on_*`
//! method; the task ends when its cancellation token fires.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, identify, kad, mdns, noise, ping, yamux};
use shoal_keys::Identity;
use shoal_protocol::Topic;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::behaviour::{Behaviour, BehaviourEvent, BehaviourOptions};
use super::codec::Frame;
use super::score::PeerScores;
use super::{
    COMMAND_CAPACITY, Command, EVENT_CAPACITY, INBOUND_CAPACITY, InboundRequest, InboundStreams,
    NetError, NetEvent, NetworkHandle, PeerScoreInfo, Proto,
};

/// How often scores recover and Kademlia re-bootstraps.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);
/// Connections without traffic stay open this long (shoal swarms are small and chatty).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// What the swarm needs from the node to start.
#[derive(Debug)]
pub(crate) struct SwarmParts {
    pub(crate) listen: Vec<Multiaddr>,
    pub(crate) bootstrap: Vec<Multiaddr>,
    pub(crate) psk: Option<libp2p::pnet::PreSharedKey>,
    pub(crate) quic: bool,
    pub(crate) options: BehaviourOptions,
}

/// Errors of starting the swarm.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// The transport could not be built.
    #[error("transport: {0}")]
    Transport(String),
    /// The behaviour could not be built.
    #[error("behaviour: {0}")]
    Behaviour(String),
    /// A listen address was refused.
    #[error("listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

/// Where the response to an outbound request goes.
type ResponseTx = oneshot::Sender<Result<Vec<u8>, NetError>>;

type Reply = BoxFuture<'static, (Proto, ResponseChannel<Vec<u8>>, Option<Vec<u8>>)>;

/// The task's state.
struct SwarmTask {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    inbound: HashMap<Proto, mpsc::Sender<InboundRequest>>,
    /// Requests awaiting their response. Each request-response behaviour numbers its requests
    /// on its own, so the id alone is ambiguous across protocols.
    pending: HashMap<(Proto, OutboundRequestId), (PeerId, ResponseTx)>,
    replies: FuturesUnordered<Reply>,
    scores: PeerScores,
    dropped_events: u64,
    last_maintenance: Instant,
}

/// Builds the swarm, starts listening and dialing, and spawns its task. Returns the handle,
/// the node's event receiver and the inbound-request receivers.
pub(crate) fn spawn(
    identity: &Identity,
    parts: SwarmParts,
    cancel: CancellationToken,
) -> Result<(NetworkHandle, mpsc::Receiver<NetEvent>, InboundStreams), SwarmError> {
    let mut swarm = build(identity, &parts)?;
    for addr in &parts.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| SwarmError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    for addr in &parts.bootstrap {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    let (cmd_tx, commands) = mpsc::channel(COMMAND_CAPACITY);
    let (events, ev_rx) = mpsc::channel(EVENT_CAPACITY);
    let (probe_tx, probe) = mpsc::channel(INBOUND_CAPACITY);
    let (act_tx, activation) = mpsc::channel(INBOUND_CAPACITY);
    let (gen_tx, generate) = mpsc::channel(INBOUND_CAPACITY);
    // The request/response protocols' queues; activations arrive on lanes, served straight
    // into theirs, and lanes to peers are opened through the same behaviour.
    let inbound = HashMap::from([(Proto::Probe, probe_tx), (Proto::Generate, gen_tx)]);
    let max = parts.options.activation_max;
    let mut control = swarm.behaviour().lanes.new_control();
    let incoming = control
        .accept(super::lanes::LANE_PROTOCOL)
        .map_err(|e| SwarmError::Behaviour(e.to_string()))?;
    tokio::spawn(super::lanes::serve(incoming, act_tx, cmd_tx.clone(), max));
    let lanes = std::sync::Arc::new(super::lanes::Lanes::new(control, max));
    let task = SwarmTask {
        swarm,
        commands,
        events,
        inbound,
        pending: HashMap::new(),
        replies: FuturesUnordered::new(),
        scores: PeerScores::default(),
        dropped_events: 0,
        last_maintenance: Instant::now(),
    };
    let span = tracing::info_span!("swarm", id = %identity.node_id().short());
    tokio::spawn(task.run(cancel).instrument(span));
    let handle = NetworkHandle::new(identity.node_id(), cmd_tx, lanes);
    Ok((
        handle,
        ev_rx,
        InboundStreams {
            probe,
            activation,
            generate,
        },
    ))
}

fn build(identity: &Identity, parts: &SwarmParts) -> Result<Swarm<Behaviour>, SwarmError> {
    let psk = parts.psk;
    let quic = parts.quic;
    let swarm = SwarmBuilder::with_existing_identity(identity.to_libp2p())
        .with_tokio()
        .with_other_transport(|key| super::transport::build(key, psk, quic).map_err(boxed))
        .map_err(|e| SwarmError::Transport(e.to_string()))?
        .with_dns()
        .map_err(|e| SwarmError::Transport(e.to_string()))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| SwarmError::Transport(e.to_string()))?
        .with_behaviour(|key, relay| Behaviour::new(key, relay, &parts.options).map_err(boxed))
        .map_err(|e| SwarmError::Behaviour(e.to_string()))?
        // Every request opens a substream. Plain multistream-select waits for the listener to
        // confirm the protocol before the request goes out: one more round trip per hop,
        // which on a 40 ms link doubled a token's network time. V1Lazy sends the request
        // right behind the proposal (all of shoal's peers speak shoal's protocols).
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(IDLE_TIMEOUT)
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();
    Ok(swarm)
}

/// The builder's error type for fallible constructors.
fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

impl SwarmTask {
    async fn run(mut self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some((proto, channel, data)) = self.replies.next() => self.on_reply(proto, channel, data),
                _ = tick.tick() => self.on_maintenance(),
            }
        }
        tracing::debug!("swarm task stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish { topic, data, reply } => {
                let res = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(IdentTopic::new(topic.as_str()), data)
                    .map(|_| ())
                    .map_err(|e| NetError::Publish(e.to_string()));
                let _ = reply.send(res);
            }
            Command::Validate {
                id,
                propagation,
                acceptance,
            } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &propagation, acceptance);
            }
            Command::Request {
                peer,
                proto,
                data,
                reply,
            } => {
                let b = self.swarm.behaviour_mut();
                let id = match proto {
                    Proto::Probe => b.probe.send_request(&peer, Frame::Data(data)),
                    Proto::Generate => b.generate.send_request(&peer, Frame::Data(data)),
                    // The handle sends activations on lanes; never here.
                    Proto::Activation => {
                        let reason = "activations go over the activation lanes".to_string();
                        let _ = reply.send(Err(NetError::Request { peer, reason }));
                        return;
                    }
                };
                self.pending.insert((proto, id), (peer, reply));
            }
            Command::Dial { addr, reply } => {
                let res = self
                    .swarm
                    .dial(addr)
                    .map_err(|e| NetError::Dial(e.to_string()));
                let _ = reply.send(res);
            }
            Command::AddAddress { peer, addr } => {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
            Command::Misbehaved { peer, reason } => self.on_misbehaved(peer, reason),
            Command::Score { peer, reply } => {
                let info = PeerScoreInfo {
                    app: self.scores.get(&peer),
                    gossipsub: self.swarm.behaviour().gossipsub.peer_score(&peer),
                    banned: self.swarm.behaviour().block.blocked_peers().contains(&peer),
                };
                let _ = reply.send(info);
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Connected { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
        }
    }

    fn on_misbehaved(&mut self, peer: PeerId, reason: &'static str) {
        let (score, ban) = self.scores.penalise(peer, reason);
        tracing::info!(peer = %peer, reason, score, "peer misbehaved");
        let b = self.swarm.behaviour_mut();
        b.gossipsub.set_application_score(&peer, score);
        if ban {
            tracing::warn!(peer = %peer, score, "banning peer");
            b.block.block_peer(peer);
        }
    }

    fn on_reply(&mut self, proto: Proto, channel: ResponseChannel<Vec<u8>>, data: Option<Vec<u8>>) {
        // No answer from the consumer (it dropped the request): dropping the channel makes
        // the requester see a failure rather than wait for its timeout.
        let Some(data) = data else { return };
        let b = self.swarm.behaviour_mut();
        let res = match proto {
            Proto::Probe => b.probe.send_response(channel, data),
            Proto::Generate => b.generate.send_response(channel, data),
            // Inbound activations arrive on lanes, which answer on their own streams.
            Proto::Activation => return,
        };
        if res.is_err() {
            tracing::debug!(?proto, "response not sent: the connection closed");
        }
    }

    fn on_maintenance(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_maintenance);
        self.last_maintenance = now;
        self.scores.decay(elapsed);
        if self.swarm.connected_peers().next().is_some() {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
        if self.dropped_events > 0 {
            tracing::warn!(
                dropped = self.dropped_events,
                "events dropped: the node is slow"
            );
        }
    }

    fn emit(&mut self, event: NetEvent) {
        if self.events.try_send(event).is_err() {
            self.dropped_events += 1;
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(e) => self.on_behaviour(e),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                endpoint,
                ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                if num_established.get() == 1 {
                    self.emit(NetEvent::Connected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => self.emit(NetEvent::Disconnected(peer_id)),
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
            }
            _ => {}
        }
    }

    fn on_behaviour(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(e) => self.on_gossip(e),
            BehaviourEvent::Ping(e) => self.on_ping(e),
            BehaviourEvent::Identify(e) => self.on_identify(e),
            BehaviourEvent::Kad(e) => self.on_kad(e),
            BehaviourEvent::Mdns(e) => self.on_mdns(e),
            BehaviourEvent::Probe(e) => self.on_rr(Proto::Probe, e),
            BehaviourEvent::Generate(e) => self.on_rr(Proto::Generate, e),
            BehaviourEvent::Block(_)
            | BehaviourEvent::Relay(_)
            | BehaviourEvent::Dcutr(_)
            | BehaviourEvent::Lanes(()) => {}
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        } = event
        else {
            return;
        };
        let topic = Topic::ALL
            .into_iter()
            .find(|t| IdentTopic::new(t.as_str()).hash() == message.topic);
        let Some(topic) = topic else {
            // We only subscribe to shoal topics; anything else is noise from the sender.
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    gossipsub::MessageAcceptance::Reject,
                );
            return;
        };
        self.emit(NetEvent::Gossip {
            topic,
            propagation: propagation_source,
            id: message_id,
            author: message.source,
            data: message.data,
        });
    }

    fn on_ping(&mut self, event: ping::Event) {
        if let Ok(rtt) = event.result {
            self.emit(NetEvent::Rtt {
                peer: event.peer,
                rtt,
            });
        }
    }

    fn on_identify(&mut self, event: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = event else {
            return;
        };
        for addr in &info.listen_addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer_id, addr.clone());
        }
        self.emit(NetEvent::Addresses {
            peer: peer_id,
            addrs: info.listen_addrs,
        });
    }

    fn on_kad(&mut self, event: kad::Event) {
        // Shoal swarms are small: connect to every peer the DHT tells us about.
        if let kad::Event::RoutingUpdated { peer, .. } = event
            && !self.swarm.is_connected(&peer)
            && !self.banned(&peer)
        {
            let _ = self.swarm.dial(peer);
        }
    }

    fn on_mdns(&mut self, event: mdns::Event) {
        if let mdns::Event::Discovered(found) = event {
            for (peer, addr) in found {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
                if !self.swarm.is_connected(&peer) && !self.banned(&peer) {
                    let _ = self.swarm.dial(addr);
                }
            }
        }
    }

    fn banned(&self, peer: &PeerId) -> bool {
        self.swarm.behaviour().block.blocked_peers().contains(peer)
    }

    fn on_rr(&mut self, proto: Proto, event: request_response::Event<Frame, Vec<u8>>) {
        use request_response::{Event, Message, OutboundFailure};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request: Frame::Data(data),
                        channel,
                        ..
                    },
                ..
            } => self.on_inbound(proto, peer, data, channel),
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request: Frame::Oversized(len),
                        ..
                    },
                ..
            } => {
                // Dropping the channel fails the sender's request; its body was never read.
                tracing::info!(peer = %peer, ?proto, len, "refused an oversized request frame");
                self.on_misbehaved(peer, "oversized_frame");
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((_, reply)) = self.pending.remove(&(proto, request_id)) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((peer, reply)) = self.pending.remove(&(proto, request_id)) {
                    // A response over the limit is bad input from the responder.
                    if let OutboundFailure::Io(e) = &error
                        && e.kind() == std::io::ErrorKind::InvalidData
                    {
                        self.on_misbehaved(peer, "oversized_frame");
                    }
                    let reason = error.to_string();
                    let _ = reply.send(Err(NetError::Request { peer, reason }));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(peer = %peer, ?proto, %error, "inbound request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_inbound(
        &mut self,
        proto: Proto,
        peer: PeerId,
        data: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let (reply, rx) = oneshot::channel();
        let req = InboundRequest { peer, data, reply };
        let Some(tx) = self.inbound.get(&proto) else {
            return;
        };
        match tx.try_send(req) {
            Ok(()) => self
                .replies
                .push(Box::pin(async move { (proto, channel, rx.await.ok()) })),
            Err(_) => {
                // Full or nobody listening: drop the channel so the sender fails fast.
                self.dropped_events += 1;
            }
        }
    }
}
