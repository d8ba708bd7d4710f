//! Helpers shared by the integration tests: synthesising models and running the unsplit
//! reference graph directly on ONNX Runtime.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use ort::session::Session;
use ort::value::{DynValue, Tensor};
use shoal_model::export::export_unsplit;
use shoal_model::runtime::ort_lib;
use shoal_model::synth::{SynthOptions, SynthWeights, synth};
use shoal_model::{Manifest, StageInput, StageOutput, StageRunner};

/// A small synthetic model written to `dir`, with `unsplit.onnx` next to it.
pub fn make_model(dir: &Path, opts: &SynthOptions) -> Manifest {
    let m = synth(opts, dir, false).unwrap();
    let arch = opts.arch().unwrap();
    export_unsplit(
        &arch,
        &mut SynthWeights::new(opts).unwrap(),
        dir,
        "unsplit.onnx",
    )
    .unwrap();
    m
}

/// Runs the unsplit graph step by step with its own KV cache.
pub struct Unsplit {
    session: Session,
    layers: usize,
    past: Vec<(DynValue, DynValue)>,
    len: usize,
}

impl Unsplit {
    pub fn load(dir: &Path, m: &Manifest) -> Unsplit {
        let env = ort_lib::environment(None, 0).unwrap();
        let session = Session::builder(env)
            .unwrap()
            .commit_from_file(dir.join("unsplit.onnx"))
            .unwrap();
        let d = &m.dims;
        let empty = || {
            Tensor::<f32>::from_array((
                vec![1i64, d.kv_heads as i64, 0, d.head_dim as i64],
                Vec::new(),
            ))
            .unwrap()
            .into_dyn()
        };
        let past = (0..d.layers).map(|_| (empty(), empty())).collect();
        Unsplit {
            session,
            layers: d.layers,
            past,
            len: 0,
        }
    }

    /// Logits `[S*V]` for `ids` continuing the sequence.
    pub fn step(&mut self, ids: &[u32]) -> Vec<f32> {
        let s = ids.len();
        let ids: Vec<i64> = ids.iter().map(|t| i64::from(*t)).collect();
        let pos: Vec<i64> = (self.len..self.len + s).map(|p| p as i64).collect();
        let mask = vec![1i64; self.len + s];
        let mut inputs: Vec<(String, DynValue)> = vec![
            (
                "input_ids".into(),
                Tensor::from_array((vec![1i64, s as i64], ids))
                    .unwrap()
                    .into_dyn(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array((vec![1i64, mask.len() as i64], mask))
                    .unwrap()
                    .into_dyn(),
            ),
            (
                "position_ids".into(),
                Tensor::from_array((vec![1i64, s as i64], pos))
                    .unwrap()
                    .into_dyn(),
            ),
        ];
        for (i, (k, v)) in self.past.drain(..).enumerate() {
            inputs.push((format!("past_key.{i}"), k));
            inputs.push((format!("past_value.{i}"), v));
        }
        let mut out = self.session.run(inputs).unwrap();
        for i in 0..self.layers {
            let k = out.remove(format!("present_key.{i}")).unwrap();
            let v = out.remove(format!("present_value.{i}")).unwrap();
            self.past.push((k, v));
        }
        self.len += s;
        out["logits"]
            .try_extract_tensor::<f32>()
            .unwrap()
            .1
            .to_vec()
    }
}

/// Runs a chain of stage runners on one session; returns the logits.
pub fn chain(runners: &mut [StageRunner], session: u64, ids: &[u32]) -> Vec<f32> {
    let mut input = StageInput::Tokens(ids.to_vec());
    for r in runners.iter_mut() {
        match r.run(session, input).unwrap() {
            StageOutput::Hidden(h) => input = StageInput::Hidden(h),
            StageOutput::Logits(l) => return l.data,
        }
    }
    panic!("chain does not end at the head");
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn argmax_last(logits: &[f32], vocab: usize) -> u32 {
    shoal_model::sampler::argmax(&logits[logits.len() - vocab..])
}
