//! Hand-built blocks with values worked out from the block layouts (ggml's `ggml-common.h`),
//! independent of the loops in `gguf::dequant`; gguf-py's vectors are in `gguf_reader.rs`.

#![allow(clippy::needless_range_loop)] // index loops mirror the layout formulas

use half::f16;
use shoal_model::gguf::GgmlType;
use shoal_model::gguf::dequant::{DequantError, dequantize};

fn f16_bytes(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

#[test]
fn q8_0_block() {
    let mut b = f16_bytes(0.5).to_vec();
    b.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let got = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
    let want: Vec<f32> = (0..32).map(|i| 0.5 * (i as f32 - 16.0)).collect();
    assert_eq!(got, want);
}

#[test]
fn q4_0_and_q5_0_blocks() {
    // Q4_0: byte j holds weight j (low nibble) and weight j + 16 (high nibble), offset 8.
    let mut b = f16_bytes(2.0).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let got = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
    for j in 0..16 {
        assert_eq!(got[j], 2.0 * (j as f32 - 8.0));
        assert_eq!(got[j + 16], 2.0 * ((15 - j) as f32 - 8.0));
    }
    // Q5_0: bit i of the u32 is bit 4 of weight i; set it for odd weights.
    let qh: u32 = 0xaaaa_aaaa;
    let mut b = f16_bytes(0.25).to_vec();
    b.extend(qh.to_le_bytes());
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let got = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
    for i in 0..32 {
        let low = if i < 16 { i } else { 15 - (i - 16) } as f32;
        let high = if i % 2 == 1 { 16.0 } else { 0.0 };
        assert_eq!(got[i], 0.25 * (low + high - 16.0), "weight {i}");
    }
}

/// Packs eight 6-bit (scale, min) pairs the way Q4_K/Q5_K store them in 12 bytes.
fn pack_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for i in 0..4 {
        s[i] = (sc[i] & 63) | ((sc[i + 4] >> 4) << 6);
        s[i + 4] = (m[i] & 63) | ((m[i + 4] >> 4) << 6);
        s[i + 8] = (sc[i + 4] & 15) | ((m[i + 4] & 15) << 4);
    }
    s
}

#[test]
fn q4_k_block() {
    // Scales and mins above 15 in sub-blocks 4..8 exercise the split 6-bit packing.
    let sc = [1, 2, 3, 63, 17, 45, 30, 8];
    let m = [0, 5, 63, 1, 50, 2, 33, 16];
    let (d, dmin) = (0.5f32, 0.25f32);
    let mut b = f16_bytes(d).to_vec();
    b.extend(f16_bytes(dmin));
    b.extend(pack_scales(sc, m));
    // 4 chunks of 32 bytes; chunk c holds sub-block 2c in low nibbles, 2c + 1 in high ones.
    let q = |n: usize| ((n * 5 + 3) % 16) as u8;
    for c in 0..4 {
        for l in 0..32 {
            b.push(q(64 * c + l) | (q(64 * c + 32 + l) << 4));
        }
    }
    assert_eq!(b.len(), 144);
    let got = dequantize(GgmlType::Q4K, &b, 256).unwrap();
    for n in 0..256 {
        let sub = n / 32;
        let want = d * f32::from(sc[sub]) * f32::from(q(n)) - dmin * f32::from(m[sub]);
        assert!(
            (got[n] - want).abs() < 1e-6,
            "weight {n}: {} vs {want}",
            got[n]
        );
    }
}

#[test]
fn q6_k_block() {
    let d = 0.125f32;
    let q = |n: usize| ((n * 7 + 1) % 64) as u8;
    let scales: Vec<i8> = (0..16i32).map(|i| (i * 9 - 70) as i8).collect();
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    // Weight n = 128 h + 32 k + l: low nibble in ql[64 h + l + 32 (k % 2)] (k < 2 low, else
    // high nibble), top two bits at bit 2k of qh[32 h + l].
    for n in 0..256 {
        let (h, k, l) = (n / 128, (n % 128) / 32, n % 32);
        let low = q(n) & 15;
        let at = 64 * h + l + 32 * (k % 2);
        ql[at] |= if k < 2 { low } else { low << 4 };
        qh[32 * h + l] |= (q(n) >> 4) << (2 * k);
    }
    let mut b = ql.to_vec();
    b.extend(qh);
    b.extend(scales.iter().map(|&s| s as u8));
    b.extend(f16_bytes(d));
    assert_eq!(b.len(), 210);
    let got = dequantize(GgmlType::Q6K, &b, 256).unwrap();
    for n in 0..256 {
        let want = d * f32::from(scales[n / 16]) * (f32::from(q(n)) - 32.0);
        assert!(
            (got[n] - want).abs() < 1e-5,
            "weight {n}: {} vs {want}",
            got[n]
        );
    }
}

#[test]
fn floats_and_errors() {
    let b: Vec<u8> = [1.0f32, -2.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(dequantize(GgmlType::F32, &b, 2).unwrap(), [1.0, -2.5]);
    let b: Vec<u8> = [0.5f32, -3.0].iter().flat_map(|&v| f16_bytes(v)).collect();
    assert_eq!(dequantize(GgmlType::F16, &b, 2).unwrap(), [0.5, -3.0]);
    // bf16 is the top half of an f32.
    let b: Vec<u8> = [1.5f32, -0.75]
        .iter()
        .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
        .collect();
    assert_eq!(dequantize(GgmlType::Bf16, &b, 2).unwrap(), [1.5, -0.75]);

    assert!(matches!(
        dequantize(GgmlType::Q8_0, &[0; 34], 16),
        Err(DequantError::PartialBlock { .. })
    ));
    assert!(matches!(
        dequantize(GgmlType::Q8_0, &[0; 33], 32),
        Err(DequantError::Length { .. })
    ));
    assert!(matches!(
        dequantize(GgmlType::Q2K, &[0; 84], 256),
        Err(DequantError::Unsupported(_))
    ));
    assert!(matches!(
        dequantize(GgmlType::Other(99), &[], 0),
        Err(DequantError::Unsupported(_))
    ));
}
