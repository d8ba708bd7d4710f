//! `shoal model import|synth|info`: turn a checkpoint into ONNX layer shards, write a random
//! test model, or show (and verify) a model directory. The work is in `shoal_model`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use shoal_model::quant::DEFAULT_BLOCK_SIZE;
use shoal_model::synth::{SynthOptions, synth};
use shoal_model::{Manifest, QuantSpec, WeightDtype};

/// Model directory operations.
#[derive(Debug, Subcommand)]
pub(crate) enum ModelCommand {
    /// Import a checkpoint (Hugging Face folder or GGUF file) into ONNX layer shards.
    Import(ImportArgs),
    /// Write a deterministic random-weight Llama model with a byte-level tokenizer.
    Synth(SynthArgs),
    /// Print a model directory's manifest summary and per-layer planner figures.
    Info(InfoArgs),
}

/// Where the checkpoint comes from: exactly one source flag.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").required(true).multiple(false))]
pub(crate) struct ImportArgs {
    /// Hugging Face folder: config.json, *.safetensors, optional tokenizer.json.
    #[arg(long, group = "source")]
    pub(crate) hf: Option<PathBuf>,
    /// GGUF file (llama.cpp format).
    #[arg(long, group = "source")]
    pub(crate) gguf: Option<PathBuf>,
    /// tokenizer.json for a GGUF import (a tokenizer_config.json next to it is used too).
    #[arg(long, requires = "gguf")]
    pub(crate) tokenizer: Option<PathBuf>,
    /// Output model directory.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Weight element type: q4 and q8 quantise linear layers, embedding and head
    /// (ONNX Runtime contrib ops; tract dequantises them at load), f16 stores them as half
    /// floats (half the f32 files; cast to f32 at load, so f32 memory and speed), f32 keeps full
    /// precision.
    #[arg(long, default_value = "q4", value_parser = parse_dtype)]
    pub(crate) dtype: WeightDtype,
    /// Values per quantisation block (a power of two >= 16).
    #[arg(long, default_value_t = DEFAULT_BLOCK_SIZE)]
    pub(crate) block_size: usize,
    /// `MatMulNBits` accuracy level: 4 (int8 activations, the fast CPU kernel) or 0 (f32
    /// activations).
    #[arg(long, default_value_t = shoal_model::quant::DEFAULT_ACCURACY_LEVEL)]
    pub(crate) accuracy_level: u32,
}

/// Shape and seed of the synthetic model.
#[derive(Debug, Args)]
pub(crate) struct SynthArgs {
    /// Decoder layers.
    #[arg(long, default_value_t = 6)]
    pub(crate) layers: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 128)]
    pub(crate) hidden: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub(crate) heads: usize,
    /// Key/value heads (GQA); default: heads / 2 when even, else heads.
    #[arg(long)]
    pub(crate) kv_heads: Option<usize>,
    /// Feed-forward size; default 3 x hidden.
    #[arg(long)]
    pub(crate) intermediate: Option<usize>,
    /// Vocabulary size (>= 258: 256 bytes, BOS, EOS).
    #[arg(long, default_value_t = 320)]
    pub(crate) vocab: usize,
    /// Weight seed.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Give the head its own matrix instead of sharing the embedding.
    #[arg(long)]
    pub(crate) untied: bool,
    /// Weight element type (q4, q8, f16, f32).
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub(crate) dtype: WeightDtype,
    /// Values per quantisation block (a power of two >= 16).
    #[arg(long, default_value_t = DEFAULT_BLOCK_SIZE)]
    pub(crate) block_size: usize,
    /// Output model directory.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

/// Which model to show.
#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    /// Model directory.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Recompute every file's sha256 and compare with the manifest.
    #[arg(long)]
    pub(crate) verify: bool,
}

/// Parses `q4`, `q8`, `f16` or `f32` (clap value parser).
pub(crate) fn parse_dtype(s: &str) -> Result<WeightDtype, String> {
    s.parse().map_err(|e: shoal_model::Error| e.to_string())
}

pub(crate) fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Import(a) => import(a),
        ModelCommand::Synth(a) => run_synth(a),
        ModelCommand::Info(a) => info(a),
    }
}

fn import(a: ImportArgs) -> anyhow::Result<()> {
    let quant = QuantSpec::new(a.dtype, a.block_size)?
        .map(|q| q.with_accuracy_level(a.accuracy_level))
        .transpose()?;
    let m = match (&a.hf, &a.gguf) {
        (Some(dir), _) => shoal_model::hf::import_as(dir, &a.out, true, quant)
            .with_context(|| format!("importing {}", dir.display()))?,
        (None, Some(file)) => {
            shoal_model::gguf::import_as(file, a.tokenizer.as_deref(), &a.out, true, quant)
                .with_context(|| format!("importing {}", file.display()))?
        }
        (None, None) => anyhow::bail!("give --hf DIR or --gguf FILE"),
    };
    summary(&m, &a.out);
    Ok(())
}

fn run_synth(a: SynthArgs) -> anyhow::Result<()> {
    let kv_heads = a.kv_heads.unwrap_or(if a.heads.is_multiple_of(2) {
        a.heads / 2
    } else {
        a.heads
    });
    let opts = SynthOptions {
        layers: a.layers,
        hidden: a.hidden,
        heads: a.heads,
        kv_heads,
        intermediate: a.intermediate,
        vocab: a.vocab,
        seed: a.seed,
        tied: !a.untied,
        qkv_bias: false,
        quant: QuantSpec::new(a.dtype, a.block_size)?,
    };
    let m = synth(&opts, &a.out, true).context("writing the synthetic model")?;
    summary(&m, &a.out);
    Ok(())
}

fn info(a: InfoArgs) -> anyhow::Result<()> {
    let m = Manifest::load(&a.model)?;
    summary(&m, &a.model);
    println!(
        "layer  kind       flops        param_bytes  read_bytes   kv_B/token  out_bytes  file"
    );
    for (i, l) in m.layers.iter().enumerate() {
        let f = &l.figures;
        println!(
            "{i:<6} {:<10} {:<12} {:<12} {:<12} {:<11} {:<10} {}",
            format!("{:?}", l.kind).to_lowercase(),
            f.flops,
            f.param_bytes,
            f.read_bytes,
            f.kv_bytes_per_token,
            f.out_bytes,
            l.files.join(" ")
        );
    }
    if a.verify {
        m.verify_files(&a.model)?;
        println!("all {} files match their sha256", m.files.len());
    }
    Ok(())
}

fn summary(m: &Manifest, dir: &std::path::Path) {
    let d = &m.dims;
    let bytes: u64 = m
        .files
        .keys()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|md| md.len())
        .sum();
    println!(
        "{}: {} ({}, {}), {} layers, hidden {}, heads {}/{} kv, vocab {}, tied {}, {} files, {:.1} MB, tokenizer: {}",
        dir.display(),
        m.name,
        m.architecture,
        m.dtype,
        d.layers,
        d.hidden,
        d.heads,
        d.kv_heads,
        d.vocab,
        d.tied_embeddings,
        m.files.len(),
        bytes as f64 / 1e6,
        m.tokenizer
            .as_deref()
            .unwrap_or("none (only --prompt-ids works)")
    );
}
