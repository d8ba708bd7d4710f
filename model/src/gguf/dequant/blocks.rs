//! One-block dequantisers for the block-quantised GGML types.
//!
//! Each function takes exactly one block's bytes and fills exactly one block of f32 (the
//! caller slices with `chunks_exact`, so the lengths always match). Layouts, as in ggml:
//!
//! - Q4_0 (18 B / 32): f16 d, 16 B nibbles; low nibbles are weights 0..16, high 16..32;
//!   w = d * (q - 8).
//! - Q4_1 (20 B / 32): f16 d, f16 m, 16 B nibbles; w = d * q + m.
//! - Q5_0 (22 B / 32): f16 d, u32 fifth bits, 16 B nibbles; w = d * (q - 16).
//! - Q5_1 (24 B / 32): f16 d, f16 m, u32 fifth bits, 16 B nibbles; w = d * q + m.
//! - Q8_0 (34 B / 32): f16 d, 32 i8; w = d * q.
//! - Q4_K (144 B / 256): f16 d, f16 dmin, 12 B of eight 6-bit scales and mins, 128 B
//!   nibbles; each 64 weights use two sub-blocks (low nibbles, then high nibbles of the same
//!   32 bytes); w = d * sc * q - dmin * m.
//! - Q5_K (176 B / 256): as Q4_K plus 32 B of fifth bits (bit 2i / 2i+1 for the pair of
//!   sub-blocks i) between the scales and the nibbles.
//! - Q6_K (210 B / 256): 128 B low nibbles, 64 B high 2-bit pairs, 16 i8 scales, f16 d;
//!   w = d * scale * (q - 32), 16 sub-blocks of 16 weights.

use half::f16;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q4_0: 32 weights.
pub(super) fn q4_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = out.split_at_mut(16);
    for (j, &q) in b[2..18].iter().enumerate() {
        lo[j] = d * (f32::from(q & 0x0f) - 8.0);
        hi[j] = d * (f32::from(q >> 4) - 8.0);
    }
}

/// Q4_1: 32 weights.
pub(super) fn q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let (lo, hi) = out.split_at_mut(16);
    for (j, &q) in b[4..20].iter().enumerate() {
        lo[j] = d * f32::from(q & 0x0f) + m;
        hi[j] = d * f32::from(q >> 4) + m;
    }
}

/// The 5-bit quants of a Q5_0/Q5_1 block: `qh` holds bit 4 of weight i in bit i.
fn five_bit(qh: u32, qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for (j, &byte) in qs.iter().enumerate() {
        let high_lo = ((qh >> j) & 1) as u8;
        let high_hi = ((qh >> (j + 16)) & 1) as u8;
        q[j] = (byte & 0x0f) | (high_lo << 4);
        q[j + 16] = (byte >> 4) | (high_hi << 4);
    }
    q
}

/// Q5_0: 32 weights.
pub(super) fn q5_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (o, q) in out.iter_mut().zip(five_bit(qh, &b[6..22])) {
        *o = d * (f32::from(q) - 16.0);
    }
}

/// Q5_1: 32 weights.
pub(super) fn q5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (o, q) in out.iter_mut().zip(five_bit(qh, &b[8..24])) {
        *o = d * f32::from(q) + m;
    }
}

/// Q8_0: 32 weights.
pub(super) fn q8_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = d * f32::from(q as i8);
    }
}

/// Scale and min of sub-block `i` (0..8) from the 12 packed bytes of a Q4_K/Q5_K block.
///
/// Bytes 0..4 hold scales 0..4 in their low 6 bits, bytes 4..8 mins 0..4; sub-blocks 4..8
/// keep their low 4 bits in the nibbles of bytes 8..12 and their top 2 bits in the top 2
/// bits of bytes 0..4 (scales) and 4..8 (mins).
fn scale_min_k4(s: &[u8], i: usize) -> (f32, f32) {
    let (sc, m) = if i < 4 {
        (s[i] & 0x3f, s[i + 4] & 0x3f)
    } else {
        let packed = s[i + 4];
        (
            (packed & 0x0f) | ((s[i - 4] >> 6) << 4),
            (packed >> 4) | ((s[i] >> 6) << 4),
        )
    };
    (f32::from(sc), f32::from(m))
}

/// Q4_K: 256 weights.
pub(super) fn q4_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (pair, chunk) in out.chunks_exact_mut(64).enumerate() {
        let bytes = &qs[pair * 32..pair * 32 + 32];
        let (sc_lo, m_lo) = scale_min_k4(scales, 2 * pair);
        let (sc_hi, m_hi) = scale_min_k4(scales, 2 * pair + 1);
        let (lo, hi) = chunk.split_at_mut(32);
        for (l, &q) in bytes.iter().enumerate() {
            lo[l] = d * sc_lo * f32::from(q & 0x0f) - dmin * m_lo;
            hi[l] = d * sc_hi * f32::from(q >> 4) - dmin * m_hi;
        }
    }
}

/// Q5_K: 256 weights.
pub(super) fn q5_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (pair, chunk) in out.chunks_exact_mut(64).enumerate() {
        let bytes = &qs[pair * 32..pair * 32 + 32];
        let (sc_lo, m_lo) = scale_min_k4(scales, 2 * pair);
        let (sc_hi, m_hi) = scale_min_k4(scales, 2 * pair + 1);
        let (lo, hi) = chunk.split_at_mut(32);
        for (l, &q) in bytes.iter().enumerate() {
            let h_lo = (qh[l] >> (2 * pair)) & 1;
            let h_hi = (qh[l] >> (2 * pair + 1)) & 1;
            lo[l] = d * sc_lo * f32::from((q & 0x0f) | (h_lo << 4)) - dmin * m_lo;
            hi[l] = d * sc_hi * f32::from((q >> 4) | (h_hi << 4)) - dmin * m_hi;
        }
    }
}

/// Q6_K: 256 weights, in two halves of 128.
///
/// In half h, weight `32 * k + l` (k in 0..4, l in 0..32) takes its low 4 bits from
/// `ql[64h + l + 32 * (k % 2)]` (low nibble for k < 2, high for k >= 2) and its top 2 bits
/// from bits `2k..2k+2` of `qh[32h + l]`; its scale is `scales[8h + 2k + l / 16]`.
pub(super) fn q6_k(b: &[u8], out: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16_at(b, 208);
    for (h, half) in out.chunks_exact_mut(128).enumerate() {
        for (k, quarter) in half.chunks_exact_mut(32).enumerate() {
            for (l, o) in quarter.iter_mut().enumerate() {
                let low_byte = ql[64 * h + l + 32 * (k % 2)];
                let low = if k < 2 {
                    low_byte & 0x0f
                } else {
                    low_byte >> 4
                };
                let high = (qh[32 * h + l] >> (2 * k)) & 3;
                let q = i32::from(low | (high << 4)) - 32;
                let scale = f32::from(scales[8 * h + 2 * k + l / 16] as i8);
                *o = d * scale * q as f32;
            }
        }
    }
}
