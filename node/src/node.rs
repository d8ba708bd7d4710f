//! [`start`]: starts the swarm, the prober, the store, the membership table and the
//! coordinator, and returns a [`NodeHandle`] and the swarm's pipeline traffic
//! ([`PipelineStreams`]) for whoever serves it. This module knows nothing of the pipeline or
//! the HTTP API; the composition root (`start.rs`) wires them to the handle.
//!
//! Data flow: the swarm task emits [`crate::swarm::NetEvent`]s to the node task
//! (`node/task.rs`), which checks gossip (`node/gossip.rs`), feeds the membership table and the
//! link estimators, and, when it is the coordinator of the next epoch and a trigger fires,
//! builds a planner scenario (`node/scenario.rs`) and solves it on a blocking thread
//! (`node/coord.rs`). The task's state is `node/state.rs`. Every change is published as a new
//! [`View`] on a `watch` channel: the API, `shoal status` and the pipeline read the current
//! plan and members from there. Everything stops when the cancellation token fires.

mod coord;
mod gossip;
pub mod model;
mod scenario;
mod state;
mod task;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, multiaddr::Protocol};
use shoal_keys::{Identity, NodeId};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::swarm::{InboundRequest, NetworkHandle};
use crate::view::View;

pub use model::ModelInfo;
pub use task::start;

/// How long `start` waits for the swarm to report its listen addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// Errors of starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The identity could not be loaded or created.
    #[error(transparent)]
    Key(#[from] shoal_keys::KeyError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The model could not be read.
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// The swarm could not start.
    #[error(transparent)]
    Swarm(#[from] crate::swarm::SwarmError),
    /// A config value is unusable.
    #[error("config: {0}")]
    Config(String),
    /// A socket could not be opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being opened.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// The swarm's raw pipeline traffic, taken by the pipeline (which decodes and verifies it).
#[derive(Debug)]
pub struct PipelineStreams {
    /// Frames on `/shoal/activation/1`.
    pub activation: mpsc::Receiver<InboundRequest>,
    /// Requests on `/shoal/generate/1`.
    pub generate: mpsc::Receiver<InboundRequest>,
}

/// A running node: cheap to clone, every clone controls the same node.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    identity: Arc<Identity>,
    net: NetworkHandle,
    view: watch::Receiver<Arc<View>>,
    listen: Vec<Multiaddr>,
    model: Option<Arc<ModelInfo>>,
    config: Arc<Config>,
    cancel: CancellationToken,
    speculation: Arc<watch::Sender<Option<shoal_protocol::SpecFigures>>>,
    fetch: watch::Receiver<Option<crate::layers::follow::FetchStatus>>,
    speed: Arc<crate::power::SpeedWatch>,
}

impl NodeHandle {
    /// Where the pipeline reports speculative decoding's measured figures; the node announces
    /// them in its capability, and coordinators plan with them.
    pub fn speculation_reporter(&self) -> Arc<watch::Sender<Option<shoal_protocol::SpecFigures>>> {
        self.speculation.clone()
    }

    /// The watch the model thread reports its decode steps to; the node announces the
    /// throttling it finds.
    pub fn speed_watch(&self) -> Arc<crate::power::SpeedWatch> {
        self.speed.clone()
    }

    /// The last fetch of layers from the swarm, if any.
    pub fn fetch_status(&self) -> Option<crate::layers::follow::FetchStatus> {
        self.fetch.borrow().clone()
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// The node's identity (the pipeline signs activations with it).
    pub fn identity(&self) -> Arc<Identity> {
        self.identity.clone()
    }

    /// The network handle (requests, publishing, scores, misbehaviour reports).
    pub fn net(&self) -> &NetworkHandle {
        &self.net
    }

    /// A receiver of the current [`View`] (plan, members, links); it changes on every update.
    pub fn view(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }

    /// The current view.
    pub fn snapshot(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// Listen addresses, each ending in `/p2p/<node id>` (usable as bootstrap addresses).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen
    }

    /// The model this node holds, if any.
    pub fn model(&self) -> Option<Arc<ModelInfo>> {
        self.model.clone()
    }

    /// The model directory from the config.
    pub fn model_dir(&self) -> Option<PathBuf> {
        self.config.model.clone()
    }

    /// The config the node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The token that stops the node; child tokens of it stop with it.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops the node.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// Waits until the view satisfies `pred` or `timeout` passes; returns the view that did.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&View) -> bool,
    ) -> Option<Arc<View>> {
        let mut rx = self.view.clone();
        let wait = async {
            loop {
                let v = rx.borrow_and_update().clone();
                if pred(&v) {
                    return Some(v);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }
}

/// Appends `/p2p/<id>` unless the address already ends in a peer id.
pub(crate) fn with_peer(addr: &Multiaddr, id: NodeId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(Protocol::P2p(id.to_peer_id())),
    }
}
