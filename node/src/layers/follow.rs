//! The follower: watches the node's [`View`] and fetches the layers the plan in force (its own
//! stage) or the plan's prefetch order gives this node but its disk lacks; then reports the
//! layers held (the node announces them in its capability) and what the fetch did.
//!
//! Holders of a file are the members announcing the same model and holding a layer that lists
//! it, fastest measured link first; each is pulled from at `link_share` of that link's
//! measured rate, so a fetch leaves room for the activations on the same link.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_keys::NodeId;
use shoal_model::Manifest;
use shoal_protocol::ModelRef;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::disk::{self, ModelFile};
use super::fetch::{FetchReport, Source, fetch_all};
use super::serve::FileIndex;
use crate::swarm::NetworkHandle;
use crate::view::View;

/// Pause after a failed fetch before the next attempt.
const RETRY: Duration = Duration::from_secs(2);

/// The last fetch of layers, for `/v1/status` and the tests.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FetchStatus {
    /// Planner layers fetched, as half-open ranges.
    pub layers: Vec<(u32, u32)>,
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    /// Bytes received so far (when done: in all).
    pub bytes: u64,
    /// Bytes of `.part` files resumed.
    pub resumed_bytes: u64,
    /// Seconds from the start of the fetch.
    pub seconds: f64,
    /// Holders that sent bytes.
    pub peers: usize,
    /// Holders whose bytes failed the hash.
    pub rejected: usize,
    /// Times a file's fetch moved to another holder.
    pub switches: u32,
    /// Why it failed.
    pub error: Option<String>,
}

/// What the follower needs.
#[derive(Debug)]
pub struct Follower {
    /// The swarm.
    pub net: NetworkHandle,
    /// This node.
    pub me: NodeId,
    /// The model directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
    /// The model's id, as members announce it.
    pub model: ModelRef,
    /// The served files; fetched files join it.
    pub index: FileIndex,
    /// Share of a link's measured rate a fetch may use, in (0, 1].
    pub link_share: f64,
    /// Where the layers held on disk are reported.
    pub held: watch::Sender<Vec<(u32, u32)>>,
    /// Where the fetches are reported.
    pub status: watch::Sender<Option<FetchStatus>>,
}

impl Follower {
    /// Follows the view until `cancel` fires.
    pub async fn run(self, mut view: watch::Receiver<Arc<View>>, cancel: CancellationToken) {
        loop {
            let v = view.borrow_and_update().clone();
            let missing = self.missing(&v);
            if !missing.is_empty() {
                let ok = tokio::select! {
                    _ = cancel.cancelled() => return,
                    ok = self.fetch(&v, &missing) => ok,
                };
                if !ok {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = view.changed() => if r.is_err() { return },
            }
        }
    }

    /// Layers the plan wants on this node that its disk lacks.
    fn missing(&self, v: &View) -> Vec<(u32, u32)> {
        let Some(plan) = v.plan().filter(|p| p.model == self.model) else {
            return Vec::new();
        };
        // The follower alone changes the disk, and reports every change on `held`.
        let held = self.held.borrow().clone();
        let has = |l: u32| held.iter().any(|&(a, b)| (a..b).contains(&l));
        let wanted = plan
            .stages
            .iter()
            .chain(&plan.prefetch)
            .filter(|s| s.node == self.me);
        let mut out: Vec<(u32, u32)> = Vec::new();
        for s in wanted {
            for l in s.start..s.end.min(self.manifest.layers.len() as u32) {
                if has(l) || out.iter().any(|&(a, b)| (a..b).contains(&l)) {
                    continue;
                }
                match out.last_mut() {
                    Some((_, e)) if *e == l => *e = l + 1,
                    _ => out.push((l, l + 1)),
                }
            }
        }
        out
    }

    /// Fetches the files of `ranges`; true when all arrived.
    async fn fetch(&self, v: &View, ranges: &[(u32, u32)]) -> bool {
        let files: Vec<ModelFile> = {
            let mut all: Vec<ModelFile> = Vec::new();
            for &(a, b) in ranges {
                for f in disk::layer_files(&self.manifest, a as usize, b as usize) {
                    if !all.contains(&f) {
                        all.push(f);
                    }
                }
            }
            all
        };
        let start = Instant::now();
        tracing::info!(node = %self.me.short(), layers = ?ranges, files = files.len(), "fetching layers from the swarm");
        let status = |state, r: &FetchReport, error: Option<String>| FetchStatus {
            layers: ranges.to_vec(),
            state,
            bytes: r.bytes,
            resumed_bytes: r.resumed,
            seconds: start.elapsed().as_secs_f64(),
            peers: r.peers.len(),
            rejected: r.rejected.len(),
            switches: r.switches,
            error,
        };
        self.status
            .send_replace(Some(status("running", &FetchReport::default(), None)));
        let result = fetch_all(&self.net, &self.dir, &files, |f| self.sources(v, f)).await;
        for f in &files {
            let path = self.dir.join(&f.name);
            if path.is_file() {
                self.index.insert(f.sha256, path);
            }
        }
        self.held
            .send_replace(disk::held_ranges(&self.dir, &self.manifest));
        match result {
            Ok(r) => {
                tracing::info!(
                    node = %self.me.short(), layers = ?ranges, bytes = r.bytes, resumed = r.resumed,
                    seconds = r.seconds, peers = r.peers.len(), rejected = r.rejected.len(),
                    "layers fetched and verified"
                );
                self.status.send_replace(Some(status("done", &r, None)));
                true
            }
            Err(e) => {
                tracing::warn!(node = %self.me.short(), layers = ?ranges, error = %e, "fetching layers failed");
                self.status.send_replace(Some(status(
                    "failed",
                    &FetchReport::default(),
                    Some(e.to_string()),
                )));
                false
            }
        }
    }

    /// The members holding `f`, fastest measured link to this node first.
    fn sources(&self, v: &View, f: &ModelFile) -> Vec<Source> {
        let layers: Vec<u32> = (0..self.manifest.layers.len())
            .filter(|&l| self.manifest.layers[l].files.contains(&f.name))
            .map(|l| l as u32)
            .collect();
        let mut out: Vec<(f64, Source)> = v
            .members
            .iter()
            .filter(|m| m.id != self.me && m.capability.model.as_ref() == Some(&self.model))
            .filter(|m| layers.iter().any(|&l| m.capability.holds(l)))
            .map(|m| {
                let bw = v
                    .links
                    .iter()
                    .find(|k| k.from == m.id && k.to == self.me && k.metrics.plannable())
                    .or_else(|| {
                        v.links
                            .iter()
                            .find(|k| k.from == self.me && k.to == m.id && k.metrics.plannable())
                    })
                    .map(|k| k.metrics.bandwidth_bps);
                let src = Source {
                    peer: m.id,
                    rate_bps: bw.map(|b| b * self.link_share),
                };
                (bw.unwrap_or(0.0), src)
            })
            .collect();
        out.sort_by(|a, b| b.0.total_cmp(&a.0));
        out.into_iter().map(|(_, s)| s).collect()
    }
}
