//! `POST /v1/invite`: issues an invite token (`crate::invite`) signed by this node, for
//! `shoal run --join TOKEN` on a new device. Behind the API keys like every route that grants
//! something: a token carries the swarm key.
//!
//! Request body (optional): `{"ttl_s": 86400}` (validity, 1 s to 30 days; default one day).
//! Answer: `{"token", "inviter", "expires_unix_s", "bootstrap", "relays", "model", "private"}`.
//! The bootstrap list is this node's own listen addresses (addresses other devices can reach
//! first, loopback last), then other members' addresses, at most
//! [`shoal_protocol::MAX_INVITE_ADDRS`].

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use shoal_protocol::MAX_INVITE_ADDRS;

use crate::invite;
use crate::node::NodeHandle;

/// Validity when the request names none: one day.
pub const DEFAULT_TTL_S: u64 = 24 * 3600;

/// The request body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// Seconds the invite stays valid.
    pub ttl_s: Option<u64>,
}

/// `POST /v1/invite`.
pub async fn issue(State(node): State<NodeHandle>, body: Option<Json<InviteRequest>>) -> Response {
    let ttl_s = body.and_then(|Json(b)| b.ttl_s).unwrap_or(DEFAULT_TTL_S);
    match build(&node, ttl_s) {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            let status = match e {
                invite::InviteError::Issue(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let body = json!({"error": {"message": e.to_string(), "type": "invalid_request_error",
                "code": "invite"}});
            (status, Json(body)).into_response()
        }
    }
}

fn build(node: &NodeHandle, ttl_s: u64) -> Result<serde_json::Value, invite::InviteError> {
    let config = node.config();
    let swarm_key = match &config.psk_file {
        Some(path) => Some(invite::read_swarm_key(path)?),
        None => None,
    };
    let bootstrap = addresses(node);
    let mut relays: Vec<String> = config.relays.clone();
    relays.truncate(MAX_INVITE_ADDRS);
    let model = node.model().map(|m| m.model_ref.clone());
    let identity = node.identity();
    let body = invite::body(
        swarm_key,
        bootstrap.clone(),
        relays.clone(),
        model.clone(),
        identity.node_id(),
    );
    let now = invite::now_unix_s();
    let token = invite::issue(&identity, body, ttl_s, now)?;
    Ok(json!({
        "qr_svg": qr_svg(&token),
        "token": token,
        "inviter": identity.node_id().to_string(),
        "expires_unix_s": now.saturating_add(ttl_s),
        "bootstrap": bootstrap,
        "relays": relays,
        "model": model.map(|m| m.name),
        "private": swarm_key.is_some(),
    }))
}

/// The token as a QR code in SVG (drawn here, so the page needs no script or network for it);
/// `None` when the token is too long for a QR code.
pub fn qr_svg(token: &str) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(token, qrcode::EcLevel::L).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(240, 240)
            .quiet_zone(true)
            .build(),
    )
}

/// This node's addresses, then other members', each ending in `/p2p/<id>`; non-loopback first.
fn addresses(node: &NodeHandle) -> Vec<String> {
    let own = node.node_id();
    let mut out: Vec<String> = node
        .listen_addrs()
        .iter()
        .map(|a| with_peer(&a.to_string(), &own.to_string()))
        .collect();
    let view = node.snapshot();
    for m in view.members.iter().filter(|m| m.id != own) {
        out.extend(
            m.capability
                .listen_addrs
                .iter()
                .map(|a| with_peer(a, &m.id.to_string())),
        );
    }
    // Stable: own addresses stay ahead of others' within each group.
    out.sort_by_key(|a| is_local(a));
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|a| seen.insert(a.clone()));
    out.truncate(MAX_INVITE_ADDRS);
    out
}

fn with_peer(addr: &str, id: &str) -> String {
    if addr.contains("/p2p/") {
        addr.to_string()
    } else {
        format!("{addr}/p2p/{id}")
    }
}

fn is_local(addr: &str) -> bool {
    addr.starts_with("/ip4/127.") || addr.starts_with("/ip6/::1/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_their_peer_id_once() {
        assert_eq!(
            with_peer("/ip4/1.2.3.4/tcp/5", "X"),
            "/ip4/1.2.3.4/tcp/5/p2p/X"
        );
        assert_eq!(
            with_peer("/ip4/1.2.3.4/tcp/5/p2p/Y", "X"),
            "/ip4/1.2.3.4/tcp/5/p2p/Y"
        );
        assert!(is_local("/ip4/127.0.0.1/tcp/5/p2p/X"));
        assert!(!is_local("/ip4/192.168.1.2/tcp/5/p2p/X"));
    }
}
