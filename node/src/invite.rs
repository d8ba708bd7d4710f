//! Invite tokens: one line of text that carries everything a new device needs to join a swarm
//! (`shoal run --join TOKEN`): the swarm's pre-shared key, addresses to dial, relays, the model
//! id and an expiry, signed by the member that issued it ([`shoal_protocol::Invite`]).
//!
//! The text form is `shoal-invite1:` followed by the unpadded base64url of the signed CBOR
//! frame. Reading one refuses, each with its own message: text that is not an invite, a frame
//! that does not decode, a signature that does not verify (a changed character), and an invite
//! past its expiry. Pure functions: the node's API issues tokens, `shoal run` reads them.

use std::path::Path;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use shoal_keys::{Identity, NodeId};
use shoal_protocol::{Invite, MAX_INVITE_BYTES, ModelRef, SIGNED_OVERHEAD, Signed};

/// The first characters of every token (the `1` is the token format's version).
pub const PREFIX: &str = "shoal-invite1:";
/// Longest token text accepted: the largest frame in base64 and the prefix.
pub const MAX_TOKEN_LEN: usize =
    PREFIX.len() + (MAX_INVITE_BYTES + SIGNED_OVERHEAD).div_ceil(3) * 4;
/// Longest validity an invite may be issued with: 30 days.
pub const MAX_TTL_S: u64 = 30 * 24 * 3600;

/// Why a token was refused, or could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    /// The text does not start with [`PREFIX`].
    #[error("not a shoal invite (it should start with {PREFIX})")]
    NotAnInvite,
    /// Longer than any invite can be.
    #[error("the invite is {0} characters long, more than any invite ({MAX_TOKEN_LEN})")]
    TooLong(usize),
    /// Characters outside base64url, or a frame that does not decode.
    #[error("the invite is damaged (was it copied whole?): {0}")]
    Damaged(String),
    /// The signature does not verify: some character was changed.
    #[error("the invite was altered: its signature by {0} does not verify")]
    Tampered(NodeId),
    /// Past its expiry.
    #[error("the invite expired {ago_s} s ago; ask a member for a new one (`shoal invite`)")]
    Expired {
        /// Seconds since it expired.
        ago_s: u64,
    },
    /// Issued for a time that has not come (the clocks of the two devices disagree badly).
    #[error("the invite was issued {ahead_s} s in the future: is this device's clock right?")]
    FromTheFuture {
        /// Seconds ahead.
        ahead_s: u64,
    },
    /// The invite could not be built (no address to give, a bad address, too long a TTL).
    #[error("cannot issue an invite: {0}")]
    Issue(String),
    /// The swarm key file could not be read or written.
    #[error("swarm key file {path}: {message}")]
    SwarmKey {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// How far in the future an invite's issue time may be before it is refused (clock skew).
const SKEW_S: u64 = 300;

/// Signs an invite valid from `now_unix_s` for `ttl_s` seconds and returns its text form.
pub fn issue(
    identity: &Identity,
    mut body: Invite,
    ttl_s: u64,
    now_unix_s: u64,
) -> Result<String, InviteError> {
    if ttl_s == 0 || ttl_s > MAX_TTL_S {
        return Err(InviteError::Issue(format!(
            "the validity must be between 1 s and {MAX_TTL_S} s (30 days), not {ttl_s} s"
        )));
    }
    body.inviter = identity.node_id();
    body.issued_unix_s = now_unix_s;
    body.expires_unix_s = now_unix_s.saturating_add(ttl_s);
    let signed = Signed::sign(identity, body).map_err(|e| InviteError::Issue(e.to_string()))?;
    let frame = shoal_protocol::encode(&signed).map_err(|e| InviteError::Issue(e.to_string()))?;
    Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(frame)))
}

/// Reads a token (surrounding white space is ignored) and checks its signature and expiry at
/// `now_unix_s`.
pub fn read(token: &str, now_unix_s: u64) -> Result<Invite, InviteError> {
    let token = token.trim();
    let Some(b64) = token.strip_prefix(PREFIX) else {
        return Err(InviteError::NotAnInvite);
    };
    if token.len() > MAX_TOKEN_LEN {
        return Err(InviteError::TooLong(token.len()));
    }
    let frame = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|e| InviteError::Damaged(e.to_string()))?;
    let signed: Signed<Invite> =
        shoal_protocol::decode(&frame).map_err(|e| InviteError::Damaged(e.to_string()))?;
    let invite = signed
        .verify()
        .map_err(|_| InviteError::Tampered(*signed.signer()))?
        .clone();
    if now_unix_s >= invite.expires_unix_s {
        return Err(InviteError::Expired {
            ago_s: now_unix_s - invite.expires_unix_s,
        });
    }
    if invite.issued_unix_s > now_unix_s.saturating_add(SKEW_S) {
        return Err(InviteError::FromTheFuture {
            ahead_s: invite.issued_unix_s - now_unix_s,
        });
    }
    Ok(invite)
}

/// An unsigned invite body for [`issue`] (which fills in the inviter and the times).
pub fn body(
    swarm_key: Option<[u8; 32]>,
    bootstrap: Vec<String>,
    relays: Vec<String>,
    model: Option<ModelRef>,
    inviter: NodeId,
) -> Invite {
    Invite {
        inviter,
        swarm_key,
        bootstrap,
        relays,
        model,
        issued_unix_s: 0,
        expires_unix_s: 1,
    }
}

/// The 32 key bytes of a libp2p pre-shared key file (`/key/swarm/psk/1.0.0/`, `/base16/`, hex).
pub fn read_swarm_key(path: &Path) -> Result<[u8; 32], InviteError> {
    let fail = |message: String| InviteError::SwarmKey {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    libp2p::pnet::PreSharedKey::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let hex_line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    let bytes = hex::decode(hex_line).map_err(|e| fail(e.to_string()))?;
    bytes
        .try_into()
        .map_err(|_| fail("the key is not 32 bytes".into()))
}

/// Writes `key` as a libp2p pre-shared key file readable only by its owner.
pub fn write_swarm_key(path: &Path, key: &[u8; 32]) -> Result<(), InviteError> {
    let fail = |e: std::io::Error| InviteError::SwarmKey {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let text = format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", hex::encode(key));
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(fail)?;
        f.write_all(text.as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Seconds since the Unix epoch now.
pub fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn sample(id: &Identity) -> String {
        let b = body(
            Some([3; 32]),
            vec![format!("/ip4/192.168.1.20/tcp/4001/p2p/{}", id.node_id())],
            Vec::new(),
            Some(ModelRef {
                name: "gemma".into(),
                manifest_sha256: [1; 32],
            }),
            id.node_id(),
        );
        issue(id, b, 3600, NOW).unwrap()
    }

    #[test]
    fn round_trip_and_expiry() {
        let id = Identity::generate();
        let token = sample(&id);
        assert!(token.starts_with(PREFIX) && token.len() <= MAX_TOKEN_LEN);
        assert!(!token.contains(char::is_whitespace));
        let inv = read(&format!("  {token}\n"), NOW + 10).unwrap();
        assert_eq!(inv.inviter, id.node_id());
        assert_eq!(inv.swarm_key, Some([3; 32]));
        assert_eq!(inv.expires_unix_s, NOW + 3600);
        let e = read(&token, NOW + 3600 + 5).unwrap_err();
        assert!(matches!(e, InviteError::Expired { ago_s: 5 }), "{e}");
        let e = read(&token, NOW - 1000).unwrap_err();
        assert!(matches!(e, InviteError::FromTheFuture { .. }), "{e}");
        assert!(read(&token, NOW - 100).is_ok(), "small skew is tolerated");
    }

    #[test]
    fn every_changed_character_is_refused() {
        let id = Identity::generate();
        let token = sample(&id);
        let original = read(&token, NOW).unwrap();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in PREFIX.len()..token.len() {
            let mut b = token.clone().into_bytes();
            let c = b[i];
            b[i] = alphabet[(alphabet.iter().position(|&a| a == c).unwrap() + 1) % 64];
            let changed = String::from_utf8(b).unwrap();
            match read(&changed, NOW) {
                Err(InviteError::Damaged(_) | InviteError::Tampered(_)) => {}
                // A change the encoding does not see (the last character's spare bits, a map
                // key's string type) reads as the very invite that was signed.
                Ok(inv) if inv == original => {}
                other => panic!("character {i} changed: {other:?}"),
            }
        }
        assert!(matches!(read("hello", NOW), Err(InviteError::NotAnInvite)));
        let long = format!("{PREFIX}{}", "A".repeat(MAX_TOKEN_LEN));
        assert!(matches!(read(&long, NOW), Err(InviteError::TooLong(_))));
        let junk = format!("{PREFIX}!!!!");
        assert!(matches!(read(&junk, NOW), Err(InviteError::Damaged(_))));
    }

    #[test]
    fn ttl_limits() {
        let id = Identity::generate();
        let b = || {
            body(
                None,
                vec![format!("/ip4/10.0.0.1/tcp/1/p2p/{}", id.node_id())],
                vec![],
                None,
                id.node_id(),
            )
        };
        assert!(issue(&id, b(), 0, NOW).is_err());
        assert!(issue(&id, b(), MAX_TTL_S + 1, NOW).is_err());
        let t = issue(&id, b(), MAX_TTL_S, NOW).unwrap();
        assert_eq!(read(&t, NOW).unwrap().swarm_key, None);
    }

    #[test]
    fn swarm_key_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/swarm.key");
        write_swarm_key(&path, &[0xab; 32]).unwrap();
        assert_eq!(read_swarm_key(&path).unwrap(), [0xab; 32]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").unwrap();
        assert!(read_swarm_key(&path).is_err());
    }
}
