//! Semantic rules: decoders refuse well-formed CBOR that breaks them.

use shoal_protocol::*;

use crate::strategies::{identity, node};

fn tensor(dtype: DType, shape: Vec<u32>, len: usize) -> Tensor {
    Tensor {
        dtype,
        shape,
        data: vec![0; len],
    }
}

fn activation(t: Tensor) -> Activation {
    Activation {
        epoch: 1,
        session: 1,
        step: 0,
        stage: 0,
        position: 0,
        tensor: t,
        sample: None,
        reply_to: None,
        draft: Vec::new(),
    }
}

/// `msg` encodes without checks, then the decoder refuses it as invalid.
fn refused<T: Message + std::fmt::Debug>(msg: T) -> String {
    let bytes = encode_unchecked(&msg).unwrap();
    let err = decode::<T>(&bytes).unwrap_err();
    assert_eq!(err.reason(), "invalid", "{msg:?}: {err}");
    assert_eq!(msg.validate().unwrap_err(), err);
    assert!(encode(&msg).is_err());
    err.to_string()
}

#[test]
fn tensor_rules() {
    assert!(
        activation(tensor(DType::F32, vec![1, 2, 3], 24))
            .validate()
            .is_ok()
    );
    assert!(
        activation(tensor(DType::I64, vec![1, 5], 40))
            .validate()
            .is_ok()
    );
    assert!(
        activation(tensor(DType::Bf16, vec![], 2))
            .validate()
            .is_ok()
    );
    refused(activation(tensor(DType::F32, vec![1, 2, 3], 23)));
    refused(activation(tensor(DType::F16, vec![1, 2, 3], 24)));
    refused(activation(tensor(DType::U8, vec![1, 1, 1, 1, 1], 1)));
    refused(activation(tensor(
        DType::F32,
        vec![u32::MAX, u32::MAX, u32::MAX],
        0,
    )));
    let mut far = activation(tensor(DType::U8, vec![1], 1));
    far.stage = MAX_SWARM as u32;
    refused(far);
    let logits = TokenReturn {
        epoch: 1,
        session: 1,
        step: 1,
        output: Sampled::Logits(tensor(DType::I64, vec![2], 16)),
    };
    refused(logits);
}

#[test]
fn speculative_steps_are_bounded() {
    let mut verify = activation(tensor(DType::I64, vec![1, 9], 72));
    verify.draft = vec![7; MAX_DRAFT];
    assert!(verify.validate().is_ok());
    assert_eq!(verify.verified_positions(), MAX_DRAFT + 1);
    verify.draft.push(7);
    assert!(refused(verify).contains("draft"));
    let answer = |tokens: Vec<u32>| TokenReturn {
        epoch: 1,
        session: 1,
        step: 1,
        output: Sampled::Tokens(tokens),
    };
    assert!(answer(vec![1; MAX_DRAFT + 1]).validate().is_ok());
    assert!(refused(answer(vec![1; MAX_DRAFT + 2])).contains("tokens"));
    assert!(refused(answer(Vec::new())).contains("no tokens"));
}

fn plan() -> Plan {
    let mut members = vec![node(0), node(1), node(2)];
    members.sort();
    Plan {
        epoch: 9,
        coordinator: node(0),
        model: ModelRef {
            name: "tiny".into(),
            manifest_sha256: [3; 32],
        },
        num_layers: 10,
        objective: Objective::Latency,
        cost_s: 0.012,
        stages: vec![
            Stage {
                node: node(1),
                start: 0,
                end: 4,
            },
            Stage {
                node: node(2),
                start: 4,
                end: 10,
            },
        ],
        members,
        strategy: PlanStrategy::Milp,
        optimal: true,
        timestamp_ms: 0,
        prefetch: vec![],
        cause: None,
        below_floor: vec![],
    }
}

#[test]
fn plan_rules() {
    let p = plan();
    p.validate().unwrap();
    let order = |node: shoal_keys::NodeId, start, end| Stage { node, start, end };
    let mut fetch = plan();
    fetch.prefetch = vec![order(node(0), 0, 10), order(node(2), 2, 3)];
    fetch.validate().unwrap();
    fetch.prefetch.push(order(node(0), 3, 4));
    assert!(refused(fetch).contains("listed twice"));
    let mut outsider = plan();
    outsider.prefetch = vec![order(node(7), 0, 1)];
    assert!(refused(outsider).contains("not a member"));
    let mut past = plan();
    past.prefetch = vec![order(node(1), 9, 11)];
    assert!(refused(past).contains("outside the model"));
    let mut empty = plan();
    empty.prefetch = vec![order(node(1), 3, 3)];
    assert!(refused(empty).contains("outside the model"));
    let mut why = plan();
    why.cause = Some("n1 went on battery at 18%".into());
    why.below_floor = vec![node(2)];
    why.validate().unwrap();
    why.cause = Some("x".repeat(MAX_CAUSE_LEN + 1));
    refused(why);
    let mut floor = plan();
    floor.below_floor = vec![node(0)];
    assert!(refused(floor).contains("runs no stage"));
    assert_eq!(p.stages[1].layers(), 4..10);
    assert_eq!(p.stage_of(&node(2)), Some(1));
    assert_eq!(p.stage_of(&node(0)), None);

    let mut gap = plan();
    gap.stages[1].start = 5;
    assert!(refused(gap).contains("stage 1"));
    let mut empty_stage = plan();
    empty_stage.stages[0].end = 0;
    empty_stage.stages[1].start = 0;
    refused(empty_stage);
    let mut none = plan();
    none.stages.clear();
    refused(none);
    let mut short = plan();
    short.num_layers = 11;
    refused(short);
    let mut twice = plan();
    twice.stages[1].node = node(1);
    refused(twice);
    let mut stranger = plan();
    stranger.stages[1].node = node(5);
    refused(stranger);
    let mut unsorted = plan();
    unsorted.members.reverse();
    refused(unsorted);
    let mut nan = plan();
    nan.cost_s = f64::NAN;
    refused(nan);
    let mut outsider = plan();
    outsider.coordinator = node(6);
    refused(outsider);
}

#[test]
fn link_and_capability_rules() {
    let entry = LinkEntry {
        to: node(1),
        rtt_s: 0.02,
        jitter_s: 0.003,
        bandwidth_bps: Some(5e7),
        loss: Some(0.01),
        samples: 10,
        loss_samples: 400,
        age_s: 1.0,
        via: None,
    };
    let report = |links: Vec<LinkEntry>| LinkReport {
        from: node(0),
        seq: 1,
        timestamp_ms: 0,
        links,
    };
    report(vec![entry.clone()]).validate().unwrap();
    refused(report(vec![entry.clone(), entry.clone()]));
    refused(report(vec![LinkEntry {
        to: node(0),
        ..entry.clone()
    }]));
    refused(report(vec![LinkEntry {
        loss: Some(1.5),
        ..entry.clone()
    }]));
    refused(report(vec![LinkEntry {
        rtt_s: -1.0,
        ..entry.clone()
    }]));
    refused(report(vec![LinkEntry {
        bandwidth_bps: Some(0.0),
        ..entry.clone()
    }]));
    report(vec![LinkEntry {
        via: Some(node(2)),
        ..entry.clone()
    }])
    .validate()
    .unwrap();
    refused(report(vec![LinkEntry {
        via: Some(node(0)),
        ..entry.clone()
    }]));
    refused(report(vec![LinkEntry {
        via: Some(node(1)),
        ..entry
    }]));

    let cap = Capability {
        node: node(0),
        seq: 0,
        timestamp_ms: 0,
        model: None,
        flops: 1e9,
        mem_bw: None,
        mem_bytes: 1 << 30,
        overhead_s: 0.0,
        battery: None,
        listen_addrs: vec![],
        loss_probe_port: None,
        speculation: None,
        held: None,
        temp_c: None,
        throttle: None,
    };
    cap.validate().unwrap();
    let held = |ranges: Vec<(u32, u32)>| Capability {
        model: Some(ModelRef {
            name: "m".into(),
            manifest_sha256: [1; 32],
        }),
        held: Some(ranges),
        ..cap.clone()
    };
    let some = held(vec![(0, 2), (5, 6)]);
    some.validate().unwrap();
    assert!(some.holds(1) && !some.holds(2) && some.holds(5) && !some.holds(6));
    assert!(held(vec![]).validate().is_ok() && !held(vec![]).holds(0));
    assert!(!cap.holds(0), "no model, no layers");
    assert!(refused(held(vec![(0, 2), (1, 3)])).contains("held range"));
    assert!(refused(held(vec![(2, 2)])).contains("held range"));
    assert!(refused(held(vec![(3, 4), (0, 1)])).contains("held range"));
    assert!(refused(held(vec![(0, MAX_LAYERS + 1)])).contains("held range"));
    refused(held(
        (0..=MAX_HELD_RANGES as u32)
            .map(|i| (2 * i, 2 * i + 1))
            .collect(),
    ));
    let spec = |positions, tokens_per_pass| Capability {
        speculation: Some(SpecFigures {
            positions,
            tokens_per_pass,
        }),
        ..cap.clone()
    };
    spec(3.5, 2.5).validate().unwrap();
    assert!(refused(spec(0.5, 1.0)).contains("positions"));
    assert!(refused(spec((MAX_DRAFT + 2) as f64, 2.0)).contains("positions"));
    assert!(refused(spec(3.0, 3.5)).contains("tokens per pass"));
    assert!(refused(spec(3.0, f64::NAN)).contains("tokens per pass"));
    refused(Capability {
        flops: f64::INFINITY,
        ..cap.clone()
    });
    refused(Capability {
        flops: 0.0,
        ..cap.clone()
    });
    refused(Capability {
        battery: Some(Battery {
            on_battery: true,
            level: Some(2.0),
            watts: None,
        }),
        ..cap.clone()
    });
    let watts = |w: f64| Capability {
        battery: Some(Battery {
            on_battery: true,
            level: Some(0.5),
            watts: Some(w),
        }),
        ..cap.clone()
    };
    watts(4.0).validate().unwrap();
    assert!(refused(watts(0.0)).contains("watts"));
    assert!(refused(watts(MAX_WATTS * 2.0)).contains("watts"));
    assert!(refused(watts(f64::NAN)).contains("watts"));
    let hot = |temp_c: f64| Capability {
        temp_c: Some(temp_c),
        ..cap.clone()
    };
    hot(45.0).validate().unwrap();
    assert!(refused(hot(*TEMP_RANGE_C.end() + 1.0)).contains("temperature"));
    assert!(refused(hot(f64::INFINITY)).contains("temperature"));
    let slow = |t: f64| Capability {
        throttle: Some(t),
        ..cap.clone()
    };
    slow(0.4).validate().unwrap();
    for t in [0.0, 1.0, 1.5, f64::NAN] {
        assert!(refused(slow(t)).contains("throttle"), "{t}");
    }
    refused(Capability {
        listen_addrs: vec!["x".repeat(MAX_ADDR_LEN + 1)],
        ..cap.clone()
    });
    refused(Capability {
        listen_addrs: vec![String::new(); MAX_LISTEN_ADDRS + 1],
        ..cap
    });
}

#[test]
fn generate_rules() {
    let req = GenerateRequest {
        session: 1,
        prompt: vec![1, 2, 3],
        sampling: Sampling::GREEDY,
        max_tokens: 8,
        stop: vec![2],
        stream: true,
    };
    req.validate().unwrap();
    refused(GenerateRequest {
        prompt: vec![],
        ..req.clone()
    });
    refused(GenerateRequest {
        max_tokens: 0,
        ..req.clone()
    });
    refused(GenerateRequest {
        max_tokens: MAX_NEW_TOKENS + 1,
        ..req.clone()
    });
    refused(GenerateRequest {
        stop: vec![0; MAX_STOP_IDS + 1],
        ..req.clone()
    });
    refused(GenerateRequest {
        sampling: Sampling {
            top_p: 0.0,
            ..Sampling::GREEDY
        },
        ..req.clone()
    });
    refused(GenerateRequest {
        sampling: Sampling {
            temperature: f32::NAN,
            ..Sampling::GREEDY
        },
        ..req
    });
    refused(TokenChunk {
        session: 1,
        index: 0,
        tokens: vec![],
        text: String::new(),
    });
    refused(ErrorReply {
        session: None,
        code: ErrorCode::Internal,
        message: "e".repeat(MAX_ERROR_MESSAGE + 1),
    });
    refused(BandwidthProbe {
        nonce: 0,
        reply_bytes: u32::MAX,
        payload: vec![],
    });
}

#[test]
fn largest_gossip_messages_fit_gossipsub() {
    // A full-size link report and plan still fit GOSSIP_MAX_BYTES once signed.
    let me = identity(0);
    let ids: Vec<_> = (0..MAX_SWARM)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1000).to_le_bytes());
            shoal_keys::Identity::from_secret_bytes(seed).node_id()
        })
        .collect();
    let links = ids
        .iter()
        .map(|&to| LinkEntry {
            to,
            rtt_s: 0.123456789,
            jitter_s: 0.0123456789,
            bandwidth_bps: Some(1.23456789e8),
            loss: Some(0.0123456789),
            samples: u32::MAX,
            loss_samples: u32::MAX,
            age_s: 12.3456789,
            // Every link relayed: the largest entry there is.
            via: Some(if to == ids[0] { ids[1] } else { ids[0] }),
        })
        .collect();
    let report = LinkReport {
        from: me.node_id(),
        seq: u64::MAX,
        timestamp_ms: u64::MAX,
        links,
    };
    let bytes = encode(&Signed::sign(&me, report).unwrap()).unwrap();
    assert!(
        bytes.len() <= GOSSIP_MAX_BYTES,
        "link report {} bytes",
        bytes.len()
    );

    let mut members = ids.clone();
    members.pop();
    members.push(me.node_id());
    members.sort();
    let stages = ids[..MAX_SWARM - 1]
        .iter()
        .enumerate()
        .map(|(i, &n)| Stage {
            node: n,
            start: i as u32 * 16,
            end: i as u32 * 16 + 16,
        })
        .collect::<Vec<_>>();
    // Every stage node also told to prefetch a range as long as its stage.
    let stages_copy = stages.clone();
    // ... all of them below the battery floor, with the longest cause.
    let members_copy = stages_copy.iter().map(|s| s.node).collect();
    let plan = Plan {
        epoch: u64::MAX,
        coordinator: me.node_id(),
        model: ModelRef {
            name: "m".repeat(MAX_MODEL_NAME_LEN),
            manifest_sha256: [0xff; 32],
        },
        num_layers: (MAX_SWARM as u32 - 1) * 16,
        objective: Objective::Throughput,
        cost_s: 0.123456789,
        stages,
        members,
        strategy: PlanStrategy::Exhaustive,
        optimal: false,
        timestamp_ms: u64::MAX,
        prefetch: stages_copy,
        cause: Some("x".repeat(MAX_CAUSE_LEN)),
        below_floor: members_copy,
    };
    let bytes = encode(&Signed::sign(&me, plan).unwrap()).unwrap();
    assert!(
        bytes.len() <= GOSSIP_MAX_BYTES,
        "plan {} bytes",
        bytes.len()
    );
}

#[test]
fn a_train_ack_repeats_at_most_three_earlier_arrivals() {
    let ack = |n: usize| TrainAck {
        nonce: u64::MAX,
        train: u32::MAX,
        seq: u32::MAX,
        bytes: u32::MAX,
        recv_us: u64::MAX,
        shared: true,
        earlier: vec![(u32::MAX, u32::MAX, u64::MAX); n],
    };
    let full = encode(&ack(MAX_ACK_EARLIER)).unwrap();
    assert!(full.len() <= MAX_TRAIN_ACK_BYTES, "{} bytes", full.len());
    assert_eq!(decode::<TrainAck>(&full).unwrap(), ack(MAX_ACK_EARLIER));
    let reason = refused(ack(MAX_ACK_EARLIER + 1));
    assert!(reason.contains("earlier arrivals"), "{reason}");
}
