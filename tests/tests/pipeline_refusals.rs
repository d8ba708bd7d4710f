//! A member that sends tampered, forged, replayed or out-of-place activations is refused and
//! counted (and its score lowered), and generation through the pipeline stays correct.
//!
//! Three real processes hold the plan; the rogue is an in-process `Node` with the same model
//! but too little memory to be given a stage, so it is a member (the first stage accepts a
//! prompt from it) but never on the path.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pipeline_support/common.rs"]
mod common;

use std::time::Duration;

use common::*;
use shoal_keys::NodeId;
use shoal_node::config::Config;
use shoal_node::pipeline::wire::{Reply, decode_reply, tokens_tensor};
use shoal_node::start::{Node, Running};
use shoal_protocol::{Activation, PipelineMessage, Signed};
use tokio_util::sync::CancellationToken;

const PROMPT: [u32; 5] = [84, 101, 115, 116, 32];

fn refused(metrics: &str, reason: &str) -> u64 {
    let key = format!("shoal_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn rogue(dir: &std::path::Path, model: &std::path::Path, bootstrap: &[String]) -> Running {
    let config = Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: bootstrap.to_vec(),
        data_dir: dir.join("rogue/data"),
        key_file: dir.join("rogue/node.key"),
        model: Some(model.to_path_buf()),
        api: None,
        mdns: false,
        quic: false,
        memory_offered: Some(1),
        ..Config::default()
    };
    let mut config = config;
    config.membership.liveness_timeout_ms = 2500;
    config.membership.announce_interval_ms = 400;
    config.membership.settle_ms = 1000;
    Node::start(config, CancellationToken::new())
        .await
        .expect("rogue node")
}

fn activation(epoch: u64, session: u64, stage: u32) -> Activation {
    Activation {
        epoch,
        session,
        step: 0,
        stage,
        position: 0,
        tensor: tokens_tensor(&PROMPT),
        sample: None,
        reply_to: None,
        draft: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_forged_and_replayed_activations_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path());
    let reference = reference_tokens(&model, &PROMPT, 16);
    let swarm = start_swarm(dir.path(), &model, 3, 3).await;
    let rogue = rogue(dir.path(), &model, &swarm.nodes[0].listen).await;
    // The rogue's arrival changes membership; wait for the plan that includes it as a member.
    let rogue_id = rogue.node_id();
    let view = rogue
        .wait_for(PLAN_TIMEOUT, |v| {
            v.plan()
                .is_some_and(|p| p.members.contains(&rogue_id) && p.stages.len() == 3)
        })
        .await;
    let Some(view) = view else {
        dump_logs(&swarm);
        panic!("no plan with the rogue as a member");
    };
    let plan = view.plan().unwrap().clone();
    assert!(
        plan.stage_of(&rogue_id).is_none(),
        "the rogue must not hold a stage"
    );
    let s0: NodeId = plan.stages[0].node;
    let s1: NodeId = plan.stages[1].node;
    let (i0, i1) = (
        swarm.index_of(&s0.to_string()).unwrap(),
        swarm.index_of(&s1.to_string()).unwrap(),
    );
    // Give every process time to adopt this plan.
    swarm
        .wait_plan(3, plan.epoch - 1, PLAN_TIMEOUT)
        .await
        .unwrap();
    let identity = rogue.identity();
    let net = rogue.net().clone();

    // 1. A valid prompt from a member is accepted by the first stage...
    let signed = Signed::sign(&identity, activation(plan.epoch, 7, 0)).unwrap();
    let frame = PipelineMessage::Activation(signed.clone())
        .encode()
        .unwrap();
    let reply = net.send_activation(s0, frame.clone()).await.unwrap();
    assert!(
        matches!(decode_reply(&reply).unwrap(), Reply::Token(_)),
        "first send must be served"
    );
    // ...and refused when replayed.
    let reply = net.send_activation(s0, frame).await.unwrap();
    match decode_reply(&reply).unwrap() {
        Reply::Error(e) => assert!(e.message.contains("replay"), "{e:?}"),
        other => panic!("replay was not refused: {other:?}"),
    }

    // 2. Tampered: one byte of the tensor changed after signing (the frame ends with it).
    let signed = Signed::sign(&identity, activation(plan.epoch, 8, 0)).unwrap();
    let mut frame = PipelineMessage::Activation(signed).encode().unwrap();
    *frame.last_mut().unwrap() ^= 0x01;
    assert!(
        net.send_activation(s0, frame).await.is_err(),
        "a tampered activation gets no answer"
    );

    // 3. Forged: claims to come from stage 0, signed with the rogue's key, sent to stage 1.
    let hidden = Activation {
        tensor: shoal_node::pipeline::wire::float_tensor(
            &shoal_model::Activation::new(vec![1, 1, 128], vec![0.5; 128]).unwrap(),
        ),
        ..activation(plan.epoch, 9, 1)
    };
    let own = Signed::sign(&identity, hidden.clone()).unwrap();
    let forged: Signed<Activation> =
        Signed::from_parts(s0, *own.signature(), own.body_bytes().to_vec()).unwrap();
    let frame = PipelineMessage::Activation(forged).encode().unwrap();
    assert!(
        net.send_activation(s1, frame).await.is_err(),
        "a forged activation gets no answer"
    );
    // 4. Honestly signed, but the rogue is not the stage before stage 1.
    let frame = PipelineMessage::Activation(own).encode().unwrap();
    let reply = net.send_activation(s1, frame).await.unwrap();
    assert!(
        matches!(decode_reply(&reply).unwrap(), Reply::Error(_)),
        "out-of-place activation must be refused"
    );
    // 5. A stale epoch.
    let stale = Signed::sign(&identity, activation(plan.epoch - 1, 10, 0)).unwrap();
    let reply = net
        .send_activation(s0, PipelineMessage::Activation(stale).encode().unwrap())
        .await
        .unwrap();
    assert!(matches!(decode_reply(&reply).unwrap(), Reply::Error(_)));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let m0 = swarm.get_text(i0, "/metrics").await.unwrap();
    let m1 = swarm.get_text(i1, "/metrics").await.unwrap();
    assert_eq!(refused(&m0, "replay"), 1, "{m0}");
    assert_eq!(refused(&m0, "bad_signature"), 1, "{m0}");
    assert_eq!(refused(&m0, "stale_epoch"), 1, "{m0}");
    assert_eq!(refused(&m1, "bad_signature"), 1, "{m1}");
    assert_eq!(refused(&m1, "wrong_sender"), 1, "{m1}");

    // A member may also ask another node to be the origin (`/shoal/generate/1`).
    let request = shoal_protocol::GenerateRequest {
        session: 1,
        prompt: PROMPT.to_vec(),
        sampling: shoal_protocol::Sampling::GREEDY,
        max_tokens: 16,
        stop: vec![shoal_model::synth::EOS_ID],
        stream: false,
    };
    let frame = shoal_protocol::encode(&request).unwrap();
    let reply = net.send_generate(s1, frame).await.unwrap();
    match shoal_protocol::GenerateResponse::decode(&reply).unwrap() {
        shoal_protocol::GenerateResponse::Done(r) => assert_eq!(r.tokens, reference),
        other => panic!("{other:?}"),
    }

    // Generation is still correct.
    let (status, answer) = swarm
        .post_json(0, "/v1/completions", &greedy_request(&PROMPT, 16, false))
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(token_ids(&answer), reference);
    rogue.shutdown();
    swarm.shutdown().await;
}
