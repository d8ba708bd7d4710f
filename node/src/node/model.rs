//! The model this node holds, as the coordinator needs it: its [`ModelRef`] (name and sha256
//! of `manifest.json`) and the planner figures of every layer, read from the manifest of
//! shoal-model.

use std::path::Path;

use sha2::{Digest, Sha256};
use shoal_planner::Layer;
use shoal_protocol::ModelRef;

/// Context length planned for when the manifest does not limit it lower, tokens.
pub const DEFAULT_CONTEXT_TOKENS: usize = 2048;
/// Bytes of one token on the wire between origin and stages (a u32 token id).
pub const TOKEN_BYTES: f64 = 4.0;

/// Errors of reading the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `manifest.json` could not be read.
    #[error("model manifest {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The manifest is invalid.
    #[error("model manifest: {0}")]
    Manifest(String),
}

/// A model's planner view.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Name and manifest hash, as gossiped.
    pub model_ref: ModelRef,
    /// Planner layers: embedding, decoder layers, head.
    pub layers: Vec<Layer>,
    /// Hidden size (shapes the compute calibration and the activation-sized probe).
    pub hidden: usize,
    /// Context length the plan reserves K/V memory for, tokens.
    pub context_tokens: f64,
    /// Bytes of a token between the origin and the pipeline.
    pub token_bytes: f64,
}

impl ModelInfo {
    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(shoal_model::manifest::MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest =
            shoal_model::Manifest::load(dir).map_err(|e| ModelError::Manifest(e.to_string()))?;
        let layers = manifest
            .figures()
            .iter()
            .map(|f| Layer {
                flops: f.flops as f64,
                param_bytes: f.param_bytes as f64,
                read_bytes: Some(f.read_bytes as f64),
                kv_bytes_per_token: f.kv_bytes_per_token as f64,
                out_bytes: f.out_bytes as f64,
            })
            .collect();
        Ok(ModelInfo {
            model_ref: ModelRef {
                name: manifest.name.clone(),
                manifest_sha256: Sha256::digest(&bytes).into(),
            },
            layers,
            hidden: manifest.dims.hidden,
            context_tokens: DEFAULT_CONTEXT_TOKENS.min(manifest.dims.max_position.max(1)) as f64,
            token_bytes: TOKEN_BYTES,
        })
    }

    /// Bytes of one activation between decoder layers (the probe's small transfer).
    pub fn activation_bytes(&self) -> usize {
        self.layers
            .get(1)
            .map_or(self.hidden * 4, |l| l.out_bytes as usize)
            .max(1)
    }
}
