//! `shoal generate --api ADDR`: the same request, flags and output as the local mode, sent to
//! a running node's HTTP API; the node is the origin and generates through the swarm.
//!
//! Text streams to stdout as the node sends it (unless `--json`). Without a tokenizer here the
//! prompt is sent as text or ids and tokenized by the node, so `prompt_ids` in the JSON is the
//! ids given with `--prompt-ids` (empty for a text prompt). Speeds are the client's view:
//! `prefill_s` is the time to the first token.

use std::io::Write;

use anyhow::Context;
use shoal_node::api::client::{Completion, complete};

use super::{GenerateArgs, GenerateOutput};

/// Runs `args` on the node at `addr`.
pub(crate) fn run_api(args: &GenerateArgs, addr: &str) -> anyhow::Result<GenerateOutput> {
    let sampling = args.sampling.config()?;
    let c = Completion {
        prompt: args.prompt.prompt.clone(),
        prompt_ids: args.prompt.prompt_ids.clone(),
        max_tokens: args.max_tokens,
        temperature: sampling.temperature.max(0.0),
        top_p: sampling.top_p,
        top_k: sampling.top_k,
        seed: sampling.seed,
        api_key: args.api_key.clone(),
    };
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let stream = !args.json;
    let answer = rt.block_on(complete(addr, &c, |piece| {
        if stream {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
    }))?;
    if stream {
        println!();
    }
    let n = answer.token_ids.len();
    let decode_s = answer.elapsed_s - answer.first_token_s;
    Ok(GenerateOutput {
        text: answer.text,
        prompt_ids: args.prompt.prompt_ids.clone().unwrap_or_default(),
        tokens_per_s: answer.tokens_per_s,
        decode_tokens_per_s: if n > 1 && decode_s > 0.0 {
            (n - 1) as f64 / decode_s
        } else {
            0.0
        },
        prefill_s: answer.first_token_s,
        backend: format!("swarm via {addr}"),
        token_ids: answer.token_ids,
    })
}
