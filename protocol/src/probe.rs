//! Link probes: timed transfers on `/shoal/probe/1` and UDP loss-probe datagrams.
//!
//! **Bandwidth.** The prober sends a [`BandwidthProbe`] with `payload` bytes and asks for
//! `reply_bytes` back; the peer answers with a [`BandwidthProbeReply`] of that size. Timing the
//! exchange with a small and a large payload separates latency from throughput in both
//! directions. **Loss.** Reliable streams hide packet loss, so a node runs a UDP echo beside
//! the swarm ([`crate::Capability::loss_probe_port`]): the prober sends [`LossProbe`]
//! datagrams with a random per-run `nonce` and increasing `seq`, the peer echoes each one with
//! `echo` set, and the prober counts which `seq` never came back. The nonce lets the prober drop
//! stray or spoofed echoes. **Link rate.** A timed transfer measures what TCP gets through,
//! which loss and a long round trip keep far below the link's rate. The prober also sends a
//! train of [`TrainProbe`] datagrams back to back to the same UDP echo; the train queues at the
//! narrowest link, so it arrives spaced at that link's rate. The peer answers each datagram
//! with a small [`TrainAck`] carrying its own arrival clock, and the prober divides the bytes
//! by the spread of the arrival times. An ack is smaller than the datagram it answers, so the
//! echo cannot be used to amplify traffic towards a spoofed address.

use serde::{Deserialize, Serialize};
use shoal_keys::Domain;

use crate::{Kind, Message, ProtocolError};

/// Largest probe payload either way, bytes (a timed 1 MiB transfer with room to spare).
pub const MAX_PROBE_PAYLOAD: usize = 8 * 1024 * 1024;
/// Largest loss-probe datagram, bytes (fits any MTU).
pub const MAX_LOSS_PROBE_BYTES: usize = 128;
/// Largest train datagram, bytes (fits a 1500-byte MTU with IPv6 and UDP headers).
pub const MAX_TRAIN_DATAGRAM: usize = 1400;
/// Largest train ack, bytes (its own arrival and [`MAX_ACK_EARLIER`] earlier ones).
pub const MAX_TRAIN_ACK_BYTES: usize = 192;
/// Earlier arrivals one [`TrainAck`] repeats at most.
pub const MAX_ACK_EARLIER: usize = 3;

/// A timed transfer request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthProbe {
    /// Random id the reply echoes.
    pub nonce: u64,
    /// How many payload bytes the reply should carry (at most [`MAX_PROBE_PAYLOAD`]).
    pub reply_bytes: u32,
    /// Filler bytes whose transfer is timed (content is ignored).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Message for BandwidthProbe {
    const KIND: Kind = Kind::BandwidthProbe;
    const DOMAIN: Domain = Domain::PROBE;
    const MAX_BYTES: usize = MAX_PROBE_PAYLOAD + 256;

    fn validate(&self) -> Result<(), ProtocolError> {
        if usize::try_from(self.reply_bytes).map_or(true, |n| n > MAX_PROBE_PAYLOAD) {
            return Err(ProtocolError::invalid(
                Self::KIND,
                format!(
                    "reply_bytes {} exceeds {MAX_PROBE_PAYLOAD}",
                    self.reply_bytes
                ),
            ));
        }
        check_payload(Self::KIND, &self.payload)
    }
}

fn check_payload(kind: Kind, payload: &[u8]) -> Result<(), ProtocolError> {
    if payload.len() > MAX_PROBE_PAYLOAD {
        return Err(ProtocolError::invalid(
            kind,
            format!(
                "payload of {} bytes exceeds {MAX_PROBE_PAYLOAD}",
                payload.len()
            ),
        ));
    }
    Ok(())
}

/// The answer to a [`BandwidthProbe`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthProbeReply {
    /// The request's nonce.
    pub nonce: u64,
    /// Payload bytes the responder received.
    pub received_bytes: u32,
    /// `reply_bytes` filler bytes.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Message for BandwidthProbeReply {
    const KIND: Kind = Kind::BandwidthProbeReply;
    const DOMAIN: Domain = Domain::PROBE;
    const MAX_BYTES: usize = MAX_PROBE_PAYLOAD + 256;

    fn validate(&self) -> Result<(), ProtocolError> {
        check_payload(Self::KIND, &self.payload)
    }
}

/// One UDP loss-probe datagram (the echo is the same datagram with `echo` set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossProbe {
    /// Random per probing run; echoes with another nonce are ignored.
    pub nonce: u64,
    /// Sequence number within the run, from 0.
    pub seq: u32,
    /// Prober's clock when sent, microseconds (only the prober interprets it).
    pub sent_us: u64,
    /// False from the prober, true in the echo.
    pub echo: bool,
    /// Set in an echo when the echoing node's own link was carrying a bandwidth train: the
    /// round trip then includes the train's queue, which says nothing about the link, so the
    /// prober leaves the sample out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub busy: bool,
    /// Set in an echo: microseconds from the datagram's arrival (the echo's kernel receive
    /// time) to the echo's reply. The prober subtracts it, so that the round trip describes
    /// the link and not how soon a busy machine scheduled the echo.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_us: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Message for LossProbe {
    const KIND: Kind = Kind::LossProbe;
    const DOMAIN: Domain = Domain::PROBE;
    const MAX_BYTES: usize = MAX_LOSS_PROBE_BYTES;

    fn validate(&self) -> Result<(), ProtocolError> {
        Ok(())
    }
}

/// One datagram of a bandwidth train, sent to the peer's UDP echo port.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainProbe {
    /// Random per probing run; acks with another nonce are ignored.
    pub nonce: u64,
    /// Which train of the run.
    pub train: u32,
    /// Position in the train, from 0.
    pub seq: u32,
    /// Filler that gives the datagram its size (content is ignored).
    #[serde(with = "serde_bytes")]
    pub pad: Vec<u8>,
}

impl Message for TrainProbe {
    const KIND: Kind = Kind::TrainProbe;
    const DOMAIN: Domain = Domain::PROBE;
    const MAX_BYTES: usize = MAX_TRAIN_DATAGRAM;

    fn validate(&self) -> Result<(), ProtocolError> {
        Ok(())
    }
}

/// The answer to one [`TrainProbe`]: when it arrived, on the receiver's clock, and the same for
/// the few datagrams of the train that arrived just before it. The acks cross the reverse
/// path, which loses some: an arrival whose own ack is lost still reaches the prober through
/// a later one, so the train's rate is thinned only by the losses it really met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainAck {
    /// The probe's nonce.
    pub nonce: u64,
    /// The probe's train.
    pub train: u32,
    /// The probe's position in the train.
    pub seq: u32,
    /// Size of the datagram received, bytes.
    pub bytes: u32,
    /// Receiver's clock at arrival, microseconds since an origin of its own (only differences
    /// between acks of one train mean anything).
    pub recv_us: u64,
    /// Another train (another prober's nonce) reached the receiver at nearly the same time:
    /// the two shared its link, and each measured only part of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// Up to [`MAX_ACK_EARLIER`] earlier arrivals of the same train, newest first, each as
    /// `(seq, bytes, recv_us)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<(u32, u32, u64)>,
}

impl Message for TrainAck {
    const KIND: Kind = Kind::TrainAck;
    const DOMAIN: Domain = Domain::PROBE;
    const MAX_BYTES: usize = MAX_TRAIN_ACK_BYTES;

    fn validate(&self) -> Result<(), ProtocolError> {
        if self.earlier.len() > MAX_ACK_EARLIER {
            return Err(ProtocolError::invalid(
                Kind::TrainAck,
                format!(
                    "repeats {} earlier arrivals, at most {MAX_ACK_EARLIER}",
                    self.earlier.len()
                ),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for TrainProbe {
    /// Prints the filler's length, not its bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainProbe")
            .field("nonce", &self.nonce)
            .field("train", &self.train)
            .field("seq", &self.seq)
            .field("pad_bytes", &self.pad.len())
            .finish()
    }
}

impl std::fmt::Debug for BandwidthProbe {
    /// Prints the payload's length, not its bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BandwidthProbe")
            .field("nonce", &self.nonce)
            .field("reply_bytes", &self.reply_bytes)
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}

impl std::fmt::Debug for BandwidthProbeReply {
    /// Prints the payload's length, not its bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BandwidthProbeReply")
            .field("nonce", &self.nonce)
            .field("received_bytes", &self.received_bytes)
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}
