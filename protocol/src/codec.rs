//! The frame and its codec: `encode`, `decode`, `peek`.
//!
//! Every encoded message is one CBOR array of four items:
//! `[SCHEMA_VERSION, kind code, signed flag, body]`, where `body` is the message's CBOR map
//! (or, when signed, a [`crate::Signed`] envelope map). The header is read by hand, a few bytes,
//! so the version and kind are checked before the body is parsed. Decoding then:
//!
//! 1. refuses input longer than the kind's `MAX_BYTES` before reading anything;
//! 2. checks the schema version, then the kind and the signed flag;
//! 3. parses the body with ciborium from a slice: byte and text strings are copied in
//!    scratch-sized chunks as they are actually read, so a length prefix that claims 4 GB
//!    fails at the end of the input after allocating at most the input's size; nesting is
//!    capped at [`RECURSION_LIMIT`];
//! 4. refuses trailing bytes and runs the message's semantic [`Message::validate`].

use crate::{Kind, Message, ProtocolError};

/// The wire schema this build speaks; carried in every frame and checked first on decode.
pub const SCHEMA_VERSION: u16 = 1;

/// Deepest CBOR nesting a decoder follows; shoal messages nest at most four levels.
pub const RECURSION_LIMIT: usize = 16;

/// Something [`encode`] and [`decode`] handle: every [`Message`] and every
/// [`crate::Signed`] envelope of one.
pub trait Wire: Sized {
    /// The kind in the frame header.
    const KIND: Kind;
    /// Whether the body is a signed envelope.
    const SIGNED: bool;
    /// The largest frame a decoder accepts, in bytes.
    const MAX_BYTES: usize;

    /// Appends the CBOR body (no header) to `out`.
    fn write_body(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError>;

    /// Parses and validates a body (no header) that must span all of `body`.
    fn read_body(body: &[u8]) -> Result<Self, ProtocolError>;

    /// Semantic checks run before encoding.
    fn check(&self) -> Result<(), ProtocolError>;
}

impl<T: Message> Wire for T {
    const KIND: Kind = T::KIND;
    const SIGNED: bool = false;
    const MAX_BYTES: usize = T::MAX_BYTES;

    fn write_body(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        write_cbor(T::KIND, self, out)
    }

    fn read_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let value: T = read_cbor(T::KIND, body)?;
        value.validate()?;
        Ok(value)
    }

    fn check(&self) -> Result<(), ProtocolError> {
        self.validate()
    }
}

/// The header of a frame, as [`peek`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message kind.
    pub kind: Kind,
    /// Whether the body is a signed envelope.
    pub signed: bool,
}

/// Encodes `msg` as a frame after running its semantic checks; refuses to produce a frame
/// larger than receivers accept.
pub fn encode<W: Wire>(msg: &W) -> Result<Vec<u8>, ProtocolError> {
    msg.check()?;
    encode_unchecked(msg)
}

/// Encodes without the semantic checks (the size limit still applies). For tests that play a
/// misbehaving peer; a correct node always uses [`encode`].
pub fn encode_unchecked<W: Wire>(msg: &W) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::with_capacity(64);
    out.push(0x84); // array of 4
    write_uint(&mut out, u64::from(SCHEMA_VERSION));
    write_uint(&mut out, u64::from(W::KIND.code()));
    out.push(if W::SIGNED { 0xf5 } else { 0xf4 });
    msg.write_body(&mut out)?;
    if out.len() > W::MAX_BYTES {
        return Err(ProtocolError::TooLarge {
            kind: W::KIND,
            len: out.len(),
            max: W::MAX_BYTES,
        });
    }
    Ok(out)
}

/// Decodes a frame of type `W`: size limit first, then version, kind, body, trailing bytes
/// and semantic checks. Signatures are not checked here: call [`crate::Signed::verify`].
pub fn decode<W: Wire>(bytes: &[u8]) -> Result<W, ProtocolError> {
    if bytes.len() > W::MAX_BYTES {
        return Err(ProtocolError::TooLarge {
            kind: W::KIND,
            len: bytes.len(),
            max: W::MAX_BYTES,
        });
    }
    let (header, body) = split_header(bytes)?;
    if header.kind != W::KIND || header.signed != W::SIGNED {
        return Err(ProtocolError::WrongKind {
            expected: W::KIND,
            expected_signed: W::SIGNED,
            found: header.kind,
            found_signed: header.signed,
        });
    }
    W::read_body(body)
}

/// Reads only the frame header (a few bytes, no allocation): lets a protocol handler that
/// accepts several kinds pick the decoder.
pub fn peek(bytes: &[u8]) -> Result<Header, ProtocolError> {
    split_header(bytes).map(|(h, _)| h)
}

fn split_header(bytes: &[u8]) -> Result<(Header, &[u8]), ProtocolError> {
    let mut r = HeaderReader { rest: bytes };
    let first = r.byte()?;
    // Major type 4 (array) with a definite length; the version comes first in every schema.
    if first >> 5 != 4 || first & 0x1f >= 28 {
        return Err(frame_error("not a shoal frame (expected a CBOR array)"));
    }
    let version = r.uint()?;
    if version != u64::from(SCHEMA_VERSION) {
        return Err(ProtocolError::Version {
            found: version,
            expected: SCHEMA_VERSION,
        });
    }
    if first != 0x84 {
        return Err(frame_error("frame is not an array of four items"));
    }
    let code = r.uint()?;
    let kind = Kind::from_code(code).ok_or(ProtocolError::UnknownKind(code))?;
    let signed = match r.byte()? {
        0xf4 => false,
        0xf5 => true,
        _ => return Err(frame_error("signed flag is not a CBOR boolean")),
    };
    Ok((Header { kind, signed }, r.rest))
}

fn frame_error(reason: &str) -> ProtocolError {
    ProtocolError::Malformed {
        kind: None,
        reason: reason.to_string(),
    }
}

/// A cursor over the frame header's few bytes.
struct HeaderReader<'a> {
    rest: &'a [u8],
}

impl HeaderReader<'_> {
    fn byte(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or(ProtocolError::Truncated { kind: None })?;
        self.rest = rest;
        Ok(b)
    }

    /// A CBOR unsigned integer (major type 0) in any of its encodings.
    fn uint(&mut self) -> Result<u64, ProtocolError> {
        let first = self.byte()?;
        if first >> 5 != 0 {
            return Err(frame_error("header field is not an unsigned integer"));
        }
        let width = match first & 0x1f {
            small @ 0..=23 => return Ok(u64::from(small)),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return Err(frame_error("invalid integer encoding in header")),
        };
        let mut value = 0u64;
        for _ in 0..width {
            value = (value << 8) | u64::from(self.byte()?);
        }
        Ok(value)
    }
}

/// Appends `v` as a CBOR unsigned integer in its shortest form.
fn write_uint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=23 => out.push(v as u8),
        24..=0xff => out.extend_from_slice(&[24, v as u8]),
        0x100..=0xffff => {
            out.push(25);
            out.extend_from_slice(&(v as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(26);
            out.extend_from_slice(&(v as u32).to_be_bytes());
        }
        _ => {
            out.push(27);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// Serialises `value` as CBOR onto `out`.
pub(crate) fn write_cbor<T: serde::Serialize>(
    kind: Kind,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    ciborium::ser::into_writer(value, out).map_err(|e| ProtocolError::Encode {
        kind,
        reason: e.to_string(),
    })
}

/// Parses CBOR that must span all of `bytes`, with bounded nesting and allocation.
pub(crate) fn read_cbor<T: serde::de::DeserializeOwned>(
    kind: Kind,
    bytes: &[u8],
) -> Result<T, ProtocolError> {
    let mut rest = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut rest, RECURSION_LIMIT)
        .map_err(|e| cbor_error(kind, e))?;
    if !rest.is_empty() {
        return Err(ProtocolError::TrailingBytes {
            kind,
            count: rest.len(),
        });
    }
    Ok(value)
}

fn cbor_error(kind: Kind, e: ciborium::de::Error<std::io::Error>) -> ProtocolError {
    use ciborium::de::Error;
    match e {
        Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ProtocolError::Truncated { kind: Some(kind) }
        }
        Error::Io(io) => ProtocolError::Malformed {
            kind: Some(kind),
            reason: io.to_string(),
        },
        Error::Syntax(offset) => ProtocolError::Malformed {
            kind: Some(kind),
            reason: format!("CBOR syntax error at byte {offset}"),
        },
        Error::Semantic(offset, msg) => ProtocolError::Malformed {
            kind: Some(kind),
            reason: match offset {
                Some(at) => format!("{} (at byte {at})", clip(&msg)),
                None => clip(&msg),
            },
        },
        Error::RecursionLimitExceeded => ProtocolError::Malformed {
            kind: Some(kind),
            reason: format!("nesting deeper than {RECURSION_LIMIT}"),
        },
    }
}

/// Parser messages can quote the input; keep log lines short whatever a peer sends.
fn clip(msg: &str) -> String {
    const MAX_CHARS: usize = 160;
    match msg.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}…", &msg[..end]),
        None => msg.to_string(),
    }
}
