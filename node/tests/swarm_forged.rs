//! Forged plans (wrong signer, stale epoch, bad signature) are refused by every honest node,
//! and random bytes on every gossip topic and request protocol neither crash a node nor go
//! unpunished: the sender's score drops.

#[path = "support/swarm.rs"]
mod support;

use std::time::Duration;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_keys::Signature;
use shoal_node::coordinator::coordinator;
use shoal_node::swarm::{ACTIVATION_FRAME_MAX, Proto};
use shoal_protocol::{Plan, Signed, Topic, encode};
use support::{identity, plan_key, start_swarm, synth_model, wait_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_plans_and_garbage_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_model(tmp.path());
    let nodes = start_swarm(tmp.path(), 4, &model).await;
    let handles: Vec<_> = nodes.iter().map(|(h, _)| h).collect();
    wait_all(
        &handles,
        Duration::from_secs(40),
        "one plan over 4 members",
        |v| v.plan().is_some_and(|p| p.members.len() == 4),
    )
    .await;
    let held = plan_key(&handles[0].snapshot()).unwrap();
    wait_all(&handles, Duration::from_secs(10), "identical plans", |v| {
        plan_key(v).as_ref() == Some(&held)
    })
    .await;

    // Node 3 turns rogue; it knows every test identity's seed, so it can sign as anyone.
    let rogue = handles[3];
    let honest = &handles[..3];
    let view = honest[0].snapshot();
    let current: Plan = view.plan().unwrap().clone();
    let members = current.members.clone();
    let signer_of = |epoch: u64| {
        let c = coordinator(epoch, &members).unwrap();
        (0..4).map(identity).find(|id| id.node_id() == c).unwrap()
    };

    // (a) Wrong signer: a newer epoch signed by a member that is not its coordinator.
    let epoch = (current.epoch + 1..)
        .find(|e| coordinator(*e, &members) != Some(rogue.node_id()))
        .unwrap();
    let mut body = current.clone();
    body.epoch = epoch;
    body.coordinator = rogue.node_id();
    let wrong = Signed::sign(&rogue.identity(), body).unwrap();
    rogue
        .net()
        .publish(Topic::Plan, encode(&wrong).unwrap())
        .await
        .unwrap();

    // (b) Stale epoch: an older epoch signed by that epoch's rightful coordinator.
    let mut body = current.clone();
    body.epoch = current.epoch - 1;
    body.coordinator = coordinator(body.epoch, &members).unwrap();
    let stale = Signed::sign(&signer_of(body.epoch), body).unwrap();
    rogue
        .net()
        .publish(Topic::Plan, encode(&stale).unwrap())
        .await
        .unwrap();

    // (c) Bad signature: the next epoch's coordinator's plan with one signature bit flipped.
    let mut body = current.clone();
    body.epoch = current.epoch + 1;
    body.coordinator = coordinator(body.epoch, &members).unwrap();
    let good = Signed::sign(&signer_of(body.epoch), body).unwrap();
    let mut sig = good.signature().to_bytes();
    sig[7] ^= 0x01;
    let forged = Signed::<Plan>::from_parts(
        *good.signer(),
        Signature::from_bytes(&sig).unwrap(),
        good.body_bytes().to_vec(),
    )
    .unwrap();
    rogue
        .net()
        .publish(Topic::Plan, encode(&forged).unwrap())
        .await
        .unwrap();

    wait_all(
        honest,
        Duration::from_secs(10),
        "all three forgeries refused",
        |v| {
            [
                "plan_not_coordinator",
                "plan_stale_epoch",
                "plan_bad_signature",
            ]
            .iter()
            .all(|r| v.refused.get(*r).copied().unwrap_or(0) >= 1)
        },
    )
    .await;
    for h in honest {
        assert_eq!(
            plan_key(&h.snapshot()),
            Some(held.clone()),
            "a forgery replaced the plan"
        );
    }

    // Random bytes on every topic and every protocol, and frames over the probe and
    // activation limits.
    let target = honest[0].node_id().to_peer_id();
    let before = honest[0]
        .net()
        .score(rogue.node_id().to_peer_id())
        .await
        .unwrap()
        .app;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for topic in Topic::ALL {
        let mut junk = vec![0u8; rng.random_range(1..2000)];
        rng.fill_bytes(&mut junk);
        rogue.net().publish(topic, junk).await.unwrap();
    }
    for (proto, len) in [
        (Proto::Probe, 2 << 20),
        (Proto::Probe, 300),
        (Proto::Activation, 5000),
        (Proto::Activation, ACTIVATION_FRAME_MAX + 1),
        (Proto::Generate, 700),
    ] {
        let mut junk = vec![0u8; len];
        if len < 1 << 20 {
            rng.fill_bytes(&mut junk);
        }
        let net = rogue.net().clone();
        // The honest node never answers garbage; the request fails on the rogue's side.
        let r =
            tokio::time::timeout(Duration::from_secs(3), net.request(target, proto, junk)).await;
        assert!(!matches!(r, Ok(Ok(_))), "{proto:?} garbage was answered");
    }
    let rogue_peer = rogue.node_id().to_peer_id();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = honest[0].net().score(rogue_peer).await.unwrap();
        // Three topics and three protocols of garbage, and one frame over the probe limit and
        // one over the activation limit (both refused from their headers, before any
        // allocation).
        if s.app <= before - 75.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "score only fell to {s:?} from {before}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every honest node punished the garbage it got over gossip and still runs.
    for h in &honest[1..] {
        let s = h.net().score(rogue_peer).await.unwrap();
        assert!(s.app <= -30.0, "{s:?}");
        // Gossipsub graylists the punished rogue, so it may drop out of the membership and
        // the swarm re-plan without it; a plan is still held and its epoch never goes back.
        // (Until it is banned the rogue still runs shoal's own code and is a member, so the
        // rotation may legitimately make it the coordinator of that re-plan.)
        let key = plan_key(&h.snapshot()).unwrap();
        assert!(key.0 >= held.0, "{key:?}");
    }
    let fresh = honest[0].snapshot();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_ne!(
        *honest[0].snapshot(),
        *fresh,
        "node 0 stopped updating its view"
    );

    // Keep sending garbage: at the ban score the honest node blocks the rogue and drops it.
    for _ in 0..5 {
        let mut junk = vec![0u8; 600];
        rng.fill_bytes(&mut junk);
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            rogue.net().request(target, Proto::Activation, junk),
        )
        .await;
        assert!(!matches!(r, Ok(Ok(_))));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = honest[0].net().score(rogue_peer).await.unwrap();
        let connected = honest[0].net().connected_peers().await.unwrap();
        if s.banned && !connected.contains(&rogue_peer) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not banned: {s:?}, connected {}",
            connected.contains(&rogue_peer)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (_, c) in &nodes {
        c.cancel();
    }
}
