//! Batched decode steps: one position of several sessions in one model call per shard, so a
//! stage reads its weights once for all the sessions waiting for it (docs/pipeline.md,
//! "Concurrent sessions"). Each session keeps its own K/V cache; for the call the caches are
//! copied right-padded into one `[B,KV,P,D]` tensor whose padding the attention mask hides (the
//! graphs take key positions from the mask's running count, so a row's new key sits at its own
//! position whatever the padding), and each row's present cache is cut back out of the result.
//! ONNX Runtime only; the caller runs other steps one by one.

use std::time::Instant;

use super::ort_backend::OrtKv;
use super::{
    Activation, Backend, Hidden, Kv, LayerKind, Shard, StageInput, StageOutput, StageRunner,
};
use crate::error::{Error, Result};

/// The attention mask of a batch whose rows hold `lens[i]` cached positions, padded to
/// `max`, plus the new one: `[B, max + 1]`, ones on each row's real positions and the last.
pub(crate) fn batch_mask(lens: &[usize], max: usize) -> Vec<i64> {
    let mut m = Vec::with_capacity(lens.len() * (max + 1));
    for &len in lens {
        m.extend((0..max).map(|j| i64::from(j < len)));
        m.push(1);
    }
    m
}

/// Copies each row's cache `[1,KV,len,D]` into a right-padded `[B,KV,max,D]` buffer (zeros in
/// the padding).
pub(crate) fn pad_caches(
    rows: &[&[f32]],
    lens: &[usize],
    heads: usize,
    dim: usize,
    max: usize,
) -> Vec<f32> {
    let mut out = vec![0.0; rows.len() * heads * max * dim];
    for (b, (row, &len)) in rows.iter().zip(lens).enumerate() {
        for h in 0..heads {
            let src = &row[h * len * dim..(h + 1) * len * dim];
            let at = (b * heads + h) * max * dim;
            out[at..at + len * dim].copy_from_slice(src);
        }
    }
    out
}

/// Cuts row `b`'s present cache out of a batch's `[B,KV,max+1,D]` result: its `len` real
/// positions and the new one (the last), as `[1,KV,len+1,D]`.
pub(crate) fn cut_row(
    present: &[f32],
    b: usize,
    len: usize,
    heads: usize,
    dim: usize,
    max: usize,
) -> Vec<f32> {
    let total = max + 1;
    let mut out = Vec::with_capacity(heads * (len + 1) * dim);
    for h in 0..heads {
        let at = (b * heads + h) * total * dim;
        out.extend_from_slice(&present[at..at + len * dim]);
        out.extend_from_slice(&present[at + max * dim..at + total * dim]);
    }
    out
}

impl StageRunner {
    /// Whether a step of `session` at `start` with `input` can join a batch: ONNX Runtime,
    /// one new position, the session exists and holds exactly `start` positions.
    pub fn batchable(&self, session: u64, start: usize, input: &StageInput) -> bool {
        let one = match input {
            StageInput::Tokens(t) => t.len() == 1,
            StageInput::Hidden(a) => a.shape.get(1) == Some(&1),
        };
        self.backend == Backend::Ort
            && one
            && start > 0
            && self.sessions.get(session).is_some_and(|s| s.len == start)
            && self.check_input(input).is_ok()
    }

    /// Runs one decode position for each `(session, start, input)` (all [`StageRunner::batchable`],
    /// distinct sessions) in one call per shard; the outputs are in the same order, as if each
    /// had been run alone. A failure fails (and drops) every session of the batch.
    pub fn run_batch(&mut self, jobs: &[(u64, usize, StageInput)]) -> Result<Vec<StageOutput>> {
        let r = self.batch_step(jobs);
        if r.is_err() {
            for (session, _, _) in jobs {
                self.sessions.remove(*session);
            }
        }
        r
    }

    fn batch_step(&mut self, jobs: &[(u64, usize, StageInput)]) -> Result<Vec<StageOutput>> {
        let b = jobs.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        for (session, start, input) in jobs {
            if !self.batchable(*session, *start, input) {
                return Err(Error::BadInput(format!(
                    "session {session} cannot join a batch"
                )));
            }
        }
        let lens: Vec<usize> = jobs.iter().map(|(_, start, _)| *start).collect();
        let max = lens.iter().copied().max().unwrap_or(0);
        let mask = batch_mask(&lens, max);
        let pos: Vec<i64> = lens.iter().map(|l| *l as i64).collect();
        let (heads, dim) = self.kv_shape;
        let now = Instant::now();
        let mut hidden: Option<Hidden> = match &jobs[0].2 {
            StageInput::Tokens(_) => None,
            StageInput::Hidden(_) => {
                let mut data = Vec::with_capacity(b * self.hidden);
                for (_, _, input) in jobs {
                    if let StageInput::Hidden(a) = input {
                        data.extend_from_slice(&a.data);
                    }
                }
                Some(Hidden::Host(Activation::new(
                    vec![b, 1, self.hidden],
                    data,
                )?))
            }
        };
        let mut kv_i = 0;
        let mut logits = None;
        for (shard, kind) in self.shards.iter_mut().zip(&self.kinds) {
            let Shard::Ort(shard) = shard else {
                return Err(Error::BadInput("batches run on ONNX Runtime only".into()));
            };
            match kind {
                LayerKind::Embedding => {
                    let ids: Vec<i64> = jobs
                        .iter()
                        .filter_map(|(_, _, input)| match input {
                            StageInput::Tokens(t) => t.first().map(|t| i64::from(*t)),
                            StageInput::Hidden(_) => None,
                        })
                        .collect();
                    if ids.len() != b {
                        return Err(Error::BadInput("the embedding needs token ids".into()));
                    }
                    hidden = Some(shard.embed_rows(&ids)?);
                }
                LayerKind::Decoder => {
                    let h = hidden
                        .take()
                        .ok_or_else(|| Error::BadInput("no hidden states".to_owned()))?;
                    // Each row's cache, read in place and copied once, into the padding.
                    let mut keys = Vec::with_capacity(b);
                    let mut values = Vec::with_capacity(b);
                    for (session, _, _) in jobs {
                        let state = self
                            .sessions
                            .get(*session)
                            .ok_or_else(|| Error::BadInput(format!("no session {session}")))?;
                        let (k, v) = match &state.kv[kv_i] {
                            Kv::Ort(Some(kv)) => kv.values()?,
                            _ => return Err(Error::BadInput("no cache to extend".into())),
                        };
                        keys.push(k);
                        values.push(v);
                    }
                    let past = (
                        pad_caches(&keys, &lens, heads, dim, max),
                        pad_caches(&values, &lens, heads, dim, max),
                    );
                    let (out, key, value) =
                        shard.layer_rows(h, (&mask, &pos), [b, heads, max, dim], past)?;
                    for (row, (session, _, _)) in jobs.iter().enumerate() {
                        let len = lens[row];
                        let shape = vec![1, heads, len + 1, dim];
                        let k = Activation::new(
                            shape.clone(),
                            cut_row(&key.data, row, len, heads, dim, max),
                        )?;
                        let v = Activation::new(
                            shape,
                            cut_row(&value.data, row, len, heads, dim, max),
                        )?;
                        let kv = OrtKv::from_host(k, v)?;
                        if let Some(state) = self.sessions.get_mut(*session) {
                            state.kv[kv_i] = Kv::Ort(Some(kv));
                        }
                    }
                    kv_i += 1;
                    hidden = Some(out);
                }
                LayerKind::Head => {
                    let h = hidden
                        .take()
                        .ok_or_else(|| Error::BadInput("no hidden states".to_owned()))?;
                    logits = Some(shard.head(h)?);
                }
            }
        }
        for (session, _, _) in jobs {
            // Counts as a use, so the idle sweep spares it.
            self.sessions.touch(*session, now);
            if let Some(state) = self.sessions.get_mut(*session) {
                state.len += 1;
            }
        }
        let split = |a: Activation| -> Result<Vec<Activation>> {
            let width = a.shape.last().copied().unwrap_or(0).max(1);
            a.data
                .chunks_exact(width)
                .map(|r| Activation::new(vec![1, 1, width], r.to_vec()))
                .collect()
        };
        match (logits, hidden) {
            (Some(l), _) => Ok(split(l)?.into_iter().map(StageOutput::Logits).collect()),
            (None, Some(h)) => Ok(split(h.into_host()?)?
                .into_iter()
                .map(StageOutput::Hidden)
                .collect()),
            (None, None) => Err(Error::BadInput("stage produced nothing".to_owned())),
        }
    }
}
