//! `kill -9` (or SIGSTOP) of the middle stage while a generation streams: the swarm re-plans
//! over the remaining nodes, the origin replays the token history onto the new stages, and the
//! request completes within 10 s of the signal with exactly the tokens of an undisturbed run.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

const PROMPT: [u32; 4] = [87, 104, 121, 32];
const MAX_TOKENS: usize = 160;
/// Tokens streamed before the kill.
const KILL_AFTER: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_of_the_middle_stage_completes_with_the_same_tokens() {
    disturb_the_middle_stage("-KILL").await;
}

/// A frozen stage (SIGSTOP) keeps its connections open and never answers: the origin must not
/// wait for a timeout; the member's silence leads to a new plan, which ends the step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_middle_stage_is_replaced_with_the_same_tokens() {
    disturb_the_middle_stage("-STOP").await;
}

async fn disturb_the_middle_stage(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    // Four nodes with memory for three stages each (the plan may use three or four): after
    // the kill, the other three still fit.
    let mut swarm = start_swarm(dir.path(), &model, 4, 3).await;
    let plan = match swarm.wait_plan(3, 0, PLAN_TIMEOUT).await {
        Ok(p) => p,
        Err(e) => {
            dump_logs(&swarm);
            panic!("{e}");
        }
    };
    let stages: Vec<String> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["device"].as_str().unwrap().to_string())
        .collect();
    let middle = swarm.index_of(&stages[1]).unwrap();
    let origin = (0..4).find(|&i| i != middle).unwrap();

    let (status, undisturbed) = swarm
        .post_json(
            origin,
            "/v1/completions",
            &greedy_request(&PROMPT, MAX_TOKENS, false),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{undisturbed}");
    let expected = token_ids(&undisturbed);
    assert!(
        expected.len() > KILL_AFTER * 2,
        "the run must outlast the kill: {} tokens",
        expected.len()
    );

    // Stream the same request; kill the middle stage once KILL_AFTER tokens arrived.
    let pid = swarm.nodes[middle].pid().unwrap();
    let request = greedy_request(&PROMPT, MAX_TOKENS, true);
    let run = stream_disturbed(&swarm, origin, &request, (pid, signal), KILL_AFTER).await;
    let (streamed, last) = (run.tokens, run.last);
    let done = Instant::now();
    let killed_at = run.signalled_at.expect("the kill happened mid-generation");
    let slow = done - killed_at >= Duration::from_secs(10);
    if slow || streamed != expected || last.as_ref().is_none_or(|v| v.get("error").is_some()) {
        dump_logs(&swarm);
    }
    assert_eq!(run.status, 200);
    assert!(
        last.as_ref().is_some_and(|v| v.get("error").is_none()),
        "ended with {last:?}"
    );
    assert_eq!(
        streamed, expected,
        "tokens after failover differ from the undisturbed run"
    );
    let after_kill = done - killed_at;
    assert!(
        after_kill < Duration::from_secs(10),
        "completed {after_kill:?} after the kill"
    );
    eprintln!("completed {after_kill:?} after kill {signal} of the middle stage");

    if std::env::var_os("SHOAL_DUMP").is_some() {
        dump_logs(&swarm);
    }
    // The swarm now runs on a new plan without the dead node.
    let _ = swarm.kill(middle).await;
    let metrics = swarm.get_text(origin, "/metrics").await.unwrap();
    let failovers = metrics
        .lines()
        .find(|l| l.starts_with("shoal_failovers_total "))
        .unwrap();
    assert_ne!(failovers, "shoal_failovers_total 0", "{metrics}");
    swarm.shutdown().await;
}
