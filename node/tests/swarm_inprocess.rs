//! Five nodes in one process converge on one signed plan; when its coordinator stops, the
//! next epoch's coordinator publishes a plan with a higher epoch for the survivors.

#[path = "support/swarm.rs"]
mod support;

use std::time::Duration;

use shoal_node::coordinator::coordinator;
use support::{plan_key, start_swarm, synth_model, wait_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_agree_then_survive_the_coordinators_death() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_model(tmp.path());
    let nodes = start_swarm(tmp.path(), 5, &model).await;
    let handles: Vec<_> = nodes.iter().map(|(h, _)| h).collect();

    wait_all(
        &handles,
        Duration::from_secs(40),
        "one plan over 5 members",
        |v| v.members.len() == 5 && v.plan().is_some_and(|p| p.members.len() == 5),
    )
    .await;
    // Converged: identical plans everywhere (give a straggler a moment to adopt).
    let first = plan_key(&handles[0].snapshot()).unwrap();
    wait_all(&handles, Duration::from_secs(10), "identical plans", |v| {
        plan_key(v).as_ref() == Some(&first)
    })
    .await;
    let (epoch, coord, _) = first;
    let ids: Vec<_> = handles.iter().map(|h| h.node_id()).collect();
    assert_eq!(
        coordinator(epoch, &ids),
        Some(coord),
        "the plan is signed by its epoch's coordinator"
    );

    // Kill the coordinator.
    let dead = nodes
        .iter()
        .position(|(h, _)| h.node_id() == coord)
        .unwrap();
    nodes[dead].1.cancel();
    let survivors: Vec<_> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != dead)
        .map(|(_, (h, _))| h)
        .collect();
    let alive: Vec<_> = survivors.iter().map(|h| h.node_id()).collect();
    wait_all(
        &survivors,
        Duration::from_secs(40),
        "a new plan without the dead coordinator",
        |v| {
            v.plan().is_some_and(|p| {
                p.epoch > epoch && p.members.len() == 4 && !p.members.contains(&coord)
            })
        },
    )
    .await;
    let next = plan_key(&survivors[0].snapshot()).unwrap();
    wait_all(
        &survivors,
        Duration::from_secs(10),
        "identical new plans",
        |v| plan_key(v).as_ref() == Some(&next),
    )
    .await;
    assert!(next.0 > epoch);
    assert_ne!(next.1, coord);
    assert_eq!(
        coordinator(next.0, &alive),
        Some(next.1),
        "signed by the new epoch's coordinator"
    );
    for (_, c) in &nodes {
        c.cancel();
    }
}
