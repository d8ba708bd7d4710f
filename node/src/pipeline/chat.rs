//! Chat prompts: OpenAI-style messages as token ids.
//!
//! With a chat template in the model's tokenizer files (`chat_template` in
//! `tokenizer_config.json`), the model crate renders the whole conversation with it
//! ([`shoal_model::Tokenizer::encode_messages`], minijinja) and the prompt ends with the
//! assistant's turn opening. A model without a template gets a plain `role: text` transcript
//! ending in `assistant:`, tokenized as ordinary text (BOS as the tokenizer wants).

use serde::{Deserialize, Serialize};
use shoal_model::Tokenizer;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// The plain transcript used when the model has no chat template.
pub fn plain_transcript(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        out += &format!("{}: {}\n", m.role, m.content);
    }
    out + "assistant:"
}

/// Token ids of `messages` for `tok`'s model.
pub fn prompt_ids(tok: &Tokenizer, messages: &[Message]) -> shoal_model::Result<Vec<u32>> {
    if tok.has_chat_template() {
        let turns: Vec<(&str, &str)> = messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect();
        tok.encode_messages(&turns)
    } else {
        tok.encode(&plain_transcript(messages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_transcript_ends_with_the_assistant_turn() {
        let msgs = vec![
            Message {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            Message {
                role: "user".into(),
                content: "Hi".into(),
            },
        ];
        assert_eq!(
            plain_transcript(&msgs),
            "system: Be brief.\nuser: Hi\nassistant:"
        );
    }
}
