//! Seeded synthetic clusters for `shoal bench planner` and tests: a 7B-class model quantised
//! to about 4 GB split into `layers` equal decoder layers (the first is the embedding, the
//! last the head), and `devices` phones and laptops joined by Wi-Fi-like links, a tenth of
//! the directed links missing. The same seed always gives the same scenario (SplitMix64, no
//! dependency on `rand`).

use crate::scenario::{Device, Layer, Link, Model, Net, Scenario};

/// SplitMix64: tiny, seedable, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.range(0.0, 1.0) < p
    }
}

/// A cluster of `devices` devices and a model of `layers` layers (both at least 1).
pub fn cluster(devices: usize, layers: usize, seed: u64) -> Scenario {
    let mut rng = Rng::new(seed);
    let layers = layers.max(1);
    let hidden_bytes = 4096.0 * 2.0; // one fp16 hidden state of a 7B model
    let per_layer = 4.0e9 / layers as f64;
    let model_layers = (0..layers)
        .map(|_| Layer {
            flops: 2.0 * per_layer * 2.0, // two flops per weight, ~2 weights per q4 byte
            param_bytes: per_layer,
            read_bytes: None,
            kv_bytes_per_token: 2.0 * 1024.0 * 2.0,
            out_bytes: hidden_bytes,
        })
        .collect();
    let devs: Vec<Device> = (0..devices.max(1))
        .map(|k| {
            let laptop = rng.chance(0.25);
            Device {
                id: format!("d{k:02}"),
                flops: if laptop {
                    rng.range(2e11, 8e11)
                } else {
                    rng.range(3e10, 2e11)
                },
                mem_bw: Some(if laptop {
                    rng.range(4e10, 1e11)
                } else {
                    rng.range(8e9, 4e10)
                }),
                mem_bytes: if laptop {
                    rng.range(8e9, 32e9)
                } else {
                    rng.range(1.5e9, 8e9)
                },
                overhead_s: rng.range(2e-4, 2e-3),
            }
        })
        .collect();
    let mut links = Vec::new();
    for a in &devs {
        for b in &devs {
            if a.id != b.id && !rng.chance(0.1) {
                links.push(Link {
                    from: a.id.clone(),
                    to: b.id.clone(),
                    rtt_s: rng.range(0.002, 0.04),
                    jitter_s: rng.range(0.0005, 0.01),
                    bandwidth_bps: rng.range(1e7, 3e8),
                    loss: if rng.chance(0.2) {
                        rng.range(0.0, 0.05)
                    } else {
                        0.0
                    },
                    symmetric: false,
                });
            }
        }
    }
    Scenario {
        model: Model {
            name: format!("synthetic-7b-{layers}"),
            context_tokens: 1024.0,
            token_bytes: 4.0,
            layers: model_layers,
        },
        origin: devs[0].id.clone(),
        devices: devs,
        links,
        net: Net::default(),
        memory_fraction: 0.8,
        stage_penalty_s: 0.0,
    }
}
