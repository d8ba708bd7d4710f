//! The fetched Gemma-3-270M (`scripts/fetch-gemma.sh`): where it is, and its q4 shards,
//! imported beside it on first use. `shoal demo` runs on it; tests on the bed do too.

use std::path::PathBuf;

use anyhow::Context;

/// The folder `scripts/fetch-gemma.sh` writes, inside a `.cache` directory.
pub const GEMMA_DIR: &str = "gemma3-270m";
/// The GGUF in it.
pub const GEMMA_GGUF: &str = "gemma-3-270m-q4_k_m.gguf";
/// The q4 shards imported from it, beside it.
pub const GEMMA_SHARDS: &str = "shards-q4";

/// The `.cache` directories searched for `gemma3-270m/`: `$SHOAL_CACHE`, `./.cache`, and the
/// checkout this binary was built from (so `cargo run` finds it from any folder).
pub fn cache_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("SHOAL_CACHE") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from(".cache"));
    dirs.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.cache"
    )));
    dirs
}

/// The fetched Gemma folder (GGUF and tokenizer present), if any.
pub fn fetched_gemma() -> Option<PathBuf> {
    cache_dirs()
        .into_iter()
        .map(|c| c.join(GEMMA_DIR))
        .find(|d| d.join(GEMMA_GGUF).is_file() && d.join("tokenizer.json").is_file())
}

/// The q4 shards of the fetched Gemma in `dir`, imported on first use. The import writes a
/// temporary folder and renames it, so an interrupted import is never taken for a model.
pub fn gemma_shards(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let shards = dir.join(GEMMA_SHARDS);
    if shards.join("manifest.json").is_file() {
        return Ok(shards);
    }
    eprintln!(
        "shoal: importing {} into q4 shards in {} (once)",
        dir.join(GEMMA_GGUF).display(),
        shards.display()
    );
    let tmp = dir.join(format!("{GEMMA_SHARDS}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let quant = shoal_model::QuantSpec::new(
        shoal_model::WeightDtype::Q4,
        shoal_model::quant::DEFAULT_BLOCK_SIZE,
    )?;
    let imported = shoal_model::gguf::import_as(
        &dir.join(GEMMA_GGUF),
        Some(&dir.join("tokenizer.json")),
        &tmp,
        true,
        quant,
    );
    if let Err(e) = imported {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e).context("importing the fetched Gemma-3-270M");
    }
    if let Err(e) = std::fs::rename(&tmp, &shards) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another demo may have finished the same import first.
        if !shards.join("manifest.json").is_file() {
            return Err(e)
                .with_context(|| format!("moving {} to {}", tmp.display(), shards.display()));
        }
    }
    Ok(shards)
}
