//! Typed errors of key handling and signature checks.

use std::path::PathBuf;

/// Everything that can go wrong with keys, key files and signatures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `create` refuses to replace an existing identity.
    #[error("key file {0} already exists; refusing to overwrite an identity")]
    Exists(PathBuf),
    /// The key file is readable by group or others.
    #[error(
        "key file {path} has mode {mode:o}: group or others can read it; run `chmod 600 {path}`"
    )]
    Permissions {
        /// The file involved.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold a shoal secret key.
    #[error("key file {path} is malformed: {reason}")]
    Malformed {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Bytes that should be a node id are not an ed25519 libp2p peer id.
    #[error("invalid node id: {0}")]
    InvalidNodeId(String),
    /// Bytes that should be a public key are not one.
    #[error("invalid ed25519 public key")]
    InvalidPublicKey,
    /// A signature has the wrong length.
    #[error("signature must be 64 bytes, got {0}")]
    SignatureLength(usize),
    /// The signature does not verify for this key, domain and message.
    #[error("signature does not verify")]
    BadSignature,
}
