//! The long run: at least 1,000,000 random and mutated inputs through every decoder.
//!
//! Run it with
//! `cargo test -p shoal-protocol --release --test wire -- --ignored long_run --nocapture`;
//! `SHOAL_LONG_RUN_INPUTS=N` sets the number of inputs (default 1,000,000). Inputs are drawn
//! from a seeded ChaCha generator (`SHOAL_LONG_RUN_SEED`, default 1): pure random bytes, valid
//! frames of every kind truncated, bit-flipped, with bytes inserted, deleted or overwritten,
//! spliced with each other, or a valid header over random bytes. A panic anywhere fails it.

use std::time::Instant;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::decoders::{corpus, run_all};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn mutate(rng: &mut ChaCha8Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let base = &corpus[rng.random_range(0..corpus.len())];
    let mut b = base.clone();
    match rng.random_range(0..8u8) {
        0 => {
            let mut r = vec![0u8; rng.random_range(0..512)];
            rng.fill_bytes(&mut r);
            return r;
        }
        1 => b.truncate(rng.random_range(0..b.len())),
        2 => {
            for _ in 0..rng.random_range(1..=8) {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
        }
        3 => {
            let i = rng.random_range(0..=b.len());
            b.insert(i, rng.random());
        }
        4 => {
            let i = rng.random_range(0..b.len());
            b.remove(i);
        }
        5 => {
            let i = rng.random_range(0..b.len());
            let n = rng.random_range(1..=16).min(b.len() - i);
            rng.fill_bytes(&mut b[i..i + n]);
        }
        6 => {
            let other = &corpus[rng.random_range(0..corpus.len())];
            let cut = rng.random_range(0..=b.len().min(other.len()));
            b.truncate(cut);
            b.extend_from_slice(&other[cut..]);
        }
        _ => {
            b.truncate(4);
            let mut r = vec![0u8; rng.random_range(0..256)];
            rng.fill_bytes(&mut r);
            b.extend_from_slice(&r);
        }
    }
    b
}

#[test]
#[ignore = "long run: cargo test -p shoal-protocol --release --test wire -- --ignored long_run"]
fn long_run() {
    let inputs = env_u64("SHOAL_LONG_RUN_INPUTS", 1_000_000);
    let mut rng = ChaCha8Rng::seed_from_u64(env_u64("SHOAL_LONG_RUN_SEED", 1));
    let corpus = corpus(16);
    let start = Instant::now();
    let (mut calls, mut accepted) = (0u64, 0u64);
    for _ in 0..inputs {
        let input = mutate(&mut rng, &corpus);
        let (n, ok) = run_all(&input);
        calls += n as u64;
        accepted += ok as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "long_run: {inputs} inputs, {calls} decoder calls ({} decoders), {accepted} accepted, \
         0 panics, {secs:.1} s ({:.0} inputs/s), corpus {} frames",
        calls / inputs.max(1),
        inputs as f64 / secs,
        corpus.len()
    );
    assert!(calls >= inputs);
}
