//! Gemma-3-270M parity by quantisation choice: for each case, the top-1 agreement with the f32
//! import of the same GGUF over a fixed 128-token text (teacher-forced, one prefill), the
//! largest |logit difference| relative to the f32 logits' range, and the greedy continuation
//! of "The capital of France is". The table behind the choices in `model/README.md`
//! ("Quantised shards").
//!
//! A measurement, so ignored by default:
//! `cargo test -p shoal-model --test gemma_parity -- --ignored --nocapture`
//! (`SHOAL_PARITY_CASES=q4:32,q8:32:0` picks the cases: dtype, block size, optionally the
//! accuracy level, 4 by default).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/gemma_files.rs"]
mod gemma_files;
use gemma_files::gemma_files;

use shoal_model::generate::{GenerateRequest, generate};
use shoal_model::{
    BackendChoice, Manifest, QuantSpec, RuntimeConfig, SamplingConfig, StageInput, StageOutput,
    StageRunner, Tokenizer, gguf,
};

/// A fixed English text (the first 64 tokens are `gemma_quant.rs`'s).
const TEXT: &str = "The river runs through the old town, past the market square where farmers \
    sell bread, cheese and apples every Saturday morning. Children play near the fountain while \
    their parents talk about the weather, the harvest and the news from the capital. In the \
    evening the bells of the church ring and the streets slowly become quiet again. On Sunday \
    the family walks along the river to the mill, where the old miller tells stories about the \
    great flood, the winter when the river froze, and the summer when the fish came back. \
    Later they eat soup and fresh bread at the small inn by the bridge, and the innkeeper asks \
    about their plans for the week. The youngest son wants to become a baker, his sister wants \
    to study the stars, and their grandmother only hopes for a dry autumn and a good harvest.";
/// Positions compared.
const POSITIONS: usize = 128;

fn logits(dir: &std::path::Path, m: &Manifest, ids: &[u32]) -> Vec<f32> {
    let config = RuntimeConfig {
        backend: BackendChoice::Ort,
        all_logits: true,
        ..RuntimeConfig::default()
    };
    let mut r = StageRunner::load(dir, m, 0..m.planner_layers(), &config).unwrap();
    let StageOutput::Logits(l) = r.run(1, StageInput::Tokens(ids.to_vec())).unwrap() else {
        panic!("no logits");
    };
    l.data
}

fn read_mb(m: &Manifest) -> u64 {
    m.layers.iter().map(|l| l.figures.read_bytes).sum::<u64>() / 1_000_000
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |b, (i, x)| if *x > b.1 { (i, *x) } else { b },
        )
        .0
}

fn greedy(dir: &std::path::Path, m: &Manifest, tok: &Tokenizer) -> String {
    let config = RuntimeConfig {
        backend: BackendChoice::Ort,
        ..RuntimeConfig::default()
    };
    let mut r = StageRunner::load(dir, m, 0..m.planner_layers(), &config).unwrap();
    let req = GenerateRequest {
        prompt_ids: tok.encode("The capital of France is").unwrap(),
        max_tokens: 8,
        sampling: SamplingConfig::greedy(),
        stop_ids: Vec::new(),
    };
    let s = generate(&mut r, 1, &req, |_| true).unwrap();
    tok.decode(&s.token_ids).unwrap()
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn gemma3_270m_parity_by_quantisation() {
    let Some((gguf_path, tokenizer_path)) = gemma_files("gemma_parity") else {
        return;
    };
    let cases = std::env::var("SHOAL_PARITY_CASES").unwrap_or_else(|_| "q4:32,q4:128,q8:32".into());
    let f32_dir = tempfile::tempdir().unwrap();
    let f = gguf::import(&gguf_path, Some(&tokenizer_path), f32_dir.path(), false).unwrap();
    let tok = Tokenizer::load(f32_dir.path(), &f).unwrap().unwrap();
    let mut ids = tok.encode(TEXT).unwrap();
    assert!(ids.len() >= POSITIONS, "{} tokens", ids.len());
    ids.truncate(POSITIONS);
    let vocab = f.dims.vocab;
    let want = logits(f32_dir.path(), &f, &ids);
    let mut rows = vec![format!(
        "| f32 | {} | - | - | {:?} |",
        read_mb(&f),
        greedy(f32_dir.path(), &f, &tok)
    )];
    drop(f32_dir);
    for case in cases.split(',') {
        let parts: Vec<&str> = case.split(':').collect();
        let level = parts.get(2).map_or(4, |l| l.parse().unwrap());
        let spec = QuantSpec::new(parts[0].parse().unwrap(), parts[1].parse().unwrap())
            .unwrap()
            .map(|q| q.with_accuracy_level(level).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let m =
            gguf::import_as(&gguf_path, Some(&tokenizer_path), dir.path(), false, spec).unwrap();
        let got = logits(dir.path(), &m, &ids);
        let (mut same, mut worst) = (0, 0f32);
        for (g, w) in got.chunks(vocab).zip(want.chunks(vocab)) {
            same += usize::from(argmax(g) == argmax(w));
            let range = w.iter().fold(f32::MIN, |a, b| a.max(*b))
                - w.iter().fold(f32::MAX, |a, b| a.min(*b));
            let diff = g.iter().zip(w).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            worst = worst.max(diff / range);
        }
        let row = format!(
            "| {case} | {} | {same}/{POSITIONS} ({:.0}%) | {worst:.3} | {:?} |",
            read_mb(&m),
            100.0 * same as f64 / POSITIONS as f64,
            greedy(dir.path(), &m, &tok)
        );
        eprintln!("{row}");
        rows.push(row);
    }
    eprintln!("| shards | MB read/token | top-1 vs f32 | max logit diff / range | greedy |");
    eprintln!("|---|---|---|---|---|");
    for r in rows {
        eprintln!("{r}");
    }
}
