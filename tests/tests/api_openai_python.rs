//! The official `openai` Python package against three real `shoal run` processes:
//! completions and chat, plain and streamed (with `include_usage`), a stop sequence, usage
//! sums, log-probabilities and an error (`tests/clients/openai_client.py`). The package comes
//! from PyPI into a venv
//! in the test's temporary target folder (kept between runs); without python3's venv or
//! PyPI the test skips with a visible message.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The pinned client version.
const OPENAI: &str = "openai==1.109.1";

/// A venv with the client, or why there is none.
fn venv() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = dir.join("bin/python");
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    }
    run(Command::new(&python).args(["-c", "import openai"]))
        .or_else(|_| run(Command::new(&python).args(["-m", "pip", "install", "-q", OPENAI])))?;
    Ok(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_talks_to_a_swarm() {
    let python = match venv() {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "SKIP the_official_openai_client_talks_to_a_swarm: no venv with {OPENAI}: {e}"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let (swarm, _plan) = planned_swarm(dir.path(), &model, 3).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/openai_client.py");
    let base = format!("http://{}/v1", swarm.nodes[1].api);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(script).arg(base).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai client: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["error"], 400, "{seen}");
    assert!(
        seen["completion"].is_string() && seen["chat"].is_string(),
        "{seen}"
    );
    assert!(seen["logprobs"].is_array(), "{seen}");
    swarm.shutdown().await;
}
