//! How fast this machine's model runtime multiplies: the effective FLOP/s of one decode-shaped
//! matrix product (`[1, n] x [n, n]`) run through the same engine and settings the stages use.
//!
//! The planner's compute term is `flops / flops_i`. Timing a hand-written Rust loop instead
//! measures the Rust compiler's output, not the runtime: on the debug build the tests run it
//! read 0.1 GFLOP/s, and the cost model charged 10-12 ms per token for stages that took 3 ms.
//! A decode step's products are small, so the runtime's per-call cost is part of what is
//! measured here, as it is part of every layer's time.

use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use tract_onnx::prelude::*;

use super::{Backend, RuntimeConfig, ort_lib};
use crate::error::{Error, Result};
use crate::onnx::{DType, Dim, GraphBuilder, encode_inline};

/// Runs untimed before the measurement (first-run allocations, kernel selection).
const WARM_UP: usize = 5;

/// Effective FLOP/s of a `[1, n] x [n, n]` product (`n` clamped to 16..=2048) on the engine
/// `config` resolves to, timed over at least `min_time`.
pub fn matmul_flops(config: &RuntimeConfig, n: usize, min_time: Duration) -> Result<f64> {
    let n = n.clamp(16, 2048);
    let model = matmul_model(n);
    let x: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut run: Box<dyn FnMut() -> Result<()>> = match config.resolve_backend()? {
        Backend::Ort => {
            let env = ort_lib::environment(config.ort_dylib_path.as_deref(), config.threads)?;
            fn err<E: std::fmt::Display>(e: E) -> Error {
                Error::Ort(format!("calibration: {e}"))
            }
            let mut session = Session::builder(env)
                .map_err(err)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(err)?
                .commit_from_memory(&model)
                .map_err(err)?;
            Box::new(move || {
                let t = ort::value::Tensor::from_array((vec![1i64, n as i64], x.clone()))
                    .map_err(err)?;
                session.run(ort::inputs!["x" => t]).map_err(err)?;
                Ok(())
            })
        }
        Backend::Tract => {
            let err = |e: TractError| Error::Tract(format!("calibration: {e:#}"));
            let plan = tract_onnx::onnx()
                .model_for_read(&mut model.as_slice())
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
                .map_err(err)?;
            Box::new(move || {
                let t = Tensor::from_shape(&[1, n], &x).map_err(err)?;
                plan.run(tvec![t.into_tvalue()]).map_err(err)?;
                Ok(())
            })
        }
    };
    for _ in 0..WARM_UP {
        run()?;
    }
    let start = Instant::now();
    let mut reps = 0u64;
    while reps == 0 || start.elapsed() < min_time {
        run()?;
        reps += 1;
    }
    Ok(2.0 * (n * n) as f64 * reps as f64 / start.elapsed().as_secs_f64())
}

/// An ONNX model `y = x @ w` with input `x: [1, n]` and a constant `w: [n, n]`, serialised.
fn matmul_model(n: usize) -> Vec<u8> {
    let mut g = GraphBuilder::new("calibrate");
    let dims = [Dim::Fixed(1), Dim::Fixed(n)];
    let x = g.input("x", DType::F32, &dims);
    let w = g.const_f32(
        "w",
        vec![n, n],
        (0..n * n).map(|i| (i % 7) as f32 * 0.01).collect(),
    );
    let y = g.matmul(&x, &w);
    g.output(&y, "y", DType::F32, &dims);
    encode_inline(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_engines_time_the_product() {
        for backend in [
            super::super::BackendChoice::Tract,
            super::super::BackendChoice::Auto,
        ] {
            let config = RuntimeConfig {
                backend,
                ..RuntimeConfig::default()
            };
            let f = matmul_flops(&config, 128, Duration::from_millis(20)).unwrap();
            // Anything that multiplies at all does more than 10 MFLOP/s and less than 10 TFLOP/s.
            assert!((1e7..1e13).contains(&f), "{backend:?}: {f} FLOP/s");
            eprintln!("{backend:?}: {:.2} GFLOP/s", f / 1e9);
        }
    }
}
