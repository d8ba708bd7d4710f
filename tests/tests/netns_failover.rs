//! Scenario 5 of the weak-network bed (issue 7): failover under impairment.
//!
//! Three nodes, two of them behind 20 ms ± 4 ms, 20 Mbit/s, 1% loss links; the `even` strategy
//! puts a stage on every node, memory budgets let any two nodes hold the model. While node 0
//! generates, the process of a stage on an impaired node is killed (SIGKILL): the request
//! must still complete, with the same tokens as an undisturbed run (greedy decoding), after
//! at least one retry. Prints the timings. Needs root.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use shoal_tests::netns::runs::{PROBE_TOML, PROMPT};
use shoal_tests::netns::swarm::{self, NodeSpec};
use shoal_tests::netns::{self, LinkProfile, Testbed, cmd};

const TOKENS: usize = 40;

#[test]
fn killing_a_stage_mid_generation_over_impaired_links_still_completes() -> Result<()> {
    if netns::skip_unless_root("netns_failover") {
        return Ok(());
    }
    let link = LinkProfile::new(20.0, 4.0, 20.0, 1);
    let mut bed = Testbed::new("failover", &[LinkProfile::CLEAN, link, link])?;
    let model = bed.log_dir().join("model");
    shoal_model::synth::synth(&shoal_model::synth::SynthOptions::default(), &model, false)
        .context("synthesising the model")?;
    let budget = shoal_node::launch::spanning_budget(&model, 2, 0.8)?;
    let spec = NodeSpec {
        run: "failover".into(),
        model,
        memory: budget,
        strategy: "even".into(),
        extra: PROBE_TOML.into(),
        top: String::new(),
        secret: None,
    };
    let nodes = swarm::start_swarm(&mut bed, &vec![spec; 3])?;
    let doc = swarm::wait_stable_plan(
        &bed,
        &[0, 1, 2],
        Duration::from_secs(4),
        Duration::from_secs(90),
        |d| d["plan"]["stages"].as_array().is_some_and(|s| s.len() == 3),
    )?;
    let devices = swarm::plan_devices(&nodes, &doc);
    let victim = devices
        .iter()
        .flatten()
        .copied()
        .find(|&d| d != 0)
        .context("no stage off node 0")?;
    let reference = swarm::generate(&bed, 0, &PROMPT, TOKENS)?;
    ensure!(
        reference.token_ids.len() >= 16,
        "reference run stopped after {} tokens",
        reference.token_ids.len()
    );
    let per_token = reference.per_token_s();
    let pid = bed.process(nodes[victim].proc).pid();

    let (disturbed, killed_at) = std::thread::scope(|s| {
        let bed = &bed;
        let generation = s.spawn(move || swarm::generate(bed, 0, &PROMPT, TOKENS));
        // Kill once about a third of the tokens are out.
        std::thread::sleep(Duration::from_secs_f64(
            (per_token * reference.token_ids.len() as f64 / 3.0).max(0.3),
        ));
        let killed_at = Instant::now();
        let kill = cmd::run("kill", &["-9", &pid.to_string()]);
        let g = generation
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("generation thread panicked")));
        (kill.and(g), killed_at)
    });
    let disturbed = disturbed?;
    let after_kill = killed_at.elapsed();
    bed.process(nodes[victim].proc).kill();
    println!(
        "\nnetns_failover: stages on nodes {devices:?}; killed node {victim} (pid {pid}) mid-generation"
    );
    println!(
        "undisturbed: {} tokens, {:.1} ms/token; disturbed: {} tokens in {:.2} s, {} retries, done {:.2} s after the kill, epoch {} -> {}",
        reference.token_ids.len(),
        per_token * 1e3,
        disturbed.token_ids.len(),
        disturbed.client_s,
        disturbed.retries,
        after_kill.as_secs_f64(),
        reference.epoch,
        disturbed.epoch
    );
    ensure!(
        disturbed.retries >= 1,
        "the kill went unnoticed: no retry (was the generation already over?)"
    );
    ensure!(
        disturbed.token_ids == reference.token_ids,
        "failover changed the tokens"
    );
    Ok(())
}
