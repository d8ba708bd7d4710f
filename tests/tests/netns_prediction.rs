//! Scenario 4 of the weak-network bed (issue 7): does the cost model predict per-token latency?
//!
//! For three link profiles, a two-node swarm (node 0 clean, node 1 behind the profile) whose
//! memory budgets force the model across both nodes, so every token crosses the link twice.
//! For each, the table shows the plan's own prediction (`cost_s`, from shoal's measured
//! links, including the `risk_kappa` penalty), DESIGN.md's latency objective evaluated with
//! the imposed link figures (mean, and with the penalty), and the measured decode latency per
//! token at node 0.
//!
//! The target is "within 20%". It is reported, not asserted: after the protocol fixes
//! (one round trip per request, the token straight back to the origin) the loss-free profiles
//! come within 0-30% and the lossy one within 30-90%, the rest being the transport's loss
//! recovery (a retransmission timeout, not the model's one round trip) and in-order delivery
//! on the link (a step's packets wait for the slowest of them); see README-netbed.md, "What
//! the bed found". What the test asserts is what must hold whatever the protocol and the
//! compute calibration: the model's network part with the imposed links is a lower bound of
//! the measured latency.
//! Prints the table (`--nocapture`). Needs root.

use anyhow::{Context, Result, ensure};
use shoal_tests::netns::predict::predict;
use shoal_tests::netns::runs::{self, Setup};
use shoal_tests::netns::swarm;
use shoal_tests::netns::{self, LinkProfile, Testbed};

/// Epochs for which node 0 is made the coordinator.
const MAX_EPOCH: u64 = 10;

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
        let budget = shoal_node::pipeline::launch::spanning_budget(&model, 2, 0.8)?;
        // Node 0 asks and must coordinate (plans are made for the coordinator as origin).
        let secrets = swarm::secrets_avoiding_coordinator(2, 1, MAX_EPOCH)?;
        let setup = Setup {
            model: &model,
            memory: &[budget, budget],
            secrets: Some(&secrets),
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
        let model_pred = predict(&bed, &run.nodes, &run.status, &model, 0, 1.0)?;
        rows.push((*p, run, model_pred));
    }
    println!(
        "\nnetns_prediction: per-token latency, ms (2 nodes, the model split across the link)"
    );
    println!(
        "{:<22} {:>7} {:>12} {:>13} {:>9} {:>13} {:>10} {:>10} {:>9}",
        "link profile",
        "stages",
        "plan cost_s",
        "model(bed)",
        "compute",
        "model+risk",
        "measured",
        "median",
        "error"
    );
    for (p, run, m) in &rows {
        let err = (run.mean_s() - m.mean_s) / m.mean_s;
        println!(
            "{:<22} {:>7} {:>12.1} {:>13.1} {:>9.1} {:>13.1} {:>10.1} {:>10.1} {:>8.0}%",
            p.label(),
            run.devices
                .iter()
                .map(|d| d.map_or("?".into(), |d| d.to_string()))
                .collect::<Vec<String>>()
                .join(","),
            run.predicted_s * 1e3,
            m.mean_s * 1e3,
            m.compute_s * 1e3,
            m.cost_s * 1e3,
            run.mean_s() * 1e3,
            run.median_s() * 1e3,
            err * 100.0
        );
    }
    println!(
        "(plan cost_s: shoal's own prediction from its measured links; model(bed): DESIGN.md's \
         mean with the imposed links, of which compute from the gossiped capabilities; error: \
         measured mean vs model(bed); target 20%)"
    );
    // The network part of the model (its hops' mean times with the true links) is a floor no
    // protocol can beat; the compute part rests on calibration figures and is not a floor.
    for (p, run, m) in &rows {
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
