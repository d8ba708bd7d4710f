//! API keys: with keys configured (`api_keys`, `api_key_file`), every route of the node's API
//! but `GET /health` and the page itself (`GET /`, a static document that asks for a key) needs
//! `Authorization: Bearer KEY`; a missing or wrong key gets a 401 in OpenAI's error shape with
//! `WWW-Authenticate: Bearer`. Without keys the API is open, and [`check_exposure`] refuses a
//! non-loopback bind unless `api_insecure` says that is meant.
//!
//! Keys are kept as their SHA-256 digests and a candidate's digest is compared with each in
//! constant time (`subtle`), so neither the bytes nor the length of a key leak through timing;
//! no key is ever logged or printed (`Debug` shows how many there are).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest key accepted in the config: a guessable key is no key.
pub const MIN_KEY_LEN: usize = 16;

/// The accepted API keys (their digests). Cheap to clone.
#[derive(Clone, Default)]
pub struct ApiKeys(Arc<Vec<[u8; 32]>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

/// Why the configured keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("api_key_file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A key is too short or has characters a header cannot carry.
    #[error(
        "{origin}: an API key must be at least {MIN_KEY_LEN} characters of visible ASCII \
         (e.g. `openssl rand -hex 24`); key {index} is not"
    )]
    Weak {
        /// Where the key came from.
        origin: String,
        /// Its 1-based place there.
        index: usize,
    },
    /// The API would be reachable from other machines with no key.
    #[error(
        "refusing to serve the API on {addr} without API keys: anyone who reaches it could \
         generate. Set api_keys or api_key_file, bind it to 127.0.0.1, or set \
         api_insecure = true if that is meant"
    )]
    Exposed {
        /// The bound address.
        addr: SocketAddr,
    },
}

impl ApiKeys {
    /// Keys given inline plus those of `file` (one per line; blank lines and `#` comments
    /// skipped).
    pub fn load(inline: &[String], file: Option<&Path>) -> Result<Self, KeyError> {
        let mut keys: Vec<(String, usize, String)> = inline
            .iter()
            .enumerate()
            .map(|(i, k)| ("api_keys".to_string(), i + 1, k.clone()))
            .collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| KeyError::File {
                path: path.display().to_string(),
                source,
            })?;
            let origin = format!("api_key_file {}", path.display());
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .enumerate()
                    .map(|(i, k)| (origin.clone(), i + 1, k.to_string())),
            );
        }
        let mut digests = Vec::with_capacity(keys.len());
        for (origin, index, key) in keys {
            let visible = key.bytes().all(|b| b.is_ascii_graphic());
            if key.len() < MIN_KEY_LEN || !visible {
                return Err(KeyError::Weak { origin, index });
            }
            digests.push(digest(key.as_bytes()));
        }
        Ok(ApiKeys(Arc::new(digests)))
    }

    /// Whether any key is configured (else the API is open).
    pub fn is_enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `candidate` is one of the keys (constant time in the key's bytes and length).
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        let d = digest(candidate);
        // Every key is compared, so the time does not say which one matched.
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |any, k| any | k.ct_eq(&d))
            .into()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Refuses an API reachable from other machines with no keys unless `insecure` (the config's
/// `api_insecure`).
pub fn check_exposure(addr: SocketAddr, keys: &ApiKeys, insecure: bool) -> Result<(), KeyError> {
    if addr.ip().is_loopback() || keys.is_enabled() || insecure {
        Ok(())
    } else {
        Err(KeyError::Exposed { addr })
    }
}

/// The bearer token of `headers`, if any.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| value[7..].trim_ascii())
}

/// Middleware: passes requests that carry an accepted key (or all, with no keys configured).
pub async fn require_key(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    if !keys.is_enabled() {
        return next.run(request).await;
    }
    let (message, code) = match bearer(request.headers()) {
        Some(k) if keys.accepts(k) => return next.run(request).await,
        Some(_) => ("Incorrect API key provided.", "invalid_api_key"),
        None => (
            "Missing API key: send it as `Authorization: Bearer KEY`.",
            "missing_api_key",
        ),
    };
    let body =
        json!({"error": {"message": message, "type": "invalid_request_error", "code": code}});
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-shoal-0123456789abcdef";

    #[test]
    fn accepts_only_configured_keys() {
        let keys = ApiKeys::load(&[KEY.to_string()], None).unwrap();
        assert!(keys.is_enabled());
        assert!(keys.accepts(KEY.as_bytes()));
        for wrong in [
            "",
            "sk-shoal-0123456789abcdeF",
            "sk-shoal-0123456789abcde",
            "x",
        ] {
            assert!(!keys.accepts(wrong.as_bytes()), "{wrong:?}");
        }
        assert!(!ApiKeys::default().is_enabled());
    }

    #[test]
    fn key_file_lines_comments_and_weak_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(
            &file,
            format!("# phone\n\n  {KEY}  \nsk-second-key-0000000\n"),
        )
        .unwrap();
        let keys = ApiKeys::load(&[], Some(&file)).unwrap();
        assert!(keys.accepts(KEY.as_bytes()));
        assert!(keys.accepts(b"sk-second-key-0000000"));
        std::fs::write(&file, "short\n").unwrap();
        let e = ApiKeys::load(&[], Some(&file)).unwrap_err().to_string();
        assert!(e.contains("key 1") && e.contains("at least 16"), "{e}");
        let e = ApiKeys::load(&["has space in the key".into()], None).unwrap_err();
        assert!(e.to_string().contains("api_keys"), "{e}");
        let missing = dir.path().join("none");
        assert!(ApiKeys::load(&[], Some(&missing)).is_err());
    }

    #[test]
    fn debug_never_shows_a_key() {
        let keys = ApiKeys::load(&[KEY.to_string()], None).unwrap();
        let shown = format!("{keys:?}");
        assert_eq!(shown, "ApiKeys(1 keys)");
    }

    #[test]
    fn exposure_needs_keys_or_consent() {
        let open = ApiKeys::default();
        let keyed = ApiKeys::load(&[KEY.to_string()], None).unwrap();
        let lan: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        assert!(check_exposure(local, &open, false).is_ok());
        assert!(check_exposure(lan, &keyed, false).is_ok());
        assert!(check_exposure(lan, &open, true).is_ok());
        let e = check_exposure(lan, &open, false).unwrap_err().to_string();
        assert!(
            e.contains("api_insecure") && e.contains("0.0.0.0:7070"),
            "{e}"
        );
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {KEY}").parse().unwrap(),
        );
        assert_eq!(bearer(&h), Some(KEY.as_bytes()));
        h.insert(
            header::AUTHORIZATION,
            format!("bearer  {KEY} ").parse().unwrap(),
        );
        assert_eq!(bearer(&h), Some(KEY.as_bytes()));
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {KEY}").parse().unwrap(),
        );
        assert_eq!(bearer(&h), None);
    }
}
