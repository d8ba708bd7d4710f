//! Seeded synthetic scenarios for `shoal bench planner` and tests, both with a 7B-class model
//! quantised to about 4 GB split into `layers` equal layers (the first is the embedding, the
//! last the head):
//! - [`cluster`]: `devices` phones and laptops joined by Wi-Fi-like links, a tenth of the
//!   directed links missing, the origin first; most devices hold a large share of the model.
//! - [`heterogeneous`]: the hard cases of issue 15: every device different (2-50 GFLOP/s,
//!   2-20 GB/s), each holding only 7-40% of the model (3-15 stages needed), about 90% of the
//!   directed links present with RTT 1-150 ms, jitter up to 30 ms, 1 Mbit/s-1 Gbit/s and
//!   0-10% loss, the origin anywhere.
//!
//! The same seed always gives the same scenario (SplitMix64, no dependency on `rand`).

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

/// The 7B-class model of both generators: `layers` equal layers, 4 GB of weights in all.
fn model_7b(layers: usize) -> Model {
    let hidden_bytes = 4096.0 * 2.0; // one fp16 hidden state of a 7B model
    let per_layer = 4.0e9 / layers as f64;
    Model {
        name: format!("synthetic-7b-{layers}"),
        context_tokens: 1024.0,
        token_bytes: 4.0,
        layers: (0..layers)
            .map(|_| Layer {
                flops: 2.0 * per_layer * 2.0, // two flops per weight, ~2 weights per q4 byte
                param_bytes: per_layer,
                read_bytes: None,
                kv_bytes_per_token: 2.0 * 1024.0 * 2.0,
                out_bytes: hidden_bytes,
            })
            .collect(),
    }
}

/// A cluster of `devices` devices and a model of `layers` layers (both at least 1).
pub fn cluster(devices: usize, layers: usize, seed: u64) -> Scenario {
    let mut rng = Rng::new(seed);
    let layers = layers.max(1);
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
        model: model_7b(layers),
        origin: devs[0].id.clone(),
        devices: devs,
        links,
        net: Net::default(),
        memory_fraction: 0.8,
        stage_penalty_s: 0.0,
        speculation: None,
        fetch: None,
        energy: None,
    }
}

/// Share of the DESIGN.md memory rule's usable bytes `memory_fraction * mem_bytes` that
/// [`heterogeneous`] devices get, as a fraction of the whole model's memory.
pub const HETERO_SHARE: (f64, f64) = (0.07, 0.40);

/// A heterogeneous, memory-tight swarm of `devices` devices and a model of `layers` layers
/// (both at least 1): the cases of issue 15 (see the module docs for the ranges). Every
/// device draws its own compute, memory bandwidth, memory share ([`HETERO_SHARE`] of the
/// model) and overhead; each directed link is present with probability 0.9 and draws its own
/// figures; the origin is any device. Small swarms can be infeasible (too little memory).
pub fn heterogeneous(devices: usize, layers: usize, seed: u64) -> Scenario {
    let mut rng = Rng::new(seed ^ 0x4845_5445_524f);
    let model = model_7b(layers.max(1));
    let memory_fraction = 0.8;
    let total: f64 = model
        .layers
        .iter()
        .map(|l| crate::cost::layer_memory(l, model.context_tokens))
        .sum();
    let devs: Vec<Device> = (0..devices.max(1))
        .map(|k| Device {
            id: format!("h{k:02}"),
            flops: rng.range(2e9, 50e9),
            mem_bw: Some(rng.range(2e9, 20e9)),
            mem_bytes: total * rng.range(HETERO_SHARE.0, HETERO_SHARE.1) / memory_fraction,
            overhead_s: rng.range(1e-4, 5e-3),
        })
        .collect();
    let mut links = Vec::new();
    for a in &devs {
        for b in &devs {
            if a.id != b.id && rng.chance(0.9) {
                links.push(Link {
                    from: a.id.clone(),
                    to: b.id.clone(),
                    rtt_s: rng.range(0.001, 0.150),
                    jitter_s: rng.range(0.0, 0.030),
                    // Log-uniform over three decades: 1 Mbit/s to 1 Gbit/s.
                    bandwidth_bps: 10f64.powf(rng.range(6.0, 9.0)),
                    loss: rng.range(0.0, 0.10),
                    symmetric: false,
                });
            }
        }
    }
    let origin = (rng.next_u64() % devs.len() as u64) as usize;
    Scenario {
        model,
        origin: devs[origin].id.clone(),
        devices: devs,
        links,
        net: Net::default(),
        memory_fraction,
        stage_penalty_s: 0.0,
        speculation: None,
        fetch: None,
        energy: None,
    }
}
