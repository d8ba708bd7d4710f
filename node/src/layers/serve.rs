//! The file server of `/shoal/layers/1`: answers [`FileRequest`]s for files this node holds
//! (by sha256, from the shared [`FileIndex`]) with [`FileChunk`]s read from disk, at most
//! [`MAX_FILE_CHUNK`] bytes each, a few reads at a time. A file it does not hold is answered
//! with `WrongModel`; a malformed request costs the sender score. The server never hashes what
//! it sends: the fetcher checks the whole file.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use shoal_protocol::{
    ErrorCode, ErrorReply, FileChunk, FileRequest, FileResponse, MAX_FILE_CHUNK, decode,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::swarm::{InboundRequest, NetworkHandle};

/// Chunk reads served at once.
const SERVE_CONCURRENCY: usize = 4;

/// Held files by sha256, shared by the server and the fetcher (which adds what it verified).
#[derive(Debug, Clone, Default)]
pub struct FileIndex(Arc<RwLock<HashMap<[u8; 32], PathBuf>>>);

impl FileIndex {
    /// An index holding `files`.
    pub fn new(files: HashMap<[u8; 32], PathBuf>) -> Self {
        FileIndex(Arc::new(RwLock::new(files)))
    }

    /// Adds a verified file.
    pub fn insert(&self, sha256: [u8; 32], path: PathBuf) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sha256, path);
    }

    /// Where the file with this hash is, if held.
    pub fn get(&self, sha256: &[u8; 32]) -> Option<PathBuf> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(sha256)
            .cloned()
    }
}

/// Serves `/shoal/layers/1` until `cancel` fires.
pub async fn serve(
    mut rx: mpsc::Receiver<InboundRequest>,
    index: FileIndex,
    net: NetworkHandle,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(SERVE_CONCURRENCY));
    loop {
        let req = tokio::select! {
            _ = cancel.cancelled() => return,
            req = rx.recv() => match req { Some(r) => r, None => return },
        };
        let ask = match decode::<FileRequest>(&req.data) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(peer = %req.peer, error = %e, "bad file request");
                let _ = net.penalise(req.peer, e.reason()).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let path = index.get(&ask.sha256);
        tokio::spawn(async move {
            let answer = match path {
                Some(p) => read_chunk(&p, &ask)
                    .await
                    .unwrap_or_else(|e| error(format!("reading {}: {e}", hex::encode(ask.sha256)))),
                None => FileResponse::Error(ErrorReply {
                    session: None,
                    code: ErrorCode::WrongModel,
                    message: format!("file {} not held", hex::encode(ask.sha256)),
                }),
            };
            match answer.encode() {
                Ok(frame) => req.respond(frame),
                Err(e) => tracing::warn!(error = %e, "cannot encode a file answer"),
            }
            drop(permit);
        });
    }
}

fn error(message: String) -> FileResponse {
    FileResponse::Error(ErrorReply {
        session: None,
        code: ErrorCode::Internal,
        message,
    })
}

async fn read_chunk(path: &std::path::Path, ask: &FileRequest) -> std::io::Result<FileResponse> {
    let mut f = tokio::fs::File::open(path).await?;
    let total = f.metadata().await?.len();
    let offset = ask.offset.min(total);
    let len = (ask.len as usize)
        .min(MAX_FILE_CHUNK)
        .min((total - offset) as usize);
    f.seek(SeekFrom::Start(offset)).await?;
    let mut data = vec![0u8; len];
    f.read_exact(&mut data).await?;
    Ok(FileResponse::Chunk(FileChunk {
        sha256: ask.sha256,
        offset,
        total,
        data,
    }))
}
