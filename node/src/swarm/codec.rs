//! The request/response frame codec: one length-prefixed frame per request and per response.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes (a CBOR message of
//! shoal-protocol). The length is checked against the protocol's limit *before* the buffer is
//! allocated, so a peer announcing 4 GiB costs us nothing. An oversized *request* is read as
//! [`Frame::Oversized`] (its body is never read) so the swarm learns which peer sent it and
//! lowers its score: libp2p's request-response does not report a failed `read_request` to the
//! behaviour. An oversized *response* is an `InvalidData` error, which the swarm sees as an
//! outbound failure of that peer. Typed decoding (with its own limits and checks) happens one
//! level up.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

/// Frame codec with separate limits for requests and responses, in bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameCodec {
    /// Largest request frame accepted.
    pub(crate) max_request: usize,
    /// Largest response frame accepted.
    pub(crate) max_response: usize,
}

/// A request as read off a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A frame within the limit.
    Data(Vec<u8>),
    /// A frame whose header claimed this many bytes, over the limit; nothing was allocated.
    Oversized(usize),
}

/// Reads a frame header; `Err(len)` when it exceeds `max`.
async fn read_len<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> io::Result<Result<usize, usize>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    Ok(if len > max { Err(len) } else { Ok(len) })
}

async fn read_body<T: AsyncRead + Unpin + Send>(io: &mut T, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    match read_len(io, max).await? {
        Ok(len) => read_body(io, len).await,
        Err(len) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte limit"),
        )),
    }
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame longer than 4 GiB"))?;
    // One write for prefix and body: each write becomes a multiplexer frame of its own, and
    // every extra packet of a message on a jittery in-order link makes the message as late
    // as the slowest of them.
    let mut frame = Vec::with_capacity(4 + data.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(data);
    io.write_all(&frame).await?;
    io.flush().await?;
    io.close().await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(match read_len(io, self.max_request).await? {
            Ok(len) => Frame::Data(read_body(io, len).await?),
            Err(len) => Frame::Oversized(len),
        })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Frame::Data(data) => write_frame(io, &data).await,
            Frame::Oversized(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an oversized frame marker cannot be sent",
            )),
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[tokio::test]
    async fn round_trip_and_limit_before_allocation() {
        let mut buf = Cursor::new(Vec::new());
        write_frame(&mut buf, b"hello").await.unwrap();
        let bytes = buf.into_inner();
        assert_eq!(&bytes[..4], &[0, 0, 0, 5]);
        let got = read_frame(&mut Cursor::new(bytes.clone()), 5)
            .await
            .unwrap();
        assert_eq!(got, b"hello");
        let err = read_frame(&mut Cursor::new(bytes), 4).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A header claiming 4 GiB with no body is refused by the limit, not by running out.
        let huge = read_frame(&mut Cursor::new(vec![0xff; 4]), 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(huge.kind(), io::ErrorKind::InvalidData);
        let mut codec = FrameCodec {
            max_request: 4,
            max_response: 4,
        };
        let proto = StreamProtocol::new("/t");
        let mut big = Cursor::new(vec![0xff; 4]);
        let req = request_response::Codec::read_request(&mut codec, &proto, &mut big).await;
        assert_eq!(req.unwrap(), Frame::Oversized(u32::MAX as usize));
        let short = read_frame(&mut Cursor::new(vec![0, 0, 0, 9, 1]), 100)
            .await
            .unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
    }
}
