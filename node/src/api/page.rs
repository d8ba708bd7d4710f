//! `GET /`: the live page of the swarm (`page.html`, embedded in the binary at build time):
//! members and their capabilities, the link matrix coloured by quality, the plan as stages
//! over devices with its predicted ms/token, recent tokens/s and refusals (it polls
//! `/v1/status` and `/metrics` every 2 s), and a prompt box that streams a completion.

use axum::response::Html;

/// The page, as built into the binary.
pub const PAGE: &str = include_str!("page.html");

/// Serves the page.
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
