//! Fetching model files from peers on `/shoal/layers/1`: one file from an ordered list of
//! holders ([`fetch_file`]), and a set of files from several holders at once ([`fetch_all`]).
//!
//! A file is written under `<name>.part` in order, a window of [`WINDOW`] chunk requests of
//! [`CHUNK`] bytes in flight, paced to the source's rate limit, so memory stays at
//! `WINDOW * CHUNK` whatever the file's size; the pace is per holder, shared by every file
//! pulled from it at once ([`Pacer`]). When a holder fails (disconnect, timeout) the
//! fetch resumes at the `.part` file's length from the next holder; a `.part` file left by an
//! earlier run is resumed the same way (its bytes are hashed again first). The file's size is
//! known from the first chunk; the free space of the file system is checked then, before a
//! byte is written. When the last byte is in, the sha256 of the whole file is compared with
//! the manifest's: a match is synced and renamed to its final name (only then is the file
//! held); a mismatch deletes the `.part` file, and when one holder sent every byte, that
//! holder loses score and is not asked again (when several did, the file is fetched again from
//! one holder alone, so the culprit can be named).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use sha2::{Digest, Sha256};
use shoal_keys::NodeId;
use shoal_protocol::{FileRequest, FileResponse, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::disk::{ModelFile, free_bytes};
use crate::swarm::{NetworkHandle, Proto};

/// Bytes asked for per request: small enough that a chunk queued on a link delays an
/// activation behind it by little (256 KiB is 0.2 s at 10 Mbit/s).
pub const CHUNK: u32 = 256 * 1024;
/// Chunk requests in flight per file.
pub const WINDOW: usize = 2;
/// Files fetched at once by [`fetch_all`].
pub const CONCURRENT_FILES: usize = 4;
/// Bytes left free on the file system after a fetch.
pub const DISK_RESERVE: u64 = 64 << 20;
/// Rounds over all holders before a file's fetch gives up.
const ROUNDS: usize = 3;
/// Pause between rounds.
const ROUND_PAUSE: Duration = Duration::from_secs(1);

/// When each holder may next be sent a chunk request: the rate limit of a [`Source`] holds
/// for all the files pulled from it at once. Cheap to clone; clones share the schedule.
#[derive(Debug, Clone, Default)]
pub struct Pacer(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl Pacer {
    /// Waits for `src`'s next slot for `bytes` and books it.
    async fn slot(&self, src: &Source, bytes: u32) {
        let Some(rate) = src.rate_bps else { return };
        let due = {
            let mut next = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let due = next.get(&src.peer).copied().unwrap_or(now).max(now);
            let gap = Duration::from_secs_f64(f64::from(bytes) * 8.0 / rate.max(1.0));
            next.insert(src.peer, due + gap);
            due
        };
        tokio::time::sleep_until(due.into()).await;
    }
}

/// A peer that holds a file, and how fast to pull from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Source {
    /// The holder.
    pub peer: NodeId,
    /// Most bits per second to pull from it; `None`: no limit.
    pub rate_bps: Option<f64>,
}

/// What a fetch did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FetchReport {
    /// Bytes received over the network.
    pub bytes: u64,
    /// Bytes of `.part` files resumed instead of fetched.
    pub resumed: u64,
    /// Wall seconds.
    pub seconds: f64,
    /// Holders that sent bytes.
    pub peers: BTreeSet<NodeId>,
    /// Holders whose bytes failed the hash (scored down).
    pub rejected: BTreeSet<NodeId>,
    /// Times a fetch moved to another holder after a failure.
    pub switches: u32,
}

impl FetchReport {
    fn add(&mut self, o: FetchReport) {
        self.bytes += o.bytes;
        self.resumed += o.resumed;
        self.peers.extend(o.peers);
        self.rejected.extend(o.rejected);
        self.switches += o.switches;
    }
}

/// Errors of fetching.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No holder could deliver the file.
    #[error("{file}: no holder delivered it ({last})")]
    NoSource {
        /// The file.
        file: String,
        /// The last failure.
        last: String,
    },
    /// Not enough free disk space.
    #[error("{file}: needs {need} more bytes on disk, {free} free (keeping {DISK_RESERVE} spare)")]
    Space {
        /// The file.
        file: String,
        /// Bytes still to write.
        need: u64,
        /// Bytes free.
        free: u64,
    },
    /// A local file error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Why one pull from one holder stopped short.
enum PullError {
    /// The network failed or the holder does not have the file: try the next one.
    Holder(String),
    /// The holder sent a malformed answer: score it down and try the next one.
    Bad(&'static str, String),
    /// Local trouble: give up.
    Fatal(FetchError),
}

/// Fetches `file` into `dir` from `sources` (in order of preference), pacing requests to each
/// source's rate through `pacer` (shared by the fetches running at once).
pub async fn fetch_file(
    net: &NetworkHandle,
    dir: &Path,
    file: &ModelFile,
    sources: &[Source],
    pacer: &Pacer,
) -> Result<FetchReport, FetchError> {
    let start = Instant::now();
    let target = dir.join(&file.name);
    let mut report = FetchReport::default();
    if target.is_file() {
        return Ok(report);
    }
    let part = part_path(&target);
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io(parent))?;
    }
    let mut excluded: BTreeSet<NodeId> = BTreeSet::new();
    // After a mismatch with bytes from several holders: one holder per attempt.
    let mut single = false;
    let mut last = "no holder listed".to_string();
    for _round in 0..ROUNDS {
        let mut w = PartFile::open(&part).await?;
        report.resumed += w.len;
        // An inherited or mixed .part file has no single author to blame.
        let mut authors: Option<BTreeSet<NodeId>> = (w.len == 0).then(BTreeSet::new);
        let candidates: Vec<Source> = sources
            .iter()
            .filter(|s| !excluded.contains(&s.peer))
            .copied()
            .collect();
        if candidates.is_empty() {
            break;
        }
        let mut complete = false;
        for (k, src) in candidates.iter().enumerate() {
            if single && k > 0 {
                break;
            }
            if k > 0 {
                report.switches += 1;
            }
            let before = w.len;
            let res = pull(net, file, src, &mut w, pacer).await;
            if w.len > before {
                report.bytes += w.len - before;
                report.peers.insert(src.peer);
                if let Some(a) = authors.as_mut() {
                    a.insert(src.peer);
                }
            }
            match res {
                Ok(()) => {
                    complete = true;
                    break;
                }
                Err(PullError::Holder(e)) => last = format!("{}: {e}", src.peer.short()),
                Err(PullError::Bad(reason, e)) => {
                    last = format!("{}: {e}", src.peer.short());
                    let _ = net.report_misbehaviour(src.peer, reason).await;
                    excluded.insert(src.peer);
                }
                Err(PullError::Fatal(e)) => return Err(e),
            }
        }
        if !complete {
            tokio::time::sleep(ROUND_PAUSE).await;
            continue;
        }
        if w.finish() == file.sha256 {
            w.keep(&target).await?;
            report.seconds = start.elapsed().as_secs_f64();
            return Ok(report);
        }
        tokio::fs::remove_file(&part).await.map_err(io(&part))?;
        last = "the bytes did not match the manifest's sha256".into();
        match authors
            .filter(|a| a.len() == 1)
            .and_then(|a| a.first().copied())
        {
            Some(culprit) => {
                tracing::warn!(file = %file.name, peer = %culprit.short(), "file failed its hash; holder scored down");
                let _ = net.report_misbehaviour(culprit, "bad_file").await;
                excluded.insert(culprit);
                report.rejected.insert(culprit);
            }
            None => {
                tracing::warn!(file = %file.name, "file failed its hash; fetching it again from one holder");
                single = true;
            }
        }
    }
    Err(FetchError::NoSource {
        file: file.name.clone(),
        last,
    })
}

/// Pulls the rest of the file from one holder into `w`.
async fn pull(
    net: &NetworkHandle,
    file: &ModelFile,
    src: &Source,
    w: &mut PartFile,
    pacer: &Pacer,
) -> Result<(), PullError> {
    let peer = src.peer.to_peer_id();
    let mut total: Option<u64> = w.total;
    let mut next = w.len;
    let mut flight = FuturesOrdered::new();
    loop {
        while flight.len() < WINDOW && total.is_none_or(|t| next < t) {
            // Before the size is known, one request at a time.
            if total.is_none() && !flight.is_empty() {
                break;
            }
            pacer.slot(src, CHUNK).await;
            let ask = FileRequest {
                sha256: file.sha256,
                offset: next,
                len: CHUNK,
            };
            let frame = encode(&ask).map_err(|e| PullError::Holder(e.to_string()))?;
            let net = net.clone();
            flight.push_back(async move { net.request(peer, Proto::Layers, frame).await });
            next += u64::from(CHUNK);
        }
        let Some(answer) = flight.next().await else {
            return Ok(());
        };
        let answer = answer.map_err(|e| PullError::Holder(e.to_string()))?;
        let chunk = match FileResponse::decode(&answer) {
            Ok(FileResponse::Chunk(c)) => c,
            // Not held (`WrongModel`) or a read error there: the next holder may do better.
            Ok(FileResponse::Error(e)) => return Err(PullError::Holder(e.message)),
            Err(e) => return Err(PullError::Bad(e.reason(), e.to_string())),
        };
        if chunk.sha256 != file.sha256
            || chunk.offset != w.len
            || total.is_some_and(|t| t != chunk.total)
            || (chunk.data.is_empty() && chunk.offset < chunk.total)
        {
            return Err(PullError::Bad(
                "bad_file_chunk",
                format!(
                    "chunk at {} of {} does not continue the file at {}",
                    chunk.offset, chunk.total, w.len
                ),
            ));
        }
        if total.is_none() {
            let need = chunk.total.saturating_sub(w.len);
            let free = free_bytes(&w.dir).map_err(|e| PullError::Fatal(io(&w.dir)(e)))?;
            if need.saturating_add(DISK_RESERVE) > free {
                return Err(PullError::Fatal(FetchError::Space {
                    file: file.name.clone(),
                    need,
                    free,
                }));
            }
            total = Some(chunk.total);
            w.total = total;
        }
        w.append(&chunk.data).await.map_err(PullError::Fatal)?;
        // Requests are only sent for bytes below the size, so nothing is in flight then.
        if total.is_some_and(|t| w.len >= t) {
            return Ok(());
        }
    }
}

/// A `.part` file being written in order, with the running hash of its bytes.
struct PartFile {
    path: PathBuf,
    dir: PathBuf,
    file: tokio::fs::File,
    hash: Sha256,
    len: u64,
    total: Option<u64>,
}

impl PartFile {
    /// Opens (or creates) the `.part` file and hashes what it already holds.
    async fn open(path: &Path) -> Result<Self, FetchError> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .await
            .map_err(io(path))?;
        let mut hash = Sha256::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await.map_err(io(path))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            len += n as u64;
        }
        Ok(PartFile {
            path: path.to_path_buf(),
            dir: path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            file,
            hash,
            len,
            total: None,
        })
    }

    async fn append(&mut self, data: &[u8]) -> Result<(), FetchError> {
        self.file.write_all(data).await.map_err(io(&self.path))?;
        self.hash.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// The sha256 of the bytes written.
    fn finish(&mut self) -> [u8; 32] {
        std::mem::take(&mut self.hash).finalize().into()
    }

    /// Syncs the file and gives it its final name.
    async fn keep(self, target: &Path) -> Result<(), FetchError> {
        self.file.sync_all().await.map_err(io(&self.path))?;
        drop(self.file);
        tokio::fs::rename(&self.path, target)
            .await
            .map_err(io(target))
    }
}

/// `<name>.part` beside `target`.
pub fn part_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    target.with_file_name(name)
}

/// Fetches every file of `files` into `dir`, [`CONCURRENT_FILES`] at a time; file `k` asks
/// its holders (from `sources_of`) starting at the `k`-th, so files spread over the holders.
pub async fn fetch_all(
    net: &NetworkHandle,
    dir: &Path,
    files: &[ModelFile],
    sources_of: impl Fn(&ModelFile) -> Vec<Source>,
) -> Result<FetchReport, FetchError> {
    let start = Instant::now();
    let pacer = Pacer::default();
    let pacer = &pacer;
    let jobs: Vec<_> = files
        .iter()
        .cloned()
        .enumerate()
        .map(|(k, f)| {
            let mut sources = sources_of(&f);
            if !sources.is_empty() {
                let n = sources.len();
                sources.rotate_left(k % n);
            }
            async move { fetch_file(net, dir, &f, &sources, pacer).await }
        })
        .collect();
    let mut results = futures::stream::iter(jobs).buffer_unordered(CONCURRENT_FILES);
    let mut report = FetchReport::default();
    while let Some(r) = results.next().await {
        report.add(r?);
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
