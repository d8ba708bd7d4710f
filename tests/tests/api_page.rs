//! The live swarm page (`GET /`) in headless Chromium against three real `shoal run`
//! processes: after its scripts ran, the page shows the three members, the plan's stages and
//! the text a prompt streamed (`?prompt=` runs one on load). A screenshot is saved as
//! `swarm-page.png` in the test's temporary target folder. Skips with a visible message when
//! `/usr/bin/chromium` is absent (`SHOAL_TEST_DEPS=1 scripts/setup.sh`, which
//! `scripts/test.sh` runs, installs it).

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";
/// Page loads the test waits through for a finished stream.
const LOADS: usize = 4;

/// Runs headless Chromium on `url` with `extra` arguments; returns its stdout.
fn chromium(profile: &Path, url: &str, extra: &[&str]) -> String {
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_swarm_and_streams_a_prompt() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("SKIP the_page_shows_the_swarm_and_streams_a_prompt: {CHROMIUM} is absent");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let (swarm, plan) = planned_swarm(dir.path(), &model, 3).await;
    let api = swarm.nodes[0].api.clone();
    let url = format!("http://{api}/?prompt=Hello");
    // Chromium dumps the DOM when its virtual time budget runs out, which a loaded machine
    // can reach before the streamed answer ends: load the page again (at most LOADS times)
    // until the page says the stream is done, and judge the last dump.
    let mut dom = String::new();
    for load in 1..=LOADS {
        dom = tokio::task::spawn_blocking({
            let (profile, url) = (dir.path().join(format!("chromium-dom{load}")), url.clone());
            move || chromium(&profile, &url, &["--dump-dom"])
        })
        .await
        .unwrap();
        if dom.contains("data-done=\"1\"") {
            eprintln!("the prompt finished streaming on page load {load}");
            break;
        }
    }
    assert!(
        dom.contains("<span id=\"member-count\">3</span>"),
        "members missing: {dom}"
    );
    for stage in plan["stages"].as_array().unwrap() {
        let device = stage["device"].as_str().unwrap();
        let shown = &device[device.len() - 8..];
        assert!(dom.contains(shown), "stage device {shown} missing: {dom}");
    }
    assert!(dom.contains("3 stages"), "plan summary missing: {dom}");
    assert!(
        dom.contains("data-done=\"1\""),
        "the prompt did not finish streaming: {dom}"
    );
    let streamed = dom
        .split("<div id=\"out\">")
        .nth(1)
        .and_then(|s| s.split("</div>").next())
        .unwrap_or_default();
    assert!(!streamed.is_empty(), "no streamed text: {dom}");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("swarm-page.png");
    tokio::task::spawn_blocking({
        let (profile, shot) = (dir.path().join("chromium-shot"), shot.clone());
        move || {
            chromium(
                &profile,
                &url,
                &[&format!("--screenshot={}", shot.display())],
            )
        }
    })
    .await
    .unwrap();
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    eprintln!("screenshot: {}", shot.display());
    swarm.shutdown().await;
}
