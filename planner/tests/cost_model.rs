//! Hand-worked examples of DESIGN.md's cost model; the arithmetic is in the comments.

use shoal_planner::{
    Link, Net, Objective, PlanError, Scenario, Stage, evaluate, explain, hop_cost,
};

fn close(a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} != {b}");
}

fn link(rtt: f64, jitter: f64, bw: f64, loss: f64) -> Link {
    Link {
        from: "a".into(),
        to: "b".into(),
        rtt_s: rtt,
        jitter_s: jitter,
        bandwidth_bps: bw,
        loss,
        symmetric: false,
    }
}

#[test]
fn clean_hop_is_half_rtt_plus_serialisation_of_the_effective_payload() {
    // B = 2560, payload 1200, header 48: n = ceil(2560 / 1200) = 3 packets,
    // wire = 2560 + 3 * 48 = 2704 bytes, t_ser = 8 * 2704 / 1e7 = 0.0021632 s.
    // No loss: EK = 0, q = 0. mean = 0.02 / 2 + 0.0021632 = 0.0121632 s. No jitter: sd = 0.
    let h = hop_cost(&link(0.02, 0.0, 1e7, 0.0), 2560.0, &Net::default());
    close(h.packets, 3.0);
    close(h.wire_bytes, 2704.0);
    close(h.mean_s, 0.0121632);
    close(h.sd_s, 0.0);
    close(h.total_s, 0.0121632);
}

#[test]
fn lossy_jittery_hop_adds_binomial_resends_recovery_and_penalty() {
    // DESIGN.md's example link: rtt 0.02, jitter 0.003, 5e7 bit/s, loss p = 0.01, B = 2560.
    // n = 3, wire = 2704, t_ser = 8 * 2704 / 5e7 = 0.00043264, t_pkt = t_ser / 3 = 0.000144213...
    // EK = 3 * 0.01 = 0.03, VK = 3 * 0.01 * 0.99 = 0.0297, q = 1 - 0.99^3 = 0.029701.
    // mean = 0.01 + 0.00043264 + 0.03 * 0.000144213 + 0.029701 * 0.02
    //      = 0.01 + 0.00043264 + 0.0000043264 + 0.00059402 = 0.0110309864
    // var  = 0.003^2 + 0.0297 * 0.000144213^2 + 0.029701 * 0.970299 * 0.02^2
    //      = 9e-6 + 6.17685e-10 + 1.1527540e-5 = 2.0528158e-5, sd = 0.0045308010
    // kappa = 2: hop = 0.0110309864 + 2 * 0.0045308010 = 0.0200925884
    let net = Net {
        risk_kappa: 2.0,
        ..Net::default()
    };
    let h = hop_cost(&link(0.02, 0.003, 5e7, 0.01), 2560.0, &net);
    close(h.mean_s, 0.0110309864);
    assert!((h.sd_s - 0.004530801024644503).abs() < 1e-15);
    assert!((h.penalty_s - 2.0 * 0.004530801024644503).abs() < 1e-15);
    assert!((h.total_s - 0.020092588449289003).abs() < 1e-15);
}

/// Two devices, two layers, round figures (see `two_stage_placement_latency_and_throughput`).
fn two_devices() -> Scenario {
    Scenario::from_json(
        r#"{
        "model": {"name": "hand", "context_tokens": 100, "token_bytes": 4, "layers": [
            {"flops": 1e8, "param_bytes": 1e8, "kv_bytes_per_token": 1e6, "out_bytes": 1200},
            {"flops": 4e8, "param_bytes": 1e8, "read_bytes": 5e7, "kv_bytes_per_token": 1e6,
             "out_bytes": 1200}]},
        "devices": [
            {"id": "a", "flops": 1e10, "mem_bw": 1e9, "mem_bytes": 3e8, "overhead_s": 0.001},
            {"id": "b", "flops": 2e10, "mem_bytes": 3e8, "overhead_s": 0.002}],
        "links": [{"from": "a", "to": "b", "rtt_s": 0.01, "bandwidth_bps": 9.6e6,
                   "symmetric": true}],
        "origin": "a",
        "stage_penalty_s": 0.0005
    }"#,
    )
    .unwrap_or_else(|e| panic!("valid scenario: {e}"))
}

#[test]
fn two_stage_placement_latency_and_throughput() {
    // t(0, a) = max(1e8 / 1e10, 1e8 / 1e9) = max(0.01, 0.1) = 0.1 (memory bound);
    // t(1, b) = 4e8 / 2e10 = 0.02 (b has no mem_bw term).
    // Stage a: 0.1 + overhead 0.001 = 0.101; stage b: 0.02 + 0.002 = 0.022.
    // origin -> a: a is the origin, 0.
    // a -> b, 1200 bytes: n = 1, wire = 1248, t_ser = 8 * 1248 / 9.6e6 = 0.00104,
    //   hop = 0.01 / 2 + 0.00104 = 0.00604 (no loss, no jitter).
    // b -> origin, 4 bytes: n = 1, wire = 52, t_ser = 416 / 9.6e6 = 0.0000433333,
    //   hop = 0.0050433333.
    // latency = 0.101 + 0.022 + 0 + 0.00604 + 0.0050433333 + 0.0005 * (2 - 1) = 0.1345833333
    // throughput = max(0.101, 0.022, 0, 0.00604, 0.0050433333) = 0.101
    let s = two_devices();
    let stages = vec![
        Stage {
            device: "a".into(),
            layers: [0, 1],
        },
        Stage {
            device: "b".into(),
            layers: [1, 2],
        },
    ];
    close(
        evaluate(&s, &stages, Objective::Latency).unwrap(),
        0.13458333333333333,
    );
    close(evaluate(&s, &stages, Objective::Throughput).unwrap(), 0.101);
    let b = explain(&s, &stages, Objective::Latency).unwrap();
    close(b.hops[1].mean_s, 0.00604);
    close(b.stage_penalty_s, 0.0005);
    // Memory: each layer holds 1e8 + 1e6 * 100 = 2e8 bytes; a may use 0.8 * 3e8 = 2.4e8.
    close(b.stages[0].memory_bytes, 2e8);
    close(b.stages[0].memory_limit_bytes, 2.4e8);
}

#[test]
fn memory_rule_rejects_both_layers_on_one_device() {
    // Both layers on a need 2 * 2e8 = 4e8 > 2.4e8 bytes.
    let s = two_devices();
    let stages = vec![Stage {
        device: "a".into(),
        layers: [0, 2],
    }];
    let err = evaluate(&s, &stages, Objective::Latency).unwrap_err();
    assert!(matches!(err, PlanError::Placement { .. }), "{err}");
    assert!(err.to_string().contains("device a"), "{err}");
}

#[test]
fn placement_rules_are_checked() {
    let s = two_devices();
    let gap = vec![Stage {
        device: "a".into(),
        layers: [0, 1],
    }];
    assert!(evaluate(&s, &gap, Objective::Latency).is_err());
    let twice = vec![
        Stage {
            device: "a".into(),
            layers: [0, 1],
        },
        Stage {
            device: "a".into(),
            layers: [1, 2],
        },
    ];
    assert!(evaluate(&s, &twice, Objective::Latency).is_err());
    let unknown = vec![Stage {
        device: "zz".into(),
        layers: [0, 2],
    }];
    assert!(evaluate(&s, &unknown, Objective::Latency).is_err());
}
