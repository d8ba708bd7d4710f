//! Scenario 4 of the weak-network bed (issue 7): does the cost model predict per-token latency?
//!
//! For three link profiles, a two-node swarm (node 0 clean, node 1 behind the profile) whose
//! memory budgets force the model across both nodes, so every token crosses the link twice.
//! For each, the table shows the plan's objective when it was made, DESIGN.md's mean latency
//! for the plan with the links shoal measured by the end of the run and with the links the
//! bed imposes, and the measured decode latency per token at node 0.
//!
//! The target is "within 20%". It is reported, not asserted: shoal's own links give
//! the same mean as the imposed ones (within 6%), and compute is timed through the model
//! runtime, but a message on a jittery in-order link costs more than one packet's delay: it
//! waits for the packets sent just before it on the connection. Activations travel on
//! long-lived lanes (one frame per message), which took a crossing of a 20 +- 8 ms link from
//! 33 to 25-27 ms; what remains is mostly the answer up the chain sent just before the next
//! step's message, and on the lossy profile the transport's loss recovery (a retransmission
//! timeout, not the model's one round trip). See README-netbed.md, "What the bed found". What
//! the test asserts is what must hold whatever the protocol and the compute calibration: the
//! model's network part with the imposed links is a lower bound of the measured latency.
//! Prints the table (`--nocapture`). Needs root.

use anyhow::{Context, Result, ensure};
use shoal_tests::netns::predict::{Links, predict};
use shoal_tests::netns::runs::{self, Setup};
use shoal_tests::netns::swarm;
use shoal_tests::netns::{self, LinkProfile, Testbed};

/// Epochs for which node 0 is made the coordinator.
const MAX_EPOCH: u64 = 10;

/// Probe settings: a train every 5-15 s and echoes at 50 Hz, so that shoal's link estimates
/// have settled by the time the generations end (the default runs' trains come once a
/// minute, and the scout train alone reads -40..+60%).
const PROBE: &str = "[probe]\nping_interval_ms = 500\nbandwidth_interval_ms = 10000\n\
                     bandwidth_bytes = 131072\nloss_rate_hz = 50\nloss_window = 1000\n";

#[test]
fn cost_model_predicts_per_token_latency_on_three_links() -> Result<()> {
    if netns::skip_unless_root("netns_prediction") {
        return Ok(());
    }
    let profiles = [
        LinkProfile::new(10.0, 2.0, 40.0, 0),
        LinkProfile::new(40.0, 8.0, 10.0, 0),
        LinkProfile::new(80.0, 15.0, 5.0, 2),
    ];
    let mut rows = Vec::new();
    for (k, p) in profiles.iter().enumerate() {
        let mut bed = Testbed::new(&format!("pred{k}"), &[LinkProfile::CLEAN, *p])?;
        let model = bed.log_dir().join("model");
        shoal_model::synth::synth(&shoal_model::synth::SynthOptions::default(), &model, false)
            .context("synthesising the model")?;
        let budget = shoal_node::launch::spanning_budget(&model, 2, 0.8)?;
        // Node 0 asks and must coordinate (plans are made for the coordinator as origin).
        let secrets = swarm::secrets_avoiding_coordinator(2, 1, MAX_EPOCH)?;
        let setup = Setup {
            model: &model,
            memory: &[budget, budget],
            secrets: Some(&secrets),
            probe: PROBE,
        };
        let run = runs::measure(&mut bed, "pred", &setup, "milp", 2, 16)
            .with_context(|| format!("profile {}", p.label()))?;
        let epoch = run.plan["epoch"].as_u64().unwrap_or(u64::MAX);
        ensure!(
            epoch <= MAX_EPOCH,
            "plan epoch {epoch} is past the epochs node 0 was made to coordinate"
        );
        ensure!(
            run.devices.len() == 2,
            "plan does not span both nodes: {:?}",
            run.devices
        );
        let bed_pred = predict(
            &bed,
            &run.nodes,
            (&run.status, Links::Imposed),
            &model,
            0,
            1.0,
        )?;
        let own_pred = predict(
            &bed,
            &run.nodes,
            (&run.after, Links::Measured(&run.after)),
            &model,
            0,
            1.0,
        )?;
        rows.push((*p, run, bed_pred, own_pred));
    }
    println!(
        "\nnetns_prediction: per-token latency, ms (2 nodes, the model split across the link)"
    );
    println!(
        "{:<22} {:>6} {:>11} {:>11} {:>8} {:>11} {:>9} {:>7} {:>9} {:>9}",
        "link profile",
        "stages",
        "plan cost_s",
        "shoal mean",
        "compute",
        "bed mean",
        "measured",
        "median",
        "vs shoal",
        "vs bed"
    );
    for (p, run, bed_pred, own) in &rows {
        let err = |m: f64| (run.mean_s() - m) / m * 100.0;
        println!(
            "{:<22} {:>6} {:>11.1} {:>11.1} {:>8.1} {:>11.1} {:>9.1} {:>7.1} {:>8.0}% {:>8.0}%",
            p.label(),
            run.devices
                .iter()
                .map(|d| d.map_or("?".into(), |d| d.to_string()))
                .collect::<Vec<String>>()
                .join(","),
            run.predicted_s * 1e3,
            own.mean_s * 1e3,
            own.compute_s * 1e3,
            bed_pred.mean_s * 1e3,
            run.mean_s() * 1e3,
            run.median_s() * 1e3,
            err(own.mean_s),
            err(bed_pred.mean_s)
        );
    }
    println!(
        "(plan cost_s: the plan's objective when it was made, from shoal's links then, with the \
         risk penalty; shoal mean: DESIGN.md's mean for the plan with shoal's links after the \
         run, of which compute from the gossiped capabilities; bed mean: the same with the \
         imposed links; vs: measured mean against each; target 20%)"
    );
    // The network part of the model (its hops' mean times with the true links) is a floor no
    // protocol can beat; the compute part rests on calibration figures and is not a floor.
    for (p, run, m, _) in &rows {
        let network = m.mean_s - m.compute_s;
        ensure!(
            run.mean_s() >= network * 0.9,
            "{}: measured {:.1} ms is below the links' own delay {:.1} ms",
            p.label(),
            run.mean_s() * 1e3,
            network * 1e3
        );
    }
    Ok(())
}
