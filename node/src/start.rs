//! The composition root: [`Node::start`] builds a whole node from its parts and wires them.
//!
//! 1. loads the API keys and binds the HTTP API's listener (when configured), so a bad key
//!    file, an API exposed without keys, or a taken port fails before anything runs;
//! 2. starts the node ([`crate::node::start`]: swarm, probes, membership, coordinator), which
//!    hands back its [`NodeHandle`] and the swarm's raw pipeline traffic;
//! 3. starts the pipeline from the handle's parts, giving it the swarm through
//!    [`SwarmNet`], an implementation of the pipeline's own [`Network`] trait;
//! 4. serves the API with both handles.
//!
//! This is the only module that knows every other one; no module imports it but the binary
//! and the tests.

use std::net::SocketAddr;

use futures::FutureExt;
use futures::future::BoxFuture;
use libp2p::PeerId;
use shoal_keys::{Identity, NodeId};
use tokio_util::sync::CancellationToken;

use crate::api::auth::{ApiKeys, check_exposure};
use crate::config::Config;
use crate::node::{NodeError, NodeHandle};
use crate::pipeline::net::{Net, Network, Request, SendError};
use crate::pipeline::{Pipeline, PipelineError, PipelineHandle, PipelineParts};
use crate::swarm::{InboundRequest, NetworkHandle};

/// Errors of starting a node.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node (identity, store, swarm, probes) could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The pipeline could not start.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The API keys could not be loaded, or the API would be exposed without them.
    #[error(transparent)]
    ApiKeys(#[from] crate::api::auth::KeyError),
    /// The API's listener could not be opened.
    #[error("api listener {addr}: {source}")]
    Api {
        /// The configured address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Starts whole nodes.
#[derive(Debug)]
pub struct Node;

/// A running node with its pipeline and API. Derefs to its [`NodeHandle`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Running {
    node: NodeHandle,
    pipeline: PipelineHandle,
    api: Option<SocketAddr>,
}

impl std::ops::Deref for Running {
    type Target = NodeHandle;

    fn deref(&self) -> &NodeHandle {
        &self.node
    }
}

impl Running {
    /// The node (swarm, view, identity).
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// The node's pipeline (generation as origin, stage serving).
    pub fn pipeline(&self) -> &PipelineHandle {
        &self.pipeline
    }

    /// The HTTP API's bound address, when the API runs.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api
    }
}

impl Node {
    /// Loads (or creates) the identity in `config.key_file` and starts the node.
    pub async fn start(config: Config, cancel: CancellationToken) -> Result<Running, StartError> {
        let identity = Identity::load_or_create(&config.key_file).map_err(NodeError::from)?;
        Self::start_with_identity(config, identity, cancel).await
    }

    /// Starts the node with a given identity (in-process tests use fixed seeds).
    pub async fn start_with_identity(
        config: Config,
        identity: Identity,
        cancel: CancellationToken,
    ) -> Result<Running, StartError> {
        // Keys checked and the port bound first, so a bad key file, an API exposed without
        // keys or a taken port fails before anything runs.
        let keys = ApiKeys::load(&config.api_keys.0, config.api_key_file.as_deref())?;
        let listener = match config.api {
            Some(addr) => {
                check_exposure(addr, &keys, config.api_insecure)?;
                let api = |source| StartError::Api { addr, source };
                let l = tokio::net::TcpListener::bind(addr).await.map_err(api)?;
                let bound = l.local_addr().map_err(api)?;
                Some((l, bound))
            }
            None => None,
        };
        let api = listener.as_ref().map(|(_, bound)| *bound);
        let (node, streams) = crate::node::start(config, identity, cancel.clone()).await?;
        let pipeline = Pipeline::start(PipelineParts {
            identity: node.identity(),
            net: Net::new(SwarmNet(node.net().clone())),
            view: node.view(),
            model_dir: node.model_dir(),
            runtime: node.config().runtime(),
            options: node.config().pipeline.clone(),
            activation: streams.activation,
            generate: streams.generate,
            cancel: cancel.clone(),
            speculation: Some(node.speculation_reporter()),
            speed: Some(node.speed_watch()),
        });
        let pipeline = match pipeline {
            Ok(p) => p,
            Err(e) => {
                // The node's tasks are running: stop them with the failed start.
                cancel.cancel();
                return Err(e.into());
            }
        };
        if let Some((listener, _)) = listener {
            let router = crate::api::router(&node, Some(pipeline.clone()), keys);
            tokio::spawn(crate::api::serve(listener, router, cancel));
        }
        Ok(Running {
            node,
            pipeline,
            api,
        })
    }
}

/// The swarm as the pipeline's [`Network`].
struct SwarmNet(NetworkHandle);

impl Network for SwarmNet {
    fn send_activation(
        &self,
        peer: NodeId,
        frame: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, SendError>> {
        let net = self.0.clone();
        async move {
            net.send_activation(peer, frame)
                .await
                .map_err(|e| SendError(e.to_string()))
        }
        .boxed()
    }

    fn report_misbehaviour(&self, peer: NodeId, reason: &'static str) -> BoxFuture<'static, ()> {
        let net = self.0.clone();
        // The swarm task has stopped only when the node stops: nothing to report then.
        async move {
            let _ = net.report_misbehaviour(peer, reason).await;
        }
        .boxed()
    }

    fn penalise(&self, peer: PeerId, reason: &'static str) -> BoxFuture<'static, ()> {
        let net = self.0.clone();
        async move {
            let _ = net.penalise(peer, reason).await;
        }
        .boxed()
    }
}

impl Request for InboundRequest {
    fn peer(&self) -> PeerId {
        self.peer
    }

    fn data(&self) -> &[u8] {
        &self.data
    }

    fn respond(self, frame: Vec<u8>) {
        InboundRequest::respond(self, frame);
    }
}
