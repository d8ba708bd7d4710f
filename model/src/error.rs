//! The crate's error type: every fallible function in `shoal-model` returns [`Error`], with
//! enough context (file, tensor, layer) for a user to act on it.

use std::path::PathBuf;

/// Everything that can go wrong while importing, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file (manifest, config, tokenizer config) is malformed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file involved.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The checkpoint's architecture has no importer.
    #[error(
        "unsupported architecture {found:?}: shoal imports {supported} (set by `architectures` / `model_type` in config.json)"
    )]
    UnsupportedArchitecture {
        /// What the checkpoint declares.
        found: String,
        /// The architectures this build supports, comma separated.
        supported: &'static str,
    },
    /// A configuration value is missing or inconsistent.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// A weight tensor the architecture needs is absent from the checkpoint.
    #[error("checkpoint has no tensor {0:?}")]
    MissingTensor(String),
    /// A weight tensor has the wrong shape or an unsupported dtype.
    #[error("tensor {name:?}: {reason}")]
    BadTensor {
        /// The tensor's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A GGUF file is malformed or uses something the reader does not support.
    #[error("{path}: {source}")]
    Gguf {
        /// The GGUF file.
        path: PathBuf,
        /// What the reader found.
        source: crate::gguf::GgufError,
    },
    /// The manifest contradicts itself or the files next to it.
    #[error("invalid manifest: {0}")]
    Manifest(String),
    /// A file's sha256 differs from the manifest's.
    #[error("{file}: sha256 {actual} does not match the manifest's {expected}")]
    Checksum {
        /// The file, relative to the model directory.
        file: String,
        /// The manifest's digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// ONNX Runtime could not be found or failed.
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    /// The pure-Rust tract backend failed.
    #[error("tract: {0}")]
    Tract(String),
    /// A shard was given inputs that do not fit it.
    #[error("bad stage input: {0}")]
    BadInput(String),
    /// The stage already holds its maximum number of generation sessions.
    #[error("too many sessions: {max} are active and none is idle")]
    TooManySessions {
        /// The configured bound.
        max: usize,
    },
    /// The caller's view of a session's length differs from the cache's.
    #[error("session {session} holds {cached} positions, the input starts at {start}")]
    SessionOutOfSync {
        /// The session id.
        session: u64,
        /// Positions held in the KV cache.
        cached: usize,
        /// Position the input claims to start at.
        start: usize,
    },
    /// The tokenizer failed to load, encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an IO error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// Wraps a JSON error with the path it concerns.
    pub(crate) fn json(path: impl Into<PathBuf>) -> impl FnOnce(serde_json::Error) -> Error {
        let path = path.into();
        move |source| Error::Json { path, source }
    }
}
