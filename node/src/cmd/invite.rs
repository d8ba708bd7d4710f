//! `shoal invite`: asks a running member's API (`POST /v1/invite`) for an invite token and
//! prints it as one line on stdout (what it carries goes to stderr), for
//! `shoal run --join TOKEN` on the new device.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

/// Arguments of `shoal invite`.
#[derive(Debug, Args)]
pub(crate) struct InviteArgs {
    /// The member's HTTP API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    api: SocketAddr,
    /// An API key of the node (when it has `api_keys`), sent as a bearer token.
    #[arg(long, env = "SHOAL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// How long the invite stays valid, seconds (at most 30 days).
    #[arg(long, default_value_t = 24 * 3600)]
    ttl: u64,
}

pub(crate) fn run(args: InviteArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let url = format!("http://{}/v1/invite", args.api);
    let v: Value = rt.block_on(async {
        let mut req = reqwest::Client::builder()
            .no_proxy()
            .build()?
            .post(&url)
            .json(&json!({"ttl_s": args.ttl}));
        if let Some(key) = &args.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.context("the answer is not JSON")?;
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or("no message");
            anyhow::bail!("POST {url}: {status}: {msg}");
        }
        Ok::<_, anyhow::Error>(body)
    })?;
    let token = v["token"].as_str().context("the answer has no token")?;
    eprintln!(
        "invite from {} for a {} swarm{}, valid {} s, joining through {} address(es); on the new device:\n  shoal run --join <the line below> [--model DIR]",
        v["inviter"].as_str().unwrap_or("?"),
        if v["private"].as_bool() == Some(true) {
            "private"
        } else {
            "public"
        },
        v["model"]
            .as_str()
            .map_or(String::new(), |m| format!(" running {m}")),
        args.ttl,
        v["bootstrap"].as_array().map_or(0, Vec::len),
    );
    println!("{token}");
    Ok(())
}
