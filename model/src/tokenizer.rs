//! Text to token ids and back, with the model's `tokenizer.json` (the `tokenizers` crate) and
//! the BOS rule from `tokenizer_config.json` (`add_bos_token`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// A model's tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("bos", &self.bos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// The tokenizer of the model in `dir`, or `None` when the model has none (then only
    /// token-id prompts work).
    pub fn load(dir: &Path, manifest: &Manifest) -> Result<Option<Tokenizer>> {
        let Some(file) = &manifest.tokenizer else {
            return Ok(None);
        };
        let path = dir.join(file);
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let mut add_bos = false;
        if let Some(cfg) = &manifest.tokenizer_config {
            let path = dir.join(cfg);
            let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(Error::json(&path))?;
            add_bos = v
                .get("add_bos_token")
                .and_then(|b| b.as_bool())
                .unwrap_or(false);
        }
        Ok(Some(Tokenizer {
            inner,
            bos: manifest.bos_token_id,
            add_bos,
        }))
    }

    /// Token ids of a prompt: the tokenizer's own special tokens, plus BOS in front when the
    /// tokenizer config asks for it and the tokenizer did not add it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if let (true, Some(bos)) = (self.add_bos, self.bos)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}
