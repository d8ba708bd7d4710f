//! Choosing the next token from logits: greedy, or temperature sampling restricted by top-k
//! and top-p, from a seeded ChaCha8 stream so a seed reproduces a generation.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How to pick tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// 0 (or below) means greedy: always the most likely token.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Seed of the random stream.
    pub seed: u64,
}

impl SamplingConfig {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    /// Whether this is greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
        }
    }
}

/// A sampler with its random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplingConfig,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler seeded from `config.seed`.
    pub fn new(config: SamplingConfig) -> Self {
        Sampler {
            config,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Picks a token id from one position's logits. Panics never; an empty slice gives 0.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.config.is_greedy() {
            return argmax(logits);
        }
        let (idx, probs) = self.kept(logits);
        if idx.is_empty() {
            return 0;
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, p) in idx.iter().zip(&probs) {
            if r < *p {
                return *i as u32;
            }
            r -= p;
        }
        idx.last().map_or(0, |i| *i as u32)
    }

    /// The distribution [`Sampler::sample`] draws from for these logits, as (token, probability)
    /// pairs summing to 1, most likely first: temperature, then top-k, then top-p. Greedy
    /// decoding puts all the mass on the argmax. Speculative sampling compares these.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        if self.config.is_greedy() {
            return vec![(argmax(logits), 1.0)];
        }
        let (idx, probs) = self.kept(logits);
        let total: f32 = probs.iter().sum();
        idx.into_iter()
            .zip(probs)
            .map(|(i, p)| (i as u32, p / total))
            .collect()
    }

    /// A uniform draw in `[0, 1)` from this sampler's stream.
    pub fn uniform(&mut self) -> f32 {
        self.rng.random::<f32>()
    }

    /// Draws a token from `dist` ((token, weight) pairs; the weights need not sum to 1) with
    /// this sampler's stream; 0 when `dist` is empty.
    pub fn draw(&mut self, dist: &[(u32, f32)]) -> u32 {
        let total: f32 = dist.iter().map(|(_, p)| p).sum();
        let mut r = self.rng.random::<f32>() * total;
        for (t, p) in dist {
            if r < *p {
                return *t;
            }
            r -= p;
        }
        dist.last().map_or(0, |(t, _)| *t)
    }

    /// The kept token indices, most likely first, and their unnormalised weights.
    fn kept(&self, logits: &[f32]) -> (Vec<usize>, Vec<f32>) {
        let t = self.config.temperature;
        let mut idx: Vec<usize> = (0..logits.len()).filter(|i| !logits[*i].is_nan()).collect();
        idx.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
        if self.config.top_k > 0 {
            idx.truncate(self.config.top_k);
        }
        let Some(&first) = idx.first() else {
            return (Vec::new(), Vec::new());
        };
        let max = logits[first];
        let mut probs: Vec<f32> = idx.iter().map(|i| ((logits[*i] - max) / t).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.config.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (n, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.config.top_p {
                    keep = n + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
        }
        (idx, probs)
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_max() {
        let mut s = Sampler::new(SamplingConfig::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_reproduces() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32).collect();
        let mut k1 = Sampler::new(SamplingConfig {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 3,
        });
        assert_eq!(k1.sample(&logits), argmax(&logits));
        let cfg = SamplingConfig {
            temperature: 1.5,
            top_k: 0,
            top_p: 0.9,
            seed: 7,
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        assert!(
            a.iter().any(|t| *t != a[0]),
            "sampling at T=1.5 should vary: {a:?}"
        );
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // One token holds ~0.9999 of the mass: top_p 0.5 must always pick it.
        let mut logits = vec![0.0f32; 10];
        logits[4] = 12.0;
        let mut s = Sampler::new(SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 1,
        });
        assert!((0..100).all(|_| s.sample(&logits) == 4));
    }
}
