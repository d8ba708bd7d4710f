//! Joining with an invite alone: a private swarm (pre-shared key) of one `shoal run` process
//! issues a token (`shoal invite`), a second process started with `shoal run --join TOKEN` and
//! no address or key of its own joins, serves a stage, and generates the one-process tokens.
//! Altered, expired and garbled tokens are refused before the node starts, each with its own
//! message; a member's API refuses to issue invites without its key.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use shoal_node::invite;
use shoal_node::launch::{self, LaunchOptions, LocalSwarm};

const PROMPT: [u32; 4] = [5, 9, 13, 2];
const MAX_TOKENS: usize = 12;
const KEY: &str = "sk-invite-test-0123456789";

fn shoal(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(shoal_bin());
    cmd.args(args)
        .env_remove("SHOAL_API_KEY")
        .env_remove("SHOAL_JOIN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `shoal run --join TOKEN` in `dir`: must fail before starting, with `needle` in its error.
fn refused(dir: &Path, token: &str, needle: &str) {
    let out = shoal(
        &[
            "run",
            "--data-dir",
            &dir.join("data").display().to_string(),
            "--key-file",
            &dir.join("node.key").display().to_string(),
            "--api",
            "127.0.0.1:0",
            "--join",
            token,
        ],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "started with {token:?}: {stdout}");
    assert!(
        stderr.contains(needle),
        "refusal of {token:?} should say {needle:?}:\n{stderr}"
    );
    assert!(!stdout.contains("shoal-ready"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_joins_a_private_swarm_with_nothing_but_an_invite() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let reference = reference_tokens(&model, &PROMPT, MAX_TOKENS);
    let psk = dir.path().join("swarm.key");
    let secret: [u8; 32] = rand::random();
    invite::write_swarm_key(&psk, &secret).unwrap();
    let budget = launch::spanning_budget(&model, 2, memory_fraction()).unwrap();
    let opts = LaunchOptions {
        top_config: format!(
            "psk_file = {:?}\napi_keys = [{KEY:?}]",
            psk.display().to_string()
        ),
        api_key: Some(KEY.into()),
        ..launch_options(dir.path(), &model, vec![budget])
    };
    let mut swarm = LocalSwarm::start(&opts).await.unwrap();
    let api = swarm.nodes[0].api.clone();

    // Invites grant the swarm: no key, no invite.
    let out = shoal(&["invite", "--api", &api], &[]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("401"), "{}", text(&out).1);

    let out = shoal(
        &["invite", "--api", &api, "--ttl", "600"],
        &[("SHOAL_API_KEY", KEY)],
    );
    let (token, stderr) = text(&out);
    assert!(out.status.success(), "shoal invite: {stderr}");
    assert!(
        token.starts_with(invite::PREFIX) && !token.contains('\n'),
        "{token}"
    );
    assert!(stderr.contains("private swarm"), "{stderr}");
    let inv = invite::read(&token, invite::now_unix_s()).unwrap();
    assert_eq!(inv.swarm_key, Some(secret));
    assert_eq!(inv.inviter.to_string(), swarm.nodes[0].id);
    assert!(
        inv.bootstrap[0].ends_with(&swarm.nodes[0].id),
        "{:?}",
        inv.bootstrap
    );
    assert!(!inv.model.as_ref().unwrap().name.is_empty());

    // Refusals, before anything starts.
    let bad = dir.path().join("bad");
    let mut altered = token.clone().into_bytes();
    let mid = altered.len() / 2;
    altered[mid] = if altered[mid] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let e = invite::read(&altered, invite::now_unix_s()).unwrap_err();
    assert!(
        matches!(
            e,
            invite::InviteError::Tampered(_) | invite::InviteError::Damaged(_)
        ),
        "{e}"
    );
    refused(&bad, &altered, "--join");
    refused(&bad, "hello", "not a shoal invite");
    let out = shoal(
        &["invite", "--api", &api, "--ttl", "1"],
        &[("SHOAL_API_KEY", KEY)],
    );
    let short = text(&out).0;
    // Bounded wait on the condition: until the one-second invite has expired.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while invite::read(&short, invite::now_unix_s()).is_ok() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    refused(&bad, &short, "expired");
    let out = shoal(
        &["invite", "--api", &api, "--ttl", "99999999"],
        &[("SHOAL_API_KEY", KEY)],
    );
    assert!(!out.status.success());
    assert!(text(&out).1.contains("30 days"), "{}", text(&out).1);

    // The new device: the same model folder, no address, no key; only the token.
    let joiner = LaunchOptions {
        top_config: String::new(),
        ..opts.clone()
    };
    let b = swarm.join_by_invite(&joiner, budget, &token).await.unwrap();
    let plan = match swarm.wait_plan(2, 0, PLAN_TIMEOUT).await {
        Ok(p) => p,
        Err(e) => {
            dump_logs(&swarm);
            panic!("{e}");
        }
    };
    let devices: Vec<&str> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    assert!(devices.contains(&swarm.nodes[b].id.as_str()), "{plan}");
    let written = dir.path().join("swarm/node1/data/swarm.key");
    assert_eq!(invite::read_swarm_key(&written).unwrap(), secret);
    for origin in [0, b] {
        let ids = greedy_tokens(&swarm, origin, &PROMPT, MAX_TOKENS).await;
        assert_eq!(ids, reference, "origin node{origin}");
    }
    swarm.shutdown().await;
}
