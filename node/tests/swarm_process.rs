//! Real `shoal run` processes on loopback: three nodes with one bootstrap address between
//! them (mDNS off) find each other and agree on a plan; a node killed with SIGKILL and
//! restarted without any bootstrap address re-joins from its sled store.
//!
//! The binary is `$SHOAL_BIN` when set (CI builds it once, see scripts/test.sh), else the
//! `shoal` that cargo built for this test (`CARGO_BIN_EXE_shoal`).

// Test harness helpers below panic on setup failures, like the test itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/swarm.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn shoal_bin() -> PathBuf {
    std::env::var_os("SHOAL_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_shoal")), PathBuf::from)
}

/// A `shoal run` child, killed (SIGKILL) when dropped.
struct Proc {
    child: Child,
    dir: PathBuf,
    node: String,
    api: String,
    listen: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CONFIG: &str = r#"
listen = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"]
api = "127.0.0.1:0"
mdns = false
ort_spin = false
# A public swarm: the three nodes share no key.
public = true
memory_offered = 1073741824
[membership]
liveness_timeout_ms = 3000
announce_interval_ms = 300
settle_ms = 1000
[probe]
ping_interval_ms = 300
udp_echo = "127.0.0.1:0"
loss_rate_hz = 20
loss_timeout_ms = 500
[planner]
republish_interval_ms = 1000
"#;

/// Starts `shoal run` in `dir` and parses its ready line.
fn spawn(dir: &Path, model: &Path, bootstrap: Option<&str>) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .unwrap();
    let mut cmd = Command::new(shoal_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--key-file")
        .arg(dir.join("node.key"))
        .arg("--model")
        .arg(model)
        .env("SHOAL_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log);
    if let Some(b) = bootstrap {
        cmd.arg("--bootstrap").arg(b);
    }
    let mut child = cmd.spawn().expect("spawn shoal run");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.find_map(|l| l.ok().filter(|l| l.starts_with("shoal-ready ")));
        let _ = tx.send(ready);
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no ready line; see {}", dir.join("stderr.log").display()));
    let field = |k: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("ready line lacks {k}: {line}"))
            .to_string()
    };
    let listen: Vec<String> = field("listen").split(',').map(str::to_string).collect();
    assert!(listen.iter().all(|a| a.contains("/p2p/")), "{line}");
    Proc {
        child,
        dir: dir.to_path_buf(),
        node: field("node"),
        api: field("api"),
        listen,
    }
}

/// `shoal status --api ADDR [--json]`.
fn status(api: &str, json: bool) -> Option<String> {
    let mut cmd = Command::new(shoal_bin());
    cmd.args(["status", "--api", api]);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status_json(api: &str) -> Option<Value> {
    serde_json::from_str(&status(api, true)?).ok()
}

/// Waits until every node reports a plan over exactly `nodes` as members, the same everywhere.
fn wait_agreement(procs: &[&Proc], min_epoch: u64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    let mut want: Vec<String> = procs.iter().map(|p| p.node.clone()).collect();
    want.sort();
    loop {
        let plans: Vec<Option<Value>> = procs
            .iter()
            .map(|p| {
                status_json(&p.api)
                    .and_then(|v| v.get("plan").cloned())
                    .filter(|p| !p.is_null())
            })
            .collect();
        let agreed = plans.iter().all(|p| {
            p.as_ref().is_some_and(|p| {
                let mut m: Vec<String> = p["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect();
                m.sort();
                m == want && p["epoch"].as_u64().unwrap() >= min_epoch
            })
        }) && plans.windows(2).all(|w| w[0] == w[1]);
        if agreed {
            return plans[0].clone().unwrap();
        }
        if Instant::now() > deadline {
            for p in procs {
                let log = std::fs::read_to_string(p.dir.join("stderr.log")).unwrap_or_default();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.contains("bandwidth probe"))
                    .collect();
                eprintln!(
                    "--- {} ---\n{}",
                    p.dir.display(),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
            panic!("no agreement: {plans:#?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn three_processes_agree_and_a_killed_node_rejoins_from_its_store() {
    let tmp = tempfile::tempdir().unwrap();
    let model = support::synth_model(tmp.path());
    let a = spawn(&tmp.path().join("a"), &model, None);
    let boot = a.listen[0].clone();
    let b = spawn(&tmp.path().join("b"), &model, Some(&boot));
    let c = spawn(&tmp.path().join("c"), &model, Some(&boot));
    let plan = wait_agreement(&[&a, &b, &c], 1, Duration::from_secs(60));
    let epoch = plan["epoch"].as_u64().unwrap();
    let table = status(&a.api, false).unwrap();
    println!("shoal status of a 3-process swarm:\n{table}");
    assert!(table.contains("plan: epoch"), "{table}");

    // kill -9 c, wait for the others to plan without it, restart it without bootstrap.
    let c_node = c.node.clone();
    drop(c);
    let plan2 = wait_agreement(&[&a, &b], epoch + 1, Duration::from_secs(30));
    let epoch2 = plan2["epoch"].as_u64().unwrap();
    let c = spawn(&tmp.path().join("c"), &model, None);
    assert_eq!(c.node, c_node, "same identity after restart");
    let plan3 = wait_agreement(&[&a, &b, &c], epoch2, Duration::from_secs(60));
    println!("after re-join: {plan3}");
}
