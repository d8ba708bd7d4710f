//! The GGUF reader against `tests/data/gguf-vectors.gguf`, a file written by llama.cpp's
//! gguf-py (`scripts/gguf-test-vectors.py`): every metadata type, every supported block type
//! dequantised as gguf-py's own `dequantize` does, and malformed variants of the file.

use std::io::Cursor;

use proptest::prelude::*;
use shoal_model::gguf::{GgmlType, GgufError, GgufReader, Value};

const FIXTURE: &[u8] = include_bytes!("data/gguf-vectors.gguf");

fn open(bytes: &[u8]) -> Result<GgufReader<Cursor<Vec<u8>>>, GgufError> {
    GgufReader::new(Cursor::new(bytes.to_vec()))
}

#[test]
fn header_and_every_metadata_type() {
    let r = open(FIXTURE).unwrap();
    assert_eq!(r.version, 3);
    assert_eq!(r.alignment, 32);
    assert_eq!(r.data_offset % 32, 0);
    assert_eq!(r.architecture().unwrap(), "test");
    let m = &r.metadata;
    assert_eq!(m["test.u8"], Value::U8(200));
    assert_eq!(m["test.i8"], Value::I8(-100));
    assert_eq!(m["test.u16"], Value::U16(60000));
    assert_eq!(m["test.i16"], Value::I16(-30000));
    assert_eq!(m["test.u32"], Value::U32(4_000_000_000));
    assert_eq!(m["test.i32"], Value::I32(-2_000_000_000));
    assert_eq!(m["test.f32"], Value::F32(1.5));
    assert_eq!(m["test.bool"], Value::Bool(true));
    assert_eq!(m["test.string"], Value::String("héllo".into()));
    assert_eq!(m["test.u64"], Value::U64((1 << 40) + 7));
    assert_eq!(m["test.i64"], Value::I64(-(1 << 40)));
    assert_eq!(m["test.f64"], Value::F64(-0.125));
    let ints: Vec<i64> = m["test.array_i32"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as i64)
        .collect();
    assert_eq!(ints, [1, -2, 3]);
    let strs: Vec<&str> = m["test.array_string"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(strs, ["a", "bc", ""]);
    let nested = m["test.nested"].as_array().unwrap();
    assert_eq!(nested.len(), 2);
    assert_eq!(nested[1].as_array().unwrap().len(), 1);
    assert_eq!(r.get_u64("test.u32").unwrap(), 4_000_000_000);
    assert!(r.get_u64("test.i8").is_err(), "negative is not a u64");
    assert!(matches!(
        r.get_str("test.u8"),
        Err(GgufError::BadMetadata { .. })
    ));
    assert!(matches!(r.get("nope"), Err(GgufError::MissingKey(_))));
}

#[test]
fn shapes_are_row_major() {
    let mut r = open(FIXTURE).unwrap();
    let info = r.tensor_info("ref.shape3").unwrap();
    assert_eq!(info.ne, [4, 3, 2]);
    let (shape, data) = r.tensor_f32("ref.shape3").unwrap();
    assert_eq!(shape, [2, 3, 4]);
    let expected: Vec<f32> = (0..24).map(|v| v as f32).collect();
    assert_eq!(data, expected);
}

#[test]
fn every_block_type_matches_gguf_py() {
    let mut r = open(FIXTURE).unwrap();
    let types = [
        ("F32", GgmlType::F32),
        ("F16", GgmlType::F16),
        ("BF16", GgmlType::Bf16),
        ("Q4_0", GgmlType::Q4_0),
        ("Q4_1", GgmlType::Q4_1),
        ("Q5_0", GgmlType::Q5_0),
        ("Q5_1", GgmlType::Q5_1),
        ("Q8_0", GgmlType::Q8_0),
        ("Q4_K", GgmlType::Q4K),
        ("Q5_K", GgmlType::Q5K),
        ("Q6_K", GgmlType::Q6K),
    ];
    for (name, ty) in types {
        let q = format!("q.{name}");
        assert_eq!(r.tensor_info(&q).unwrap().ty, ty, "{q}");
        let (shape, got) = r.tensor_f32(&q).unwrap();
        let (ref_shape, want) = r.tensor_f32(&format!("ref.{name}")).unwrap();
        assert_eq!(shape, [2, 512], "{q}");
        assert_eq!(shape, ref_shape);
        let mut worst = 0f32;
        for (g, w) in got.iter().zip(&want) {
            worst = worst.max((g - w).abs() / w.abs().max(1e-3));
        }
        assert!(worst < 1e-5, "{q}: relative error {worst}");
        assert!(want.iter().any(|v| *v != 0.0), "{q}: reference is all zero");
    }
}

#[test]
fn truncated_files_fail_cleanly() {
    let r = open(FIXTURE).unwrap();
    let header_end = r.data_offset as usize;
    for len in (0..header_end).step_by(7).chain([header_end - 1]) {
        assert!(
            open(&FIXTURE[..len]).is_err(),
            "prefix of {len} bytes was accepted"
        );
    }
    // A file cut inside the data section: the header is complete, the last tensor is not.
    let err = open(&FIXTURE[..FIXTURE.len() - 1]).unwrap_err();
    assert!(matches!(err, GgufError::BadTensor { .. }), "{err}");
}

/// A minimal GGUF v3 header with the given tensor/kv counts and body.
fn header(n_tensors: u64, n_kv: u64, body: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(n_tensors.to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b.extend(body);
    b
}

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

fn tensor_info(name: &str, ne: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = string(name);
    b.extend((ne.len() as u32).to_le_bytes());
    for d in ne {
        b.extend(d.to_le_bytes());
    }
    b.extend(ty.to_le_bytes());
    b.extend(offset.to_le_bytes());
    b
}

#[test]
fn malformed_headers_are_typed_errors() {
    let mut bad_magic = header(0, 0, &[]);
    bad_magic[0] = b'X';
    assert!(matches!(open(&bad_magic), Err(GgufError::BadMagic(_))));

    let mut v1 = header(0, 0, &[]);
    v1[4] = 1;
    assert!(matches!(open(&v1), Err(GgufError::UnsupportedVersion(1))));

    assert!(matches!(
        open(&header(u64::MAX, 0, &[])),
        Err(GgufError::TooLarge { .. })
    ));
    assert!(matches!(
        open(&header(0, u64::MAX, &[])),
        Err(GgufError::TooLarge { .. })
    ));

    // A key claiming 2^60 bytes: refused before allocating.
    let huge_key = header(0, 1, &(1u64 << 60).to_le_bytes());
    assert!(matches!(open(&huge_key), Err(GgufError::TooLarge { .. })));
    // A key longer than the file.
    let long_key = header(0, 1, &1000u64.to_le_bytes());
    assert!(matches!(open(&long_key), Err(GgufError::Truncated { .. })));

    // An array announcing 10^7 u64 elements in a tiny file.
    let mut body = string("k");
    body.extend(9u32.to_le_bytes());
    body.extend(10u32.to_le_bytes());
    body.extend(10_000_000u64.to_le_bytes());
    assert!(matches!(
        open(&header(0, 1, &body)),
        Err(GgufError::Truncated { .. })
    ));

    // Unknown value type.
    let mut body = string("k");
    body.extend(99u32.to_le_bytes());
    assert!(matches!(
        open(&header(0, 1, &body)),
        Err(GgufError::BadValueType { ty: 99, .. })
    ));

    // Duplicate key.
    let mut body = Vec::new();
    for _ in 0..2 {
        body.extend(string("k"));
        body.extend(0u32.to_le_bytes());
        body.push(1);
    }
    assert!(matches!(
        open(&header(0, 2, &body)),
        Err(GgufError::DuplicateKey(_))
    ));

    // Non-UTF-8 key.
    let mut body = 2u64.to_le_bytes().to_vec();
    body.extend([0xff, 0xfe]);
    body.extend(0u32.to_le_bytes());
    body.push(1);
    assert!(matches!(
        open(&header(0, 1, &body)),
        Err(GgufError::BadUtf8 { .. })
    ));
}

#[test]
fn inconsistent_tensor_infos_are_refused() {
    let check = |info: Vec<u8>, data: usize| {
        let mut f = header(1, 0, &info);
        f.resize(f.len().div_ceil(32) * 32 + data, 0);
        open(&f)
    };
    // Fits exactly: 32 f32 = 128 bytes.
    assert!(check(tensor_info("t", &[32], 0, 0), 128).is_ok());
    assert!(matches!(
        check(tensor_info("t", &[32], 0, 0), 127),
        Err(GgufError::BadTensor { .. })
    ));
    assert!(matches!(
        check(tensor_info("t", &[32], 0, 4), 512),
        Err(GgufError::BadTensor { .. })
    ));
    assert!(matches!(
        check(tensor_info("t", &[16], 8, 0), 512),
        Err(GgufError::BadTensor { .. })
    ));
    let overflow = tensor_info("t", &[u64::MAX, u64::MAX], 0, 0);
    assert!(matches!(
        check(overflow, 512),
        Err(GgufError::BadTensor { .. })
    ));
    assert!(matches!(
        check(tensor_info("t", &[1, 1, 1, 1, 1], 0, 0), 512),
        Err(GgufError::BadTensor { .. })
    ));
    // An unknown type parses but does not dequantise.
    let mut r = check(tensor_info("t", &[32], 77, 0), 512).unwrap();
    assert!(matches!(
        r.tensor_f32("t"),
        Err(GgufError::UnsupportedType { .. })
    ));
    assert!(matches!(
        r.tensor_f32("missing"),
        Err(GgufError::MissingTensor(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Corrupting any bytes of the header never panics; reading every tensor then never
    /// panics either.
    #[test]
    fn corrupted_headers_never_panic(flips in proptest::collection::vec((0usize..1700, any::<u8>()), 1..8)) {
        let mut bytes = FIXTURE.to_vec();
        for (at, v) in flips {
            bytes[at] = v;
        }
        if let Ok(mut r) = open(&bytes) {
            let names: Vec<String> = r.tensors.iter().map(|t| t.name.clone()).collect();
            for n in names {
                let _ = r.tensor_f32(&n);
            }
        }
    }
}
