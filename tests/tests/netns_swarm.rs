//! Scenarios 1 and 2 of the weak-network bed (issue 7), each on a bed of four namespaces:
//! 1. four `shoal run` processes, mDNS off, three of them given only node 0 as bootstrap
//!    peer, find each other over impaired links and agree on one signed plan;
//! 2. the link reports shoal gossips (`/v1/status` `links`) match the figures imposed on
//!    the bed (RTT and bandwidth within 20%, loss within 2 points, jitter within 20%).
//!
//! Needs root; prints SKIP otherwise.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_tests::netns::swarm::{self, NodeSpec};
use shoal_tests::netns::{self, LinkProfile, Testbed, measure, wait};

/// Probe settings that converge within the test's time: pings every 250 ms, a loss window of
/// 1000 echoes at 50/s, a datagram train (up to 512 KiB, about half a second of the link) to
/// each peer every 5-15 s, so five or so per pair in the 55 s the test lets the estimates
/// settle (the probes that cross a link while a train fills its queue are left out of RTT,
/// jitter and loss), slow smoothing.
const PROBE: &str = "[probe]\nping_interval_ms = 250\nbandwidth_interval_ms = 10000\ntrain_bytes = 524288\n\
                     bandwidth_bytes = 262144\nloss_rate_hz = 50\nloss_window = 1000\newma_alpha = 0.1\n";

/// Readings of node 0's link reports (the last ones) whose median is judged.
const SNAPSHOTS: usize = 3;

/// The two scenarios run one after the other: eight nodes and two delay lines on a 2-core
/// machine starve the probes' senders, and a sender paused for longer than the queue it built
/// leaves the link idle mid-train.
static ONE_BED_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn link<'a>(doc: &'a Value, from: &str, to: &str) -> Option<&'a Value> {
    doc["links"]
        .as_array()?
        .iter()
        .find(|l| l["from"] == from && l["to"] == to)
}

/// Starts four nodes (node 0 the only bootstrap peer) with the given probe settings.
fn four_nodes(tag: &str, profiles: &[LinkProfile; 4]) -> Result<(Testbed, Vec<swarm::BedNode>)> {
    let mut bed = Testbed::new(tag, profiles)?;
    let model = bed.log_dir().join("model");
    shoal_model::synth::synth(&shoal_model::synth::SynthOptions::default(), &model, false)
        .context("synthesising the model")?;
    let spec = NodeSpec {
        run: tag.into(),
        model,
        memory: 1 << 30,
        strategy: "milp".into(),
        extra: PROBE.into(),
        top: String::new(),
        secret: None,
    };
    let nodes = swarm::start_swarm(&mut bed, &vec![spec; 4])?;
    Ok((bed, nodes))
}

/// Scenario 1.
#[test]
fn four_nodes_join_through_one_bootstrap_peer_and_agree_on_a_plan() -> Result<()> {
    if netns::skip_unless_root("netns_swarm::join") {
        return Ok(());
    }
    let _one = ONE_BED_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let profiles = [
        LinkProfile::CLEAN,
        LinkProfile::new(20.0, 4.0, 20.0, 1),
        LinkProfile::new(40.0, 8.0, 10.0, 3),
        LinkProfile::new(60.0, 10.0, 5.0, 5),
    ];
    let (bed, nodes) = four_nodes("join", &profiles)?;
    let all = [0, 1, 2, 3];
    let doc = swarm::wait_plan(&bed, &all, Duration::from_secs(60), |d| {
        d["plan"]["members"]
            .as_array()
            .is_some_and(|m| m.len() == 4)
    })?;
    let plan = &doc["plan"];
    println!(
        "\nnetns_swarm: agreed plan (epoch {}, coordinator {}): {}",
        plan["epoch"], plan["coordinator"], plan["stages"]
    );
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    for &i in &all {
        let s = swarm::status(&bed, i)?;
        let members: Vec<&str> = s["members"].as_array().map_or(Vec::new(), |m| {
            m.iter().filter_map(|m| m["id"].as_str()).collect()
        });
        ensure!(
            ids.iter().all(|id| members.contains(id)),
            "node {i} sees members {members:?}, not {ids:?}"
        );
        ensure!(
            s["plan"]["epoch"] == plan["epoch"]
                && s["plan"]["coordinator"] == plan["coordinator"]
                && s["plan"]["stages"] == plan["stages"],
            "node {i} holds another plan: {}",
            s["plan"]
        );
    }
    Ok(())
}

/// Scenario 2: every impaired link's RTT, jitter and link rate within 20% and its loss within
/// 2 points of what the bed imposes, as node 0 sees them (its own estimates and the other
/// nodes' gossiped reports). See tests/README-netbed.md, "What the bed found", for how shoal's
/// estimates were brought there: in five runs in a row the farthest of the 48 figures were
/// 7.5% (RTT), 12.5% (jitter), 12% (rate) and 0.8 points (loss) off.
///
/// Node 0's view is read every 5 s from the moment the plan stands, and each figure is judged
/// on the median of the last [`SNAPSHOTS`] readings: a reading can catch a link while another
/// pair's train keeps its queue full, which a user's planner (re-planning only on lasting
/// drift) would not act on either. The test passes once every figure is within its bound, from
/// the [`FIRST_JUDGED`]th reading on, and fails when [`SETTLE`] has passed without that; the
/// bounds never widen. Planted errors it
/// catches (`SHOAL_BED_PLANT`, scripts/ci-soak.sh `--plant`): `rate=0.7`, `rtt=1.3`,
/// `loss=+3`.
#[test]
fn link_reports_match_imposed_figures() -> Result<()> {
    if netns::skip_unless_root("netns_swarm::links") {
        return Ok(());
    }
    let _one = ONE_BED_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let profiles = [
        LinkProfile::CLEAN,
        LinkProfile::new(20.0, 4.0, 20.0, 1),
        LinkProfile::new(40.0, 8.0, 10.0, 3),
        LinkProfile::new(60.0, 10.0, 5.0, 5),
    ];
    let (bed, nodes) = four_nodes("links", &profiles)?;
    swarm::wait_plan(&bed, &[0, 1, 2, 3], Duration::from_secs(60), |d| {
        d["plan"]["members"]
            .as_array()
            .is_some_and(|m| m.len() == 4)
    })?;
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let mut docs: Vec<Value> = Vec::new();
    let waited = wait::until(
        SETTLE,
        Duration::from_secs(5),
        || {
            docs.push(swarm::status(&bed, 0)?);
            let window = &docs[docs.len().saturating_sub(SNAPSHOTS)..];
            let judged = judge(&bed, &ids, window);
            if !judged.off.is_empty() {
                eprintln!("netns_swarm: reading {}: off {:?}", docs.len(), judged.off);
            }
            Ok((docs.len(), judged))
        },
        |(n, j)| *n >= FIRST_JUDGED && j.off.is_empty(),
    )?;
    for b in 1..4 {
        let rtts = measure::ping_rtts(&bed, 0, b, 50, Duration::from_millis(40))?;
        let (m, sd) = measure::mean_sd(&rtts);
        println!(
            "netns_swarm: ping 0 -> {b} while the swarm runs: rtt {:.1} ms, jitter {:.1} ms",
            m * 1e3,
            sd / 2f64.sqrt() * 1e3
        );
    }
    println!("netns_swarm: shoal's link reports vs imposed (seen by node 0)");
    println!(
        "{:<9} {:>15} {:>15} {:>17} {:>13}",
        "link", "rtt ms", "jitter ms", "bw Mbit/s", "loss %"
    );
    for row in &waited.last.1.rows {
        println!("{row}");
    }
    println!(
        "(each cell: imposed / reported, median of the last {SNAPSHOTS} of {} readings 5 s \
         apart, {:.0} s after the plan)",
        waited.readings,
        waited.waited.as_secs_f64()
    );
    ensure!(
        waited.done,
        "shoal's link reports are off the imposed figures after {:.0} s: {:?}",
        waited.waited.as_secs_f64(),
        waited.last.1.off
    );
    Ok(())
}

/// The first reading that may pass the test (30 s after the plan): the estimates start from
/// one scout train, and a figure on its way to a wrong value must not pass as it goes by.
const FIRST_JUDGED: usize = 7;

/// How long the estimates may take to settle within their bounds after the plan stands (in
/// five runs in a row before this bound existed, 55 s always sufficed).
const SETTLE: Duration = Duration::from_secs(120);

/// The table of node 0's link reports against the imposed figures, and the figures off.
struct Judged {
    rows: Vec<String>,
    off: Vec<String>,
}

/// Judges the median of each figure over `docs` (node 0's status readings).
fn judge(bed: &Testbed, ids: &[&str], docs: &[Value]) -> Judged {
    let mut rows = Vec::new();
    let mut off = Vec::new();
    for a in 0..4 {
        for b in (0..4).filter(|&b| b != a) {
            let reports: Vec<&Value> = docs
                .iter()
                .filter_map(|d| link(d, ids[a], ids[b]))
                .collect();
            if reports.len() < SNAPSHOTS {
                off.push(format!("no report yet for {a}->{b}"));
                continue;
            }
            let want = bed.path(a, b);
            let got = |k: &str| {
                let v: Vec<f64> = reports
                    .iter()
                    .map(|l| l[k].as_f64().unwrap_or(f64::NAN))
                    .collect();
                measure::median(&v)
            };
            let (rtt, jit, bw, loss) = (
                got("rtt_s"),
                got("jitter_s"),
                got("bandwidth_bps"),
                got("loss"),
            );
            rows.push(format!(
                "{a} -> {b}   {:>6.1} / {:>6.1} {:>6.1} / {:>6.1} {:>7.1} / {:>7.1} {:>5.1} / {:>5.1}",
                want.rtt_s * 1e3,
                rtt * 1e3,
                want.jitter_s * 1e3,
                jit * 1e3,
                want.bandwidth_bps.min(1e9) / 1e6,
                bw / 1e6,
                want.loss * 1e2,
                loss * 1e2
            ));
            let rel = |x: f64, w: f64| (x - w).abs() <= 0.2 * w;
            // Only impaired paths are judged: a clean veth's 50 µs RTT is all noise.
            if want.rtt_s > 0.0 {
                if !rel(rtt, want.rtt_s) {
                    off.push(format!("rtt {a}->{b}"));
                }
                if !rel(jit, want.jitter_s) {
                    off.push(format!("jitter {a}->{b}"));
                }
                if !rel(bw, want.bandwidth_bps) {
                    off.push(format!("bandwidth {a}->{b}"));
                }
                if (loss - want.loss).abs() > 0.02 {
                    off.push(format!("loss {a}->{b}"));
                }
            }
        }
    }
    Judged { rows, off }
}
