//! `shoal run`: starts a node and runs it until Ctrl-C or SIGTERM.
//!
//! Once the node listens, one line goes to stdout (logs go to stderr), so tests and
//! `shoal demo` can read it:
//!
//! ```text
//! shoal-ready node=<node id> api=<ip:port|none> listen=<multiaddr>[,<multiaddr>...]
//! ```
//!
//! Fields are separated by single spaces and appear in this order; every listen address ends
//! in `/p2p/<node id>`, so each one can be passed to another node's `--bootstrap` as is.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shoal_node::config::{Config, JoinModel};
use shoal_node::invite;
use shoal_node::node::ModelInfo;
use shoal_node::start::{Node, Running};
use tokio_util::sync::CancellationToken;

/// The first word of the ready line.
pub(crate) const READY_PREFIX: &str = "shoal-ready";

/// Arguments of `shoal run`; flags override the config file.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// TOML config (see configs/node.example.toml); defaults apply without one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen multiaddr (repeatable; replaces the config's list).
    #[arg(long)]
    listen: Vec<String>,
    /// Bootstrap multiaddr ending in /p2p/<id> (repeatable; added to the config's list).
    #[arg(long)]
    bootstrap: Vec<String>,
    /// Data directory of the sled store [default: ~/.shoal/data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Identity key file, created if missing [default: ~/.shoal/node.key].
    #[arg(long, env = "SHOAL_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Model directory (with manifest.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// HTTP API address (port 0: any free port).
    #[arg(long)]
    api: Option<SocketAddr>,
    /// An invite token from `shoal invite` (or a member's page): joins that swarm with its key,
    /// addresses and relays; nothing else is needed.
    #[arg(long, env = "SHOAL_JOIN", hide_env_values = true)]
    join: Option<String>,
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = config(args)?;
    shoal_model::runtime::ort_lib::set_thread_spinning(config.ort_spin);
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    rt.block_on(serve(config))
}

fn config(args: RunArgs) -> anyhow::Result<Config> {
    let mut c = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if !args.listen.is_empty() {
        c.listen = args.listen;
    }
    c.bootstrap.extend(args.bootstrap);
    if let Some(d) = args.data_dir {
        c.data_dir = d;
    }
    if let Some(k) = args.key_file {
        c.key_file = k;
    }
    if args.model.is_some() {
        c.model = args.model;
    }
    if args.api.is_some() {
        c.api = args.api;
    }
    let home = || -> anyhow::Result<PathBuf> {
        Ok(PathBuf::from(
            std::env::var_os("HOME").context("HOME is not set; pass --data-dir and --key-file")?,
        )
        .join(".shoal"))
    };
    if c.data_dir.as_os_str().is_empty() {
        c.data_dir = home()?.join("data");
    }
    if c.key_file.as_os_str().is_empty() {
        c.key_file = super::keys::default_key_file()?;
    }
    if let Some(token) = &args.join {
        join(&mut c, token)?;
    }
    private_by_default(&mut c)?;
    Ok(c)
}

/// Applies an invite to the config: its addresses first, its relays, its swarm key (written to
/// `<data_dir>/swarm.key`); refuses a token that is not valid now, and a config that
/// contradicts it (another swarm key, another model).
fn join(c: &mut Config, token: &str) -> anyhow::Result<()> {
    let inv = invite::read(token, invite::now_unix_s()).context("--join")?;
    if let (Some(want), Some(dir)) = (&inv.model, &c.model) {
        let have = ModelInfo::load(dir).context("--model")?.model_ref;
        if have.manifest_sha256 != want.manifest_sha256 {
            anyhow::bail!(
                "--join: the swarm runs {} (manifest sha256 {}), but {} holds {} (sha256 {})",
                want.name,
                hex::encode(want.manifest_sha256),
                dir.display(),
                have.name,
                hex::encode(have.manifest_sha256)
            );
        }
    }
    match (inv.swarm_key, &c.psk_file) {
        (Some(key), Some(path)) => {
            if invite::read_swarm_key(path)? != key {
                anyhow::bail!(
                    "--join: psk_file {} holds another swarm's key than the invite's; remove psk_file \
                     from the config to join this swarm",
                    path.display()
                );
            }
        }
        (Some(key), None) => {
            let path = c.data_dir.join("swarm.key");
            invite::write_swarm_key(&path, &key)?;
            c.psk_file = Some(path);
        }
        (None, Some(path)) => anyhow::bail!(
            "--join: the invite is for a public swarm, but psk_file {} makes this node private",
            path.display()
        ),
        (None, None) => c.public = true,
    }
    let mut bootstrap = inv.bootstrap;
    bootstrap.append(&mut c.bootstrap);
    c.bootstrap = bootstrap;
    for r in inv.relays {
        if !c.relays.contains(&r) {
            c.relays.push(r);
        }
    }
    // Without --model, the swarm's model is fetched from the members into the data folder:
    // the manifest and tokenizer at start, then the layers the plan gives this node.
    if let (None, Some(m)) = (&c.model, &inv.model) {
        let sha = hex::encode(m.manifest_sha256);
        c.model = Some(c.data_dir.join("models").join(format!(
            "{}-{}",
            folder_name(&m.name),
            &sha[..12]
        )));
        c.join_model = Some(JoinModel {
            name: m.name.clone(),
            manifest_sha256: sha,
        });
    }
    if c.model.is_none() {
        tracing::warn!(
            "joining without a model: the invite names none, so this node holds no layers"
        );
    }
    tracing::info!(
        inviter = %inv.inviter,
        private = inv.swarm_key.is_some(),
        model = inv.model.as_ref().map_or("-", |m| m.name.as_str()),
        "joining through an invite"
    );
    Ok(())
}

/// A node that starts a swarm (no swarm key, no bootstrap address, not `public`) makes it
/// private: it generates `<data_dir>/swarm.key` on its first start and uses it from then on.
fn private_by_default(c: &mut Config) -> anyhow::Result<()> {
    if c.psk_file.is_some() || c.public {
        return Ok(());
    }
    if !c.bootstrap.is_empty() {
        tracing::warn!(
            "no swarm key: joining as a public node (a private swarm refuses it; join with \
             `--join TOKEN` from `shoal invite` instead)"
        );
        return Ok(());
    }
    let path = c.data_dir.join("swarm.key");
    if !path.exists() {
        std::fs::create_dir_all(&c.data_dir)
            .with_context(|| format!("creating {}", c.data_dir.display()))?;
        invite::write_swarm_key(&path, &rand::random())?;
        tracing::info!(key = %path.display(), "new private swarm: generated its key (set public = true for an open swarm)");
    }
    invite::read_swarm_key(&path).with_context(|| format!("swarm key {}", path.display()))?;
    c.psk_file = Some(path);
    Ok(())
}

/// A model name as a folder name: letters, digits, `-`, `_` and `.` kept, the rest `_`.
fn folder_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || "-_.".contains(ch) {
                ch
            } else {
                '_'
            }
        })
        .collect();
    s.trim_start_matches('.').chars().take(64).collect()
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let node = Node::start(config, cancel.clone())
        .await
        .context("starting the node")?;
    print_ready(&node)?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    node.shutdown();
    // Let the tasks see the cancellation and close connections.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    Ok(())
}

/// Prints the ready line (format in the module docs).
fn print_ready(node: &Running) -> anyhow::Result<()> {
    let listen: Vec<String> = node.listen_addrs().iter().map(|a| a.to_string()).collect();
    let api = node
        .api_addr()
        .map_or("none".to_string(), |a| a.to_string());
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{READY_PREFIX} node={} api={api} listen={}",
        node.node_id(),
        listen.join(",")
    )?;
    out.flush()?;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("Ctrl-C handler")?,
        _ = term.recv() => {}
    }
    Ok(())
}
