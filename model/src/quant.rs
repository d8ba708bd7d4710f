//! Weight element types of a model directory and block-wise symmetric quantisation in the
//! layout of ONNX Runtime's `com.microsoft.MatMulNBits` and `GatherBlockQuantized`.
//!
//! A `[N, K]` matrix (a Hugging Face linear weight `[out, in]`, or an embedding `[V, H]`) is cut
//! along K into blocks of `block_size` values. Each block has one f32 scale and no zero point:
//! 4 bits store `q = round(w / s) + 8` in `0..=15` with `s = m / -8` (`m` the block's value of
//! largest magnitude, so it maps to -8 exactly, as llama.cpp's `Q4_0` does); 8 bits store
//! `q = round(w / s) + 128` with `s = max|w| / 127`. Dequantised, `w' = (q - zero) * s` with
//! `zero` = 8 or 128, the default zero point both ops use when the `zero_points` input is
//! absent. Packed bytes are `[N, n_blocks, blob]` with `blob = block_size * bits / 8`, two 4-bit
//! values per byte, the lower index in the low nibble; a K that is not a multiple of the block
//! size is padded with zeros. Scales are `[N, n_blocks]`, row-major.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Element type of a model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// 32-bit float (the unquantised reference).
    #[default]
    F32,
    /// 8-bit block quantised linear layers and embedding.
    Q8,
    /// 4-bit block quantised linear layers and embedding.
    Q4,
}

impl WeightDtype {
    /// Bits per quantised weight, `None` for f32.
    pub fn bits(self) -> Option<u32> {
        match self {
            WeightDtype::F32 => None,
            WeightDtype::Q8 => Some(8),
            WeightDtype::Q4 => Some(4),
        }
    }

    /// The name used on the command line and in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Q8 => "q8",
            WeightDtype::Q4 => "q4",
        }
    }
}

impl std::fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WeightDtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(WeightDtype::F32),
            "q8" => Ok(WeightDtype::Q8),
            "q4" => Ok(WeightDtype::Q4),
            other => Err(Error::Config(format!(
                "dtype {other:?}: expected q4, q8 or f32"
            ))),
        }
    }
}

/// How the exporter quantises: bits, block size (a power of two, at least 16, as
/// `MatMulNBits` requires) and the `MatMulNBits` accuracy level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    /// 4 or 8.
    pub bits: u32,
    /// Values per block along K.
    pub block_size: usize,
    /// `MatMulNBits`' `accuracy_level`: 4 quantises activations to int8 per block (the fast
    /// CPU kernels), 0 keeps them f32 (see `model/README.md` for what each costs).
    pub accuracy_level: u32,
}

/// The default `accuracy_level`: int8 activations.
pub const DEFAULT_ACCURACY_LEVEL: u32 = 4;

/// Default block size: the one whose Gemma-3-270M parity was measured (128 decodes 22% faster,
/// parity unmeasured); see `model/README.md`.
pub const DEFAULT_BLOCK_SIZE: usize = 32;

impl QuantSpec {
    /// The spec for `dtype` with `block_size`; `None` for f32.
    pub fn new(dtype: WeightDtype, block_size: usize) -> Result<Option<Self>> {
        let Some(bits) = dtype.bits() else {
            return Ok(None);
        };
        if block_size < 16 || !block_size.is_power_of_two() {
            return Err(Error::Config(format!(
                "block size {block_size}: must be a power of two >= 16"
            )));
        }
        Ok(Some(QuantSpec {
            bits,
            block_size,
            accuracy_level: DEFAULT_ACCURACY_LEVEL,
        }))
    }

    /// The same spec with another `accuracy_level` (0 to 4, as ONNX Runtime accepts).
    pub fn with_accuracy_level(self, accuracy_level: u32) -> Result<Self> {
        if accuracy_level > 4 {
            return Err(Error::Config(format!(
                "accuracy level {accuracy_level}: must be 0 to 4"
            )));
        }
        Ok(QuantSpec {
            accuracy_level,
            ..self
        })
    }

    /// The spec for a checkpoint tensor stored with `source_bits` bits per value: a 4-bit
    /// spec becomes 8-bit for a tensor that had more than 4 (a GGUF `Q5_0`, `Q6_K` or `Q8_0`),
    /// so an import never throws away precision the file's author chose to keep (llama.cpp's
    /// `Q4_K_M` keeps Gemma-3-270M's q/k/v, gate and up at 5 bits); float sources keep `self`.
    pub fn for_source(self, source_bits: Option<u32>) -> Self {
        match source_bits {
            Some(b) if b > self.bits => QuantSpec { bits: 8, ..self },
            _ => self,
        }
    }

    /// Blocks per row of `k` values.
    pub fn blocks(&self, k: usize) -> usize {
        k.div_ceil(self.block_size)
    }

    /// Bytes of one packed block.
    pub fn blob(&self) -> usize {
        self.block_size * self.bits as usize / 8
    }

    /// The zero point implied when `zero_points` is absent.
    pub fn zero(&self) -> i32 {
        1 << (self.bits - 1)
    }

    /// Bytes of one quantised row of `k` values: packed blocks plus their f32 scales.
    pub fn row_bytes(&self, k: usize) -> usize {
        self.blocks(k) * (self.blob() + 4)
    }
}

/// A quantised `[N, K]` matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    /// Packed values `[N, n_blocks, blob]`.
    pub packed: Vec<u8>,
    /// Scales `[N, n_blocks]`.
    pub scales: Vec<f32>,
}

/// Quantises row-major `data` of `n` rows by `k` columns.
pub fn quantize(data: &[f32], n: usize, k: usize, spec: QuantSpec) -> Result<Quantized> {
    if data.len() != n * k {
        return Err(Error::BadInput(format!(
            "{} values for a {n} x {k} matrix",
            data.len()
        )));
    }
    let (nb, blob, bs) = (spec.blocks(k), spec.blob(), spec.block_size);
    let mut packed = vec![0u8; n * nb * blob];
    let mut scales = vec![0f32; n * nb];
    let mut q = vec![0u8; bs];
    for r in 0..n {
        let row = &data[r * k..(r + 1) * k];
        for b in 0..nb {
            let vals = &row[b * bs..((b + 1) * bs).min(k)];
            let s = block_scale(vals, spec.bits);
            let inv = if s == 0.0 { 0.0 } else { 1.0 / s };
            let (lo, hi) = (0.0, ((1u32 << spec.bits) - 1) as f32);
            let zero = spec.zero() as f32;
            q.iter_mut().for_each(|x| *x = spec.zero() as u8);
            for (x, v) in q.iter_mut().zip(vals) {
                *x = ((v * inv).round() + zero).clamp(lo, hi) as u8;
            }
            scales[r * nb + b] = s;
            let out = &mut packed[(r * nb + b) * blob..(r * nb + b + 1) * blob];
            if spec.bits == 8 {
                out.copy_from_slice(&q);
            } else {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = (q[2 * i] & 0x0f) | (q[2 * i + 1] << 4);
                }
            }
        }
    }
    Ok(Quantized { packed, scales })
}

/// The scale of one block: maps the value of largest magnitude to the end of the range.
fn block_scale(vals: &[f32], bits: u32) -> f32 {
    let m = vals
        .iter()
        .copied()
        .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    if bits == 4 { m / -8.0 } else { m.abs() / 127.0 }
}

/// The quantised value `i` (0-based along the padded row) of packed row `row`.
fn value(packed_row: &[u8], i: usize, bits: u32) -> i32 {
    if bits == 8 {
        i32::from(packed_row[i])
    } else {
        let byte = packed_row[i / 2];
        i32::from(if i.is_multiple_of(2) {
            byte & 0x0f
        } else {
            byte >> 4
        })
    }
}

/// Dequantises to row-major `[N, K]` f32, or `[K, N]` when `transposed` (a MatMul weight).
pub fn dequantize(
    packed: &[u8],
    scales: &[f32],
    (n, k): (usize, usize),
    spec: QuantSpec,
    transposed: bool,
) -> Result<Vec<f32>> {
    let (nb, blob) = (spec.blocks(k), spec.blob());
    if packed.len() != n * nb * blob || scales.len() != n * nb {
        return Err(Error::BadInput(format!(
            "{} packed bytes and {} scales for a {n} x {k} matrix in blocks of {}",
            packed.len(),
            scales.len(),
            spec.block_size
        )));
    }
    let mut out = vec![0f32; n * k];
    let zero = spec.zero();
    for r in 0..n {
        let row = &packed[r * nb * blob..(r + 1) * nb * blob];
        for c in 0..k {
            let s = scales[r * nb + c / spec.block_size];
            let w = (value(row, c, spec.bits) - zero) as f32 * s;
            let at = if transposed { c * n + r } else { r * k + c };
            out[at] = w;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec(bits: u32, block_size: usize) -> QuantSpec {
        QuantSpec {
            bits,
            block_size,
            accuracy_level: DEFAULT_ACCURACY_LEVEL,
        }
    }

    #[test]
    fn round_trip_error_is_bounded_by_the_step() {
        let (n, k) = (3, 40);
        let data: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for s in [spec(4, 16), spec(8, 32)] {
            let q = quantize(&data, n, k, s).unwrap();
            assert_eq!(q.packed.len(), n * s.blocks(k) * s.blob());
            let back = dequantize(&q.packed, &q.scales, (n, k), s, false).unwrap();
            for (i, (a, b)) in data.iter().zip(&back).enumerate() {
                let step = q.scales[(i / k) * s.blocks(k) + (i % k) / s.block_size].abs();
                // Half a step, except that q4's range -8..=7 clamps the sign opposite to the
                // block's extreme at 7 steps: there the error reaches one step.
                let tol = if s.bits == 4 { step } else { step * 0.5 };
                assert!((a - b).abs() <= tol + 1e-6, "{a} vs {b}, step {step}");
            }
        }
    }

    #[test]
    fn the_largest_magnitude_is_exact_and_nibbles_are_low_first() {
        let mut data = vec![0.0f32; 16];
        data[0] = -2.0;
        data[1] = 1.0;
        let q = quantize(&data, 1, 16, spec(4, 16)).unwrap();
        assert_eq!(q.scales, vec![0.25]);
        // -2 / 0.25 + 8 = 0 in the low nibble, 1 / 0.25 + 8 = 12 in the high one.
        assert_eq!(q.packed[0], 0xc0);
        let t = dequantize(&q.packed, &q.scales, (1, 16), spec(4, 16), true).unwrap();
        assert_eq!(&t[..2], &[-2.0, 1.0]);
    }

    #[test]
    fn dtypes_parse_and_block_sizes_are_checked() {
        assert_eq!("q4".parse::<WeightDtype>().unwrap(), WeightDtype::Q4);
        assert!("q3".parse::<WeightDtype>().is_err());
        assert!(QuantSpec::new(WeightDtype::Q4, 48).is_err());
        assert_eq!(QuantSpec::new(WeightDtype::F32, 48).unwrap(), None);
        let q4 = QuantSpec::new(WeightDtype::Q4, 32).unwrap().unwrap();
        assert!(q4.with_accuracy_level(5).is_err());
        assert_eq!(q4.with_accuracy_level(0).unwrap().accuracy_level, 0);
    }

    #[test]
    fn a_4_bit_spec_widens_to_8_bits_for_sources_with_more_bits() {
        let q4 = spec(4, 32);
        assert_eq!(q4.for_source(None), q4);
        assert_eq!(q4.for_source(Some(4)), q4);
        assert_eq!(q4.for_source(Some(2)), q4);
        assert_eq!(q4.for_source(Some(5)).bits, 8);
        assert_eq!(q4.for_source(Some(6)).block_size, 32);
        let q8 = spec(8, 32);
        assert_eq!(q8.for_source(Some(5)), q8);
    }
}
