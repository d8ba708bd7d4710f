//! Chat prompts: OpenAI-style messages rendered with the model's chat template.
//!
//! The template comes from the model's tokenizer files (`chat_template` in
//! `tokenizer_config.json`, or a `chat_template.jinja` next to it). shoal does not embed a
//! Jinja engine; it recognises the template family by its markers and renders that family's
//! turn format: Gemma (`<start_of_turn>`), ChatML (`<|im_start|>`, Qwen, SmolLM), Llama 3
//! (`<|start_header_id|>`), Zephyr/TinyLlama (`<|user|>`) and Llama 2/Mistral (`[INST]`).
//! A model without a template (the synthesised ones) gets a plain `role: text` transcript.
//! The BOS token is not written here: the tokenizer adds it as the model asks.

use std::path::Path;

use serde::{Deserialize, Serialize};
use shoal_model::Manifest;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A chat template family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// Gemma: `<start_of_turn>user ... <end_of_turn>`, system text folded into the first user turn.
    Gemma,
    /// ChatML: `<|im_start|>role ... <|im_end|>`.
    ChatMl,
    /// Llama 3: `<|start_header_id|>role<|end_header_id|> ... <|eot_id|>`.
    Llama3,
    /// Zephyr / TinyLlama: `<|role|>\n ... </s>`.
    Zephyr,
    /// Llama 2 / Mistral: `[INST] ... [/INST]`.
    Inst,
    /// No template: a `role: text` transcript ending in `assistant:`.
    Plain,
}

impl ChatTemplate {
    /// The family of the model in `dir` (plain when it has no template).
    pub fn load(dir: &Path, manifest: &Manifest) -> Self {
        let mut text = String::new();
        if let Some(cfg) = &manifest.tokenizer_config
            && let Ok(raw) = std::fs::read_to_string(dir.join(cfg))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&raw)
        {
            text = match v.get("chat_template") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
        }
        if text.is_empty() {
            text = std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap_or_default();
        }
        Self::detect(&text)
    }

    /// The family whose markers appear in `template`.
    pub fn detect(template: &str) -> Self {
        let has = |m: &str| template.contains(m);
        if has("<start_of_turn>") {
            ChatTemplate::Gemma
        } else if has("<|im_start|>") {
            ChatTemplate::ChatMl
        } else if has("<|start_header_id|>") {
            ChatTemplate::Llama3
        } else if has("<|user|>") {
            ChatTemplate::Zephyr
        } else if has("[INST]") {
            ChatTemplate::Inst
        } else {
            ChatTemplate::Plain
        }
    }

    /// The prompt text for `messages`, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[Message]) -> String {
        let mut out = String::new();
        match self {
            ChatTemplate::Gemma => {
                let mut system = String::new();
                for m in messages {
                    match m.role.as_str() {
                        "system" => system = format!("{}\n\n", m.content),
                        "assistant" | "model" => {
                            out += &format!("<start_of_turn>model\n{}<end_of_turn>\n", m.content)
                        }
                        _ => {
                            out += &format!(
                                "<start_of_turn>user\n{system}{}<end_of_turn>\n",
                                m.content
                            );
                            system.clear();
                        }
                    }
                }
                out += "<start_of_turn>model\n";
            }
            ChatTemplate::ChatMl => {
                for m in messages {
                    out += &format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content);
                }
                out += "<|im_start|>assistant\n";
            }
            ChatTemplate::Llama3 => {
                for m in messages {
                    out += &format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role, m.content
                    );
                }
                out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
            }
            ChatTemplate::Zephyr => {
                for m in messages {
                    out += &format!("<|{}|>\n{}</s>\n", m.role, m.content);
                }
                out += "<|assistant|>\n";
            }
            ChatTemplate::Inst => {
                let mut system = String::new();
                for m in messages {
                    match m.role.as_str() {
                        "system" => system = format!("{}\n\n", m.content),
                        "assistant" => out += &format!(" {}</s>", m.content),
                        _ => {
                            out += &format!("[INST] {system}{} [/INST]", m.content);
                            system.clear();
                        }
                    }
                }
            }
            ChatTemplate::Plain => {
                for m in messages {
                    out += &format!("{}: {}\n", m.role, m.content);
                }
                out += "assistant:";
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<Message> {
        vec![
            Message {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            Message {
                role: "user".into(),
                content: "Hi".into(),
            },
        ]
    }

    #[test]
    fn detects_families_by_marker() {
        assert_eq!(
            ChatTemplate::detect("{{ '<start_of_turn>' + role }}"),
            ChatTemplate::Gemma
        );
        assert_eq!(ChatTemplate::detect("<|im_start|>"), ChatTemplate::ChatMl);
        assert_eq!(
            ChatTemplate::detect("<|start_header_id|>"),
            ChatTemplate::Llama3
        );
        assert_eq!(ChatTemplate::detect(""), ChatTemplate::Plain);
    }

    #[test]
    fn gemma_folds_the_system_message_into_the_user_turn() {
        assert_eq!(
            ChatTemplate::Gemma.render(&msgs()),
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn chatml_and_plain_end_with_the_assistant_turn() {
        assert!(
            ChatTemplate::ChatMl
                .render(&msgs())
                .ends_with("<|im_start|>assistant\n")
        );
        assert_eq!(
            ChatTemplate::Plain.render(&msgs()),
            "system: Be brief.\nuser: Hi\nassistant:"
        );
    }
}
