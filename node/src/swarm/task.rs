//! The swarm task: owns the libp2p `Swarm`, runs commands, and turns swarm events into
//! [`NetEvent`]s and [`InboundRequest`]s. Each `select!` arm is one line calling an `on_*`
//! method; the task ends when its cancellation token fires.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{ConnectionId, SwarmEvent};
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
/// How many times a failed hole punch to a peer is tried again (DCUtR makes three attempts
/// each time; a missed simultaneous open on a loaded machine is not a NAT that cannot be
/// punched).
const PUNCH_RETRIES: u32 = 3;
/// Connections without traffic stay open this long (shoal swarms are small and chatty).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// What the swarm needs from the node to start.
#[derive(Debug)]
pub(crate) struct SwarmParts {
    pub(crate) listen: Vec<Multiaddr>,
    pub(crate) bootstrap: Vec<Multiaddr>,
    /// Relays to reserve a slot on (each ends in `/p2p/<relay>`).
    pub(crate) relays: Vec<Multiaddr>,
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
    /// Open connections per peer: `None` for a direct one, `Some(relay)` for a circuit.
    conns: HashMap<PeerId, HashMap<ConnectionId, Option<PeerId>>>,
    /// The relay each peer is reached through, for peers whose only connections are circuits.
    routes: HashMap<PeerId, PeerId>,
    relay_server: bool,
    /// The relays to hold a reservation on: address, and the circuit listener while it is open.
    relays: HashMap<PeerId, (Multiaddr, Option<ListenerId>)>,
    /// Peers whose hole punch failed: the retries made so far, and in how many maintenance
    /// ticks the next one is due (`None`: none).
    punch_retries: HashMap<PeerId, (u32, Option<u32>)>,
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
    // Relays: dialled here; the reservation is asked for once the connection stands (the relay
    // client's own dial would lose the race against this one and close the listener).
    let mut relays = HashMap::new();
    for relay in &parts.relays {
        let Some(Protocol::P2p(peer)) = relay.iter().last() else {
            tracing::warn!(addr = %relay, "relay address without /p2p/<id>: ignored");
            continue;
        };
        swarm.behaviour_mut().kad.add_address(&peer, relay.clone());
        if let Err(e) = swarm.dial(relay.clone()) {
            tracing::warn!(addr = %relay, error = %e, "cannot dial relay");
        }
        relays.insert(peer, (relay.clone(), None));
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
    let (layers_tx, layers) = mpsc::channel(INBOUND_CAPACITY);
    // The request/response protocols' queues; activations arrive on lanes, served straight
    // into theirs, and lanes to peers are opened through the same behaviour.
    let inbound = HashMap::from([
        (Proto::Probe, probe_tx),
        (Proto::Generate, gen_tx),
        (Proto::Layers, layers_tx),
    ]);
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
        punch_retries: HashMap::new(),
        conns: HashMap::new(),
        routes: HashMap::new(),
        relay_server: parts.options.relay_server,
        relays,
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
            layers,
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

/// Whether `addr` goes through a relay (has a `/p2p-circuit` part).
fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The relay of a circuit address (the peer named right before `/p2p-circuit`); `None` for a
/// direct address.
pub(crate) fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => relay = Some(id),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
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
                    Proto::Layers => b.layers.send_request(&peer, Frame::Data(data)),
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
            Proto::Layers => b.layers.send_response(channel, data),
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
        let relays: Vec<PeerId> = self.relays.keys().copied().collect();
        for relay in relays {
            self.reserve(relay);
        }
        self.retry_punches();
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
                // A relay hands its external addresses out with each reservation and stays
                // off without one: whoever runs a relay made its listen addresses reachable.
                if self.relay_server && !is_circuit(&address) {
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                let addr = endpoint.get_remote_address();
                // An inbound circuit names only its source as the remote address; the relay
                // is in the local (circuit listen) address.
                let via = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => relay_of(address),
                    ConnectedPoint::Listener { local_addr, .. } => relay_of(local_addr),
                };
                tracing::debug!(peer = %peer_id, %addr, relayed = via.is_some(), "connected");
                self.conns
                    .entry(peer_id)
                    .or_default()
                    .insert(connection_id, via);
                self.update_route(peer_id);
                if via.is_none() {
                    self.reserve(peer_id);
                }
                if num_established.get() == 1 {
                    self.emit(NetEvent::Connected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(c) = self.conns.get_mut(&peer_id) {
                    c.remove(&connection_id);
                    if c.is_empty() {
                        self.conns.remove(&peer_id);
                    }
                }
                self.update_route(peer_id);
                if num_established == 0 {
                    self.emit(NetEvent::Disconnected(peer_id));
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                tracing::warn!(?addresses, ?reason, "listener closed");
                // A lost reservation is asked for again at the next connection to the relay
                // (or the next maintenance tick while one stands).
                for (_, listener) in self.relays.values_mut() {
                    if *listener == Some(listener_id) {
                        *listener = None;
                    }
                }
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address");
            }
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
            BehaviourEvent::Layers(e) => self.on_rr(Proto::Layers, e),
            BehaviourEvent::Relay(e) => tracing::info!(event = ?e, "relay client"),
            BehaviourEvent::RelayServer(e) => tracing::debug!(event = ?e, "relay server"),
            BehaviourEvent::Dcutr(e) => match e.result {
                Ok(_) => {
                    tracing::info!(peer = %e.remote_peer_id, "hole punch: direct connection");
                    self.punch_retries.remove(&e.remote_peer_id);
                }
                Err(err) => {
                    tracing::info!(peer = %e.remote_peer_id, error = %err, "hole punch failed");
                    // Both ends may see the failure: the one with the smaller id tries first,
                    // the other a tick later if the link is still relayed by then.
                    let first = *self.swarm.local_peer_id() < e.remote_peer_id;
                    let (tries, due) = self.punch_retries.entry(e.remote_peer_id).or_default();
                    *due = (*tries < PUNCH_RETRIES).then_some(if first { 1 } else { 2 });
                    if due.is_none() {
                        tracing::info!(peer = %e.remote_peer_id, "hole punching given up: the link stays relayed");
                    }
                }
            },
            BehaviourEvent::Block(_) | BehaviourEvent::Lanes(()) => {}
        }
    }

    /// Tries the due hole punches again: a new circuit to the peer through the relay its
    /// current one goes through makes the peer start DCUtR on it.
    fn retry_punches(&mut self) {
        let mut due = Vec::new();
        for (peer, (_, ticks)) in &mut self.punch_retries {
            if let Some(t) = ticks {
                *t = t.saturating_sub(1);
                if *t == 0 {
                    *ticks = None;
                    due.push(*peer);
                }
            }
        }
        for peer in due {
            // Still reached only through a relay we know the address of?
            let Some(relay) = self.routes.get(&peer).copied() else {
                continue;
            };
            let Some((addr, _)) = self.relays.get(&relay) else {
                continue;
            };
            let circuit = addr
                .clone()
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(peer));
            let Some(entry) = self.punch_retries.get_mut(&peer) else {
                continue;
            };
            entry.0 += 1;
            tracing::info!(peer = %peer, retry = entry.0, "hole punch: trying again through a new circuit");
            if let Err(e) = self.swarm.dial(circuit) {
                tracing::debug!(peer = %peer, error = %e, "cannot dial a new circuit");
            }
        }
    }

    /// Whether a direct (not relayed) connection to `peer` stands.
    fn has_direct(&self, peer: &PeerId) -> bool {
        self.conns
            .get(peer)
            .is_some_and(|c| c.values().any(Option::is_none))
    }

    /// Asks `relay` for a reservation (listens on its circuit address) when it is one of the
    /// configured relays, a direct connection to it stands and no circuit listener is open.
    fn reserve(&mut self, relay: PeerId) {
        let Some((addr, None)) = self.relays.get(&relay) else {
            return;
        };
        if !self.has_direct(&relay) {
            return;
        }
        let circuit = addr.clone().with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(id) => {
                tracing::info!(addr = %circuit, "asking the relay for a reservation");
                if let Some((_, listener)) = self.relays.get_mut(&relay) {
                    *listener = Some(id);
                }
            }
            Err(e) => tracing::warn!(addr = %circuit, error = %e, "cannot listen through relay"),
        }
    }

    /// Recomputes how `peer` is reached (direct when any connection is; else through the
    /// relay of a circuit) and tells the node when that changed.
    fn update_route(&mut self, peer: PeerId) {
        let direct = self.has_direct(&peer);
        let route = self
            .conns
            .get(&peer)
            .filter(|_| !direct)
            .and_then(|c| c.values().flatten().next().copied());
        let changed = match route {
            Some(relay) => self.routes.insert(peer, relay) != Some(relay),
            None => self.routes.remove(&peer).is_some(),
        };
        // Once a direct connection stands (dialled, or hole-punched by DCUtR), circuits to the
        // same peer only load the relay: close them so every stream takes the direct path.
        if direct && let Some(c) = self.conns.get(&peer) {
            let circuits: Vec<ConnectionId> = c
                .iter()
                .filter(|(_, via)| via.is_some())
                .map(|(id, _)| *id)
                .collect();
            for id in circuits {
                tracing::debug!(peer = %peer, "closing a circuit: a direct connection stands");
                self.swarm.close_connection(id);
            }
        }
        if changed {
            tracing::info!(peer = %peer, via = ?route, "route");
            self.emit(NetEvent::Route { peer, via: route });
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
        // Pings run on every connection; the relayed one says nothing about a direct path.
        let relayed = self
            .conns
            .get(&event.peer)
            .and_then(|c| c.get(&event.connection))
            .is_some_and(Option::is_some);
        if relayed && !self.routes.contains_key(&event.peer) {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_of_a_circuit_is_the_peer_before_p2p_circuit() {
        let relay = PeerId::random();
        let target = PeerId::random();
        let circuit: Multiaddr =
            format!("/ip4/198.18.0.2/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{target}")
                .parse()
                .unwrap();
        assert_eq!(relay_of(&circuit), Some(relay));
        assert!(is_circuit(&circuit));
        let direct: Multiaddr = format!("/ip4/198.18.1.2/tcp/4001/p2p/{target}")
            .parse()
            .unwrap();
        assert_eq!(relay_of(&direct), None);
        assert!(!is_circuit(&direct));
    }
}
