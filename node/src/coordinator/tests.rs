//! Seeded deterministic tests of rotation, plan acceptance and re-plan triggers.

use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_keys::Identity;

use super::*;

fn ids(rng: &mut ChaCha8Rng, n: usize) -> Vec<NodeId> {
    (0..n)
        .map(|_| {
            let mut s = [0u8; 32];
            rng.fill_bytes(&mut s);
            Identity::from_secret_bytes(s).node_id()
        })
        .collect()
}

fn held(epoch: u64, signer: NodeId, tag: u8) -> Held {
    Held {
        epoch,
        signer,
        digest: [tag; 32],
    }
}

#[test]
fn rank_encoding_is_epoch_be_then_peer_id_bytes() {
    let id = Identity::from_secret_bytes([7; 32]).node_id();
    let mut input = 0x0102_0304_0506_0708u64.to_be_bytes().to_vec();
    assert_eq!(input[0], 1);
    input.extend_from_slice(&id.to_bytes());
    assert_eq!(id.to_bytes().len(), 38);
    let want: [u8; 32] = Sha256::digest(&input).into();
    assert_eq!(rank(0x0102_0304_0506_0708, &id), want);
}

#[test]
fn every_member_computes_the_same_coordinator() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for epoch in 0..200 {
        let members = ids(&mut rng, 2 + (epoch as usize % 9));
        let expected = coordinator(epoch, &members).unwrap();
        for _ in 0..members.len() {
            let mut view = members.clone();
            view.shuffle(&mut rng);
            assert_eq!(coordinator(epoch, &view), Some(expected));
        }
        let best = members.iter().map(|m| rank(epoch, m)).min().unwrap();
        assert_eq!(rank(epoch, &expected), best);
    }
}

#[test]
fn next_coordinator_takes_over_when_one_disappears() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut members = ids(&mut rng, 5);
    let mut epoch = 1;
    while members.len() > 1 {
        let c = coordinator(epoch, &members).unwrap();
        members.retain(|m| *m != c);
        epoch += 1;
        let next = coordinator(epoch, &members).unwrap();
        assert_ne!(next, c);
        assert!(members.contains(&next));
        // Every survivor, whatever the order of its view, agrees on the successor.
        let mut view = members.clone();
        view.shuffle(&mut rng);
        assert_eq!(coordinator(epoch, &view), Some(next));
    }
}

#[test]
fn the_role_rotates_over_epochs() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let members = ids(&mut rng, 5);
    let mut count = BTreeMap::new();
    for e in 0..1000 {
        *count.entry(coordinator(e, &members).unwrap()).or_insert(0) += 1;
    }
    assert_eq!(count.len(), 5);
    assert!(
        count.values().all(|&c| (120..=280).contains(&c)),
        "{count:?}"
    );
}

#[test]
fn gate_refuses_forgeries_and_stale_plans() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let members = ids(&mut rng, 4);
    let c3 = coordinator(3, &members).unwrap();
    let other3 = *members.iter().find(|m| **m != c3).unwrap();
    let mut gate = PlanGate::default();

    assert_eq!(
        gate.check(held(3, other3, 1), true, &members),
        Err(Refusal::NotCoordinator)
    );
    assert_eq!(
        gate.check(held(3, c3, 1), false, &members),
        Err(Refusal::BadSignature)
    );
    assert_eq!(
        gate.check(held(3, c3, 1), true, &members),
        Ok(Verdict::Adopt)
    );
    assert_eq!(
        gate.check(held(3, c3, 1), true, &members),
        Ok(Verdict::Duplicate)
    );
    assert_eq!(
        gate.check(held(3, c3, 2), true, &members),
        Err(Refusal::Stale)
    );
    let c2 = coordinator(2, &members).unwrap();
    assert_eq!(
        gate.check(held(2, c2, 9), true, &members),
        Err(Refusal::Stale)
    );
    let c9 = coordinator(9, &members).unwrap();
    assert_eq!(
        gate.check(held(9, c9, 4), true, &members),
        Ok(Verdict::Adopt)
    );
    assert_eq!(gate.epoch(), 9);
    // A stranger is never a coordinator in our view.
    let stranger = ids(&mut rng, 1)[0];
    assert_eq!(
        gate.check(held(10, stranger, 5), true, &members),
        Err(Refusal::NotCoordinator)
    );
    let r = gate.refused();
    assert_eq!(r[&Refusal::NotCoordinator], 2);
    assert_eq!(r[&Refusal::BadSignature], 1);
    assert_eq!(r[&Refusal::Stale], 2);
}

#[test]
fn same_epoch_from_the_rightful_coordinator_replaces_a_split_brain_plan() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let members = ids(&mut rng, 4);
    let c = coordinator(4, &members).unwrap();
    // During a split we adopted a plan of epoch 4 from a node that, in a smaller view, was
    // the coordinator; once the view holds everyone, the rightful coordinator's plan wins.
    let small: Vec<NodeId> = members.iter().copied().filter(|m| *m != c).collect();
    let c_small = coordinator(4, &small).unwrap();
    let mut gate = PlanGate::default();
    assert_eq!(
        gate.check(held(4, c_small, 1), true, &small),
        Ok(Verdict::Adopt)
    );
    assert_eq!(
        gate.check(held(4, c, 2), true, &members),
        Ok(Verdict::Adopt)
    );
    assert_eq!(gate.held().unwrap().signer, c);
}

fn metrics(rtt_s: f64, bandwidth_bps: f64, loss: f64) -> LinkMetrics {
    LinkMetrics {
        rtt_s,
        jitter_s: 0.001,
        bandwidth_bps,
        loss,
    }
}

#[test]
fn triggers_with_hysteresis() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let m = ids(&mut rng, 3);
    let policy = ReplanPolicy {
        rtt_change: 0.5,
        bandwidth_change: 0.5,
        loss_change: 0.03,
        min_interval: Duration::from_secs(30),
    };
    let mut old = LinkMatrix::new();
    old.insert((m[0], m[1]), metrics(0.02, 1e8, 0.01));
    let long = Duration::from_secs(60);
    assert_eq!(
        replan_trigger(None, &m, &old, long, &policy),
        Some(Trigger::NoPlan)
    );
    assert_eq!(
        replan_trigger(Some((&m, &old)), &m, &old, long, &policy),
        None
    );
    assert_eq!(
        replan_trigger(Some((&m[..2], &old)), &m, &old, long, &policy),
        Some(Trigger::Membership)
    );
    let mut new = old.clone();
    new.insert((m[0], m[1]), metrics(0.029, 0.6e8, 0.035));
    assert_eq!(
        replan_trigger(Some((&m, &old)), &m, &new, long, &policy),
        None
    );
    new.insert((m[0], m[1]), metrics(0.02, 1e8, 0.05));
    let drift = replan_trigger(Some((&m, &old)), &m, &new, long, &policy);
    assert!(matches!(
        drift,
        Some(Trigger::LinkDrift { metric: "loss", .. })
    ));
    // Inside the hysteresis interval drift is ignored, membership is not.
    let short = Duration::from_secs(5);
    assert_eq!(
        replan_trigger(Some((&m, &old)), &m, &new, short, &policy),
        None
    );
    new.insert((m[0], m[1]), metrics(0.05, 1e8, 0.01));
    let drift = replan_trigger(Some((&m, &old)), &m, &new, long, &policy);
    assert!(matches!(
        drift,
        Some(Trigger::LinkDrift { metric: "rtt", .. })
    ));
}

#[test]
fn a_plan_refused_under_a_lagging_view_is_taken_when_the_view_catches_up() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let all = ids(&mut rng, 4);
    // The member that leaves is the coordinator of the next epoch among all four.
    let epoch = 2;
    let gone = coordinator(epoch, &all).unwrap();
    let survivors: Vec<NodeId> = all.iter().copied().filter(|m| *m != gone).collect();
    let signer = coordinator(epoch, &survivors).unwrap();
    let mut gate = PlanGate::new(Some(held(1, coordinator(1, &all).unwrap(), 0)));

    // Our view still lists the member that left: the survivors' plan is refused, and kept.
    let plan = held(epoch, signer, 7);
    assert_eq!(gate.check(plan, true, &all), Err(Refusal::NotCoordinator));
    assert_eq!(gate.deferred(), Some(plan));
    // A membership change that does not drop the member changes nothing.
    assert_eq!(gate.recheck(&all), None);
    assert_eq!(gate.epoch(), 1);
    // Once it is dropped, the plan is taken.
    assert_eq!(gate.recheck(&survivors), Some(plan));
    assert_eq!(gate.held(), Some(plan));
    assert_eq!(gate.deferred(), None);
    assert_eq!(gate.recheck(&survivors), None);
    assert_eq!(gate.refused()[&Refusal::NotCoordinator], 1);
}

#[test]
fn only_the_newest_plan_above_the_held_one_is_deferred() {
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let members = ids(&mut rng, 4);
    let stranger = ids(&mut rng, 1)[0];
    let mut gate = PlanGate::new(Some(held(5, coordinator(5, &members).unwrap(), 0)));

    // Not newer than the held plan: refused for good.
    assert_eq!(
        gate.check(held(5, stranger, 1), true, &members),
        Err(Refusal::NotCoordinator)
    );
    assert_eq!(gate.deferred(), None);
    // A bad signature is never kept.
    let c8 = coordinator(8, &members).unwrap();
    assert_eq!(
        gate.check(held(8, c8, 1), false, &members),
        Err(Refusal::BadSignature)
    );
    assert_eq!(gate.deferred(), None);
    // The newest refusal wins; an older one does not replace it.
    assert_eq!(
        gate.check(held(9, stranger, 2), true, &members),
        Err(Refusal::NotCoordinator)
    );
    assert_eq!(
        gate.check(held(7, stranger, 3), true, &members),
        Err(Refusal::NotCoordinator)
    );
    assert_eq!(gate.deferred(), Some(held(9, stranger, 2)));
    // A stranger never becomes a coordinator: it stays deferred, harmlessly.
    assert_eq!(gate.recheck(&members), None);
    assert_eq!(gate.deferred(), Some(held(9, stranger, 2)));
    // Adopting a plan of that epoch or newer forgets it.
    let c9 = coordinator(9, &members).unwrap();
    assert_eq!(
        gate.check(held(9, c9, 4), true, &members),
        Ok(Verdict::Adopt)
    );
    assert_eq!(gate.deferred(), None);
}

#[test]
fn a_relayed_link_is_charged_as_its_two_legs() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let n = ids(&mut rng, 4);
    let (a, b, relay, other) = (n[0], n[1], n[2], n[3]);
    let leg = |rtt_s: f64, jitter_s: f64, bandwidth_bps: f64, loss: f64| LinkMetrics {
        rtt_s,
        jitter_s,
        bandwidth_bps,
        loss,
    };
    let mut m = LinkMatrix::new();
    m.insert((a, relay), leg(0.040, 0.003, 10e6, 0.01));
    // The relay's own figure towards b lost every UDP echo (b is behind NAT); b's is sound.
    m.insert((relay, b), leg(0.080, 0.004, 5e6, 1.0));
    m.insert((b, relay), leg(0.080, 0.004, 5e6, 0.02));
    // What a ping over the circuit measured, without loss figures.
    m.insert((a, b), leg(0.130, 0.010, 4e6, 0.0));
    // A relayed link with an unknown leg keeps its measured figures.
    m.insert((a, other), leg(0.2, 0.0, 1e6, 0.0));
    charge_relayed(&mut m, &[(a, b, relay), (a, other, relay)]);
    let ab = m[&(a, b)];
    assert!((ab.rtt_s - 0.120).abs() < 1e-12);
    assert!((ab.jitter_s - 0.005).abs() < 1e-12);
    assert_eq!(ab.bandwidth_bps, 5e6);
    assert!((ab.loss - (1.0 - 0.99 * 0.98)).abs() < 1e-12);
    assert!(ab.plannable());
    assert_eq!(m[&(a, other)], leg(0.2, 0.0, 1e6, 0.0));
}

#[test]
fn a_placement_that_needs_fetches_waits_behind_the_running_plan() {
    use shoal_protocol::{ModelRef, Objective, Plan, PlanStrategy, Stage};
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let n = ids(&mut rng, 3);
    let st = |i: usize, start: u32, end: u32| Stage {
        node: n[i],
        start,
        end,
    };
    let mut members = n.clone();
    members.sort();
    let running = Plan {
        epoch: 4,
        coordinator: n[0],
        model: ModelRef {
            name: "m".into(),
            manifest_sha256: [1; 32],
        },
        num_layers: 10,
        objective: Objective::Latency,
        cost_s: 0.2,
        stages: vec![st(0, 0, 6), st(1, 6, 10)],
        members: members.clone(),
        strategy: PlanStrategy::Milp,
        optimal: true,
        timestamp_ms: 0,
        prefetch: vec![],
        cause: None,
        below_floor: vec![],
    };
    // Node 2 joined with nothing on disk; the others hold everything.
    let holds = |s: &Stage| s.node != n[2];
    let target = vec![st(0, 0, 4), st(2, 4, 10)];
    let (stages, prefetch, cost) = phase(target.clone(), 0.1, Some(&running), &members, holds);
    assert_eq!(stages, running.stages, "the running plan keeps serving");
    assert_eq!(prefetch, vec![st(2, 4, 10)], "node 2 is told what to fetch");
    assert_eq!(cost, 0.2);
    // Once node 2 holds its layers, the placement takes effect.
    let (stages, prefetch, cost) = phase(target.clone(), 0.1, Some(&running), &members, |_| true);
    assert_eq!((stages, prefetch, cost), (target.clone(), vec![], 0.1));
    // No running plan (or one whose node left): the placement at once; its nodes fetch, then load.
    let (stages, prefetch, _) = phase(target.clone(), 0.1, None, &members, holds);
    assert_eq!((stages, prefetch), (target.clone(), vec![]));
    let without_1: Vec<NodeId> = members.iter().copied().filter(|m| *m != n[1]).collect();
    let (stages, _, _) = phase(target.clone(), 0.1, Some(&running), &without_1, holds);
    assert_eq!(stages, target);
}

fn power(on_battery: bool, level: Option<f64>, throttle: Option<f64>) -> PowerState {
    PowerState::of(&shoal_protocol::Capability {
        node: Identity::from_secret_bytes([1; 32]).node_id(),
        seq: 0,
        timestamp_ms: 0,
        model: None,
        flops: 1e9,
        mem_bw: None,
        mem_bytes: 1 << 30,
        overhead_s: 0.0,
        battery: Some(shoal_protocol::Battery {
            on_battery,
            level,
            watts: Some(4.0),
        }),
        listen_addrs: vec![],
        loss_probe_port: None,
        speculation: None,
        held: None,
        temp_c: Some(40.0),
        throttle,
    })
}

#[test]
fn power_changes_trigger_with_their_cause() {
    let mut rng = ChaCha8Rng::seed_from_u64(25);
    let n = ids(&mut rng, 2);
    let p = Power {
        min_level: 0.2,
        step: 0.1,
    };
    let at = |states: [PowerState; 2]| -> BTreeMap<NodeId, PowerState> {
        n.iter().copied().zip(states).collect()
    };
    let mains = power(false, Some(0.9), None);
    let before = at([mains, mains]);
    assert_eq!(power_trigger(&before, &before, &p), None);
    let cause = |now: [PowerState; 2]| power_trigger(&before, &at(now), &p).map(|t| t.to_string());
    let who = n[1].short();
    assert_eq!(
        cause([mains, power(true, Some(0.18), None)]),
        Some(format!("{who} went on battery at 18%"))
    );
    // Charge moving within a step, or a hotter sensor, is no cause; the throttle is.
    let on = |l| power(true, Some(l), None);
    let before = at([mains, on(0.55)]);
    let cause = |now: [PowerState; 2]| power_trigger(&before, &at(now), &p).map(|t| t.to_string());
    assert_eq!(cause([mains, on(0.51)]), None);
    assert_eq!(
        cause([mains, on(0.49)]),
        Some(format!("{who}'s battery at 49%"))
    );
    assert_eq!(
        cause([mains, mains]),
        Some(format!("{who} is on mains again"))
    );
    assert_eq!(
        cause([mains, power(true, Some(0.55), Some(0.4))]),
        Some(format!("{who} throttled to 40% of its measured speed"))
    );
    // A member the plan did not know is the membership trigger's business.
    let newcomer: BTreeMap<NodeId, PowerState> = [(n[0], mains)].into();
    assert_eq!(power_trigger(&newcomer, &at([mains, on(0.1)]), &p), None);
    assert_eq!(membership_cause(&n[..1], &n), format!("{who} joined"));
    assert_eq!(
        membership_cause(&n, &n[1..]),
        format!("{} left", n[0].short())
    );
}
