//! `/shoal/layers/1`: model files between peers, addressed by the sha256 the manifest already
//! carries (the manifest itself by the sha256 in [`crate::ModelRef`]).
//!
//! A fetcher asks for one chunk of one file at a time ([`FileRequest`]: hash, offset, length);
//! the holder answers with the bytes ([`FileChunk`], which also says the file's total size) or
//! an [`crate::ErrorReply`] (`WrongModel`: not held). Nothing here is signed: a chunk is
//! worth nothing until the whole file matches its hash, which the fetcher checks before it
//! keeps the file.

use serde::{Deserialize, Serialize};
use shoal_keys::Domain;

use crate::codec::{decode, encode, peek};
use crate::{ErrorReply, Kind, Message, ProtocolError};

/// Most bytes one [`FileChunk`] carries.
pub const MAX_FILE_CHUNK: usize = 1 << 20;
/// Largest file that may travel, bytes (64 GiB: a shard of any model shoal imports).
pub const MAX_FILE_BYTES: u64 = 64 << 30;

/// One chunk of a file, by its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRequest {
    /// sha256 of the whole file.
    #[serde(with = "serde_bytes")]
    pub sha256: [u8; 32],
    /// First byte wanted.
    pub offset: u64,
    /// Bytes wanted (1..=[`MAX_FILE_CHUNK`]); the answer may be shorter at the end of the file.
    pub len: u32,
}

impl Message for FileRequest {
    const KIND: Kind = Kind::FileRequest;
    const DOMAIN: Domain = Domain::PROBE;
    const MAX_BYTES: usize = 128;

    fn validate(&self) -> Result<(), ProtocolError> {
        if self.len == 0 || self.len as usize > MAX_FILE_CHUNK {
            return Err(ProtocolError::invalid(
                Self::KIND,
                format!("chunk length {} outside 1..={MAX_FILE_CHUNK}", self.len),
            ));
        }
        if self.offset >= MAX_FILE_BYTES {
            return Err(ProtocolError::invalid(
                Self::KIND,
                format!(
                    "offset {} past the {MAX_FILE_BYTES}-byte limit",
                    self.offset
                ),
            ));
        }
        Ok(())
    }
}

/// The bytes `[offset, offset + data.len())` of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileChunk {
    /// sha256 of the whole file (the request's).
    #[serde(with = "serde_bytes")]
    pub sha256: [u8; 32],
    /// Offset of `data` in the file.
    pub offset: u64,
    /// Size of the whole file, bytes.
    pub total: u64,
    /// The bytes; empty only when `offset == total`.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Message for FileChunk {
    const KIND: Kind = Kind::FileChunk;
    const DOMAIN: Domain = Domain::PROBE;
    const MAX_BYTES: usize = MAX_FILE_CHUNK + 256;

    fn validate(&self) -> Result<(), ProtocolError> {
        let k = Self::KIND;
        if self.data.len() > MAX_FILE_CHUNK {
            return Err(ProtocolError::invalid(
                k,
                format!("{} bytes exceed {MAX_FILE_CHUNK}", self.data.len()),
            ));
        }
        if self.total > MAX_FILE_BYTES {
            return Err(ProtocolError::invalid(
                k,
                format!("file of {} bytes exceeds {MAX_FILE_BYTES}", self.total),
            ));
        }
        let end = self.offset.checked_add(self.data.len() as u64);
        if end.is_none_or(|e| e > self.total) {
            return Err(ProtocolError::invalid(
                k,
                format!(
                    "bytes {}+{} lie past the file's end {}",
                    self.offset,
                    self.data.len(),
                    self.total
                ),
            ));
        }
        Ok(())
    }
}

/// Any answer frame of `/shoal/layers/1`.
#[derive(Debug, Clone, PartialEq)]
pub enum FileResponse {
    /// The bytes asked for.
    Chunk(FileChunk),
    /// A typed error (e.g. the file is not held).
    Error(ErrorReply),
}

impl FileResponse {
    /// Decodes an answer frame, applying its kind's size limit first.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let header = peek(bytes)?;
        match header.kind {
            Kind::FileChunk => decode(bytes).map(FileResponse::Chunk),
            Kind::ErrorReply => decode(bytes).map(FileResponse::Error),
            other => Err(ProtocolError::WrongKind {
                expected: Kind::FileChunk,
                expected_signed: false,
                found: other,
                found_signed: header.signed,
            }),
        }
    }

    /// Encodes the answer as a frame.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        match self {
            FileResponse::Chunk(m) => encode(m),
            FileResponse::Error(m) => encode(m),
        }
    }
}
