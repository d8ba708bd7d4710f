//! `scripts/install.sh` puts the `shoal` binary and its ONNX Runtime library under a prefix,
//! and the installed binary, started from another folder with `ORT_DYLIB_PATH` unset, loads
//! that library (not the tract fallback, not the checkout's copy).

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn installed_binary_finds_its_onnx_runtime() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ort = std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH (scripts/test.sh sets it)");
    let prefix = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root.join("scripts/install.sh"))
        .arg("--prefix")
        .arg(prefix.path())
        .arg("--bin")
        .arg(common::shoal_bin())
        .arg("--ort")
        .arg(&ort)
        .env_remove("PREFIX")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "install.sh failed:\n{stdout}\n{stderr}"
    );
    let lib_dir = prefix.path().join("lib/shoal");
    assert!(prefix.path().join("bin/shoal").is_file(), "{stdout}");
    let name = Path::new(&ort).file_name().unwrap();
    assert!(lib_dir.join(name).is_file(), "{stdout}");
    let ok = stdout
        .lines()
        .find(|l| l.starts_with("install: ok"))
        .unwrap_or_else(|| panic!("no ok line:\n{stdout}\n{stderr}"));
    assert!(
        ok.contains(&lib_dir.display().to_string()),
        "the installed binary loaded another library: {ok}"
    );
}
