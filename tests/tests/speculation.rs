//! Speculative decoding through the pipeline on real processes (issue 12): greedy output with
//! either drafter (prompt lookup, a draft model on the origin) is token for token the output
//! without speculation and the single-process reference, also when the middle stage is
//! killed mid-generation; a sampled generation with drafts completes; the answers report the
//! passes, drafts and accepted drafts.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use serde_json::{Value, json};
use shoal_node::launch::LocalSwarm;

/// A list, so the continuation repeats itself and prompt lookup has something to find.
const PROMPT: &str = "1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2,";
const MAX_TOKENS: usize = 96;
/// Tokens streamed before the kill.
const KILL_AFTER: usize = 10;

fn prompt() -> Vec<u32> {
    PROMPT.bytes().map(u32::from).collect()
}

/// A smaller model with the served one's vocabulary, as the origin's draft model.
fn draft_model(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("draft");
    let opts = shoal_model::synth::SynthOptions {
        layers: 2,
        ..shoal_model::synth::SynthOptions::default()
    };
    shoal_model::synth::synth(&opts, &out, false).expect("synth draft");
    out
}

fn request(drafter: &str, stream: bool) -> Value {
    let mut r = greedy_request(&prompt(), MAX_TOKENS, stream);
    r["speculation"] = json!(drafter);
    r
}

/// (drafted, accepted, passes) of an answer.
fn spec(v: &Value) -> (u64, u64, u64) {
    let s = &v["shoal"]["speculation"];
    (
        s["drafted"].as_u64().unwrap(),
        s["accepted"].as_u64().unwrap(),
        s["passes"].as_u64().unwrap(),
    )
}

async fn complete(swarm: &LocalSwarm, origin: usize, body: &Value) -> Value {
    let (status, v) = swarm
        .post_json(origin, "/v1/completions", body)
        .await
        .unwrap();
    if status != 200 {
        dump_logs(swarm);
    }
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculative_greedy_output_is_the_plain_output_on_three_processes_and_after_failover() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let draft = draft_model(dir.path());
    let extra = format!(
        "[pipeline]\ndraft_model = {:?}\n",
        draft.display().to_string()
    );
    // Five nodes, the model over three: after one kill the other four still hold it.
    let mut swarm = start_swarm_with(dir.path(), &model, 5, 3, &extra).await;
    let plan = match swarm.wait_plan(3, 0, PLAN_TIMEOUT).await {
        Ok(p) => p,
        Err(e) => {
            dump_logs(&swarm);
            panic!("{e}");
        }
    };
    swarm.wait_ready(&plan, PLAN_TIMEOUT).await.unwrap();
    let stages: Vec<String> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["device"].as_str().unwrap().to_string())
        .collect();
    let middle = swarm.index_of(&stages[1]).unwrap();
    let origin = (0..5)
        .find(|i| !stages.contains(&swarm.nodes[*i].id))
        .unwrap();

    let reference = reference_tokens(&model, &prompt(), MAX_TOKENS);
    let plain = complete(&swarm, origin, &request("off", false)).await;
    assert_eq!(
        token_ids(&plain),
        reference,
        "plain pipeline vs one process"
    );
    assert_eq!(spec(&plain).0, 0, "no drafts without speculation");
    for drafter in ["ngram", "model"] {
        let t = Instant::now();
        let v = complete(&swarm, origin, &request(drafter, false)).await;
        let (drafted, accepted, passes) = spec(&v);
        eprintln!(
            "{drafter}: {} tokens in {passes} passes, {accepted} of {drafted} drafts accepted, {:?}",
            token_ids(&v).len(),
            t.elapsed()
        );
        assert_eq!(token_ids(&v), reference, "{drafter}: speculative vs plain");
        assert!(drafted > 0, "{drafter}: nothing drafted");
        assert!(
            passes < token_ids(&v).len() as u64 || accepted == 0,
            "{drafter}: accepted drafts must save passes"
        );
        if drafter == "ngram" {
            assert!(accepted > 0, "a repeating list: some lookups must hit");
        }
    }

    // Sampled with drafts: completes, within the limits (the distribution is the unit test's).
    let mut sampled = request("ngram", false);
    sampled["temperature"] = json!(0.8);
    sampled["seed"] = json!(5);
    let v = complete(&swarm, origin, &sampled).await;
    let n = token_ids(&v).len();
    assert!(n > 0 && n <= MAX_TOKENS, "{v}");

    // Failover mid-generation with each drafter: kill -9 a stage after the first while
    // streaming (the middle one, unless the re-plan put the origin there).
    for drafter in ["ngram", "model"] {
        let (epoch, stages) = current_plan(&swarm, origin).await;
        let middle_now = if drafter == "ngram" {
            middle
        } else {
            stages[1..]
                .iter()
                .filter_map(|d| swarm.index_of(d))
                .find(|i| *i != origin)
                .expect("a stage other than the origin")
        };
        let pid = swarm.nodes[middle_now].pid().unwrap();
        let run = stream_disturbed(
            &swarm,
            origin,
            &request(drafter, true),
            (pid, "-KILL"),
            KILL_AFTER,
        )
        .await;
        let failed = run.last.as_ref().is_none_or(|v| v.get("error").is_some());
        if run.tokens != reference || failed {
            dump_logs(&swarm);
        }
        assert_eq!(run.status, 200);
        assert!(
            run.signalled_at.is_some(),
            "{drafter}: the kill happened mid-generation"
        );
        assert_eq!(
            run.tokens, reference,
            "{drafter}: tokens after failover differ from the undisturbed run"
        );
        let _ = swarm.kill(middle_now).await;
        // The next round needs the plan without the dead node.
        let plan = swarm.wait_plan(3, epoch, PLAN_TIMEOUT).await.unwrap();
        swarm.wait_ready(&plan, PLAN_TIMEOUT).await.unwrap();
        eprintln!("{drafter}: identical after kill -9 of the middle stage");
    }
    swarm.shutdown().await;
}

/// The epoch and devices (in stage order) of the plan `origin` holds now.
async fn current_plan(swarm: &LocalSwarm, origin: usize) -> (u64, Vec<String>) {
    let status = swarm.get_json(origin, "/v1/status").await.unwrap();
    let plan = &status["plan"];
    let stages = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["device"].as_str().unwrap().to_string())
        .collect();
    (plan["epoch"].as_u64().unwrap(), stages)
}
