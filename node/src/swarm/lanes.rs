//! Activation lanes: the activation protocol (`/shoal/activation/1`, run as a stream protocol,
//! which DESIGN.md allows) on one long-lived stream per peer that carries activation requests
//! and their answers, each a single frame, instead of one request/response stream per message.
//!
//! A new request/response stream puts three packets on the link before its message has
//! arrived (the stream's opening with the protocol proposal, the message, the close: yamux
//! flushes every frame on its own), and its answer two or three. On a jittery link that
//! delivers in order, as Wi-Fi does, a message is as late as the slowest packet sent before it
//! on the connection: on the bed's 20 ms +- 8 ms link each crossing took 26-33 ms on average
//! instead of 20. A lane sends each message as one write.
//!
//! Frame: a big-endian `u32` length of what follows, a big-endian `u64` request id, a status
//! byte, the payload (a shoal-protocol frame, at most the activation limit). An answer carries
//! its request's id; status [`DROPPED`] means the peer dropped the request unanswered (its
//! queue was full, or it had no answer for it), so the sender fails at once, as a dropped
//! request/response channel made it fail. Requests on one lane are served concurrently and
//! answered in any order.
//!
//! Lanes are opened on first use and reopened after any failure (a request on a lane that
//! fails gets the failure at once, as a closed connection made request/response fail). A peer
//! that sends an oversized or truncated frame loses its lane and is reported.
//!
//! The serving side greets each new lane with an empty frame of id 0 ([`GREETING`]), and the
//! opener sends nothing before it has the greeting. A stream the peer never took (libp2p-stream
//! drops an inbound stream when the previous one has not been picked up yet, and a closing
//! connection takes its new streams with it) fails before the greeting, with no request
//! on it, so it is opened again, up to [`OPEN_ATTEMPTS`] times.
//!
//! Each lane's stream is split between a reader and a writer task, behind [`Fused`]: libp2p's
//! outbound stream panics on any use after its protocol negotiation failed, and the reader may
//! see that failure (the peer refused the lane or went away) while the writer still holds work.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::StreamExt;
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot};

use super::{Command, InboundRequest, NetError};

/// The lane protocol: the activation protocol's name.
pub(crate) const LANE_PROTOCOL: StreamProtocol =
    StreamProtocol::new(shoal_protocol::ACTIVATION_PROTOCOL);
/// Frames waiting for a lane's writer.
const WRITE_QUEUE: usize = 64;
/// Bytes of a frame's header after the length: the request id and the status.
const HEADER_BYTES: usize = 9;
/// Status of a request, or of an answer.
const OK: u8 = 0;
/// Status of an answer to a request the peer dropped.
const DROPPED: u8 = 1;
/// Id of the frame that greets a new lane (request ids start at 1).
const GREETING: u64 = 0;
/// Tries to open a lane when the stream fails before its greeting.
const OPEN_ATTEMPTS: usize = 3;
/// How long an opener waits for the greeting.
const GREETING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, NetError>>>>>;

/// One open outbound lane.
#[derive(Clone)]
struct Lane {
    tx: mpsc::Sender<Outgoing>,
    pending: Pending,
    closed: Arc<AtomicBool>,
}

/// The outbound lanes of this node, and the opener of new ones.
pub(crate) struct Lanes {
    control: tokio::sync::Mutex<libp2p_stream::Control>,
    open: Mutex<HashMap<PeerId, Lane>>,
    /// One opener per peer at a time; others wait and use its lane.
    openers: Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>,
    next_id: AtomicU64,
    max: usize,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes").field("max", &self.max).finish()
    }
}

impl Lanes {
    /// Lanes opened through `control`; frames over `max` payload bytes are refused.
    pub(crate) fn new(control: libp2p_stream::Control, max: usize) -> Self {
        Lanes {
            control: tokio::sync::Mutex::new(control),
            open: Mutex::new(HashMap::new()),
            openers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            max,
        }
    }

    /// Sends `data` to `peer` on its lane (opening one if needed) and waits for the answer.
    pub(crate) async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        let lane = self
            .lane(peer)
            .await
            .map_err(|why| lane_failed(peer, &format!("no activation lane: {why}")))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&lane.pending).insert(id, tx);
        if lane.closed.load(Ordering::Acquire) || lane.tx.send((id, OK, data)).await.is_err() {
            lock(&lane.pending).remove(&id);
            return Err(lane_failed(peer, "the lane closed"));
        }
        rx.await
            .unwrap_or_else(|_| Err(lane_failed(peer, "the lane closed")))
    }

    /// The lane to `peer`, if one is open and has not failed.
    fn live(&self, peer: PeerId) -> Option<Lane> {
        lock(&self.open)
            .get(&peer)
            .filter(|l| !l.closed.load(Ordering::Acquire))
            .cloned()
    }

    /// The open lane to `peer`, or a new one.
    async fn lane(&self, peer: PeerId) -> Result<Lane, String> {
        if let Some(l) = self.live(peer) {
            return Ok(l);
        }
        let opener = lock(&self.openers).entry(peer).or_default().clone();
        let result = {
            let _one = opener.lock().await;
            match self.live(peer) {
                Some(l) => Ok(l),
                None => self.open_lane(peer).await,
            }
        };
        // The map's entry and ours: nobody else is opening to this peer (checked under the
        // map's lock, which every caller holds while it takes the entry).
        let mut openers = lock(&self.openers);
        if Arc::strong_count(&opener) == 2 {
            openers.remove(&peer);
        }
        drop(openers);
        result
    }

    /// Opens a lane to `peer` and waits for its greeting, again when the stream fails first.
    async fn open_lane(&self, peer: PeerId) -> Result<Lane, String> {
        let mut why = String::new();
        for _ in 0..OPEN_ATTEMPTS {
            let stream = self
                .control
                .lock()
                .await
                .open_stream(peer, LANE_PROTOCOL)
                .await
                .map_err(|e| e.to_string())?;
            match greeted(peer, stream, self.max).await {
                Ok(lane) => {
                    lock(&self.open).insert(peer, lane.clone());
                    return Ok(lane);
                }
                Err(Ungreeted::Failed(e)) => why = e,
                Err(Ungreeted::Refused(e)) => return Err(e),
            }
        }
        Err(why)
    }
}

/// Why a new lane has no greeting.
#[derive(Debug)]
enum Ungreeted {
    /// The stream failed first: nothing was sent on it, so another may be opened.
    Failed(String),
    /// The peer answered with something else, or not in time.
    Refused(String),
}

/// Waits for the greeting on a newly opened `stream`, then starts the lane's writer and
/// answer reader.
async fn greeted<S>(peer: PeerId, stream: S, max: usize) -> Result<Lane, Ungreeted>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, writer) = Fused::new(stream).split();
    // A greeting is empty: a longer frame is refused from its header.
    match tokio::time::timeout(GREETING_TIMEOUT, read_frame(&mut reader, 0)).await {
        Ok(Ok((GREETING, OK, _))) => {}
        Ok(Ok((id, status, _))) => {
            return Err(Ungreeted::Refused(format!(
                "the lane opened with frame {id} (status {status}), not a greeting"
            )));
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(Ungreeted::Refused(e.to_string()));
        }
        Ok(Err(e)) => return Err(Ungreeted::Failed(e.to_string())),
        Err(_) => {
            return Err(Ungreeted::Refused(format!(
                "no lane greeting within {GREETING_TIMEOUT:?}"
            )));
        }
    }
    let lane = Lane {
        tx: spawn_writer(writer),
        pending: Arc::default(),
        closed: Arc::default(),
    };
    tokio::spawn(read_answers(peer, reader, lane.clone(), max));
    Ok(lane)
}

/// A stream that fails every call after its first error without touching the inner stream
/// again (multistream-select's `Negotiated` panics when used after a failed negotiation). Split
/// halves share it, so an error either half sees stops both.
struct Fused<S> {
    inner: S,
    failed: bool,
}

impl<S: Unpin> Fused<S> {
    fn new(inner: S) -> Self {
        Fused {
            inner,
            failed: false,
        }
    }

    fn step<T>(
        &mut self,
        call: impl FnOnce(Pin<&mut S>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.failed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the lane failed earlier",
            )));
        }
        let r = call(Pin::new(&mut self.inner));
        if matches!(r, Poll::Ready(Err(_))) {
            self.failed = true;
        }
        r
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Fused<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().step(|s| s.poll_read(cx, buf))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Fused<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().step(|s| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().step(|s| s.poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().step(|s| s.poll_close(cx))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn lane_failed(peer: PeerId, reason: &str) -> NetError {
    NetError::Request {
        peer,
        reason: reason.to_string(),
    }
}

/// A frame to write: request id, status, payload.
type Outgoing = (u64, u8, Vec<u8>);

/// A task that writes `(id, status, payload)` frames to `w` in the order given; it ends (dropping the
/// receiver, so senders see the lane closed) at the first write error.
fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(mut w: W) -> mpsc::Sender<Outgoing> {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(WRITE_QUEUE);
    tokio::spawn(async move {
        while let Some((id, status, payload)) = rx.recv().await {
            let frame = encode_frame(id, status, &payload);
            if w.write_all(&frame).await.is_err() || w.flush().await.is_err() {
                break;
            }
        }
        let _ = w.close().await;
    });
    tx
}

/// Reads answers on an outbound lane until it fails, then fails every request still waiting.
async fn read_answers<R: AsyncRead + Unpin>(peer: PeerId, mut r: R, lane: Lane, max: usize) {
    let why = loop {
        match read_frame(&mut r, max).await {
            Ok((id, status, payload)) => {
                let waiting = lock(&lane.pending).remove(&id);
                if let Some(tx) = waiting {
                    let answer = if status == OK {
                        Ok(payload)
                    } else {
                        Err(lane_failed(peer, "the peer dropped the request"))
                    };
                    let _ = tx.send(answer);
                }
            }
            Err(e) => break e.to_string(),
        }
    };
    lane.closed.store(true, Ordering::Release);
    tracing::debug!(peer = %peer, reason = %why, "activation lane closed");
    for (_, tx) in lock(&lane.pending).drain() {
        let _ = tx.send(Err(lane_failed(peer, &why)));
    }
}

/// Accepts inbound lanes and hands their requests to `inbound` (the activation queue the
/// pipeline serves) until `incoming` ends.
pub(crate) async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    inbound: mpsc::Sender<InboundRequest>,
    commands: mpsc::Sender<Command>,
    max: usize,
) {
    while let Some((peer, stream)) = incoming.next().await {
        tokio::spawn(serve_lane(
            peer,
            stream,
            inbound.clone(),
            commands.clone(),
            max,
        ));
    }
}

async fn serve_lane(
    peer: PeerId,
    stream: Stream,
    inbound: mpsc::Sender<InboundRequest>,
    commands: mpsc::Sender<Command>,
    max: usize,
) {
    let (mut r, w) = Fused::new(stream).split();
    let answers = spawn_writer(w);
    if answers.send((GREETING, OK, Vec::new())).await.is_err() {
        return;
    }
    loop {
        let (id, _, data) = match read_frame(&mut r, max).await {
            Ok(f) => f,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    let _ = commands
                        .send(Command::Misbehaved {
                            peer,
                            reason: "oversized_frame",
                        })
                        .await;
                }
                tracing::debug!(peer = %peer, error = %e, "inbound activation lane closed");
                return;
            }
        };
        let (reply, rx) = oneshot::channel();
        let req = InboundRequest { peer, data, reply };
        if inbound.try_send(req).is_err() {
            // Full or nobody serving: the sender fails at once rather than timing out.
            let _ = answers.send((id, DROPPED, Vec::new())).await;
            continue;
        }
        let answers = answers.clone();
        tokio::spawn(async move {
            // No answer from the pipeline (it dropped the request): say so.
            let frame = match rx.await {
                Ok(answer) => (id, OK, answer),
                Err(_) => (id, DROPPED, Vec::new()),
            };
            let _ = answers.send(frame).await;
        });
    }
}

/// A frame: length, id, status, payload.
fn encode_frame(id: u64, status: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(HEADER_BYTES + payload.len()).unwrap_or(u32::MAX);
    let mut f = Vec::with_capacity(4 + HEADER_BYTES + payload.len());
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.push(status);
    f.extend_from_slice(payload);
    f
}

/// Reads one frame as `(id, status, payload)`; a length beyond `max` payload bytes, or
/// shorter than the header, is `InvalidData` and nothing beyond the length is read.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<(u64, u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len < HEADER_BYTES || len - HEADER_BYTES > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("lane frame of {len} bytes (limit {max} + {HEADER_BYTES})"),
        ));
    }
    let mut id = [0u8; 8];
    r.read_exact(&mut id).await?;
    let mut status = [0u8; 1];
    r.read_exact(&mut status).await?;
    let mut payload = vec![0u8; len - HEADER_BYTES];
    r.read_exact(&mut payload).await?;
    Ok((u64::from_be_bytes(id), status[0], payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails its first read, then panics on any use, as a stream whose negotiation failed.
    struct Poisoned {
        read_once: bool,
    }

    impl AsyncRead for Poisoned {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            assert!(!self.read_once, "used after it failed");
            self.read_once = true;
            Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
        }
    }

    impl AsyncWrite for Poisoned {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            assert!(!self.read_once, "used after it failed");
            Poll::Pending
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            assert!(!self.read_once, "used after it failed");
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            assert!(!self.read_once, "used after it failed");
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_lane_starts_only_after_its_greeting() {
        let peer = PeerId::random();
        let stream = |bytes: Vec<u8>| futures::io::Cursor::new(bytes);
        let mut hello = encode_frame(GREETING, OK, b"");
        hello.extend(encode_frame(5, OK, b"late answer"));
        assert!(greeted(peer, stream(hello), 64).await.is_ok());
        // The peer never took the stream: open another.
        assert!(matches!(
            greeted(peer, stream(Vec::new()), 64).await,
            Err(Ungreeted::Failed(_))
        ));
        // Anything else first, or an oversized greeting: refused.
        assert!(matches!(
            greeted(peer, stream(encode_frame(5, OK, b"")), 64).await,
            Err(Ungreeted::Refused(_))
        ));
        assert!(matches!(
            greeted(peer, stream(encode_frame(GREETING, OK, &[0; 65])), 64).await,
            Err(Ungreeted::Refused(_))
        ));
    }

    #[tokio::test]
    async fn after_the_reader_fails_the_writer_gets_errors_not_the_inner_stream() {
        let (mut r, mut w) = Fused::new(Poisoned { read_once: false }).split();
        let mut buf = [0u8; 4];
        assert!(r.read(&mut buf).await.is_err());
        assert!(w.write_all(b"late").await.is_err());
        assert!(w.flush().await.is_err());
        assert!(w.close().await.is_err());
        assert!(r.read(&mut buf).await.is_err());
    }

    #[tokio::test]
    async fn frames_round_trip_and_bad_lengths_are_refused_before_reading_more() {
        let mut bytes = encode_frame(7, OK, b"hello");
        bytes.extend(encode_frame(u64::MAX, DROPPED, b""));
        let mut r = futures::io::Cursor::new(bytes);
        let first = read_frame(&mut r, 16).await.unwrap();
        assert_eq!(first, (7, OK, b"hello".to_vec()));
        let second = read_frame(&mut r, 16).await.unwrap();
        assert_eq!(second, (u64::MAX, DROPPED, Vec::new()));
        // Over the limit: refused from the length alone (no 4 GiB allocation).
        let mut huge = futures::io::Cursor::new(u32::MAX.to_be_bytes().to_vec());
        let e = read_frame(&mut huge, 16).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        // Shorter than its header.
        let mut short = futures::io::Cursor::new(8u32.to_be_bytes().to_vec());
        let e = read_frame(&mut short, 16).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        // Truncated.
        let mut cut = encode_frame(1, OK, b"abcdef");
        cut.truncate(15);
        let e = read_frame(&mut futures::io::Cursor::new(cut), 16)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
