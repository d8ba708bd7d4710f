//! The transport stack: TCP (optionally behind a pnet pre-shared key), noise, yamux, and QUIC
//! when the `quic` feature is on, the config asks for it and no PSK is set (pnet cannot wrap
//! QUIC, so a private swarm is TCP only).

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::{PeerId, Transport, identity, noise, tcp, yamux};

/// A QUIC connection silent this long is dead, in milliseconds (libp2p default: 10 000).
#[cfg(feature = "quic")]
const QUIC_IDLE_TIMEOUT_MS: u32 = 3_000;
/// QUIC keep-alive interval (libp2p default: 5 s), well below the idle timeout.
#[cfg(feature = "quic")]
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Handshake and upgrade timeout of a new TCP connection.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds the transport for `key`.
pub(crate) fn build(
    key: &identity::Keypair,
    psk: Option<PreSharedKey>,
    quic: bool,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let with_quic = quic && psk.is_none();
    let noise = noise::Config::new(key)?;
    let base = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let tcp = match psk {
        Some(psk) => base
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(UPGRADE_TIMEOUT)
            .map(|(peer, mux), _| (peer, StreamMuxerBox::new(mux)))
            .boxed(),
        None => base
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(UPGRADE_TIMEOUT)
            .map(|(peer, mux), _| (peer, StreamMuxerBox::new(mux)))
            .boxed(),
    };
    Ok(add_quic(tcp, key, with_quic))
}

#[cfg(feature = "quic")]
fn add_quic(
    tcp: Boxed<(PeerId, StreamMuxerBox)>,
    key: &identity::Keypair,
    on: bool,
) -> Boxed<(PeerId, StreamMuxerBox)> {
    if !on {
        return tcp;
    }
    let mut config = libp2p::quic::Config::new(key);
    // A peer killed without closing its QUIC connection must be noticed quickly: while the
    // dead connection lingers, the restarted peer's messages are not routed (see the restart
    // test in tests/swarm_process.rs).
    config.max_idle_timeout = QUIC_IDLE_TIMEOUT_MS;
    config.keep_alive_interval = QUIC_KEEP_ALIVE;
    let quic = libp2p::quic::tokio::Transport::new(config)
        .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)));
    tcp.or_transport(quic)
        .map(|either, _| either.into_inner())
        .boxed()
}

#[cfg(not(feature = "quic"))]
fn add_quic(
    tcp: Boxed<(PeerId, StreamMuxerBox)>,
    _key: &identity::Keypair,
    _on: bool,
) -> Boxed<(PeerId, StreamMuxerBox)> {
    tcp
}
