//! Where the Gemma tests find Gemma-3-270M (`scripts/fetch-gemma.sh` puts it in
//! `.cache/gemma3-270m/`), shared through `#[path]`.

use std::path::PathBuf;

/// The GGUF and its tokenizer, or `None` (with a visible SKIP line naming `test`) when they
/// were not fetched.
pub(crate) fn gemma_files(test: &str) -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/gemma3-270m");
    let gguf = dir.join("gemma-3-270m-q4_k_m.gguf");
    let tokenizer = dir.join("tokenizer.json");
    if gguf.exists() && tokenizer.exists() {
        Some((gguf, tokenizer))
    } else {
        eprintln!(
            "SKIP {test}: {} not fetched; run scripts/fetch-gemma.sh",
            dir.display()
        );
        None
    }
}
