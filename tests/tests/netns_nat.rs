//! Peers behind NAT in the weak-network bed (issue 16).
//!
//! Node 0 is public: the bootstrap peer, a circuit relay (`relay_server = true`) and the
//! coordinator of the first epochs, so with the `even` strategy the pipeline starts at it and
//! runs through the other three in id order. Nodes 1 and 3 sit behind "cone" NATs (Linux
//! masquerade, which keeps the inside port), node 2 behind a symmetric one (a random port
//! per connection); none of them can be dialled, and each reserves a slot on node 0
//! (`relays = [...]`). The three NATed nodes are consecutive stages, so at least one hop
//! touches node 2, whose links to 1 and 3 can only be relayed.
//!
//! Checked: a NATed node cannot be dialled from outside; each one's circuit address reaches
//! the others; the four nodes agree on a four-stage plan; a greedy generation through it gives
//! the tokens of a single process; DCUtR turns the relayed connection between the two cone
//! NATs into a direct one and does not between a cone and the symmetric NAT, which stay
//! relayed; the planner's figure for a relayed link is the sum of its two legs through the
//! relay. Prints the routes and the relayed links' figures. Needs root.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_tests::netns::runs::{PROBE_TOML, PROMPT};
use shoal_tests::netns::swarm::{self, NodeSpec, P2P_PORT};
use shoal_tests::netns::{self, LinkProfile, Nat, Testbed, wait};

const TOKENS: usize = 24;
/// Epochs node 0 coordinates (its identity is searched for it).
const EPOCHS: u64 = 6;

/// Secret keys for four nodes such that node 0 coordinates epochs `1..=EPOCHS`.
fn secrets() -> Result<Vec<[u8; 32]>> {
    swarm::secrets_where(4, 0, |ids| {
        (1..=EPOCHS).all(|e| shoal_node::coordinator::coordinator(e, ids) == Some(ids[0]))
    })
}

/// The `relayed` entries of node `i`'s status: (peer id, relay id).
fn relayed(bed: &Testbed, i: usize) -> Result<Vec<(String, String)>> {
    let doc = swarm::status(bed, i)?;
    Ok(doc["relayed"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["peer"].as_str().unwrap_or("").to_string(),
                r["via"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

/// The link `a -> b` in a status document's matrix, as (rtt s, jitter s, bit/s, loss).
fn link(doc: &Value, a: &str, b: &str) -> Option<(f64, f64, f64, f64)> {
    doc["links"].as_array()?.iter().find_map(|l| {
        (l["from"] == a && l["to"] == b).then(|| {
            (
                l["rtt_s"].as_f64().unwrap_or(f64::NAN),
                l["jitter_s"].as_f64().unwrap_or(f64::NAN),
                l["bandwidth_bps"].as_f64().unwrap_or(f64::NAN),
                l["loss"].as_f64().unwrap_or(f64::NAN),
            )
        })
    })
}

/// The figure of the leg between `x` and `y` the planner uses: either direction, whichever
/// is plannable (loss below 1).
fn leg(doc: &Value, x: &str, y: &str) -> Option<(f64, f64, f64, f64)> {
    [link(doc, x, y), link(doc, y, x)]
        .into_iter()
        .flatten()
        .find(|l| l.3 < 1.0)
}

#[test]
fn nodes_behind_nat_join_through_a_relay_and_serve_stages() -> Result<()> {
    if netns::skip_unless_root("netns_nat") {
        return Ok(());
    }
    let public = LinkProfile::new(10.0, 1.0, 50.0, 0);
    let home = LinkProfile::new(20.0, 2.0, 20.0, 0);
    let mut bed = Testbed::with_nat(
        "nat",
        &[public, home, home, home],
        &[Nat::None, Nat::Cone, Nat::Symmetric, Nat::Cone],
    )?;
    let model = bed.log_dir().join("model");
    shoal_model::synth::synth(&shoal_model::synth::SynthOptions::default(), &model, false)
        .context("synthesising the model")?;
    let budget = shoal_node::launch::spanning_budget(&model, 2, 0.8)?;
    let secrets = secrets()?;
    let spec = |i: usize, top: String| NodeSpec {
        run: "nat".into(),
        model: model.clone(),
        memory: budget,
        strategy: "even".into(),
        extra: PROBE_TOML.into(),
        top,
        secret: Some(secrets[i]),
    };
    let relay = swarm::start_node(&mut bed, 0, &spec(0, "relay_server = true".into()), &[])?;
    let boot = swarm::bootstrap_of(&relay)?;
    let mut nodes = vec![relay];
    for i in 1..4 {
        let top = format!("relays = [{:?}]", boot[0]);
        nodes.push(swarm::start_node(&mut bed, i, &spec(i, top), &boot)?);
    }

    // Nobody outside can dial a NATed node, at its NAT's address or its own.
    for i in 1..4 {
        for ip in [bed.public_addr(i), bed.addr(i)] {
            let target = SocketAddr::from((ip, P2P_PORT));
            let reached = bed.in_ns(0, move || {
                Ok(TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_ok())
            })?;
            ensure!(!reached, "node 0 could dial node {i} at {target}");
        }
    }

    // Every NATed node announces a circuit address through node 0.
    let start = Instant::now();
    loop {
        let doc = swarm::status(&bed, 0)?;
        let circuits = doc["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| {
                m["listen_addrs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a.as_str().is_some_and(|a| a.contains("/p2p-circuit")))
            })
            .count();
        if circuits == 3 {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "only {circuits} of 3 NATed nodes announce a circuit address:\n{}",
            bed.logs_tail(30)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let doc = swarm::wait_stable_plan(
        &bed,
        &[0, 1, 2, 3],
        Duration::from_secs(4),
        Duration::from_secs(120),
        |d| d["plan"]["stages"].as_array().is_some_and(|s| s.len() == 4),
    )?;
    let devices = swarm::plan_devices(&nodes, &doc);
    let generation = swarm::generate(&bed, 0, &PROMPT, TOKENS)?;
    let reference = common::reference_tokens(&model, &PROMPT, TOKENS);
    let got: Vec<u32> = generation.token_ids.iter().map(|&t| t as u32).collect();

    // Routes, once DCUtR had its chance (it runs when the relayed connection opens) and the
    // punched link has been probed: read until what must come true eventually has (a punch
    // logged, 1 - 3 direct with a figure, relayed links charged as their legs), for at most
    // SETTLE, then judge the last reading.
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let logs: Vec<std::path::PathBuf> = nodes
        .iter()
        .map(|n| bed.process(n.proc).log_path().to_path_buf())
        .collect();
    let waited = wait::until(
        SETTLE,
        Duration::from_millis(500),
        || observe(&bed, &logs),
        |o| o.failures(&ids).is_empty(),
    )?;
    let Observed {
        punched, status, ..
    } = &waited.last;
    let is_relayed = |a: usize, b: usize| waited.last.is_relayed(&ids, a, b);

    println!(
        "\nnetns_nat: stages on nodes {devices:?} (0 public relay; 1, 3 cone NAT; 2 symmetric NAT)"
    );
    println!(
        "tokens: {} generated, {:.1} ms/token, same as one process: {}",
        got.len(),
        generation.per_token_s() * 1e3,
        got == reference
    );
    println!(
        "hole punched (DCUtR) at nodes {punched:?}; routes and figures settled {:.1} s after \
         the generation ({} readings)",
        waited.waited.as_secs_f64(),
        waited.readings
    );
    println!("\n| link | route | rtt ms | jitter ms | Mbit/s | loss | legs via node 0: rtt ms |");
    println!("|---|---|---|---|---|---|---|");
    for (a, b) in [(1, 2), (2, 1), (2, 3), (3, 2), (1, 3), (3, 1)] {
        let route = if is_relayed(a, b) {
            "relayed via 0"
        } else {
            "direct"
        };
        let figures = link(status, &ids[a], &ids[b]);
        let legs = [(a, 0), (0, b)].map(|(x, y)| leg(status, &ids[x], &ids[y]));
        let legs_rtt = match legs {
            [Some(x), Some(y)] => format!("{:.1}", (x.0 + y.0) * 1e3),
            _ => "-".into(),
        };
        match figures {
            Some((rtt, jitter, bw, loss)) => println!(
                "| {a} -> {b} | {route} | {:.1} | {:.1} | {:.1} | {loss:.3} | {legs_rtt} |",
                rtt * 1e3,
                jitter * 1e3,
                bw / 1e6
            ),
            None => println!("| {a} -> {b} | {route} | - | - | - | - | {legs_rtt} |"),
        }
    }

    ensure!(
        got == reference,
        "tokens through the NATed stages differ from one process:\n{got:?}\n{reference:?}"
    );
    ensure!(
        devices.iter().flatten().count() == 4,
        "the plan does not use every node: {devices:?}"
    );
    let failures = waited.last.failures(&ids);
    ensure!(
        failures.is_empty(),
        "after {:.1} s ({} readings): {failures:?}",
        waited.waited.as_secs_f64(),
        waited.readings
    );
    swarm::stop_swarm(&mut bed, &nodes);
    Ok(())
}

/// How long after the generation the routes and the punched link's figures may take to settle.
const SETTLE: Duration = Duration::from_secs(60);

/// One reading of the swarm's routes and node 0's view of the links.
struct Observed {
    /// Each node's relayed connections: (peer id, relay id).
    routes: Vec<Vec<(String, String)>>,
    /// The NATed nodes that logged a direct connection by hole punching.
    punched: Vec<usize>,
    /// Node 0's status document.
    status: Value,
}

fn observe(bed: &Testbed, logs: &[std::path::PathBuf]) -> Result<Observed> {
    let routes = (0..4).map(|i| relayed(bed, i)).collect::<Result<_>>()?;
    let punched = (1..4)
        .filter(|&i| {
            std::fs::read_to_string(&logs[i])
                .unwrap_or_default()
                .contains("hole punch: direct connection")
        })
        .collect();
    Ok(Observed {
        routes,
        punched,
        status: swarm::status(bed, 0)?,
    })
}

impl Observed {
    /// Whether node `a` reaches node `b` only through a relay.
    fn is_relayed(&self, ids: &[String], a: usize, b: usize) -> bool {
        self.routes[a].iter().any(|(p, _)| *p == ids[b])
    }

    /// What is not (yet) as it must be; empty when the reading passes.
    fn failures(&self, ids: &[String]) -> Vec<String> {
        let (routes, status) = (&self.routes, &self.status);
        let is_relayed = |a: usize, b: usize| self.is_relayed(ids, a, b);
        let mut off = Vec::new();
        // The symmetric NAT defeats hole punching: node 2 reaches 1 and 3 only through node 0.
        for other in [1, 3] {
            if !(is_relayed(2, other) && is_relayed(other, 2)) {
                off.push(format!("nodes 2 and {other} are not relayed: {routes:?}"));
            }
        }
        if !routes[2].iter().all(|(_, via)| *via == ids[0]) {
            off.push(format!("node 2's relay is not node 0: {:?}", routes[2]));
        }
        // Two cone NATs let DCUtR punch through: 1 and 3 end up directly connected.
        if is_relayed(1, 3) || is_relayed(3, 1) {
            off.push(format!("nodes 1 and 3 are still relayed: {routes:?}"));
        }
        if !(self.punched.contains(&1) || self.punched.contains(&3)) {
            off.push("no hole punch logged between nodes 1 and 3".into());
        }
        // The punched link is cheaper than going through the relay, and the planner can use
        // it. (One direction suffices: the planner uses either for the hop.)
        let measured: Vec<(usize, usize)> = [(1, 3), (3, 1)]
            .into_iter()
            .filter(|&(a, b)| link(status, &ids[a], &ids[b]).is_some())
            .collect();
        if measured.is_empty() {
            off.push("no figure for the punched link 1 - 3".into());
        }
        for (a, b) in measured {
            let Some((rtt, _, _, loss)) = link(status, &ids[a], &ids[b]) else {
                continue;
            };
            let legs = link(status, &ids[a], &ids[0])
                .zip(link(status, &ids[0], &ids[b]))
                .map(|(x, y)| x.0 + y.0);
            if !(loss < 1.0 && legs.is_some_and(|l| rtt < l)) {
                off.push(format!(
                    "direct link {a} -> {b}: rtt {rtt} s, loss {loss}, through the relay {legs:?} s"
                ));
            }
        }
        // The planner charges a relayed link as its two legs through the relay.
        for (a, b) in [(1, 2), (2, 3)] {
            let Some((rtt, ..)) = link(status, &ids[a], &ids[b]) else {
                off.push(format!("no figure for the relayed link {a} -> {b}"));
                continue;
            };
            let through = |x: usize, y: usize| leg(status, &ids[x], &ids[y]).map(|l| l.0);
            match through(a, 0).zip(through(0, b)) {
                Some((x, y)) if (rtt - (x + y)).abs() < 0.25 * (x + y) => {}
                Some((x, y)) => off.push(format!(
                    "relayed link {a} -> {b}: rtt {rtt} s, legs sum {} s",
                    x + y
                )),
                None => off.push(format!(
                    "a leg of the relayed link {a} -> {b} has no figure"
                )),
            }
        }
        off
    }
}
