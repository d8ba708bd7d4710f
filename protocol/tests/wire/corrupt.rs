//! Hostile input: random bytes, oversized frames, wrong versions, kinds and trailing bytes.

use proptest::prelude::*;
use shoal_protocol::*;

use crate::decoders::{corpus, run_all};

proptest! {
    #[test]
    fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (_, accepted) = run_all(&bytes);
        prop_assert_eq!(accepted, 0);
    }

    /// A valid header followed by random bytes exercises the body parsers.
    #[test]
    fn valid_header_random_body_never_panics(
        kind in 1u8..=15,
        signed: bool,
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = vec![0x84, 0x01, kind, if signed { 0xf5 } else { 0xf4 }];
        bytes.extend_from_slice(&body);
        run_all(&bytes);
    }

    /// Splicing two valid frames never panics.
    #[test]
    fn spliced_frames_never_panic(a in 0usize..21, b in 0usize..21, at: proptest::sample::Index) {
        let frames = corpus(1);
        let (x, y) = (&frames[a], &frames[b]);
        let cut = at.index(x.len().min(y.len()));
        let mut bytes = x[..cut].to_vec();
        bytes.extend_from_slice(&y[cut..]);
        run_all(&bytes);
    }
}

fn probe_frame() -> Vec<u8> {
    encode(&LossProbe {
        nonce: 1,
        seq: 2,
        sent_us: 3,
        echo: false,
        busy: false,
        held_us: 0,
    })
    .unwrap()
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    // A valid header, then garbage: the size check answers before the header is even read.
    let mut bytes = probe_frame();
    bytes.resize(MAX_LOSS_PROBE_BYTES + 1, 0xff);
    assert_eq!(
        decode::<LossProbe>(&bytes),
        Err(ProtocolError::TooLarge {
            kind: Kind::LossProbe,
            len: MAX_LOSS_PROBE_BYTES + 1,
            max: MAX_LOSS_PROBE_BYTES
        })
    );
    let big = vec![0u8; GOSSIP_MAX_BYTES + 1];
    for topic in Topic::ALL {
        let err = topic.decode(&big).unwrap_err();
        assert_eq!(err.reason(), "too_large", "{topic}: {err}");
    }
}

#[test]
fn encode_refuses_what_receivers_would_refuse() {
    let probe = BandwidthProbe {
        nonce: 0,
        reply_bytes: 0,
        payload: vec![0; MAX_PROBE_PAYLOAD + 256],
    };
    let reason = |r: Result<Vec<u8>, ProtocolError>| r.map(|b| b.len()).map_err(|e| e.reason());
    assert_eq!(reason(encode(&probe)), Err("invalid"));
    assert_eq!(reason(encode_unchecked(&probe)), Err("too_large"));
}

#[test]
fn claimed_huge_lengths_fail_without_allocating_them() {
    // LossProbe body claiming a map of 2^63 entries, a byte string of 4 GB inside an
    // activation, and a prompt of 2^32 tokens: each must fail fast at the end of the input.
    let mut map = vec![0x84, 0x01, Kind::LossProbe.code(), 0xf4, 0xbb];
    map.extend_from_slice(&(1u64 << 63).to_be_bytes());
    assert_eq!(decode::<LossProbe>(&map).unwrap_err().reason(), "truncated");

    let act = Activation {
        epoch: 1,
        session: 2,
        step: 3,
        stage: 0,
        position: 0,
        tensor: Tensor {
            dtype: DType::U8,
            shape: vec![4],
            data: vec![9; 4],
        },
        sample: None,
        reply_to: None,
        draft: Vec::new(),
    };
    let mut bytes = encode(&act).unwrap();
    // The frame ends with the data byte string: 0x44 (bytes, len 4) then 4 bytes.
    let at = bytes.len() - 5;
    assert_eq!(bytes[at], 0x44);
    bytes.truncate(at);
    bytes.push(0x5a); // byte string, 4-byte length
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    bytes.extend_from_slice(&[1, 2, 3]);
    assert_eq!(
        decode::<Activation>(&bytes).unwrap_err().reason(),
        "truncated"
    );

    let mut req = vec![0x84, 0x01, Kind::GenerateRequest.code(), 0xf4, 0xa1, 0x66];
    req.extend_from_slice(b"prompt");
    req.push(0x9a); // array, 4-byte length
    req.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        decode::<GenerateRequest>(&req).unwrap_err().reason(),
        "truncated"
    );
}

#[test]
fn version_kind_and_trailing_bytes_are_typed_errors() {
    let good = probe_frame();
    let mut v2 = good.clone();
    v2[1] = 0x02;
    assert_eq!(
        decode::<LossProbe>(&v2),
        Err(ProtocolError::Version {
            found: 2,
            expected: SCHEMA_VERSION
        })
    );
    // A future schema with a longer frame is still recognised as a version mismatch.
    let mut future = good.clone();
    future[0] = 0x85;
    future[1] = 0x18; // version 200 as a one-byte uint
    future.insert(2, 200);
    assert_eq!(
        decode::<LossProbe>(&future).unwrap_err().reason(),
        "version"
    );

    let mut unknown = good.clone();
    unknown[2] = 0x17;
    assert_eq!(
        decode::<LossProbe>(&unknown),
        Err(ProtocolError::UnknownKind(23))
    );

    let as_other = decode::<SessionEnd>(&good).unwrap_err();
    assert_eq!(as_other.reason(), "wrong_kind");

    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(
        decode::<LossProbe>(&trailing),
        Err(ProtocolError::TrailingBytes {
            kind: Kind::LossProbe,
            count: 1
        })
    );
    assert_eq!(decode::<LossProbe>(&[]).unwrap_err().reason(), "truncated");
    assert_eq!(
        decode::<LossProbe>(&[0x01]).unwrap_err().reason(),
        "malformed"
    );

    // Deeply nested input is refused (serde types recurse no deeper than their own shape,
    // and ciborium stops at RECURSION_LIMIT), never exhausting the stack.
    let mut deep = vec![0x84, 0x01, Kind::ErrorReply.code(), 0xf4, 0xa1, 0x64];
    deep.extend_from_slice(b"code");
    deep.extend(std::iter::repeat_n(0x81, 1_000));
    assert_eq!(
        decode::<ErrorReply>(&deep).unwrap_err().reason(),
        "malformed"
    );

    let mut unknown_field = vec![0x84, 0x01, Kind::SessionEnd.code(), 0xf4, 0xa3];
    for (key, val) in [("epoch", 1u8), ("session", 2), ("extra", 3)] {
        unknown_field.push(0x60 + key.len() as u8);
        unknown_field.extend_from_slice(key.as_bytes());
        unknown_field.push(val);
    }
    assert_eq!(
        decode::<SessionEnd>(&unknown_field).unwrap_err().reason(),
        "malformed"
    );
}

#[test]
fn every_reason_label_is_listed() {
    for frame in corpus(2) {
        for cut in 0..frame.len() {
            if let Err(e) = decode::<Signed<Plan>>(&frame[..cut]) {
                assert!(ProtocolError::REASONS.contains(&e.reason()));
            }
        }
    }
    assert!("shoal/2/plan".parse::<Topic>().is_err());
    for t in Topic::ALL {
        assert_eq!(t.as_str().parse::<Topic>().unwrap(), t);
    }
    for k in Kind::ALL {
        assert_eq!(Kind::from_code(u64::from(k.code())), Some(k));
    }
}
