//! The scenario file format: defaults, unknown keys, and one clear message per invalid field.

use shoal_planner::{Scenario, ScenarioError};

const BASE: &str = r#"{
  "model": {"name": "m", "layers": [{"flops": 1e8, "param_bytes": 1e8, "out_bytes": 2560}]},
  "devices": [{"id": "a", "flops": 2e10, "mem_bytes": 3e9},
              {"id": "b", "flops": 2e10, "mem_bytes": 3e9}],
  "links": [{"from": "a", "to": "b", "rtt_s": 0.02, "bandwidth_bps": 5e7}],
  "origin": "a"
}"#;

/// Parses BASE after replacing `from` with `to` (which must occur).
fn with(from: &str, to: &str) -> Result<Scenario, ScenarioError> {
    assert!(BASE.contains(from), "test edits a missing fragment: {from}");
    Scenario::from_json(&BASE.replacen(from, to, 1))
}

fn field_error(from: &str, to: &str, field: &str) {
    match with(from, to) {
        Err(ScenarioError::Invalid { field: f, reason }) => {
            assert_eq!(f, field, "reason: {reason}")
        }
        other => panic!("expected an error on {field}, got {other:?}"),
    }
}

#[test]
fn defaults_fill_optional_keys() {
    let s = Scenario::from_json(BASE).unwrap();
    assert_eq!(s.memory_fraction, 0.8);
    assert_eq!(s.stage_penalty_s, 0.0);
    assert_eq!(s.net.payload_bytes, 1200.0);
    assert_eq!(s.net.header_bytes, 48.0);
    assert_eq!(s.net.risk_kappa, 1.0);
    assert_eq!(s.model.context_tokens, 512.0);
    assert_eq!(s.model.token_bytes, 4.0);
    assert_eq!(s.model.layers[0].read_bytes, None);
    assert_eq!(s.model.layers[0].kv_bytes_per_token, 0.0);
    assert_eq!(s.devices[0].mem_bw, None);
    assert_eq!(s.devices[0].overhead_s, 0.0);
    assert_eq!(s.links[0].loss, 0.0);
    assert!(!s.links[0].symmetric);
}

#[test]
fn unknown_keys_are_errors() {
    let err = with(r#""origin": "a""#, r#""origin": "a", "colour": 1"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    let err = with(r#""mem_bytes": 3e9}"#, r#""mem_bytes": 3e9, "gpu": true}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `gpu`"), "{err}");
}

#[test]
fn invalid_values_name_their_field() {
    field_error(
        r#""bandwidth_bps": 5e7"#,
        r#""bandwidth_bps": 0"#,
        "links[0].bandwidth_bps",
    );
    field_error(
        r#""bandwidth_bps": 5e7"#,
        r#""bandwidth_bps": -1"#,
        "links[0].bandwidth_bps",
    );
    field_error(
        r#""rtt_s": 0.02"#,
        r#""rtt_s": 0.02, "loss": 1"#,
        "links[0].loss",
    );
    field_error(
        r#""rtt_s": 0.02"#,
        r#""rtt_s": 0.02, "loss": -0.1"#,
        "links[0].loss",
    );
    field_error(r#""id": "b""#, r#""id": "a""#, "devices[1].id");
    field_error(r#""to": "b""#, r#""to": "c""#, "links[0].to");
    field_error(r#""origin": "a""#, r#""origin": "zz""#, "origin");
    field_error(
        r#""layers": [{"flops": 1e8, "param_bytes": 1e8, "out_bytes": 2560}]"#,
        r#""layers": []"#,
        "model.layers",
    );
    field_error(
        r#""origin": "a""#,
        r#""origin": "a", "memory_fraction": 1.5"#,
        "memory_fraction",
    );
    field_error(
        r#""flops": 2e10, "mem_bytes": 3e9}"#,
        r#""flops": 0, "mem_bytes": 3e9}"#,
        "devices[0].flops",
    );
}

#[test]
fn missing_origin_is_a_parse_error_naming_it() {
    let err = with("}],\n  \"origin\": \"a\"", "}]").unwrap_err();
    assert!(err.to_string().contains("missing field `origin`"), "{err}");
}

#[test]
fn symmetric_links_duplicating_an_explicit_one_are_rejected() {
    field_error(
        r#""bandwidth_bps": 5e7}"#,
        r#""bandwidth_bps": 5e7, "symmetric": true},
            {"from": "b", "to": "a", "rtt_s": 0.02, "bandwidth_bps": 5e7}"#,
        "links[1].from",
    );
}
