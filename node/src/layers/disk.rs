//! What a model directory holds on disk: the files each planner layer needs, which layers are
//! complete, the index of held files by sha256 (what this node serves), and free space.
//!
//! A file counts as held when it exists under its final name: fetched files are written under
//! a `.part` name and renamed only after their sha256 matched (`fetch.rs`), so a final name is
//! always a verified file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use shoal_model::Manifest;
use shoal_model::manifest::MANIFEST_FILE;

/// A file of the model: its name in the directory and its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelFile {
    /// Path relative to the model directory.
    pub name: String,
    /// sha256 of its contents.
    pub sha256: [u8; 32],
}

/// Parses a hex sha256.
pub fn parse_sha(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

/// The files planner layers `[a, b)` need, in layer order, each once.
pub fn layer_files(m: &Manifest, a: usize, b: usize) -> Vec<ModelFile> {
    let names = m.layers[a.min(m.layers.len())..b.min(m.layers.len())]
        .iter()
        .flat_map(|l| &l.files);
    unique(m, names)
}

/// The files every node with the model needs beside its layers: the tokenizer files.
pub fn common_files(m: &Manifest) -> Vec<ModelFile> {
    unique(m, m.tokenizer.iter().chain(&m.tokenizer_config))
}

fn unique<'a>(m: &Manifest, names: impl Iterator<Item = &'a String>) -> Vec<ModelFile> {
    let mut out: Vec<ModelFile> = Vec::new();
    for name in names {
        if out.iter().any(|f| &f.name == name) {
            continue;
        }
        if let Some(sha256) = m.files.get(name).and_then(|h| parse_sha(h)) {
            out.push(ModelFile {
                name: name.clone(),
                sha256,
            });
        }
    }
    out
}

/// The planner layers whose files are all on disk, as ascending disjoint ranges.
pub fn held_ranges(dir: &Path, m: &Manifest) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for (l, layer) in m.layers.iter().enumerate() {
        if !layer.files.iter().all(|f| dir.join(f).is_file()) {
            continue;
        }
        let l = l as u32;
        match out.last_mut() {
            Some((_, end)) if *end == l => *end = l + 1,
            _ => out.push((l, l + 1)),
        }
    }
    out
}

/// Held files by sha256: `manifest.json` (by the hash of its bytes, the model's id) and every
/// listed file present under its final name.
pub fn index(dir: &Path, m: &Manifest, manifest_sha256: [u8; 32]) -> HashMap<[u8; 32], PathBuf> {
    let mut out = HashMap::new();
    out.insert(manifest_sha256, dir.join(MANIFEST_FILE));
    for (name, hex_text) in &m.files {
        let path = dir.join(name);
        if let (Some(sha), true) = (parse_sha(hex_text), path.is_file()) {
            out.insert(sha, path);
        }
    }
    out
}

/// Bytes free for an unprivileged writer on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synth(dir: &Path) -> (PathBuf, Manifest) {
        let out = dir.join("m");
        shoal_model::synth::synth(&shoal_model::synth::SynthOptions::default(), &out, false)
            .expect("synthesise the test model");
        let m = Manifest::load(&out).expect("manifest");
        (out, m)
    }

    #[test]
    fn held_ranges_follow_the_files_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, m) = synth(tmp.path());
        let n = m.layers.len() as u32;
        assert_eq!(held_ranges(&dir, &m), vec![(0, n)]);
        // Remove a decoder layer's graph: that layer alone is missing.
        std::fs::remove_file(dir.join(&m.layers[2].files[0])).unwrap();
        assert_eq!(held_ranges(&dir, &m), vec![(0, 2), (3, n)]);
        let files = layer_files(&m, 0, 3);
        assert!(files.iter().any(|f| f.name == m.layers[2].files[0]));
        let idx = index(&dir, &m, [9; 32]);
        assert_eq!(idx[&[9; 32]], dir.join(MANIFEST_FILE));
        let missing = parse_sha(&m.files[&m.layers[2].files[0]]).unwrap();
        assert!(!idx.contains_key(&missing), "a missing file is not served");
        assert!(free_bytes(&dir).unwrap() > 0);
    }
}
