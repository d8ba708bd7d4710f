//! `Identity`: the node's secret key, its key file and its signatures.
//!
//! The file holds one line of header and the 32 secret bytes in hex. It is created with
//! `create_new` and mode 0600 in one step, so there is no moment where others could read it,
//! and an existing identity is never overwritten.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::RngCore;

use crate::{Domain, KeyError, NodeId, PublicKey, Signature};

/// First line of every key file; bumps if the format ever changes.
const HEADER: &str = "shoal-ed25519-secret-v1";

/// A node's secret signing key.
pub struct Identity {
    key: ed25519_dalek::SigningKey,
}

impl Identity {
    /// A fresh random identity (operating-system randomness).
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Self::from_secret_bytes(secret)
    }

    /// The identity with these 32 secret bytes (tests use fixed seeds).
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        Identity {
            key: ed25519_dalek::SigningKey::from_bytes(&secret),
        }
    }

    /// Generates an identity and writes it to `path` with mode 0600; refuses to overwrite.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        let id = Self::generate();
        id.write_new(path)?;
        Ok(id)
    }

    /// Loads `path`, or creates it when it does not exist yet.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            Self::load(path)
        } else {
            Self::create(path)
        }
    }

    /// Writes this identity to a new file with mode 0600.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::Exists(path.to_path_buf())
                } else {
                    io(e)
                }
            })?;
        let text = format!("{HEADER}\n{}\n", hex::encode(self.key.to_bytes()));
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Loads an identity; refuses a file that group or others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let malformed = |reason: &str| KeyError::Malformed {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if meta.len() > 4096 {
            return Err(malformed("file is far larger than a key"));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(malformed(&format!("first line is not `{HEADER}`")));
        }
        let hex_secret = lines.next().ok_or_else(|| malformed("no secret line"))?;
        let bytes = hex::decode(hex_secret.trim()).map_err(|_| malformed("secret is not hex"))?;
        let secret: [u8; 32] = bytes
            .try_into()
            .map_err(|_| malformed("secret is not 32 bytes"))?;
        Ok(Self::from_secret_bytes(secret))
    }

    /// This node's id (its libp2p peer id).
    pub fn node_id(&self) -> NodeId {
        self.public_key().node_id()
    }

    /// The public half of the key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// Signs `msg` in `domain`.
    pub fn sign(&self, domain: Domain, msg: &[u8]) -> Signature {
        crate::domain::sign(&self.key, domain, msg)
    }

    /// The same key as a libp2p keypair, so the swarm identity is the signing identity.
    pub fn to_libp2p(&self) -> libp2p_identity::Keypair {
        let mut secret = self.key.to_bytes();
        let sk = libp2p_identity::ed25519::SecretKey::try_from_bytes(&mut secret);
        // Any 32 bytes are a valid ed25519 secret; try_from_bytes only checks the length.
        #[allow(clippy::expect_used)]
        let sk = sk.expect("32 bytes are a valid ed25519 secret");
        libp2p_identity::Keypair::from(libp2p_identity::ed25519::Keypair::from(sk))
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.node_id())
    }
}
