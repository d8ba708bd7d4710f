//! The `shoal bench model` comparison as a standalone program, so it can be built with
//! `cargo run --release -p shoal-model --example bench_decode [MODEL_DIR]` without building
//! the whole node. Without a directory it synthesises the default model in a temp folder.

use std::path::PathBuf;

use shoal_model::Manifest;
use shoal_model::bench::{DecodeBench, compare_decode};
use shoal_model::synth::{SynthOptions, synth};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (dir, _tmp) = match std::env::args().nth(1) {
        Some(d) => (PathBuf::from(d), None),
        None => {
            let t = tempfile::tempdir()?;
            synth(&SynthOptions::default(), t.path(), false)?;
            (t.path().to_owned(), Some(t))
        }
    };
    let m = Manifest::load(&dir)?;
    let c = compare_decode(
        &dir,
        &m,
        DecodeBench {
            tokens: 64,
            prompt_len: 8,
            rounds: 21,
        },
    )?;
    let ((s, d), (sb, db)) = (c.median(), c.best());
    println!(
        "{}: {} layers, hidden {}, vocab {}",
        m.name, m.dims.layers, m.dims.hidden, m.dims.vocab
    );
    println!(
        "shoal  median {:.4} ms/token  best {:.4}",
        s * 1e3,
        sb * 1e3
    );
    println!(
        "direct median {:.4} ms/token  best {:.4}",
        d * 1e3,
        db * 1e3
    );
    println!("ratio  median {:.3}  best {:.3}", s / d, sb / db);
    println!(
        "roofline {:.0} tokens/s ({:.2} MB/token at {:.1} GB/s); shoal at {:.1}%",
        c.roofline_tokens_per_s(),
        c.read_bytes as f64 / 1e6,
        c.mem_bw / 1e9,
        100.0 / s / c.roofline_tokens_per_s()
    );
    Ok(())
}
