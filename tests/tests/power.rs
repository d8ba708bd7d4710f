//! Battery and heat in the plan, on real `shoal run` processes on loopback, each reading its
//! own power-supply folder and throttle knob (`LaunchOptions::own_power`):
//! - a stage node that goes on battery below `planner.min_battery_percent` mid-generation holds
//!   no layers in the next plan, whose cause says so, and the running generation ends with the
//!   tokens of an undisturbed run;
//! - a stage node whose steps run four times slower (the knob spends the time on the CPU, as a
//!   throttled core does) is re-planned once, with the cause "throttled to ...", and not again
//!   while requests keep coming; the other nodes, sharing the cores with it, are not taken
//!   for throttled.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use shoal_node::launch::{self, LaunchOptions, LocalSwarm};

const PROMPT: [u32; 4] = [87, 104, 121, 32];
/// Tokens per request: the battery test's generation must outlast the re-plan by a margin
/// (about 3 s of generation against about 0.3 s to re-plan, on the 2-core machine).
const MAX_TOKENS: usize = 600;
/// Tokens per request of the throttle test (kept in the first context-length bucket).
const THROTTLE_TOKENS: usize = 100;
/// Tokens streamed before the battery is unplugged.
const UNPLUG_AFTER: usize = 8;
/// How long requests keep coming after the throttle: the re-plan waits out
/// `planner.min_replan_interval_ms` (30 s by default) since the plan in force, and then
/// nothing more may happen.
const THROTTLED_FOR: Duration = Duration::from_secs(45);

/// Three nodes, each with memory for half the model, reading their own power folders.
async fn swarm(dir: &Path, model: &Path) -> (LocalSwarm, Value) {
    let budget = launch::spanning_budget(model, 2, memory_fraction()).unwrap();
    let opts = LaunchOptions {
        own_power: true,
        ..launch_options(dir, model, vec![budget; 3])
    };
    let swarm = LocalSwarm::start(&opts).await.unwrap();
    match swarm.wait_plan(2, 0, PLAN_TIMEOUT).await {
        Ok(plan) => (swarm, plan),
        Err(e) => {
            dump_logs(&swarm);
            panic!("{e}");
        }
    }
}

/// The stage devices of a plan's JSON.
fn devices(plan: &Value) -> Vec<String> {
    plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["device"].as_str().unwrap().to_string())
        .collect()
}

/// Writes a battery into node `i`'s power-supply folder.
fn set_battery(dir: &Path, i: usize, percent: u32, status: &str) {
    let (supply, _, _) = launch::power_paths(dir, i);
    let bat = supply.join("BAT0");
    std::fs::create_dir_all(&bat).unwrap();
    std::fs::write(bat.join("type"), "Battery\n").unwrap();
    std::fs::write(bat.join("capacity"), format!("{percent}\n")).unwrap();
    std::fs::write(bat.join("status"), format!("{status}\n")).unwrap();
}

/// Every plan node 0 reports, with when it was first seen: `(seconds, epoch, stages, cause)`.
type Timeline = Arc<Mutex<Vec<(f64, u64, Vec<String>, Option<String>)>>>;

/// Polls node `origin`'s status every 100 ms until `stop`, recording each new epoch.
fn watch_plans(
    swarm: &LocalSwarm,
    origin: usize,
    start: Instant,
    stop: tokio_util::sync::CancellationToken,
) -> (Timeline, tokio::task::JoinHandle<()>) {
    let client = swarm.client();
    let seen: Timeline = Arc::default();
    let out = seen.clone();
    let task = tokio::spawn(async move {
        while !stop.is_cancelled() {
            if let Ok(status) = client.get_json(origin, "/v1/status").await
                && let Some(epoch) = status["plan"]["epoch"].as_u64()
            {
                let mut seen = out.lock().unwrap();
                if seen.last().is_none_or(|(_, e, _, _)| *e != epoch) {
                    let cause = status["plan"]["cause"].as_str().map(str::to_string);
                    let t = start.elapsed().as_secs_f64();
                    seen.push((t, epoch, devices(&status["plan"]), cause));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (seen, task)
}

fn print_timeline(what: &str, seen: &Timeline) {
    println!("{what}:");
    for (t, epoch, stages, cause) in seen.lock().unwrap().iter() {
        let stages: Vec<String> = stages
            .iter()
            .map(|s| s[s.len() - 8..].to_string())
            .collect();
        println!(
            "  {t:6.2} s  epoch {epoch}  stages {stages:?}  {}",
            cause.as_deref().unwrap_or("first plan")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_on_battery_below_the_floor_hands_its_layers_over_mid_generation() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let (swarm, plan) = swarm(dir.path(), &model).await;
    let stages = devices(&plan);
    // The phone: a stage node; the origin: another node.
    let phone = swarm.index_of(&stages[stages.len() - 1]).unwrap();
    let origin = (0..3).find(|&i| i != phone).unwrap();
    let phone_id = swarm.nodes[phone].id.clone();
    let expected = greedy_tokens(&swarm, origin, &PROMPT, MAX_TOKENS).await;
    assert!(expected.len() > MAX_TOKENS / 2, "{expected:?}");

    // Stream the same request; unplug the phone at 10% once a few tokens arrived.
    let start = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let (seen, watcher) = watch_plans(&swarm, origin, start, stop.clone());
    let swarm_dir = dir.path().join("swarm");
    let request = greedy_request(&PROMPT, MAX_TOKENS, true);
    let run = stream_then(&swarm, origin, &request, UNPLUG_AFTER, || {
        set_battery(&swarm_dir, phone, 10, "Discharging");
    })
    .await;
    let (status, tokens, last) = (run.status, run.tokens, run.last);
    let unplugged_at = run.signalled_at.map(|t| (t - start).as_secs_f64());
    let ended = start.elapsed().as_secs_f64();
    // The next plan without the phone, as every node agrees on it.
    let epoch = plan["epoch"].as_u64().unwrap();
    let next = swarm.wait_plan(1, epoch, PLAN_TIMEOUT).await;
    stop.cancel();
    watcher.await.unwrap();
    print_timeline("plans", &seen);
    println!(
        "unplugged at {:.2} s, stream ended at {ended:.2} s",
        unplugged_at.unwrap_or(f64::NAN)
    );
    let replanned = seen
        .lock()
        .unwrap()
        .iter()
        .find(|(_, _, st, _)| !st.contains(&phone_id))
        .cloned();
    let ok = status == 200
        && tokens == expected
        && last.as_ref().is_some_and(|v| v.get("error").is_none())
        && replanned.is_some()
        && next.is_ok();
    if !ok {
        dump_logs(&swarm);
    }
    assert_eq!(status, 200);
    assert!(
        last.as_ref().is_some_and(|v| v.get("error").is_none()),
        "ended with {last:?}"
    );
    assert_eq!(tokens, expected, "tokens across the re-plan differ");
    let (t, _, _, cause) = replanned.expect("no plan without the phone");
    assert!(
        t < ended,
        "the re-plan ({t:.2} s) came after the generation ended ({ended:.2} s): it ran across none"
    );
    let cause = cause.unwrap_or_default();
    assert!(
        cause.contains("went on battery at 10%") && phone_id.ends_with(&cause[..8]),
        "cause {cause:?}"
    );
    let next = next.unwrap();
    assert!(!devices(&next).contains(&phone_id), "{next}");
    // The page's data: the phone's battery as announced.
    let status = swarm.get_json(origin, "/v1/status").await.unwrap();
    let member = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == phone_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(member["battery"]["on_battery"], true, "{member}");
    assert_eq!(member["battery"]["level"], 0.1, "{member}");
    assert!(member["battery"]["watts"].as_f64().unwrap() > 0.0);
    // After the generation, the swarm still gives the undisturbed tokens.
    assert_eq!(
        greedy_tokens(&swarm, origin, &PROMPT, MAX_TOKENS).await,
        expected
    );
    swarm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_stage_is_re_planned_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let (swarm, plan) = swarm(dir.path(), &model).await;
    let stages = devices(&plan);
    let hot = swarm.index_of(&stages[stages.len() - 1]).unwrap();
    let origin = (0..3).find(|&i| i != hot).unwrap();
    let hot_id = swarm.nodes[hot].id.clone();
    // Full speed first, so the watch knows the stage's pace.
    let expected = greedy_tokens(&swarm, origin, &PROMPT, THROTTLE_TOKENS).await;
    for _ in 0..3 {
        let _ = greedy_tokens(&swarm, origin, &PROMPT, THROTTLE_TOKENS).await;
    }

    let (_, _, knob) = launch::power_paths(&dir.path().join("swarm"), hot);
    std::fs::write(&knob, "4\n").unwrap();
    let start = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let (seen, watcher) = watch_plans(&swarm, origin, start, stop.clone());
    let mut requests = 0;
    while start.elapsed() < THROTTLED_FOR {
        let got = greedy_tokens(&swarm, origin, &PROMPT, THROTTLE_TOKENS).await;
        assert_eq!(got, expected, "request {requests} gave other tokens");
        requests += 1;
    }
    stop.cancel();
    watcher.await.unwrap();
    print_timeline("plans after the throttle", &seen);
    println!(
        "{requests} requests in {:.0} s",
        THROTTLED_FOR.as_secs_f64()
    );
    let seen = seen.lock().unwrap().clone();
    let throttled: Vec<_> = seen
        .iter()
        .filter(|(_, _, _, c)| c.as_deref().is_some_and(|c| c.contains("throttled to")))
        .collect();
    if throttled.len() != 1 || seen.len() != 2 {
        dump_logs(&swarm);
    }
    assert_eq!(
        throttled.len(),
        1,
        "one re-plan for the throttle expected: {seen:?}"
    );
    assert_eq!(
        seen.len(),
        2,
        "the plan in force, then the one re-plan, and nothing more: {seen:?}"
    );
    let cause = throttled[0].3.clone().unwrap();
    assert!(hot_id.ends_with(&cause[..8]), "{cause}");
    // The announced share: a quarter of the measured speed, give or take the rounding and
    // the other work of the step.
    let status = swarm.get_json(origin, "/v1/status").await.unwrap();
    let member = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == hot_id.as_str())
        .unwrap()
        .clone();
    let share = member["throttle"].as_f64().unwrap();
    assert!((0.15..=0.45).contains(&share), "{member}");
    swarm.shutdown().await;
}
