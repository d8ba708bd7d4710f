//! `shoal generate`: generate text from a model directory in this process, streaming the text
//! to stdout and the speed to stderr (or one JSON object with `--json`).
//!
//! [`GenerateArgs`] holds everything a request needs (prompt, sampling, output format) apart
//! from where it runs: [`run_local`] is the single-process path, `api::run_api` sends the
//! same request to a running node (`--api ADDR`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

mod api;
use clap::{Args, ValueEnum};
use serde::Serialize;
use shoal_model::generate::{GenerateRequest, generate};
use shoal_model::{BackendChoice, Manifest, RuntimeConfig, SamplingConfig, StageRunner, Tokenizer};

/// The prompt: text, or token ids.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct PromptArgs {
    /// Prompt text (needs the model's tokenizer).
    #[arg(long)]
    pub(crate) prompt: Option<String>,
    /// Prompt as comma-separated token ids, e.g. 1,2,3 (BOS not added).
    #[arg(long, value_delimiter = ',')]
    pub(crate) prompt_ids: Option<Vec<u32>>,
}

/// How to choose tokens; greedy unless `--temperature` is given.
#[derive(Debug, Clone, Args)]
pub(crate) struct SamplingArgs {
    /// Always take the most likely token (the default).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k"])]
    pub(crate) greedy: bool,
    /// Sampling temperature (> 0).
    #[arg(long)]
    pub(crate) temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) top_p: f32,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub(crate) top_k: usize,
    /// Seed of the sampling stream.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}

impl SamplingArgs {
    /// The sampler settings these flags describe.
    pub(crate) fn config(&self) -> anyhow::Result<SamplingConfig> {
        match self.temperature {
            None => Ok(SamplingConfig {
                seed: self.seed,
                ..SamplingConfig::greedy()
            }),
            Some(t) if t > 0.0 && self.top_p > 0.0 && self.top_p <= 1.0 => Ok(SamplingConfig {
                temperature: t,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            }),
            Some(t) => bail!(
                "need --temperature > 0 and 0 < --top-p <= 1 (got {t}, {})",
                self.top_p
            ),
        }
    }
}

/// Engine choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendArg {
    /// ONNX Runtime if found, else tract.
    Auto,
    /// ONNX Runtime only.
    Ort,
    /// tract (pure Rust) only.
    Tract,
}

impl From<BackendArg> for BackendChoice {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Ort => BackendChoice::Ort,
            BackendArg::Tract => BackendChoice::Tract,
        }
    }
}

/// `shoal generate` arguments.
#[derive(Debug, Clone, Args)]
pub(crate) struct GenerateArgs {
    /// Model directory (manifest.json and shards).
    #[arg(long, required_unless_present = "api")]
    pub(crate) model: Option<PathBuf>,
    /// Send the request to a running node's HTTP API (`host:port`) instead; the node
    /// tokenizes and generates through the swarm.
    #[arg(long, conflicts_with_all = ["model", "backend", "ort_dylib"])]
    pub(crate) api: Option<String>,
    /// With `--api`: an API key of the node (when it has `api_keys`), sent as a bearer token.
    #[arg(long, env = "SHOAL_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    #[command(flatten)]
    pub(crate) prompt: PromptArgs,
    /// Wrap the text prompt as a user turn in the model's chat template.
    #[arg(long, requires = "prompt", conflicts_with = "api")]
    pub(crate) chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_tokens: usize,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Inference engine.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub(crate) backend: BackendArg,
    /// ONNX Runtime library, if not found by ORT_DYLIB_PATH or the usual places.
    #[arg(long)]
    pub(crate) ort_dylib: Option<PathBuf>,
}

/// The `--json` output.
#[derive(Debug, Serialize)]
pub(crate) struct GenerateOutput {
    /// Generated text (empty without a tokenizer).
    pub(crate) text: String,
    /// Generated token ids.
    pub(crate) token_ids: Vec<u32>,
    /// Prompt token ids as fed to the model.
    pub(crate) prompt_ids: Vec<u32>,
    /// Generated tokens per second, prompt included.
    pub(crate) tokens_per_s: f64,
    /// Decode steps per second, prompt excluded.
    pub(crate) decode_tokens_per_s: f64,
    /// Seconds for the prompt.
    pub(crate) prefill_s: f64,
    /// Engine used.
    pub(crate) backend: String,
}

pub(crate) fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let out = match &args.api {
        Some(addr) => api::run_api(&args, addr)?,
        None => run_local(&args)?,
    };
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        eprintln!(
            "\n{} tokens, {:.1} tokens/s ({:.1} tokens/s decode, prompt {:.0} ms, {})",
            out.token_ids.len(),
            out.tokens_per_s,
            out.decode_tokens_per_s,
            out.prefill_s * 1e3,
            out.backend
        );
    }
    Ok(())
}

/// The prompt's token ids.
pub(crate) fn prompt_ids(
    p: &PromptArgs,
    chat: bool,
    tok: Option<&Tokenizer>,
    dir: &Path,
) -> anyhow::Result<Vec<u32>> {
    match (&p.prompt, &p.prompt_ids, tok) {
        (_, Some(ids), _) => Ok(ids.clone()),
        (Some(text), None, Some(tok)) if chat => Ok(tok.encode_chat(text)?),
        (Some(text), None, Some(tok)) => Ok(tok.encode(text)?),
        (Some(_), None, None) => {
            bail!("{} has no tokenizer: use --prompt-ids", dir.display())
        }
        (None, None, _) => bail!("give --prompt or --prompt-ids"),
    }
}

/// Generates in this process, streaming text to stdout unless `--json`.
pub(crate) fn run_local(args: &GenerateArgs) -> anyhow::Result<GenerateOutput> {
    let dir = args
        .model
        .as_deref()
        .context("give --model DIR or --api ADDR")?;
    let manifest = Manifest::load(dir).with_context(|| format!("loading {}", dir.display()))?;
    let tok = Tokenizer::load(dir, &manifest)?;
    let prompt_ids = prompt_ids(&args.prompt, args.chat, tok.as_ref(), dir)?;
    let config = RuntimeConfig {
        backend: args.backend.into(),
        ort_dylib_path: args.ort_dylib.clone(),
        ..RuntimeConfig::default()
    };
    let mut runner = StageRunner::load(dir, &manifest, 0..manifest.planner_layers(), &config)?;
    let req = GenerateRequest {
        prompt_ids: prompt_ids.clone(),
        max_tokens: args.max_tokens,
        sampling: args.sampling.config()?,
        stop_ids: manifest.eos_token_ids.clone(),
    };
    let mut stream = TextStream::new(tok.as_ref(), !args.json);
    let stats = generate(&mut runner, 1, &req, |t| stream.push(t))?;
    let text = match &tok {
        Some(t) => t.decode(&stats.token_ids)?,
        None => String::new(),
    };
    stream.finish(&text);
    Ok(GenerateOutput {
        text,
        token_ids: stats.token_ids,
        prompt_ids,
        tokens_per_s: stats.tokens_per_s,
        decode_tokens_per_s: stats.decode_tokens_per_s,
        prefill_s: stats.prefill_s,
        backend: runner.backend().to_string(),
    })
}

/// Prints text as tokens arrive: decodes all ids so far and writes the new suffix, holding
/// back an incomplete UTF-8 sequence. Without a tokenizer, prints the ids.
struct TextStream<'a> {
    tok: Option<&'a Tokenizer>,
    on: bool,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> TextStream<'a> {
    fn new(tok: Option<&'a Tokenizer>, on: bool) -> Self {
        TextStream {
            tok,
            on,
            ids: Vec::new(),
            printed: 0,
        }
    }

    fn push(&mut self, id: u32) -> bool {
        self.ids.push(id);
        if !self.on {
            return true;
        }
        let mut out = std::io::stdout().lock();
        match self.tok {
            Some(tok) => {
                if let Ok(text) = tok.decode(&self.ids)
                    && !text.ends_with('\u{FFFD}')
                    && text.len() > self.printed
                    && text.is_char_boundary(self.printed)
                {
                    let _ = out.write_all(&text.as_bytes()[self.printed..]);
                    self.printed = text.len();
                }
            }
            None => {
                let _ = write!(out, "{id} ");
            }
        }
        let _ = out.flush();
        true
    }

    fn finish(&mut self, text: &str) {
        if self.on
            && self.tok.is_some()
            && text.len() > self.printed
            && text.is_char_boundary(self.printed)
        {
            print!("{}", &text[self.printed..]);
        }
        if self.on {
            println!();
        }
    }
}
