//! The node's sled store under `data_dir`: peer addresses and the last accepted plan, so a
//! restarted node re-joins without bootstrap peers and knows the plan it had.
//!
//! The node task owns the [`Store`] (one owner per resource). Every write is flushed before it
//! returns, so what was written survives `kill -9`.
//!
//! Layout: tree `peers` maps a peer id's bytes to its addresses as newline-separated multiaddr
//! text (newest first, at most [`MAX_ADDRS_PER_PEER`]); tree `state` maps `plan` to the encoded
//! `Signed<Plan>` frame exactly as it came off the wire.

use std::path::Path;
use std::str::FromStr;

use libp2p::{Multiaddr, PeerId};

/// Addresses remembered per peer.
pub const MAX_ADDRS_PER_PEER: usize = 8;
/// Peers remembered (the oldest entries beyond this are not pruned, but reads stop here).
pub const MAX_PEERS: usize = 256;

/// How long [`Store::open`] waits for a lock that a just-closed handle still holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
}

/// The sled database and its trees.
#[derive(Debug)]
pub struct Store {
    db: sled::Db,
    peers: sled::Tree,
    state: sled::Tree,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    ///
    /// sled's flusher thread keeps the file lock for a moment after the last handle drops, so
    /// a node restarted right after a clean exit can find the lock still held; the open is
    /// retried for up to [`LOCK_WAIT`] before the error is returned.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::open(dir) {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let peers = db.open_tree("peers")?;
        let state = db.open_tree("state")?;
        Ok(Store { db, peers, state })
    }

    /// Remembers `addrs` of `peer` in front of the ones already known.
    pub fn put_peer_addrs(&self, peer: &PeerId, addrs: &[Multiaddr]) -> Result<(), StoreError> {
        let key = peer.to_bytes();
        let mut list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        if let Some(old) = self.peers.get(&key)? {
            for a in String::from_utf8_lossy(&old).lines() {
                if !list.iter().any(|x| x == a) {
                    list.push(a.to_string());
                }
            }
        }
        list.truncate(MAX_ADDRS_PER_PEER);
        let value = list.join("\n");
        if self.peers.get(&key)?.as_deref() == Some(value.as_bytes()) {
            return Ok(());
        }
        self.peers.insert(key, value.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Every remembered peer with its addresses (unparseable entries are skipped).
    pub fn peers(&self) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.peers.iter().take(MAX_PEERS) {
            let (k, v) = item?;
            let Ok(peer) = PeerId::from_bytes(&k) else {
                continue;
            };
            let addrs = String::from_utf8_lossy(&v)
                .lines()
                .filter_map(|l| Multiaddr::from_str(l).ok())
                .collect();
            out.push((peer, addrs));
        }
        Ok(out)
    }

    /// Stores the encoded last accepted plan.
    pub fn put_plan(&self, frame: &[u8]) -> Result<(), StoreError> {
        self.state.insert("plan", frame)?;
        self.db.flush()?;
        Ok(())
    }

    /// The encoded last accepted plan.
    pub fn plan(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state.get("plan")?.map(|v| v.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_and_plan_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = PeerId::random();
        let a: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let b: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_peer_addrs(&p, std::slice::from_ref(&a)).unwrap();
            s.put_peer_addrs(&p, std::slice::from_ref(&b)).unwrap();
            s.put_plan(b"frame").unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.peers().unwrap(), vec![(p, vec![b, a])]);
        assert_eq!(s.plan().unwrap().as_deref(), Some(&b"frame"[..]));
    }
}
