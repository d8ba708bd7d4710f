//! Writes a model directory: one ONNX shard per planner layer (embedding, each decoder layer,
//! head), the tokenizer files, and `manifest.json` with cost figures and checksums. Also
//! builds the unsplit single-graph model that parity tests compare the chained shards with.
//!
//! Flow: for each planner layer, a fresh [`GraphBuilder`] gets the shard's inputs, the
//! [`Architecture`] emits the body, and [`onnx::write_graph`] stores it; one [`ExternalIndex`] spans
//! the model so a tensor used by two shards (a tied embedding) is written once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::arch::{Architecture, LayerIo, WeightSource};
use crate::error::{Error, Result};
use crate::manifest::{FORMAT, LayerEntry, LayerFigures, LayerKind, Manifest, sha256_file};
use crate::onnx::{self, DType, Dim, ExternalIndex, GraphBuilder};
use crate::quant::{QuantSpec, WeightDtype};

/// Bytes per element of the activations and the KV cache (f32).
const ELEM: u64 = 4;

/// Graph input and output names shared by the exporter and the runtime.
pub mod names {
    /// Embedding input: token ids `[B,S]`.
    pub const INPUT_IDS: &str = "input_ids";
    /// Layer and head input: hidden states `[B,S,H]`.
    pub const HIDDEN: &str = "hidden_states";
    /// Layer input: attention mask `[B,P+S]`.
    pub const ATTENTION_MASK: &str = "attention_mask";
    /// Layer input: positions `[B,S]`.
    pub const POSITION_IDS: &str = "position_ids";
    /// Layer input: past keys `[B,KV,P,D]`.
    pub const PAST_KEY: &str = "past_key";
    /// Layer input: past values.
    pub const PAST_VALUE: &str = "past_value";
    /// Embedding and layer output: hidden states.
    pub const HIDDEN_OUT: &str = "hidden_out";
    /// Layer output: keys `[B,KV,P+S,D]`.
    pub const PRESENT_KEY: &str = "present_key";
    /// Layer output: values.
    pub const PRESENT_VALUE: &str = "present_value";
    /// Head output: logits `[B,S,V]`.
    pub const LOGITS: &str = "logits";
}

/// What to write next to the shards.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Model name for the manifest.
    pub name: String,
    /// `tokenizer.json` to copy in, if any.
    pub tokenizer: Option<PathBuf>,
    /// `tokenizer_config.json` to copy in, if any.
    pub tokenizer_config: Option<PathBuf>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Quantise linear layers, the embedding and the head (`None`: f32).
    pub quant: Option<QuantSpec>,
}

/// Writes all shards and the manifest of `arch` into `out`.
pub fn export(
    arch: &dyn Architecture,
    w: &mut dyn WeightSource,
    out: &Path,
    opts: &ExportOptions,
) -> Result<Manifest> {
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let d = arch.dims().clone();
    let bar = progress_bar(opts.progress, d.layers as u64 + 2);
    let mut index = ExternalIndex::default();
    let mut layers = Vec::with_capacity(d.layers + 2);

    bar.set_message("embedding");
    let dtype = dtype_of(opts.quant);
    // The embedding and the head (one matrix when tied) stay at 8 bits under q4, as llama.cpp's
    // Q4_K_M keeps them at 6: at 4 bits Gemma-3-270M's greedy continuation flipped.
    let table_quant = opts.quant.map(|q| q.for_table(d.hidden));
    let table_dtype = dtype_of(table_quant);
    let mut g = GraphBuilder::new("embedding");
    g.set_quant(table_quant);
    let ids = g.input(
        names::INPUT_IDS,
        DType::I64,
        &[Dim::Sym("batch"), Dim::Sym("seq")],
    );
    let h = arch.embedding(&mut g, w, &ids)?;
    g.output(&h, names::HIDDEN_OUT, DType::F32, &hidden_dims(d.hidden));
    let written = onnx::write_graph(g, out, "embed.onnx", "embed.weights", &mut index)?;
    let row = d.hidden as u64 * ELEM;
    let table_row = match table_quant {
        Some(spec) => spec.row_bytes(d.hidden) as u64,
        None => row,
    };
    let figures = LayerFigures {
        flops: 0,
        param_bytes: written.param_bytes,
        read_bytes: table_row,
        kv_bytes_per_token: 0,
        out_bytes: row,
    };
    layers.push(LayerEntry {
        kind: LayerKind::Embedding,
        files: written.files,
        dtype: table_dtype,
        figures,
    });
    bar.inc(1);

    for i in 0..d.layers {
        bar.set_message(format!("layer {i}"));
        let mut g = GraphBuilder::new(&format!("layer_{i}"));
        g.set_quant(opts.quant);
        let io = layer_inputs(&mut g, arch, "");
        let o = arch.decoder_layer(&mut g, w, i, io.as_io())?;
        layer_outputs(&mut g, arch, &o, "");
        let flops = 2 * g.matmul_weight_elems();
        let (onnx_file, weights) = (
            format!("layer_{i:03}.onnx"),
            format!("layer_{i:03}.weights"),
        );
        let written = onnx::write_graph(g, out, &onnx_file, &weights, &mut index)?;
        let figures = LayerFigures {
            flops,
            param_bytes: written.param_bytes,
            read_bytes: written.param_bytes,
            kv_bytes_per_token: 2 * (d.kv_heads * d.head_dim) as u64 * ELEM,
            out_bytes: row,
        };
        layers.push(LayerEntry {
            kind: LayerKind::Decoder,
            files: written.files,
            dtype,
            figures,
        });
        bar.inc(1);
    }

    bar.set_message("head");
    let mut g = GraphBuilder::new("head");
    g.set_quant(table_quant);
    let h = g.input(names::HIDDEN, DType::F32, &hidden_dims(d.hidden));
    let logits = arch.head(&mut g, w, &h)?;
    g.output(&logits, names::LOGITS, DType::F32, &logits_dims(d.vocab));
    let flops = 2 * g.matmul_weight_elems();
    let written = onnx::write_graph(g, out, "head.onnx", "head.weights", &mut index)?;
    let figures = LayerFigures {
        flops,
        param_bytes: written.param_bytes,
        read_bytes: written.param_bytes,
        kv_bytes_per_token: 0,
        out_bytes: d.vocab as u64 * ELEM,
    };
    layers.push(LayerEntry {
        kind: LayerKind::Head,
        files: written.files,
        dtype: table_dtype,
        figures,
    });
    bar.inc(1);

    let tokenizer = copy_in(opts.tokenizer.as_deref(), out, "tokenizer.json")?;
    let tokenizer_config = copy_in(
        opts.tokenizer_config.as_deref(),
        out,
        "tokenizer_config.json",
    )?;
    bar.set_message("checksums");
    let mut files = BTreeMap::new();
    let all = layers
        .iter()
        .flat_map(|l| l.files.iter())
        .chain(&tokenizer)
        .chain(&tokenizer_config);
    for f in all {
        if !files.contains_key(f) {
            files.insert(f.clone(), sha256_file(&out.join(f))?);
        }
    }
    let manifest = Manifest {
        format: FORMAT,
        name: opts.name.clone(),
        architecture: arch.name().to_owned(),
        dims: d,
        dtype: dtype.as_str().to_owned(),
        bos_token_id: opts.bos_token_id,
        eos_token_ids: opts.eos_token_ids.clone(),
        tokenizer,
        tokenizer_config,
        layers,
        files,
    };
    manifest.validate()?;
    manifest.save(out)?;
    bar.finish_and_clear();
    Ok(manifest)
}

/// The element type shards built with `quant` store.
fn dtype_of(quant: Option<QuantSpec>) -> WeightDtype {
    match quant.map(|q| q.bits) {
        Some(4) => WeightDtype::Q4,
        Some(16) => WeightDtype::F16,
        Some(_) => WeightDtype::Q8,
        None => WeightDtype::F32,
    }
}

/// Writes the whole model as one graph `dir/file` (weights in `dir/file.weights`): inputs
/// `input_ids`, `attention_mask`, `position_ids`, `past_key.{i}`, `past_value.{i}`; outputs
/// `logits`, `present_key.{i}`, `present_value.{i}`. The reference for parity tests.
pub fn export_unsplit(
    arch: &dyn Architecture,
    w: &mut dyn WeightSource,
    dir: &Path,
    file: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let d = arch.dims().clone();
    let mut g = GraphBuilder::new("unsplit");
    let ids = g.input(
        names::INPUT_IDS,
        DType::I64,
        &[Dim::Sym("batch"), Dim::Sym("seq")],
    );
    let mut hidden = arch.embedding(&mut g, w, &ids)?;
    let mut ios = Vec::new();
    for i in 0..d.layers {
        let io = layer_inputs(&mut g, arch, &format!(".{i}"));
        ios.push(io);
    }
    for (i, io) in ios.iter().enumerate() {
        let mut lio = io.as_io();
        lio.hidden = &hidden;
        let o = arch.decoder_layer(&mut g, w, i, lio)?;
        layer_outputs(&mut g, arch, &o, &format!(".{i}"));
        hidden = o.hidden;
    }
    let logits = arch.head(&mut g, w, &hidden)?;
    g.output(&logits, names::LOGITS, DType::F32, &logits_dims(d.vocab));
    let mut index = ExternalIndex::default();
    onnx::write_graph(g, dir, file, &format!("{file}.weights"), &mut index)?;
    Ok(())
}

/// Input value names of one decoder layer inside a graph.
struct LayerInputs {
    hidden: String,
    mask: String,
    pos: String,
    past_key: String,
    past_value: String,
}

impl LayerInputs {
    fn as_io(&self) -> LayerIo<'_> {
        LayerIo {
            hidden: &self.hidden,
            attention_mask: &self.mask,
            position_ids: &self.pos,
            past_key: &self.past_key,
            past_value: &self.past_value,
        }
    }
}

/// Declares a layer's inputs; `suffix` distinguishes layers of the unsplit graph, which
/// shares one mask and one position input between them.
fn layer_inputs(g: &mut GraphBuilder, arch: &dyn Architecture, suffix: &str) -> LayerInputs {
    let d = arch.dims();
    let bs = [Dim::Sym("batch"), Dim::Sym("seq")];
    let hidden = if suffix.is_empty() {
        g.input(names::HIDDEN, DType::F32, &hidden_dims(d.hidden))
    } else {
        String::new()
    };
    let mask = g.memo("input/mask", |g| {
        g.input(
            names::ATTENTION_MASK,
            DType::I64,
            &[Dim::Sym("batch"), Dim::Sym("total")],
        )
    });
    let pos = g.memo("input/pos", |g| {
        g.input(names::POSITION_IDS, DType::I64, &bs)
    });
    let kv = kv_dims(d.kv_heads, d.head_dim, "past");
    let past_key = g.input(&format!("{}{suffix}", names::PAST_KEY), DType::F32, &kv);
    let past_value = g.input(&format!("{}{suffix}", names::PAST_VALUE), DType::F32, &kv);
    LayerInputs {
        hidden,
        mask,
        pos,
        past_key,
        past_value,
    }
}

fn layer_outputs(
    g: &mut GraphBuilder,
    arch: &dyn Architecture,
    o: &crate::arch::LayerOutputs,
    suffix: &str,
) {
    let d = arch.dims();
    if suffix.is_empty() {
        g.output(
            &o.hidden,
            names::HIDDEN_OUT,
            DType::F32,
            &hidden_dims(d.hidden),
        );
    }
    let kv = kv_dims(d.kv_heads, d.head_dim, "total");
    g.output(
        &o.present_key,
        &format!("{}{suffix}", names::PRESENT_KEY),
        DType::F32,
        &kv,
    );
    g.output(
        &o.present_value,
        &format!("{}{suffix}", names::PRESENT_VALUE),
        DType::F32,
        &kv,
    );
}

fn hidden_dims(h: usize) -> [Dim; 3] {
    [Dim::Sym("batch"), Dim::Sym("seq"), Dim::Fixed(h)]
}

fn logits_dims(v: usize) -> [Dim; 3] {
    [Dim::Sym("batch"), Dim::Sym("seq"), Dim::Fixed(v)]
}

fn kv_dims(kv: usize, d: usize, len: &'static str) -> [Dim; 4] {
    [
        Dim::Sym("batch"),
        Dim::Fixed(kv),
        Dim::Sym(len),
        Dim::Fixed(d),
    ]
}

/// Copies `src` to `out/name` (unless it already is that file); returns the name.
fn copy_in(src: Option<&Path>, out: &Path, name: &str) -> Result<Option<String>> {
    let Some(src) = src else { return Ok(None) };
    let dst = out.join(name);
    let same = match (src.canonicalize(), dst.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        std::fs::copy(src, &dst).map_err(Error::io(src))?;
    }
    Ok(Some(name.to_owned()))
}

fn progress_bar(show: bool, len: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} shards {msg} ({elapsed})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
