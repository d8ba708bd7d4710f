//! The pipeline executor: a prompt enters at any node (the origin), flows through the stages
//! of the current signed plan as signed activations, and the tokens come back to the origin.
//!
//! - [`ordering`]: the pure acceptance rule for inbound activations and returned tokens.
//! - [`runtime`]: the model runtime actor (one thread owns the ONNX sessions).
//! - [`stage`]: serves `/shoal/activation/1`: check, compute, pass on, relay the answer.
//! - [`origin`]: runs a generation, samples, fails over to a new plan and replays.
//! - [`speculate`]: speculative decoding's drafter, acceptance rules and adaptive draft length;
//!   `draft` runs a draft model on the origin.
//! - [`wire`]: tensors and response frames.
//! - [`chat`]: prompts from OpenAI-style messages with the model's chat template.
//! - [`net`]: what the pipeline needs of the network ([`net::Network`], defined here).
//! - [`inbound`]: decodes and verifies inbound frames before the stage server sees them.
//! - [`metrics`]: the pipeline's counters and their Prometheus text.
//!
//! [`Pipeline::start`] takes its parts ([`PipelineParts`]: the identity, a [`net::Net`], the
//! node's view channel, the raw inbound frames) from the composition root (`start.rs`); it
//! knows no node or swarm type. One server task reads the inbound traffic and the view (plan
//! changes load the new layer range), request tasks are bounded by a semaphore, and
//! [`PipelineHandle::generate`] is what the HTTP API and the `/shoal/generate/1` server call.

pub mod chat;
mod draft;
pub mod inbound;
pub mod metrics;
pub mod net;
pub mod ordering;
pub mod origin;
pub mod runtime;
pub mod speculate;
pub mod stage;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_keys::Identity;
use shoal_model::{Manifest, RuntimeConfig, SamplingConfig, Tokenizer};
use shoal_protocol::{ErrorCode, GenerateRequest, GenerateResponse, GenerateResult, Sampling};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use crate::config::PipelineConfig as Options;
use crate::view::View;
use inbound::Inbound;
use metrics::{HopRtt, Metrics};
use net::Net;
pub use origin::{GenerateParams, Generated, MAX_TOP_LOGPROBS, SpecStats, TokenLogprobs};
pub use speculate::DrafterKind;
use stage::StageCtx;

/// Why a generation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    /// The request is unusable.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No plan arrived in time.
    #[error("no plan is in force; is the swarm formed and does a node hold the model?")]
    NoPlan,
    /// Too many generations at once.
    #[error("busy: too many generations in flight")]
    Busy,
    /// This node cannot tokenize (no model or no tokenizer).
    #[error("{0}")]
    NoTokenizer(String),
    /// The pipeline failed and the retries ran out.
    #[error("generation failed after {attempts} retries: {last}")]
    Failed {
        /// Retries made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

impl GenerateError {
    /// The wire error code of this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            GenerateError::BadRequest(_) => ErrorCode::BadRequest,
            GenerateError::NoPlan => ErrorCode::NoPlan,
            GenerateError::Busy => ErrorCode::Busy,
            GenerateError::NoTokenizer(_) => ErrorCode::WrongModel,
            GenerateError::Failed { .. } => ErrorCode::StageFailed,
        }
    }
}

/// Errors of starting the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The model could not be read.
    #[error("model: {0}")]
    Model(#[from] shoal_model::Error),
}

/// The model as the origin uses it.
pub(crate) struct LoadedModel {
    pub(crate) manifest: Manifest,
    pub(crate) tokenizer: Option<Tokenizer>,
}

struct Inner {
    me: shoal_keys::NodeId,
    view: watch::Receiver<Arc<View>>,
    origin: origin::Origin,
    metrics: Arc<Metrics>,
    model: Option<LoadedModel>,
    generations: Semaphore,
}

/// A cloneable handle to a node's pipeline.
#[derive(Clone)]
pub struct PipelineHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PipelineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineHandle")
            .field("node", &self.inner.me.short())
            .finish()
    }
}

/// Everything the pipeline is built from; `R` is the network's inbound request type.
pub struct PipelineParts<R> {
    /// The node's identity (activations are signed with it).
    pub identity: Arc<Identity>,
    /// The network.
    pub net: Net,
    /// The node's view: the plan in force and the members.
    pub view: watch::Receiver<Arc<View>>,
    /// The model directory, when the node holds one.
    pub model_dir: Option<PathBuf>,
    /// The model runtime's settings.
    pub runtime: RuntimeConfig,
    /// Timeouts and bounds.
    pub options: Options,
    /// Raw frames of `/shoal/activation/1`.
    pub activation: mpsc::Receiver<R>,
    /// Raw frames of `/shoal/generate/1`.
    pub generate: mpsc::Receiver<R>,
    /// Stops the pipeline (and its model thread).
    pub cancel: CancellationToken,
    /// Where the origin reports speculative decoding's measured figures (the node announces
    /// them); `None`: kept to itself.
    pub speculation: Option<SpecReporter>,
    /// Where the model thread reports its decode steps (the node's throttling watch); `None`:
    /// not watched.
    pub speed: Option<Arc<crate::power::SpeedWatch>>,
}

/// The channel of speculative decoding's measured figures.
pub type SpecReporter = Arc<watch::Sender<Option<shoal_protocol::SpecFigures>>>;

/// Starts pipelines.
#[derive(Debug)]
pub struct Pipeline;

impl Pipeline {
    /// Starts the pipeline: decodes its inbound traffic, starts the runtime thread when the
    /// node holds a model, and serves until `parts.cancel` fires.
    pub fn start<R: net::Request>(
        parts: PipelineParts<R>,
    ) -> Result<PipelineHandle, PipelineError> {
        let PipelineParts {
            identity,
            net,
            view,
            model_dir,
            runtime,
            options,
            activation,
            generate,
            cancel,
            speculation,
            speed,
        } = parts;
        let metrics = Arc::new(Metrics::default());
        let activation = inbound::spawn_decoder(
            activation,
            inbound::decode_pipeline,
            net.clone(),
            metrics.clone(),
            cancel.clone(),
        );
        let generate = inbound::spawn_decoder(
            generate,
            inbound::decode_generate,
            net.clone(),
            metrics.clone(),
            cancel.clone(),
        );
        let draft_config = runtime.clone();
        let (model, runtime) = match model_dir {
            Some(dir) => {
                let (model, runtime) =
                    load_model(dir, runtime, options.max_batch, speed, cancel.clone())?;
                (Some(model), Some(runtime))
            }
            None => (None, None),
        };
        let draft_model = match (&options.draft_model, &model) {
            (Some(dir), Some(m)) => Some(Arc::new(draft::DraftModel::start(
                dir,
                draft_config,
                m.manifest.dims.vocab,
                options.max_batch,
                cancel.clone(),
            )?)),
            _ => None,
        };
        let stage = Arc::new(StageCtx::new(
            identity.clone(),
            net.clone(),
            runtime,
            metrics.clone(),
            Duration::from_millis(options.hop_timeout_ms),
        ));
        let origin = origin::Origin {
            identity: identity.clone(),
            net,
            view: view.clone(),
            stage: stage.clone(),
            metrics: metrics.clone(),
            options: options.clone(),
            draft_model,
            spec_report: speculation.map(|tx| Arc::new(origin::SpecReport::new(tx))),
        };
        let handle = PipelineHandle {
            inner: Arc::new(Inner {
                me: identity.node_id(),
                view,
                origin,
                metrics,
                model,
                generations: Semaphore::new(options.max_generations),
            }),
        };
        let inbound = Traffic {
            activation,
            generate,
        };
        tokio::spawn(serve(
            handle.clone(),
            stage,
            inbound,
            options.max_inbound,
            cancel,
        ));
        Ok(handle)
    }
}

/// The decoded inbound traffic the server task reads.
struct Traffic {
    activation: mpsc::Receiver<Inbound<shoal_protocol::PipelineMessage>>,
    generate: mpsc::Receiver<Inbound<GenerateRequest>>,
}

fn load_model(
    dir: PathBuf,
    config: RuntimeConfig,
    max_batch: usize,
    speed: Option<Arc<crate::power::SpeedWatch>>,
    cancel: CancellationToken,
) -> Result<(LoadedModel, runtime::RuntimeHandle), PipelineError> {
    let manifest = Manifest::load(&dir)?;
    let tokenizer = Tokenizer::load(&dir, &manifest)?;
    let runtime =
        runtime::RuntimeHandle::spawn(dir, manifest.clone(), config, max_batch, speed, cancel);
    Ok((
        LoadedModel {
            manifest,
            tokenizer,
        },
        runtime,
    ))
}

/// The server task: plan changes and inbound requests, until the node stops.
async fn serve(
    handle: PipelineHandle,
    stage: Arc<StageCtx>,
    inbound: Traffic,
    max_inbound: usize,
    cancel: CancellationToken,
) {
    let mut view = handle.inner.view.clone();
    let permits = Arc::new(Semaphore::new(max_inbound));
    let Traffic {
        mut activation,
        mut generate,
    } = inbound;
    let current = view.borrow_and_update().clone();
    stage.on_view(&current).await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = view.changed() => match r {
                Ok(()) => { let v = view.borrow_and_update().clone(); stage.on_view(&v).await }
                Err(_) => break,
            },
            Some(req) = activation.recv() => on_activation(&stage, &permits, req),
            Some(req) = generate.recv() => on_generate(&handle, req),
        }
    }
}

fn on_activation(
    stage: &Arc<StageCtx>,
    permits: &Arc<Semaphore>,
    req: Inbound<shoal_protocol::PipelineMessage>,
) {
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        let session = Some(req.msg.epoch_session().1);
        req.respond(wire::error_frame(session, ErrorCode::Busy, "stage busy"));
        return;
    };
    let stage = stage.clone();
    tokio::spawn(async move {
        let frame = stage.handle(req.peer, &req.msg).await;
        req.respond(frame);
        drop(permit);
    });
}

/// Serves a `/shoal/generate/1` request: this node becomes the origin.
fn on_generate(handle: &PipelineHandle, req: Inbound<GenerateRequest>) {
    let handle = handle.clone();
    tokio::spawn(async move {
        let r = &req.msg;
        let params = GenerateParams {
            prompt: r.prompt.clone(),
            max_tokens: r.max_tokens as usize,
            sampling: sampling_config(&r.sampling),
            stop: r.stop.clone(),
            logprobs: None,
            drafter: None,
        };
        let session = r.session;
        let answer = match handle.generate(&params, None).await {
            Ok(g) => GenerateResponse::Done(GenerateResult {
                session,
                text: handle.decode(&g.tokens).unwrap_or_default(),
                finish: g.finish,
                prompt_tokens: u32::try_from(params.prompt.len()).unwrap_or(u32::MAX),
                elapsed_s: g.elapsed.as_secs_f64(),
                tokens: g.tokens,
            }),
            Err(e) => GenerateResponse::Error(shoal_protocol::ErrorReply {
                session: Some(session),
                code: e.code(),
                message: e.to_string(),
            }),
        };
        req.respond(answer.encode().unwrap_or_default());
    });
}

impl PipelineHandle {
    /// Runs a generation with this node as the origin; new tokens also go to `stream`.
    pub async fn generate(
        &self,
        params: &GenerateParams,
        stream: Option<&mpsc::Sender<u32>>,
    ) -> Result<Generated, GenerateError> {
        let Ok(_permit) = self.inner.generations.try_acquire() else {
            return Err(GenerateError::Busy);
        };
        let params = self.validate(params)?;
        self.inner.origin.generate(&params, stream).await
    }

    /// [`validate`] against this node's model (without one, only the model-free checks).
    pub fn validate(&self, params: &GenerateParams) -> Result<GenerateParams, GenerateError> {
        let (vocab, context) = self
            .inner
            .model
            .as_ref()
            .map_or((usize::MAX, usize::MAX), |m| {
                (m.manifest.dims.vocab, m.manifest.dims.max_position)
            });
        validate(params, vocab, context)
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The model's name, if this node holds one.
    pub fn model_name(&self) -> Option<String> {
        self.inner.model.as_ref().map(|m| m.manifest.name.clone())
    }

    /// The model's end-of-sequence token ids (empty without a model).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.inner
            .model
            .as_ref()
            .map(|m| m.manifest.eos_token_ids.clone())
            .unwrap_or_default()
    }

    fn tokenizer(&self) -> Result<&Tokenizer, GenerateError> {
        let model = self.inner.model.as_ref().ok_or_else(|| {
            GenerateError::NoTokenizer(
                "this node holds no model; send token ids or ask a node with the model".into(),
            )
        })?;
        model.tokenizer.as_ref().ok_or_else(|| {
            GenerateError::NoTokenizer("the model has no tokenizer; send token ids".into())
        })
    }

    /// Token ids of a text prompt.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GenerateError> {
        self.tokenizer()?
            .encode(text)
            .map_err(|e| GenerateError::BadRequest(e.to_string()))
    }

    /// Text of token ids.
    pub fn decode(&self, ids: &[u32]) -> Result<String, GenerateError> {
        self.tokenizer()?
            .decode(ids)
            .map_err(|e| GenerateError::BadRequest(e.to_string()))
    }

    /// Token ids of chat `messages` under the model's chat template.
    pub fn chat_prompt(&self, messages: &[chat::Message]) -> Result<Vec<u32>, GenerateError> {
        chat::prompt_ids(self.tokenizer()?, messages)
            .map_err(|e| GenerateError::BadRequest(e.to_string()))
    }

    /// The Prometheus text of this node's metrics.
    pub fn render_metrics(&self) -> String {
        let view = self.inner.view.borrow().clone();
        self.inner.metrics.render(view.epoch(), &hop_rtts(&view))
    }
}

/// Ping round trips of the hops between consecutive stages of the plan, from the view.
fn hop_rtts(view: &View) -> Vec<HopRtt> {
    let Some(plan) = view.plan() else {
        return Vec::new();
    };
    plan.stages
        .windows(2)
        .filter_map(|w| {
            let (a, b) = (w[0].node, w[1].node);
            let l = view.links.iter().find(|l| l.from == a && l.to == b)?;
            Some(HopRtt {
                from: a.short(),
                to: b.short(),
                rtt_s: l.metrics.rtt_s,
            })
        })
        .collect()
}

/// Checks a request before it reaches the pipeline (docs/pipeline.md, "Failure classes"):
/// a non-empty prompt of token ids below `vocab`, shorter than the `context`, at least one
/// token to generate, sampling settings in range. `max_tokens` beyond what the context has
/// left is clamped to it (the answer then ends with `length`).
pub fn validate(
    params: &GenerateParams,
    vocab: usize,
    context: usize,
) -> Result<GenerateParams, GenerateError> {
    let bad = |m: String| Err(GenerateError::BadRequest(m));
    if params.prompt.is_empty() {
        return bad("the prompt is empty".into());
    }
    if params.max_tokens == 0 {
        return bad("max_tokens must be at least 1".into());
    }
    if let Some(t) = params.prompt.iter().find(|t| **t as usize >= vocab) {
        return bad(format!(
            "token id {t} is outside the vocabulary (0..{vocab})"
        ));
    }
    if params.prompt.len() >= context {
        return bad(format!(
            "the prompt has {} tokens; the model's context holds {context}",
            params.prompt.len()
        ));
    }
    let s = &params.sampling;
    if !(s.temperature.is_finite() && (0.0..=100.0).contains(&s.temperature)) {
        return bad(format!(
            "temperature must be in [0, 100], got {}",
            s.temperature
        ));
    }
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        return bad(format!("top_p must be in (0, 1], got {}", s.top_p));
    }
    let mut out = params.clone();
    out.max_tokens = params.max_tokens.min(context - params.prompt.len());
    Ok(out)
}

/// The model crate's sampling settings for the wire's.
pub fn sampling_config(s: &Sampling) -> SamplingConfig {
    SamplingConfig {
        temperature: s.temperature,
        top_k: s.top_k as usize,
        top_p: s.top_p,
        seed: s.seed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(prompt: Vec<u32>, max_tokens: usize) -> GenerateParams {
        GenerateParams {
            prompt,
            max_tokens,
            sampling: SamplingConfig::default(),
            stop: Vec::new(),
            logprobs: None,
            drafter: None,
        }
    }

    #[test]
    fn requests_outside_the_model_are_refused_before_the_pipeline() {
        let refused = |p: GenerateParams| match validate(&p, 100, 16) {
            Err(GenerateError::BadRequest(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(refused(params(vec![999_999_999], 2)).contains("outside the vocabulary"));
        assert!(refused(params(vec![], 2)).contains("empty"));
        assert!(refused(params(vec![1], 0)).contains("max_tokens"));
        assert!(refused(params(vec![1; 16], 1)).contains("context holds 16"));
        let mut hot = params(vec![1], 1);
        hot.sampling.temperature = f32::NAN;
        assert!(refused(hot).contains("temperature"));
        let mut p = params(vec![1], 1);
        p.sampling.top_p = 0.0;
        assert!(refused(p).contains("top_p"));
    }

    #[test]
    fn max_tokens_past_the_context_is_clamped() {
        let ok = validate(&params(vec![1, 2, 3], 1_000_000), 100, 16).unwrap();
        assert_eq!(ok.max_tokens, 13);
        let ok = validate(&params(vec![99], 4), 100, 16).unwrap();
        assert_eq!(ok.max_tokens, 4);
    }
}
