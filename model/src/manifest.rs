//! `manifest.json`: what a model directory holds. Architecture and dimensions, per-layer cost
//! figures in the planner's order (embedding, decoder layers, head), the files of each shard,
//! the tokenizer files, and the sha256 of every file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::arch::ModelDims;
use crate::error::{Error, Result};
use crate::quant::WeightDtype;

/// File name of the manifest inside a model directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Version of the manifest format this build writes and reads.
pub const FORMAT: u32 = 1;

/// What a planner layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// Token ids to hidden states.
    Embedding,
    /// One transformer block with a KV cache.
    Decoder,
    /// Final norm and lm_head: hidden states to logits.
    Head,
}

/// The planner's cost figures of one layer (DESIGN.md, "The cost model"); same field names as
/// a scenario file's `model.layers[]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerFigures {
    /// Floating-point operations per decoded token.
    pub flops: u64,
    /// Bytes of weights the layer holds in memory.
    pub param_bytes: u64,
    /// Bytes of weights one decode step reads (one row for the embedding).
    pub read_bytes: u64,
    /// KV-cache bytes added per token of context.
    pub kv_bytes_per_token: u64,
    /// Bytes the layer emits per decoded token (hidden state, or logits for the head).
    pub out_bytes: u64,
}

/// One planner layer: its kind, files and figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerEntry {
    /// Embedding, decoder or head.
    pub kind: LayerKind,
    /// Files the shard needs, relative to the model directory; the `.onnx` graph first.
    pub files: Vec<String>,
    /// Element type of the shard's weights (absent in older manifests: f32).
    #[serde(default)]
    pub dtype: WeightDtype,
    /// Cost figures.
    #[serde(flatten)]
    pub figures: LayerFigures,
}

/// The contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version ([`FORMAT`]).
    pub format: u32,
    /// Human-readable model name.
    pub name: String,
    /// Architecture (`llama`, `qwen2`, `gemma3`, ...).
    pub architecture: String,
    /// Dimensions.
    pub dims: ModelDims,
    /// Element type of the weights (`f32`, `q8`, `q4`); activations are always f32.
    pub dtype: String,
    /// Token prepended to prompts, if the model uses one.
    pub bos_token_id: Option<u32>,
    /// Tokens that end a generation.
    pub eos_token_ids: Vec<u32>,
    /// `tokenizer.json`, if the model has one.
    pub tokenizer: Option<String>,
    /// `tokenizer_config.json` (BOS flag, chat template), if present.
    pub tokenizer_config: Option<String>,
    /// Planner layers in order: embedding, decoder layers, head.
    pub layers: Vec<LayerEntry>,
    /// sha256 (hex) of every file, by name.
    pub files: BTreeMap<String, String>,
}

impl Manifest {
    /// Reads and checks `dir/manifest.json` (structure only; see [`Manifest::verify_files`]).
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let m: Manifest = serde_json::from_str(&text).map_err(Error::json(&path))?;
        m.validate()?;
        Ok(m)
    }

    /// Writes `dir/manifest.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).map_err(Error::json(&path))?;
        std::fs::write(&path, text + "\n").map_err(Error::io(&path))
    }

    /// Checks the layer list against the dimensions and the file table.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Manifest(m));
        if self.format != FORMAT {
            return bad(format!(
                "format {} (this build reads {FORMAT})",
                self.format
            ));
        }
        self.dims.validate()?;
        let n = self.dims.layers;
        if self.layers.len() != n + 2 {
            return bad(format!(
                "{} layers listed for {n} decoder layers (expected {})",
                self.layers.len(),
                n + 2
            ));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let want = match i {
                0 => LayerKind::Embedding,
                i if i == n + 1 => LayerKind::Head,
                _ => LayerKind::Decoder,
            };
            if l.kind != want {
                return bad(format!("layer {i} is {:?}, expected {want:?}", l.kind));
            }
            if l.files.is_empty() {
                return bad(format!("layer {i} lists no files"));
            }
        }
        let listed = self
            .layers
            .iter()
            .flat_map(|l| &l.files)
            .chain(&self.tokenizer)
            .chain(&self.tokenizer_config);
        for f in listed {
            if !self.files.contains_key(f) {
                return bad(format!("file {f:?} has no sha256 entry"));
            }
            if f.contains("..") || Path::new(f).is_absolute() {
                return bad(format!("file {f:?} is outside the model directory"));
            }
        }
        Ok(())
    }

    /// Number of planner layers: decoder layers + 2.
    pub fn planner_layers(&self) -> usize {
        self.layers.len()
    }

    /// Cost figures of every planner layer, in order.
    pub fn figures(&self) -> Vec<LayerFigures> {
        self.layers.iter().map(|l| l.figures).collect()
    }

    /// Path of planner layer `l`'s `.onnx` file.
    pub fn shard_path(&self, dir: &Path, l: usize) -> Option<PathBuf> {
        self.layers
            .get(l)
            .and_then(|e| e.files.first())
            .map(|f| dir.join(f))
    }

    /// Recomputes the sha256 of every listed file and compares.
    pub fn verify_files(&self, dir: &Path) -> Result<()> {
        for (file, expected) in &self.files {
            let actual = sha256_file(&dir.join(file))?;
            if &actual != expected {
                return Err(Error::Checksum {
                    file: file.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(Error::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
