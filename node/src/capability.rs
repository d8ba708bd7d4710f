//! What this node can do, measured at start: effective FLOP/s, memory bandwidth and the memory
//! it offers (its battery and heat are `crate::power`'s).
//!
//! Compute is timed on a decode-shaped matrix product of the model's hidden size, run through
//! the model runtime the stages use (`shoal_model::runtime::calibrate`) when the node holds a
//! model, so the planner's compute term describes that engine; a node without a model (or
//! whose runtime fails to load) times a plain Rust loop instead (a batch of token vectors
//! times a hidden x hidden block that fits in cache). Memory bandwidth is timed on large
//! copies that do not fit in cache. Both run once at start on a blocking thread.

use std::time::{Duration, Instant};

/// Share of `MemAvailable` offered when the config sets no `memory_offered`.
pub const DEFAULT_MEMORY_SHARE: f64 = 0.7;
/// Minimum wall time of each measurement, so timer resolution does not matter.
const MIN_MEASURE: Duration = Duration::from_millis(60);
/// Size of the memory-bandwidth copy buffers, bytes (well beyond any cache).
const COPY_BYTES: usize = 64 << 20;
/// Largest weight-block side of the compute measurement (keeps it cache-resident).
const MAX_BLOCK: usize = 256;
/// Token vectors per compute step.
const BATCH: usize = 8;

/// Measured speeds of this machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speeds {
    /// Effective FLOP/s of a decode-shaped matrix product.
    pub flops: f64,
    /// Memory bandwidth, bytes per second (bytes read + written per second of copying).
    pub mem_bw: f64,
}

/// Times compute on blocks shaped by `hidden` (the model's hidden size, or 1024 without one)
/// and memory bandwidth on 64 MiB copies. With `runtime` (the settings the node's stages run
/// with), compute is timed through that model runtime; should it fail to load, through a
/// plain Rust loop, with a warning.
pub fn measure(hidden: usize, runtime: Option<&shoal_model::RuntimeConfig>) -> Speeds {
    let through_runtime = runtime.and_then(|c| {
        shoal_model::runtime::calibrate::matmul_flops(c, hidden, MIN_MEASURE)
            .map_err(|e| tracing::warn!("timing compute through the model runtime: {e}"))
            .ok()
    });
    Speeds {
        flops: through_runtime.unwrap_or_else(|| measure_flops(hidden.clamp(16, MAX_BLOCK))),
        mem_bw: measure_mem_bw(),
    }
}

fn measure_flops(n: usize) -> f64 {
    let w: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.01).collect();
    let x: Vec<f32> = (0..BATCH * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut y = vec![0f32; BATCH * n];
    let start = Instant::now();
    let mut reps = 0u64;
    while start.elapsed() < MIN_MEASURE {
        matmul(&x, &w, &mut y, n);
        reps += 1;
    }
    std::hint::black_box(&y);
    let flops = 2.0 * (BATCH * n * n) as f64 * reps as f64;
    flops / start.elapsed().as_secs_f64()
}

/// y[b] = x[b] * W for each of the BATCH rows (row-major, n x n weights).
fn matmul(x: &[f32], w: &[f32], y: &mut [f32], n: usize) {
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        yr.iter_mut().for_each(|v| *v = 0.0);
        for (xi, wr) in xr.iter().zip(w.chunks_exact(n)) {
            for (yv, wv) in yr.iter_mut().zip(wr) {
                *yv += xi * wv;
            }
        }
    }
}

fn measure_mem_bw() -> f64 {
    let src = vec![1u8; COPY_BYTES];
    let mut dst = vec![0u8; COPY_BYTES];
    let start = Instant::now();
    let mut reps = 0u64;
    while start.elapsed() < MIN_MEASURE {
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        reps += 1;
    }
    2.0 * COPY_BYTES as f64 * reps as f64 / start.elapsed().as_secs_f64()
}

/// Memory to offer, bytes: the override, else [`DEFAULT_MEMORY_SHARE`] of `MemAvailable`
/// (0 when `/proc/meminfo` is unreadable, which makes the node hold no layers).
pub fn memory_offered(override_bytes: Option<u64>) -> u64 {
    if let Some(b) = override_bytes {
        return b;
    }
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let avail_kib = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    (avail_kib as f64 * 1024.0 * DEFAULT_MEMORY_SHARE) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_are_positive_and_finite() {
        let s = measure(64, None);
        assert!(s.flops.is_finite() && s.flops > 1e6, "{s:?}");
        assert!(s.mem_bw.is_finite() && s.mem_bw > 1e7, "{s:?}");
    }

    #[test]
    fn matmul_is_right() {
        let n = 2;
        let x = [1.0, 2.0].repeat(BATCH);
        let w = [1.0, 2.0, 3.0, 4.0];
        let mut y = vec![0.0; BATCH * n];
        matmul(&x, &w, &mut y, n);
        assert_eq!(&y[..2], &[7.0, 10.0]);
    }

    #[test]
    fn override_wins() {
        assert_eq!(memory_offered(Some(123)), 123);
    }
}
