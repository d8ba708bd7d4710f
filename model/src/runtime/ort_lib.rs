//! Finding and loading the ONNX Runtime shared library (`ort`'s load-dynamic mode).
//!
//! Search order: `ORT_DYLIB_PATH`, the configured path, next to the `shoal` binary (and its
//! `lib/`), the install layout `../lib/shoal` and `../lib` (scripts/install.sh), Termux's
//! `$PREFIX/lib`, system library folders, then Python `onnxruntime` installs. The library is
//! loaded once per process; the environment is shared by all sessions.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use ort::environment::{Environment, GlobalThreadPoolOptions};

use crate::error::{Error, Result};

/// The file name of the library on this platform.
#[cfg(target_os = "windows")]
const LIB: &str = "onnxruntime.dll";
/// The file name of the library on this platform.
#[cfg(target_os = "macos")]
const LIB: &str = "libonnxruntime.dylib";
/// The file name of the library on this platform.
#[cfg(not(any(target_os = "windows", target_os = "macos")))]
const LIB: &str = "libonnxruntime.so";

/// How to get the library, printed when it cannot be found.
pub const INSTALL_HINT: &str = "install ONNX Runtime (>= 1.23) with `pip install onnxruntime` (shoal finds it \
in the Python install), or on Termux `pkg install onnxruntime`, or download a release from \
https://github.com/microsoft/onnxruntime/releases and set ORT_DYLIB_PATH=/path/to/libonnxruntime.so \
(or `ort_dylib = \"...\"` in the node config)";

/// Whether the pool's threads spin ([`set_thread_spinning`]).
static SPIN: AtomicBool = AtomicBool::new(true);

/// Sets whether ONNX Runtime's pool threads spin between parallel sections (default on). Takes
/// effect only before the first [`environment`] call of the process.
pub fn set_thread_spinning(on: bool) {
    SPIN.store(on, Ordering::Relaxed);
}

static ENV: OnceLock<std::result::Result<(PathBuf, Environment), String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first use (shared by
/// every session; the benchmark's direct loop uses it too).
///
/// All sessions share one intra-op thread pool of `threads` threads (0: one per core): with
/// many small shard sessions on few cores, per-session pools cost 5-10x in decode speed. Its
/// threads spin between parallel sections unless [`set_thread_spinning`] turned that off
/// before: Gemma-3-270M q4 on 2 threads decoded 49-53 tokens/s spinning, 42-43 not (the
/// ~1900 small ops per token each wake the pool). Several shoal processes sharing a machine's
/// cores (a local test swarm) should turn it off. The first caller's `threads` wins.
pub fn environment(configured: Option<&Path>, threads: usize) -> Result<&'static Environment> {
    let r = ENV.get_or_init(|| {
        let path = find_library(configured).map_err(|e| match e {
            Error::Ort(m) => m,
            other => other.to_string(),
        })?;
        let builder =
            ort::init_from(&path).map_err(|e| format!("loading {}: {e}", path.display()))?;
        let pool = GlobalThreadPoolOptions::default()
            .with_intra_threads(threads)
            .and_then(|p| p.with_spin_control(SPIN.load(Ordering::Relaxed)))
            .map_err(|e| format!("thread pool: {e}"))?;
        let env = builder
            .with_name("shoal")
            .with_global_thread_pool(pool)
            .build()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        Ok((path, env))
    });
    match r {
        Ok((_, env)) => Ok(env),
        Err(e) => Err(Error::Ort(e.clone())),
    }
}

/// Whether ONNX Runtime can be used (loads it if needed).
pub fn ort_available(configured: Option<&Path>) -> bool {
    environment(configured, 0).is_ok()
}

/// The first ONNX Runtime library found, or an error listing where it looked and how to
/// install it.
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf> {
    let mut looked = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        looked.push(format!("ORT_DYLIB_PATH={}", p.display()));
    }
    if let Some(p) = configured {
        if p.is_file() {
            return Ok(p.to_owned());
        }
        looked.push(format!("configured {}", p.display()));
    }
    for dir in candidate_dirs() {
        if let Some(found) = lib_in(&dir) {
            return Ok(found);
        }
        looked.push(dir.display().to_string());
    }
    Err(Error::Ort(format!(
        "library {LIB} not found (looked in: {}); {INSTALL_HINT}",
        looked.join(", ")
    )))
}

/// A library file in `dir`: the plain name or a versioned one (`libonnxruntime.so.1.23.0`).
fn lib_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join(LIB);
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{LIB}.")))
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(d) = exe.parent()
    {
        dirs.push(d.to_owned());
        dirs.push(d.join("lib"));
        // An installed layout, PREFIX/bin/shoal beside PREFIX/lib/shoal/ (scripts/install.sh).
        if let Some(prefix) = d.parent() {
            dirs.push(prefix.join("lib/shoal"));
            dirs.push(prefix.join("lib"));
        }
    }
    if let Some(prefix) = std::env::var_os("PREFIX") {
        dirs.push(PathBuf::from(prefix).join("lib"));
    }
    for d in [
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/opt/homebrew/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.extend(python_dirs());
    dirs
}

/// `onnxruntime/capi` folders of Python installs: virtualenv, user site, system site.
fn python_dirs() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(v).join("lib"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(h).join(".local/lib"));
    }
    if let Some(p) = std::env::var_os("PREFIX") {
        roots.push(PathBuf::from(p).join("lib"));
    }
    roots.extend(["/usr/local/lib", "/usr/lib"].map(PathBuf::from));
    let mut out = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        let mut pys: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pys.sort();
        for py in pys.into_iter().rev() {
            for site in ["site-packages", "dist-packages"] {
                out.push(py.join(site).join("onnxruntime/capi"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_plain_and_versioned_library_names() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(lib_in(dir.path()), None);
        let versioned = dir.path().join(format!("{LIB}.1.23.0"));
        std::fs::write(&versioned, b"").unwrap();
        std::fs::write(dir.path().join(format!("{LIB}.1.22.0")), b"").unwrap();
        assert_eq!(
            lib_in(dir.path()),
            Some(versioned),
            "the newest versioned file"
        );
        let plain = dir.path().join(LIB);
        std::fs::write(&plain, b"").unwrap();
        assert_eq!(lib_in(dir.path()), Some(plain));
    }

    #[test]
    fn install_hint_names_every_way_to_get_the_library() {
        for needle in [
            "pip install onnxruntime",
            "pkg install onnxruntime",
            "ORT_DYLIB_PATH",
            "ort_dylib = ",
        ] {
            assert!(INSTALL_HINT.contains(needle), "{needle}");
        }
    }
}
