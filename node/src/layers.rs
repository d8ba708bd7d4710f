//! Model files between peers (`/shoal/layers/1`): a node that joins without the model learns
//! it from the swarm and fetches exactly the layers the plan gives it.
//!
//! - `disk`: which files each layer needs, which layers are on disk, the served index, free
//!   space.
//! - `serve`: answers file requests from the index ([`serve::serve`]).
//! - `fetch`: fetches files, chunked, paced, resumable, from several holders, verified against
//!   the manifest's sha256 before they are kept ([`fetch::fetch_file`], [`fetch::fetch_all`]).
//! - `follow`: watches the view and fetches what the plan in force or its prefetch order wants
//!   on this node ([`follow::Follower`]).
//!
//! [`bootstrap`] fetches a model's `manifest.json` (by the sha256 of the model's id) and its
//! tokenizer files from connected peers: what a node started with an invite and no model does
//! before anything else. Data flow: the node task starts the server and the follower; the
//! follower reports held layers on a `watch` channel, which the node task announces in its
//! capability; the coordinator plans with them (planner `fetch` term) and orders prefetches.

pub mod disk;
pub mod fetch;
pub mod follow;
pub mod serve;

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_keys::NodeId;
use shoal_model::Manifest;
use shoal_model::manifest::MANIFEST_FILE;
use shoal_protocol::ModelRef;

use crate::swarm::NetworkHandle;
use disk::ModelFile;
use fetch::{FetchError, FetchReport, Pacer, Source, fetch_all, fetch_file};

/// Errors of bootstrapping a model from peers.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// No connected peer served the files in time.
    #[error("no peer served model {model} within {seconds} s: {last}")]
    Timeout {
        /// The model's name.
        model: String,
        /// The wait.
        seconds: u64,
        /// The last failure.
        last: String,
    },
    /// The fetched manifest is unusable.
    #[error("model {model}: {reason}")]
    Manifest {
        /// The model's name.
        model: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be written.
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// Fetches `model`'s manifest and tokenizer files into `dir` from connected peers, waiting up
/// to `timeout` for a peer that has them. A directory that already holds the manifest is kept
/// as it is.
pub async fn bootstrap(
    net: &NetworkHandle,
    model: &ModelRef,
    dir: &Path,
    timeout: Duration,
) -> Result<(Manifest, FetchReport), BootstrapError> {
    let deadline = Instant::now() + timeout;
    let manifest_file = ModelFile {
        name: MANIFEST_FILE.to_string(),
        sha256: model.manifest_sha256,
    };
    let mut report;
    let mut last = "no peer connected".to_string();
    loop {
        let peers = connected(net).await;
        if !peers.is_empty() {
            match fetch_file(net, dir, &manifest_file, &peers, &Pacer::default()).await {
                Ok(r) => {
                    report = r;
                    break;
                }
                Err(e @ (FetchError::Space { .. } | FetchError::Io { .. })) => return Err(e.into()),
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            return Err(BootstrapError::Timeout {
                model: model.name.clone(),
                seconds: timeout.as_secs(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let bad = |reason: String| BootstrapError::Manifest {
        model: model.name.clone(),
        reason,
    };
    let manifest = Manifest::load(dir).map_err(|e| bad(e.to_string()))?;
    if manifest.name != model.name {
        return Err(bad(format!("the manifest names {:?}", manifest.name)));
    }
    let peers = connected(net).await;
    let common = disk::common_files(&manifest);
    let more = fetch_all(net, dir, &common, |_| peers.clone()).await?;
    report.bytes += more.bytes;
    report.peers.extend(more.peers);
    Ok((manifest, report))
}

/// Every connected peer, unpaced: before it is a member, the node has no link figures.
async fn connected(net: &NetworkHandle) -> Vec<Source> {
    net.connected_peers()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| NodeId::from_peer_id(p).ok())
        .map(|peer| Source {
            peer,
            rate_bps: None,
        })
        .collect()
}
