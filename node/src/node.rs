//! `Node::start`: wires the swarm, the prober, the store, the membership table, the
//! coordinator and the HTTP API together, and returns a [`NodeHandle`].
//!
//! Data flow: the swarm task emits [`NetEvent`]s to the node task (`node/task.rs`), which
//! decodes and checks gossip (`node/gossip.rs`), feeds the membership table and the link
//! estimators, and, when it is the coordinator of the next epoch and a trigger fires, builds a
//! planner scenario (`node/scenario.rs`) and solves it on a blocking thread (`node/coord.rs`).
//! Every change is published as a new [`View`] on a `watch` channel: the API, `shoal status` and
//! the pipeline read the current plan and members from there. Everything stops when the
//! cancellation token fires.

mod coord;
mod gossip;
mod inbound;
pub mod model;
mod scenario;
mod task;
mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::{Multiaddr, multiaddr::Protocol};
use shoal_keys::{Identity, NodeId};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use shoal_protocol::{GenerateRequest, PipelineMessage};

use crate::swarm::NetworkHandle;

pub use inbound::Inbound;
pub use model::ModelInfo;
pub use view::{LinkView, MemberView, View};

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
    /// The pipeline could not start.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
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

/// The inbound pipeline traffic, decoded and verified, taken once by the pipeline.
#[derive(Debug)]
pub struct PipelineInbound {
    /// Messages on `/shoal/activation/1` (signatures already verified).
    pub activation: mpsc::Receiver<Inbound<PipelineMessage>>,
    /// Requests on `/shoal/generate/1`.
    pub generate: mpsc::Receiver<Inbound<GenerateRequest>>,
}

/// A running node: cheap to clone, every clone controls the same node.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    identity: Arc<Identity>,
    net: NetworkHandle,
    view: watch::Receiver<Arc<View>>,
    inbound: Arc<Mutex<Option<PipelineInbound>>>,
    listen: Vec<Multiaddr>,
    api: Option<SocketAddr>,
    model: Option<Arc<ModelInfo>>,
    config: Arc<Config>,
    cancel: CancellationToken,
    /// Pipeline counters (shared with the inbound decoders, which count refusals).
    metrics: Arc<crate::metrics::Metrics>,
    /// The pipeline, set once right after the node starts.
    pipeline: Arc<std::sync::OnceLock<crate::pipeline::PipelineHandle>>,
}

/// Starts nodes.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Loads (or creates) the identity in `config.key_file` and starts the node.
    pub async fn start(config: Config, cancel: CancellationToken) -> Result<NodeHandle, NodeError> {
        let identity = Identity::load_or_create(&config.key_file)?;
        Self::start_with_identity(config, identity, cancel).await
    }

    /// Starts the node with a given identity (in-process tests use fixed seeds).
    pub async fn start_with_identity(
        config: Config,
        identity: Identity,
        cancel: CancellationToken,
    ) -> Result<NodeHandle, NodeError> {
        task::start(config, identity, cancel).await
    }
}

impl NodeHandle {
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

    /// Takes the inbound activation and generate requests; `None` after the first call.
    pub fn take_pipeline_inbound(&self) -> Option<PipelineInbound> {
        self.inbound.lock().ok().and_then(|mut g| g.take())
    }

    /// Listen addresses, each ending in `/p2p/<node id>` (usable as bootstrap addresses).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen
    }

    /// The HTTP API's bound address, when the API runs.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api
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

    /// The node's pipeline (generation as origin, stage serving).
    pub fn pipeline(&self) -> Option<crate::pipeline::PipelineHandle> {
        self.pipeline.get().cloned()
    }

    /// The node's pipeline metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
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
