//! Text to token ids and back, with the model's `tokenizer.json` (the `tokenizers` crate's
//! pipeline; a BPE model held compactly by [`crate::bpe`]), the
//! BOS rule from `tokenizer_config.json` (`add_bos_token`), and its Jinja `chat_template`
//! (rendered with minijinja, as Hugging Face's `apply_chat_template` does).

use std::path::Path;

use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// A model's tokenizer.
pub struct Tokenizer {
    inner: crate::bpe::TokenizerCore,
    bos: Option<u32>,
    add_bos: bool,
    chat: Option<ChatTemplate>,
}

/// A chat template and the special-token strings it may refer to.
#[derive(Debug, Clone)]
struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
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
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let inner = crate::bpe::load(&text)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        drop(text);
        let mut add_bos = false;
        let mut chat = None;
        if let Some(cfg) = &manifest.tokenizer_config {
            let path = dir.join(cfg);
            let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(Error::json(&path))?;
            add_bos = v
                .get("add_bos_token")
                .and_then(|b| b.as_bool())
                .unwrap_or(false);
            chat = chat_template(&v);
        }
        // The parse's temporaries (several times the file) stay resident otherwise.
        crate::heap::release_free_heap();
        Ok(Some(Tokenizer {
            inner,
            bos: manifest.bos_token_id,
            add_bos,
            chat,
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

    /// Whether the model ships a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// Token ids of one user turn wrapped in the model's chat template, ending with the
    /// assistant's turn opening (`add_generation_prompt`). The template writes any BOS itself.
    pub fn encode_chat(&self, user: &str) -> Result<Vec<u32>> {
        self.encode_messages(&[("user", user)])
    }

    /// Token ids of a conversation (`(role, content)` pairs, e.g. an OpenAI `messages` list)
    /// in the model's chat template, ending with the assistant's turn opening.
    pub fn encode_messages(&self, messages: &[(&str, &str)]) -> Result<Vec<u32>> {
        let t = self
            .chat
            .as_ref()
            .ok_or_else(|| Error::Tokenizer("the model has no chat_template".to_owned()))?;
        let text = render_chat(t, messages)?;
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// A token string from `tokenizer_config.json`: either a string or `{"content": ...}`.
fn token_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_owned(),
        None => String::new(),
    }
}

/// The `chat_template` (a string, or a list of named templates of which `default` is used).
fn chat_template(cfg: &serde_json::Value) -> Option<ChatTemplate> {
    let source = match cfg.get("chat_template")? {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))?
            .get("template")?
            .as_str()?
            .to_owned(),
        _ => return None,
    };
    Some(ChatTemplate {
        source,
        bos_token: token_text(cfg.get("bos_token")),
        eos_token: token_text(cfg.get("eos_token")),
    })
}

fn render_chat(t: &ChatTemplate, turns: &[(&str, &str)]) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    let err = |e: minijinja::Error| Error::Tokenizer(format!("chat template: {e:#}"));
    env.add_template("chat", &t.source).map_err(err)?;
    let tmpl = env.get_template("chat").map_err(err)?;
    let messages: Vec<_> = turns
        .iter()
        .map(|(role, content)| minijinja::context! { role => role, content => content })
        .collect();
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => t.bos_token,
        eos_token => t.eos_token,
    })
    .map_err(err)
}
