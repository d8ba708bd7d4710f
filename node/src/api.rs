//! The node's HTTP API (axum). [`router`] is the one place routes are registered: this file
//! serves `GET /` (the live page, `api/page.rs`), `GET /health`, `GET /v1/status` and
//! `POST /v1/invite` (`api/invite.rs`); the pipeline adds its OpenAI-compatible routes and
//! `/metrics` from submodules under `api/` by merging their routers here. API keys (`api/auth.rs`) guard every route but the page and
//! `/health`.
//!
//! `GET /v1/status` returns one JSON object: `node`, `epoch`, `next_coordinator`, `members`
//! (id, capability, age), `links` (the directed link matrix), `plan` (DESIGN.md's plan JSON plus
//! `epoch`, `coordinator`, `members`; `null` before the first plan), `predicted_latency_s` and
//! `refused` (counters by reason).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use shoal_protocol::Plan;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::node::NodeHandle;
use crate::pipeline::PipelineHandle;
use crate::view::View;
use auth::ApiKeys;

pub mod auth;
pub mod client;
pub mod invite;
pub mod openai;
pub mod page;
pub mod stop;

/// The full router of a node's API (the OpenAI routes and `/metrics` need the pipeline).
/// With `keys` set, every route but `GET /` (the page) and `GET /health` needs one of them.
pub fn router(node: &NodeHandle, pipeline: Option<PipelineHandle>, keys: ApiKeys) -> Router {
    let guarded = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/invite", post(invite::issue))
        .with_state(node.clone());
    let guarded = match pipeline {
        Some(p) => guarded.merge(openai::router(p)),
        None => guarded,
    };
    let guarded = guarded.route_layer(axum::middleware::from_fn_with_state(
        keys,
        auth::require_key,
    ));
    Router::new()
        .route("/", get(page::page))
        .route("/health", get(health))
        .merge(guarded)
}

/// `GET /health`: 200 while the node serves its API (no key needed, nothing revealed).
async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Serves `router` on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, router: Router, cancel: CancellationToken) {
    let res = axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "http api stopped");
    }
}

async fn status(State(node): State<NodeHandle>) -> Json<Value> {
    let mut doc = status_json(&node.snapshot());
    doc["fetch"] = json!(node.fetch_status());
    Json(doc)
}

/// The `/v1/status` document of a view.
pub fn status_json(view: &Arc<View>) -> Value {
    let members: Vec<Value> = view
        .members
        .iter()
        .map(|m| {
            let c = &m.capability;
            json!({
                "id": m.id.to_string(),
                "flops": c.flops,
                "mem_bw": c.mem_bw,
                "mem_bytes": c.mem_bytes,
                "overhead_s": c.overhead_s,
                "battery": c.battery.map(|b| json!({
                    "on_battery": b.on_battery, "level": b.level, "watts": b.watts,
                })),
                "temp_c": c.temp_c,
                "throttle": c.throttle,
                "model": c.model.as_ref().map(|m| m.name.clone()),
                "held": c.held,
                "listen_addrs": c.listen_addrs,
                "loss_probe_port": c.loss_probe_port,
                "age_s": m.age_s,
            })
        })
        .collect();
    let links: Vec<Value> = view
        .links
        .iter()
        .map(|l| {
            json!({
                "from": l.from.to_string(),
                "to": l.to.to_string(),
                "rtt_s": l.metrics.rtt_s,
                "jitter_s": l.metrics.jitter_s,
                "bandwidth_bps": l.metrics.bandwidth_bps,
                "loss": l.metrics.loss,
            })
        })
        .collect();
    json!({
        "node": view.local.to_string(),
        "epoch": view.epoch(),
        "next_coordinator": view.next_coordinator.map(|c| c.to_string()),
        "members": members,
        "links": links,
        "plan": view.plan().map(plan_json),
        "predicted_latency_s": view.predicted_latency_s,
        "refused": view.refused,
        "relayed": view
            .relayed
            .iter()
            .map(|(peer, relay)| json!({"peer": peer.to_string(), "via": relay.to_string()}))
            .collect::<Vec<_>>(),
    })
}

/// A plan as JSON: DESIGN.md's `shoal plan` object (`objective`, `cost_s`, `stages` with
/// `device` and half-open `layers`, `strategy`, `optimal`) plus `epoch`, `coordinator`,
/// `model`, `members`, `prefetch`, `cause` (why it replaced the one before) and
/// `below_floor` (nodes on battery below the floor that hold layers all the same).
pub fn plan_json(plan: &Plan) -> Value {
    json!({
        "epoch": plan.epoch,
        "coordinator": plan.coordinator.to_string(),
        "model": plan.model.name,
        "objective": plan.objective,
        "cost_s": plan.cost_s,
        "stages": plan.stages.iter().map(|s| json!({
            "device": s.node.to_string(),
            "layers": [s.start, s.end],
        })).collect::<Vec<_>>(),
        "strategy": plan.strategy,
        "optimal": plan.optimal,
        "members": plan.members.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        "prefetch": plan.prefetch.iter().map(|s| json!({
            "device": s.node.to_string(),
            "layers": [s.start, s.end],
        })).collect::<Vec<_>>(),
        "cause": plan.cause,
        "below_floor": plan.below_floor.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
    })
}
