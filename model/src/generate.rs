//! The single-process generation loop: prefill the prompt, then decode one token per step
//! through a [`StageRunner`] that covers the whole model, sampling each next token.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::runtime::{StageInput, StageOutput, StageRunner};
use crate::sampler::{Sampler, SamplingConfig};

/// One generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// Prompt token ids (BOS included if the model wants one).
    pub prompt_ids: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingConfig,
    /// Tokens that end the generation (not included in the output).
    pub stop_ids: Vec<u32>,
}

/// What a generation produced and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateStats {
    /// Generated token ids.
    pub token_ids: Vec<u32>,
    /// Seconds spent on the prompt (first forward pass).
    pub prefill_s: f64,
    /// Seconds spent on the following decode steps.
    pub decode_s: f64,
    /// Generated tokens per second, prompt time included.
    pub tokens_per_s: f64,
    /// Decode steps per second, prompt excluded.
    pub decode_tokens_per_s: f64,
}

/// Runs `req` as session `session` on a runner holding every planner layer; `on_token` sees
/// each token as it is produced and may stop the generation by returning `false`.
pub fn generate(
    runner: &mut StageRunner,
    session: u64,
    req: &GenerateRequest,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<GenerateStats> {
    if req.prompt_ids.is_empty() {
        return Err(Error::BadInput("empty prompt".to_owned()));
    }
    let mut sampler = Sampler::new(req.sampling);
    let start = Instant::now();
    let mut out = Vec::with_capacity(req.max_tokens);
    let mut input = req.prompt_ids.clone();
    let mut prefill_s = 0.0;
    let mut first = true;
    while out.len() < req.max_tokens {
        let logits = match runner.run_at(
            session,
            if first {
                0
            } else {
                req.prompt_ids.len() + out.len() - 1
            },
            StageInput::Tokens(input),
        )? {
            StageOutput::Logits(l) => l,
            StageOutput::Hidden(_) => {
                return Err(Error::BadInput(
                    "the runner does not end at the head".to_owned(),
                ));
            }
        };
        if first {
            prefill_s = start.elapsed().as_secs_f64();
            first = false;
        }
        let v = *logits.shape.last().unwrap_or(&0);
        let last = &logits.data[logits.data.len().saturating_sub(v)..];
        let tok = sampler.sample(last);
        if req.stop_ids.contains(&tok) {
            break;
        }
        out.push(tok);
        if !on_token(tok) {
            break;
        }
        input = vec![tok];
    }
    runner.drop_session(session);
    let total = start.elapsed().as_secs_f64();
    let decode_s = (total - prefill_s).max(0.0);
    let n = out.len() as f64;
    Ok(GenerateStats {
        token_ids: out,
        prefill_s,
        decode_s,
        tokens_per_s: if total > 0.0 { n / total } else { 0.0 },
        decode_tokens_per_s: if decode_s > 0.0 && n > 1.0 {
            (n - 1.0) / decode_s
        } else {
            0.0
        },
    })
}
