//! Scenario 6 of the weak-network bed (issue 7), two tests:
//! - a private swarm (libp2p pnet, `psk_file`): nodes with the key find each other and plan;
//!   a node with another key and a node with none, both bootstrapping to a member, never
//!   become members and see nobody;
//! - a member that sends forged activations (signed by itself, claiming to be stage 0) from
//!   behind an impaired link gets no answer, the victim counts each one and logs the rogue's
//!   score going down, and generation stays correct.
//!
//! The rogue is an in-process `Node` run on a thread inside its own namespace (threads the
//! runtime spawns stay in that namespace), so it can sign whatever it likes. Needs root.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use shoal_node::config::Config;
use shoal_node::start::Node;
use shoal_protocol::{Activation, PipelineMessage, Signed};
use shoal_tests::netns::runs::{PROBE_TOML, PROMPT};
use shoal_tests::netns::swarm::{self, NodeSpec};
use shoal_tests::netns::{self, LinkProfile, Testbed, http};
use tokio_util::sync::CancellationToken;

fn psk_file(dir: &std::path::Path, name: &str, byte: u8) -> Result<PathBuf> {
    let path = dir.join(name);
    let hex: String = (0..32u8)
        .map(|i| format!("{:02x}", i.wrapping_mul(7) ^ byte))
        .collect();
    std::fs::write(&path, format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n"))?;
    Ok(path)
}

fn spec(run: &str, model: PathBuf, psk: Option<&PathBuf>) -> NodeSpec {
    NodeSpec {
        run: run.into(),
        model,
        memory: 1 << 30,
        strategy: "milp".into(),
        extra: PROBE_TOML.into(),
        secret: None,
        top: psk.map_or(String::new(), |p| {
            format!("psk_file = {:?}\n", p.display().to_string())
        }),
    }
}

fn member_ids(doc: &serde_json::Value) -> Vec<String> {
    doc["members"].as_array().map_or(Vec::new(), |m| {
        m.iter()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect()
    })
}

#[test]
fn outsiders_without_the_swarm_key_cannot_join_a_private_swarm() -> Result<()> {
    if netns::skip_unless_root("netns_security::pnet") {
        return Ok(());
    }
    let link = LinkProfile::new(20.0, 4.0, 20.0, 1);
    let mut bed = Testbed::new("pnet", &[LinkProfile::CLEAN, link, link, link])?;
    let model = bed.log_dir().join("model");
    shoal_model::synth::synth(&shoal_model::synth::SynthOptions::default(), &model, false)
        .context("synthesising the model")?;
    let key = psk_file(bed.log_dir(), "swarm.key", 0x5a)?;
    let other = psk_file(bed.log_dir(), "other.key", 0xa5)?;
    let first = swarm::start_node(&mut bed, 0, &spec("pnet", model.clone(), Some(&key)), &[])?;
    let boot = vec![
        first
            .listen
            .first()
            .cloned()
            .context("node 0 has no listen address")?,
    ];
    let insider = swarm::start_node(&mut bed, 1, &spec("pnet", model.clone(), Some(&key)), &boot)?;
    let wrong_key = swarm::start_node(
        &mut bed,
        2,
        &spec("pnet", model.clone(), Some(&other)),
        &boot,
    )?;
    let no_key = swarm::start_node(&mut bed, 3, &spec("pnet", model, None), &boot)?;
    let doc = swarm::wait_plan(&bed, &[0, 1], Duration::from_secs(60), |d| {
        d["plan"]["members"]
            .as_array()
            .is_some_and(|m| m.len() == 2)
    })?;
    // Give the outsiders time to try (they retry their bootstrap peer).
    std::thread::sleep(Duration::from_secs(6));
    let inside = [first.id.clone(), insider.id.clone()];
    println!("\nnetns_security: private swarm members after 6 s");
    for (i, n) in [&first, &insider, &wrong_key, &no_key].iter().enumerate() {
        let ids = member_ids(&swarm::status(&bed, i)?);
        println!(
            "  node {i} ({}): sees {} member(s)",
            ["key", "key", "other key", "no key"][i],
            ids.len()
        );
        if i < 2 {
            ensure!(
                ids.len() == 2 && inside.iter().all(|m| ids.contains(m)),
                "insider {i} sees {ids:?}"
            );
        } else {
            ensure!(ids == vec![n.id.clone()], "outsider {i} sees {ids:?}");
        }
    }
    ensure!(
        doc["plan"]["members"]
            .as_array()
            .is_some_and(|m| m.len() == 2),
        "plan members: {}",
        doc["plan"]
    );
    Ok(())
}

/// Runs the rogue inside namespace `ns`: joins through `bootstrap`, waits for a plan that
/// lists it as a member with three stages, sends `count` forged activations to stage 1 and
/// returns (its id, stage 1's id, how many got an answer).
fn rogue(
    ns: String,
    addr: String,
    dir: PathBuf,
    model: PathBuf,
    bootstrap: Vec<String>,
    count: u64,
) -> Result<(String, String, u64)> {
    netns::bed::in_netns(&ns, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut config = Config {
                listen: vec![format!("/ip4/{addr}/tcp/4001")],
                bootstrap,
                data_dir: dir.join("data"),
                key_file: dir.join("node.key"),
                model: Some(model),
                api: None,
                mdns: false,
                quic: false,
                memory_offered: Some(1),
                ..Config::default()
            };
            config.membership.liveness_timeout_ms = 4000;
            config.membership.announce_interval_ms = 500;
            config.membership.settle_ms = 2000;
            let node = Node::start(config, CancellationToken::new())
                .await
                .map_err(|e| anyhow!("rogue node: {e}"))?;
            let me = node.node_id();
            let view = node
                .wait_for(Duration::from_secs(60), |v| {
                    v.plan()
                        .is_some_and(|p| p.members.contains(&me) && p.stages.len() == 3)
                })
                .await;
            let Some(view) = view else {
                let v = node.snapshot();
                let members: Vec<String> = v.members.iter().map(|m| m.id.to_string()).collect();
                return Err(anyhow!(
                    "no plan lists the rogue {me} as a member; it sees {members:?}, plan {:?}",
                    v.plan()
                ));
            };
            let plan = view.plan().context("plan vanished")?.clone();
            ensure!(plan.stage_of(&me).is_none(), "the rogue was given a stage");
            // Let every process adopt this epoch.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (s0, s1) = (plan.stages[0].node, plan.stages[1].node);
            let identity = node.identity();
            let mut answered = 0;
            for k in 0..count {
                let hidden = shoal_model::Activation::new(vec![1, 1, 128], vec![0.5; 128])?;
                let body = Activation {
                    epoch: plan.epoch,
                    session: 1_000 + k,
                    step: 0,
                    stage: 1,
                    position: 0,
                    tensor: shoal_node::pipeline::wire::float_tensor(&hidden),
                    sample: None,
                    reply_to: None,
                    draft: Vec::new(),
                };
                let own = Signed::sign(&identity, body)?;
                let forged: Signed<Activation> =
                    Signed::from_parts(s0, *own.signature(), own.body_bytes().to_vec())?;
                let frame = PipelineMessage::Activation(forged).encode()?;
                answered += u64::from(node.net().send_activation(s1, frame).await.is_ok());
            }
            node.shutdown();
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok((me.to_string(), s1.to_string(), answered))
        })
    })
}

#[test]
fn forged_activations_are_ignored_and_lower_the_senders_score() -> Result<()> {
    if netns::skip_unless_root("netns_security::forged") {
        return Ok(());
    }
    let link = LinkProfile::new(20.0, 4.0, 20.0, 1);
    let mut bed = Testbed::new(
        "forged",
        &[
            LinkProfile::CLEAN,
            LinkProfile::CLEAN,
            LinkProfile::CLEAN,
            link,
        ],
    )?;
    let model = bed.log_dir().join("model");
    shoal_model::synth::synth(&shoal_model::synth::SynthOptions::default(), &model, false)
        .context("synthesising the model")?;
    let budget = shoal_node::launch::spanning_budget(&model, 3, 0.8)?;
    let mut honest = spec("forged", model.clone(), None);
    honest.memory = budget;
    let nodes = swarm::start_swarm(&mut bed, &vec![honest; 3])?;
    let reference = swarm::generate(&bed, 0, &PROMPT, 12)?;
    let tcp = nodes[0].listen.iter().find(|a| a.contains("/tcp/"));
    let boot = vec![tcp.cloned().context("node 0 has no TCP listen address")?];
    let dir = bed.log_dir().join("rogue");
    std::fs::create_dir_all(&dir)?;
    const FORGED: u64 = 3;
    let rogue = rogue(bed.ns(3), bed.addr(3).to_string(), dir, model, boot, FORGED);
    let (rogue_id, victim_id, answered) =
        rogue.inspect_err(|_| eprintln!("{}", bed.logs_tail(30)))?;
    let victim = swarm::index_of(&nodes, &victim_id).context("stage 1 is not a bed node")?;
    std::thread::sleep(Duration::from_millis(500));
    let (_, metrics) = http::request(
        &bed.ns(victim),
        swarm::api(victim),
        "GET",
        "/metrics",
        None,
        Duration::from_secs(5),
    )?;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_refused_total{reason=\"bad_signature\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let log = std::fs::read_to_string(bed.process(nodes[victim].proc).log_path())?;
    let scores: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("peer misbehaved") && l.contains(&rogue_id))
        .filter_map(|l| {
            l.split("score=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let after = swarm::generate(&bed, 0, &PROMPT, 12)?;
    println!(
        "\nnetns_security: rogue {rogue_id} sent {FORGED} forged activations to stage 1 (node {victim})"
    );
    println!(
        "  answered: {answered}; victim refused bad_signature: {refused}; rogue's score in the victim's log: {scores:?}"
    );
    println!(
        "  generation after the attack identical: {}",
        after.token_ids == reference.token_ids
    );
    ensure!(answered == 0, "{answered} forged activations got an answer");
    ensure!(
        refused >= FORGED,
        "the victim counted {refused} bad signatures, not {FORGED}"
    );
    ensure!(
        scores.len() as u64 >= FORGED && scores.windows(2).all(|w| w[1] < w[0]) && scores[0] < 0.0,
        "the rogue's score did not drop: {scores:?}"
    );
    ensure!(
        after.token_ids == reference.token_ids,
        "generation changed after the attack"
    );
    Ok(())
}
