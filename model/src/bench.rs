//! Measurement helpers for `shoal bench model`: a minimal decode loop that calls ONNX Runtime
//! directly on a model's shards (the baseline the [`crate::StageRunner`] path is compared
//! with), decode and prefill speed of one model directory ([`measure_speed`], the rows of the
//! q4 / q8 / f32 table), and a memory-bandwidth probe for the roofline figure.

use std::path::Path;
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor};

use crate::error::{Error, Result};
use crate::export::names;
use crate::generate::{GenerateRequest, generate};
use crate::manifest::Manifest;
use crate::runtime::{BackendChoice, RuntimeConfig, StageRunner, ort_lib};
use crate::sampler::{SamplingConfig, argmax};

fn err<E: std::fmt::Display>(e: E) -> Error {
    Error::Ort(e.to_string())
}

/// Every shard of a model as a bare ONNX Runtime session, run in a loop with no abstraction.
pub struct DirectOrt {
    embed: Session,
    layers: Vec<Session>,
    head: Session,
    kv_shape: (usize, usize),
}

impl std::fmt::Debug for DirectOrt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectOrt")
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl DirectOrt {
    /// Loads all shards of the model in `dir` (same environment and options as the runner).
    pub fn load(dir: &Path, m: &Manifest) -> Result<Self> {
        let env = ort_lib::environment(None, 0)?;
        let open = |l: usize| -> Result<Session> {
            let path = m
                .shard_path(dir, l)
                .ok_or_else(|| Error::Manifest(format!("no shard {l}")))?;
            Session::builder(env)
                .map_err(err)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(err)?
                .commit_from_file(path)
                .map_err(err)
        };
        let n = m.planner_layers();
        Ok(DirectOrt {
            embed: open(0)?,
            layers: (1..n - 1).map(open).collect::<Result<_>>()?,
            head: open(n - 1)?,
            kv_shape: (m.dims.kv_heads, m.dims.head_dim),
        })
    }

    /// Greedy decoding: prefill `prompt`, then `steps` tokens; returns the tokens and the time
    /// of the decode steps after the first token (the per-token figure).
    pub fn decode(&mut self, prompt: &[u32], steps: usize) -> Result<(Vec<u32>, Duration)> {
        let (kv, d) = (self.kv_shape.0 as i64, self.kv_shape.1 as i64);
        let empty =
            || Tensor::<f32>::from_array((vec![1i64, kv, 0, d], Vec::new())).map(|t| t.into_dyn());
        let mut past: Vec<(DynValue, DynValue)> = (0..self.layers.len())
            .map(|_| Ok((empty()?, empty()?)))
            .collect::<ort::Result<_>>()
            .map_err(err)?;
        let mut ids: Vec<i64> = prompt.iter().map(|t| i64::from(*t)).collect();
        let mut len = 0usize;
        let mut out = Vec::with_capacity(steps);
        let mut start = Instant::now();
        for step in 0..steps {
            if step == 1 {
                start = Instant::now();
            }
            let s = ids.len();
            let t = Tensor::from_array((vec![1i64, s as i64], std::mem::take(&mut ids)))
                .map_err(err)?;
            let mut o = self
                .embed
                .run(ort::inputs![names::INPUT_IDS => t])
                .map_err(err)?;
            let mut hidden = o
                .remove(names::HIDDEN_OUT)
                .ok_or_else(|| err("no hidden"))?;
            drop(o);
            let pos: Vec<i64> = (len..len + s).map(|p| p as i64).collect();
            let mask = vec![1i64; len + s];
            for (layer, kv) in self.layers.iter_mut().zip(past.iter_mut()) {
                let m = Tensor::from_array((vec![1i64, mask.len() as i64], mask.clone()))
                    .map_err(err)?;
                let p = Tensor::from_array((vec![1i64, s as i64], pos.clone())).map_err(err)?;
                let mut o = layer
                    .run(ort::inputs![
                        names::HIDDEN => &hidden,
                        names::ATTENTION_MASK => m,
                        names::POSITION_IDS => p,
                        names::PAST_KEY => &kv.0,
                        names::PAST_VALUE => &kv.1,
                    ])
                    .map_err(err)?;
                let h = o
                    .remove(names::HIDDEN_OUT)
                    .ok_or_else(|| err("no hidden"))?;
                let k = o.remove(names::PRESENT_KEY).ok_or_else(|| err("no key"))?;
                let v = o
                    .remove(names::PRESENT_VALUE)
                    .ok_or_else(|| err("no value"))?;
                drop(o);
                hidden = h;
                *kv = (k, v);
            }
            len += s;
            let o = self
                .head
                .run(ort::inputs![names::HIDDEN => &hidden])
                .map_err(err)?;
            let (_, logits) = o[names::LOGITS].try_extract_tensor::<f32>().map_err(err)?;
            let v = logits.len() / s;
            let tok = argmax(&logits[(s - 1) * v..]);
            out.push(tok);
            ids = vec![i64::from(tok)];
        }
        Ok((out, start.elapsed()))
    }
}

/// Memory bandwidth in bytes per second: best of `reps` copies of a `bytes`-sized buffer
/// (each copy reads and writes `bytes`).
pub fn memory_bandwidth(bytes: usize, reps: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let mut best = f64::MAX;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * bytes as f64 / best
}

/// Settings of [`compare_decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeBench {
    /// Tokens generated per round (at least 2).
    pub tokens: usize,
    /// Prompt length.
    pub prompt_len: usize,
    /// Rounds per path, alternating.
    pub rounds: usize,
}

/// Seconds per decoded token of both paths, per round, sorted ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeComparison {
    /// The `shoal generate` path: one [`StageRunner`] over all layers, [`generate`].
    pub shoal_s: Vec<f64>,
    /// The direct ONNX Runtime loop ([`DirectOrt`]).
    pub direct_s: Vec<f64>,
    /// Weight bytes one decode step reads (sum of the manifest's `read_bytes`).
    pub read_bytes: u64,
    /// Measured memory bandwidth, bytes per second.
    pub mem_bw: f64,
}

impl DecodeComparison {
    /// Median seconds per token of (shoal, direct).
    pub fn median(&self) -> (f64, f64) {
        (
            self.shoal_s[self.shoal_s.len() / 2],
            self.direct_s[self.direct_s.len() / 2],
        )
    }

    /// Best seconds per token of (shoal, direct).
    pub fn best(&self) -> (f64, f64) {
        (self.shoal_s[0], self.direct_s[0])
    }

    /// Tokens per second the memory bandwidth allows (weights read once per token).
    pub fn roofline_tokens_per_s(&self) -> f64 {
        self.mem_bw / self.read_bytes as f64
    }
}

/// Greedy decode of the model in `dir` through both paths on ONNX Runtime, alternating
/// rounds; checks both produce the same tokens.
pub fn compare_decode(dir: &Path, m: &Manifest, b: DecodeBench) -> Result<DecodeComparison> {
    if b.tokens < 2 || b.rounds == 0 || b.prompt_len == 0 {
        return Err(Error::BadInput(
            "need tokens >= 2, rounds >= 1, prompt_len >= 1".to_owned(),
        ));
    }
    let cfg = RuntimeConfig {
        backend: BackendChoice::Ort,
        ..RuntimeConfig::default()
    };
    let mut runner = StageRunner::load(dir, m, 0..m.planner_layers(), &cfg)?;
    let mut direct = DirectOrt::load(dir, m)?;
    let prompt: Vec<u32> = (0..b.prompt_len)
        .map(|i| (i * 7 % m.dims.vocab) as u32)
        .collect();
    let req = GenerateRequest {
        prompt_ids: prompt.clone(),
        max_tokens: b.tokens,
        sampling: SamplingConfig::greedy(),
        stop_ids: Vec::new(),
    };
    let steps = (b.tokens - 1) as f64;
    let warm = generate(&mut runner, 1, &req, |_| true)?;
    let (direct_ids, _) = direct.decode(&prompt, b.tokens)?;
    if warm.token_ids != direct_ids {
        return Err(Error::BadInput(
            "the two paths decoded different tokens".to_owned(),
        ));
    }
    let (mut shoal_s, mut direct_s) = (Vec::new(), Vec::new());
    for _ in 0..b.rounds {
        shoal_s.push(generate(&mut runner, 1, &req, |_| true)?.decode_s / steps);
        direct_s.push(direct.decode(&prompt, b.tokens)?.1.as_secs_f64() / steps);
    }
    shoal_s.sort_by(f64::total_cmp);
    direct_s.sort_by(f64::total_cmp);
    Ok(DecodeComparison {
        shoal_s,
        direct_s,
        read_bytes: m.layers.iter().map(|l| l.figures.read_bytes).sum(),
        mem_bw: memory_bandwidth(128 << 20, 5),
    })
}

/// Settings of [`measure_speed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeedBench {
    /// Tokens decoded per round after a short prompt (at least 2).
    pub tokens: usize,
    /// Length of the prompt whose prefill is timed.
    pub prefill_len: usize,
    /// Rounds of each measurement; the median is kept.
    pub rounds: usize,
    /// ONNX Runtime threads (0: one per core).
    pub threads: usize,
}

/// Decode and prefill speed of one model directory on ONNX Runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct Speed {
    /// Weight element type of the model.
    pub dtype: String,
    /// Median decode tokens per second (steps after the first generated token).
    pub decode_tok_s: f64,
    /// Median prefill tokens per second on a `prefill_len`-token prompt.
    pub prefill_tok_s: f64,
    /// Weight bytes one decode step reads (sum of the manifest's `read_bytes`).
    pub read_bytes: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Greedy decode and a long prefill of the model in `dir` through the `shoal generate` path.
pub fn measure_speed(dir: &Path, m: &Manifest, b: SpeedBench) -> Result<Speed> {
    if b.tokens < 2 || b.rounds == 0 || b.prefill_len == 0 {
        return Err(Error::BadInput(
            "need tokens >= 2, rounds >= 1, prefill_len >= 1".to_owned(),
        ));
    }
    let cfg = RuntimeConfig {
        backend: BackendChoice::Ort,
        threads: b.threads,
        ..RuntimeConfig::default()
    };
    let mut runner = StageRunner::load(dir, m, 0..m.planner_layers(), &cfg)?;
    let ids = |n: usize| bench_prompt(m, n);
    let decode = GenerateRequest {
        prompt_ids: ids(8),
        max_tokens: b.tokens,
        sampling: SamplingConfig::greedy(),
        stop_ids: Vec::new(),
    };
    let prefill = GenerateRequest {
        prompt_ids: ids(b.prefill_len),
        max_tokens: 1,
        ..decode.clone()
    };
    generate(&mut runner, 1, &decode, |_| true)?;
    let (mut dec, mut pre) = (Vec::new(), Vec::new());
    for _ in 0..b.rounds {
        dec.push(generate(&mut runner, 1, &decode, |_| true)?.decode_tokens_per_s);
        let s = generate(&mut runner, 1, &prefill, |_| true)?.prefill_s;
        pre.push(b.prefill_len as f64 / s.max(f64::MIN_POSITIVE));
    }
    Ok(Speed {
        dtype: m.dtype.clone(),
        decode_tok_s: median(dec),
        prefill_tok_s: median(pre),
        read_bytes: m.layers.iter().map(|l| l.figures.read_bytes).sum(),
    })
}

/// A fixed `n`-token prompt within the model's vocabulary (the speed measurements' input).
fn bench_prompt(m: &Manifest, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7 + 3) % m.dims.vocab) as u32)
        .collect()
}

/// Time one kind of ONNX Runtime node (or a whole `Run`) took in a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    /// The op type (`MatMulNBits`, ...), or `(session run)` for whole `Run` calls.
    pub op: String,
    /// Events of this kind.
    pub count: u64,
    /// Their summed duration, microseconds.
    pub total_us: f64,
}

/// Where the time of a greedy decode goes on ONNX Runtime: `tokens` tokens after an 8-token
/// prompt with every session profiled into `out` (one JSON file per shard), then summed per
/// op type, largest first, with the whole `Run` calls as `(session run)` (their time beyond
/// the nodes' is ONNX Runtime's per-call overhead) and the wall time of the decode as
/// `(wall)`.
pub fn profile_decode(
    dir: &Path,
    m: &Manifest,
    threads: usize,
    tokens: usize,
    out: &Path,
) -> Result<Vec<OpTime>> {
    let cfg = RuntimeConfig {
        backend: BackendChoice::Ort,
        threads,
        ort_profile: Some(out.to_path_buf()),
        ..RuntimeConfig::default()
    };
    let mut runner = StageRunner::load(dir, m, 0..m.planner_layers(), &cfg)?;
    let req = GenerateRequest {
        prompt_ids: bench_prompt(m, 8),
        max_tokens: tokens.max(2),
        sampling: SamplingConfig::greedy(),
        stop_ids: Vec::new(),
    };
    let (start, since) = (Instant::now(), std::time::SystemTime::now());
    generate(&mut runner, 1, &req, |_| true)?;
    let wall = start.elapsed();
    // Dropping the sessions writes their profiles.
    drop(runner);
    let mut table = std::collections::BTreeMap::<String, (u64, f64)>::new();
    let files = std::fs::read_dir(out).map_err(Error::io(out))?;
    for f in files {
        let f = f.map_err(Error::io(out))?;
        let path = f.path();
        // Only this run's profiles: the folder may hold earlier ones.
        let fresh = f
            .metadata()
            .and_then(|md| md.modified())
            .is_ok_and(|t| t >= since);
        if path.extension().is_none_or(|e| e != "json") || !fresh {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let events: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(Error::json(&path))?;
        for e in events {
            let dur = e["dur"].as_f64().unwrap_or(0.0);
            let key = match (e["cat"].as_str(), e["name"].as_str()) {
                (Some("Node"), Some(n)) if n.ends_with("_kernel_time") => {
                    e["args"]["op_name"].as_str().unwrap_or("?").to_owned()
                }
                (Some("Session"), Some("model_run")) => "(session run)".to_owned(),
                _ => continue,
            };
            let slot = table.entry(key).or_default();
            slot.0 += 1;
            slot.1 += dur;
        }
    }
    let mut rows: Vec<OpTime> = table
        .into_iter()
        .map(|(op, (count, total_us))| OpTime {
            op,
            count,
            total_us,
        })
        .collect();
    rows.push(OpTime {
        op: "(wall)".to_owned(),
        count: 1,
        total_us: wall.as_secs_f64() * 1e6,
    });
    rows.sort_by(|a, b| b.total_us.total_cmp(&a.total_us));
    Ok(rows)
}
