//! A minimal blocking HTTP/1.1 client that runs inside a bed namespace, for a node's API
//! (`127.0.0.1:PORT` there is the node's own loopback, unreachable from the host namespace).
//! One request per connection (`Connection: close`); chunked answers are de-chunked.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::bed::in_netns;

/// Largest answer read (status documents and completions are far smaller).
const MAX_BODY: u64 = 16 << 20;

/// Sends `method path` with an optional JSON `body` to `addr` from inside namespace `ns` and
/// returns the status code and the body.
pub fn request(
    ns: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let (method, path) = (method.to_string(), path.to_string());
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body.as_bytes())?;
        let mut raw = Vec::new();
        s.take(MAX_BODY)
            .read_to_end(&mut raw)
            .with_context(|| format!("{method} {path}: reading the answer"))?;
        parse_response(&raw)
    })
}

/// Splits a raw HTTP/1.1 response into status code and (de-chunked) body.
pub fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no end of headers in {:?}", text)
    };
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            bail!("truncated chunk header")
        };
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        let Some(chunk) = after.get(..size) else {
            bail!("truncated chunk")
        };
        out.push_str(chunk);
        rest = after.get(size + 2..).unwrap_or("");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_answers_parse() {
        let (c, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((c, b.as_str()), (200, "{}"));
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let (c, b) = parse_response(raw).unwrap();
        assert_eq!((c, b.as_str()), (404, "abcde"));
        assert!(parse_response(b"garbage").is_err());
    }
}
