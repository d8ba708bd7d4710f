//! The composed libp2p behaviour: identify, ping, Kademlia, mDNS (optional), gossipsub with
//! explicit validation and peer scoring, relay client + DCUtR, a relay server when the node
//! offers one, a block list, a
//! request/response behaviour for probes, client requests and model files, and the streams of the
//! activation lanes (`lanes.rs`).

use std::time::Duration;

use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::kad::{self, store::MemoryStore};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, allow_block_list, dcutr, identify, identity, mdns, ping, relay,
    request_response,
};
use shoal_protocol::Topic;

use super::Proto;
use super::codec::FrameCodec;

/// Protocol name of shoal's Kademlia DHT (separate from the public IPFS DHT).
pub(crate) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/kad/1");
/// Identify protocol version string.
const IDENTIFY_VERSION: &str = "/shoal/1";
/// Largest gossipsub frame, in bytes: the protocol's gossip limit plus gossipsub's envelope.
const GOSSIP_MAX: usize = shoal_protocol::GOSSIP_MAX_BYTES + 4096;
/// Largest probe frame: the 1 MiB transfer plus room for its envelope.
const PROBE_MAX: usize = (1 << 20) + 4096;
/// Largest `/shoal/layers/1` frame: a file chunk plus room for its envelope.
const LAYERS_MAX: usize = shoal_protocol::MAX_FILE_CHUNK + 4096;
/// How long a request may take before it fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent inbound+outbound streams per connection and protocol.
const MAX_STREAMS: usize = 64;

/// Everything the swarm runs.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) block: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<MemoryStore>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) relay: relay::client::Behaviour,
    pub(crate) relay_server: Toggle<relay::Behaviour>,
    pub(crate) dcutr: dcutr::Behaviour,
    pub(crate) probe: request_response::Behaviour<FrameCodec>,
    pub(crate) generate: request_response::Behaviour<FrameCodec>,
    pub(crate) layers: request_response::Behaviour<FrameCodec>,
    pub(crate) lanes: libp2p_stream::Behaviour,
}

/// Knobs of the behaviour that come from the node's config.
#[derive(Debug, Clone)]
pub(crate) struct BehaviourOptions {
    pub(crate) mdns: bool,
    /// Serve as a circuit relay (see [`relay_server`]).
    pub(crate) relay_server: bool,
    pub(crate) ping_interval: Duration,
    /// Largest activation-protocol frame (request or answer, on the activation lanes).
    pub(crate) activation_max: usize,
    /// Largest generate-protocol frame.
    pub(crate) generate_max: usize,
}

/// Errors of building the behaviour.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    #[error("gossipsub: {0}")]
    Gossipsub(String),
    #[error("mdns: {0}")]
    Mdns(#[from] std::io::Error),
}

impl Behaviour {
    pub(crate) fn new(
        key: &identity::Keypair,
        relay: relay::client::Behaviour,
        opts: &BehaviourOptions,
    ) -> Result<Self, BuildError> {
        let id = key.public().to_peer_id();
        let mut kad =
            kad::Behaviour::with_config(id, MemoryStore::new(id), kad::Config::new(KAD_PROTOCOL));
        kad.set_mode(Some(kad::Mode::Server));
        let mdns = if opts.mdns {
            Some(mdns::tokio::Behaviour::new(mdns::Config::default(), id)?)
        } else {
            None
        };
        let rr = |max: usize, proto: Proto| {
            request_response::Behaviour::with_codec(
                FrameCodec {
                    max_request: max,
                    max_response: max,
                },
                [(
                    StreamProtocol::new(proto.name()),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(REQUEST_TIMEOUT)
                    .with_max_concurrent_streams(MAX_STREAMS),
            )
        };
        Ok(Behaviour {
            block: Default::default(),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_VERSION.to_string(), key.public())
                    .with_push_listen_addr_updates(true),
            ),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(opts.ping_interval)),
            kad,
            mdns: mdns.into(),
            gossipsub: gossip(key)?,
            relay,
            relay_server: opts.relay_server.then(|| relay_server(id)).into(),
            dcutr: dcutr::Behaviour::new(id),
            probe: rr(PROBE_MAX, Proto::Probe),
            generate: rr(opts.generate_max, Proto::Generate),
            layers: rr(LAYERS_MAX, Proto::Layers),
            lanes: libp2p_stream::Behaviour::new(),
        })
    }
}

/// Circuits a relay carries at once, and per peer.
const RELAY_CIRCUITS: (usize, usize) = (256, 32);
/// How long a circuit may last: libp2p's default of 2 minutes would cut a long generation.
const RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A relay v2 server for the swarm's members behind NAT. A circuit carries activations, so
/// it has no byte limit (libp2p's default of 128 KiB is a few tokens of a large model) and
/// lasts a day; reservations keep libp2p's defaults (an hour, rate-limited per peer and IP).
fn relay_server(id: libp2p::PeerId) -> relay::Behaviour {
    let config = relay::Config {
        max_circuits: RELAY_CIRCUITS.0,
        max_circuits_per_peer: RELAY_CIRCUITS.1,
        max_circuit_duration: RELAY_CIRCUIT_DURATION,
        // 0: no limit.
        max_circuit_bytes: 0,
        ..relay::Config::default()
    };
    relay::Behaviour::new(id, config)
}

/// Gossipsub with signed messages, strict validation, explicit acceptance and peer scoring.
fn gossip(key: &identity::Keypair) -> Result<gossipsub::Behaviour, BuildError> {
    let err = |e: &dyn std::fmt::Display| BuildError::Gossipsub(e.to_string());
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(GOSSIP_MAX)
        .heartbeat_interval(Duration::from_millis(500))
        // Small swarms: a mesh of everyone we can reach.
        .mesh_n_low(1)
        .mesh_n(6)
        .mesh_n_high(12)
        .mesh_outbound_min(0)
        .flood_publish(true)
        .build()
        .map_err(|e| err(&e))?;
    let mut gs = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config)
        .map_err(|e| err(&e))?;
    let mut params = gossipsub::PeerScoreParams {
        app_specific_weight: 1.0,
        // A peer killed mid-exchange leaves a few unanswered IWANTs behind; with the default
        // threshold of 0 those broken promises alone graylist it when it restarts.
        behaviour_penalty_threshold: 6.0,
        // Forget a departed peer's gossipsub score after 30 s (default: an hour), so a node
        // that restarts is heard again. Misbehaviour still counts: shoal's own score and
        // block list live in the swarm task, not in gossipsub.
        retain_score: Duration::from_secs(30),
        ..Default::default()
    };
    for topic in Topic::ALL {
        let t = IdentTopic::new(topic.as_str());
        params.topics.insert(t.hash(), topic_score());
        gs.subscribe(&t).map_err(|e| err(&e))?;
    }
    gs.with_peer_score(params, gossipsub::PeerScoreThresholds::default())
        .map_err(|e| err(&e))?;
    Ok(gs)
}

/// Topic scoring: only invalid messages count against a peer (shoal's topics are quiet, so
/// delivery-rate penalties would punish honest peers).
fn topic_score() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.1,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    }
}
