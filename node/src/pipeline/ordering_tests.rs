//! Deterministic tests of the activation acceptance rule.

use shoal_keys::{Identity, NodeId};

use super::*;

fn node(seed: u8) -> NodeId {
    Identity::from_secret_bytes([seed; 32]).node_id()
}

fn msg(peer: NodeId, epoch: u64, session: u64, step: u64) -> Inbound<u64> {
    Inbound {
        peer,
        signer: peer,
        signature_ok: true,
        epoch,
        session,
        step,
    }
}

fn gate_expecting(prev: NodeId) -> Gate<u64> {
    let mut g = Gate::new(4);
    g.set_plan(7, Some(Expect::Peer(prev)));
    g
}

#[test]
fn accepts_in_order_steps_from_previous_stage() {
    let prev = node(1);
    let mut g = gate_expecting(prev);
    for step in 0..5 {
        assert_eq!(g.check(&msg(prev, 7, 1, step)), Ok(()));
    }
}

#[test]
fn refuses_replay_and_gaps() {
    let prev = node(1);
    let mut g = gate_expecting(prev);
    assert_eq!(g.check(&msg(prev, 7, 1, 0)), Ok(()));
    assert_eq!(g.check(&msg(prev, 7, 1, 0)), Err(Refusal::Replay));
    assert_eq!(g.check(&msg(prev, 7, 1, 2)), Err(Refusal::OutOfOrder));
    assert_eq!(g.check(&msg(prev, 7, 1, 1)), Ok(()));
    assert_eq!(g.check(&msg(prev, 7, 1, 1)), Err(Refusal::Replay));
    // A session that never started cannot begin mid-way.
    assert_eq!(g.check(&msg(prev, 7, 2, 3)), Err(Refusal::OutOfOrder));
}

#[test]
fn refuses_wrong_sender_epoch_signature_and_signer() {
    let prev = node(1);
    let other = node(2);
    let mut g = gate_expecting(prev);
    assert_eq!(g.check(&msg(other, 7, 1, 0)), Err(Refusal::WrongSender));
    assert_eq!(g.check(&msg(prev, 6, 1, 0)), Err(Refusal::StaleEpoch));
    assert_eq!(g.check(&msg(prev, 8, 1, 0)), Err(Refusal::FutureEpoch));
    let mut bad = msg(prev, 7, 1, 0);
    bad.signature_ok = false;
    assert_eq!(g.check(&bad), Err(Refusal::BadSignature));
    let mut forged = msg(prev, 7, 1, 0);
    forged.signer = other;
    assert_eq!(g.check(&forged), Err(Refusal::SignerMismatch));
    // None of the refusals consumed the step.
    assert_eq!(g.check(&msg(prev, 7, 1, 0)), Ok(()));
}

#[test]
fn no_plan_or_no_stage_refuses_everything() {
    let prev = node(1);
    let mut g: Gate<u64> = Gate::new(4);
    assert_eq!(g.check(&msg(prev, 0, 1, 0)), Err(Refusal::NotOurStage));
    g.set_plan(3, None);
    assert_eq!(g.check(&msg(prev, 3, 1, 0)), Err(Refusal::NotOurStage));
}

#[test]
fn first_stage_accepts_any_listed_origin() {
    let (a, b, c) = (node(1), node(2), node(3));
    let mut g: Gate<u64> = Gate::new(4);
    g.set_plan(1, Some(Expect::AnyOf(vec![a, b])));
    assert_eq!(g.check(&msg(a, 1, 10, 0)), Ok(()));
    assert_eq!(g.check(&msg(b, 1, 11, 0)), Ok(()));
    assert_eq!(g.check(&msg(c, 1, 12, 0)), Err(Refusal::WrongSender));
}

#[test]
fn new_epoch_clears_memory_and_refuses_the_old_one() {
    let prev = node(1);
    let mut g = gate_expecting(prev);
    assert_eq!(g.check(&msg(prev, 7, 1, 0)), Ok(()));
    g.set_plan(8, Some(Expect::Peer(prev)));
    assert_eq!(g.remembered(), 0);
    assert_eq!(g.check(&msg(prev, 7, 1, 1)), Err(Refusal::StaleEpoch));
    assert_eq!(g.check(&msg(prev, 8, 1, 0)), Ok(()));
    // Re-installing the same epoch keeps the memory.
    g.set_plan(8, Some(Expect::Peer(prev)));
    assert_eq!(g.check(&msg(prev, 8, 1, 0)), Err(Refusal::Replay));
}

#[test]
fn memory_is_bounded_and_evicts_least_recently_used() {
    let prev = node(1);
    let mut g = gate_expecting(prev);
    for s in 0..4 {
        assert_eq!(g.check(&msg(prev, 7, s, 0)), Ok(()));
    }
    // Session 0 is used again, so session 1 is now the least recently used.
    assert_eq!(g.check(&msg(prev, 7, 0, 1)), Ok(()));
    assert_eq!(g.check(&msg(prev, 7, 99, 0)), Ok(()));
    assert_eq!(g.remembered(), 4);
    assert_eq!(g.check(&msg(prev, 7, 0, 1)), Err(Refusal::Replay));
    // Session 1 was forgotten: its next step is a gap, not silently accepted.
    assert_eq!(g.check(&msg(prev, 7, 1, 1)), Err(Refusal::OutOfOrder));
    for s in 100..200 {
        assert_eq!(g.check(&msg(prev, 7, s, 0)), Ok(()));
        assert!(g.remembered() <= 4);
    }
}

#[test]
fn forget_frees_a_session() {
    let prev = node(1);
    let mut g = gate_expecting(prev);
    assert_eq!(g.check(&msg(prev, 7, 1, 0)), Ok(()));
    g.forget(&1);
    assert_eq!(g.remembered(), 0);
    assert_eq!(g.check(&msg(prev, 7, 1, 0)), Ok(()));
}

#[test]
fn only_refusals_an_honest_peer_cannot_cause_count_as_misbehaviour() {
    let benign = [
        Refusal::StaleEpoch,
        Refusal::FutureEpoch,
        Refusal::NotOurStage,
    ];
    for r in Refusal::ALL {
        assert_eq!(r.is_misbehaviour(), !benign.contains(&r), "{r:?}");
    }
}
