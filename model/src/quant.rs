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
//!
//! Linear layers at 4 bits use the affine form instead ([`quantize_affine`]): each block is
//! `w' = s * q + a` with `q` in `0..=15`, its grid fitted to the block (the span of 8 to 15 steps
//! and least-squares `s`, `a` with the smallest squared error; values that already lie on a
//! 4-bit grid, as a GGUF `Q4_K` block's do, come back exactly). `MatMulNBits` takes `s` and an
//! integer zero point `z` (its `zero_points` input, packed nibbles `[N, ceil(n_blocks / 2)]`)
//! and computes `s * (q - z)`; the rest, `c = a + s * z` per block, is added by the graph as
//! `block_sums(x) @ C^T` ([`crate::arch::common::matmul_nbits`]).

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
    /// 16-bit float (IEEE half) weight matrices, cast to f32 in the graph (see
    /// [`QuantSpec::is_f16`]).
    F16,
    /// 8-bit block quantised linear layers and embedding.
    Q8,
    /// 4-bit block quantised linear layers and embedding.
    Q4,
}

impl WeightDtype {
    /// Bits per stored weight, `None` for f32 (16 for f16).
    pub fn bits(self) -> Option<u32> {
        match self {
            WeightDtype::F32 => None,
            WeightDtype::F16 => Some(16),
            WeightDtype::Q8 => Some(8),
            WeightDtype::Q4 => Some(4),
        }
    }

    /// The name used on the command line and in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
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
            "f16" => Ok(WeightDtype::F16),
            "q8" => Ok(WeightDtype::Q8),
            "q4" => Ok(WeightDtype::Q4),
            other => Err(Error::Config(format!(
                "dtype {other:?}: expected q4, q8, f16 or f32"
            ))),
        }
    }
}

/// How the exporter stores weight matrices other than f32: bits, block size (a power of two,
/// at least 16, as `MatMulNBits` requires) and the `MatMulNBits` accuracy level. 16 bits is
/// not a quantisation but f16 storage ([`QuantSpec::is_f16`]); block size and accuracy level
/// then do not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    /// 4 or 8 (block-quantised), or 16 (f16).
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

/// Block size of the 8-bit embedding and head: ONNX Runtime keeps an f32 scale and an f32 block
/// sum per block of the packed head (at 32, 42 MB of Gemma-3-270M's 210 MB head), so 128 holds
/// it in 178 MB; 8 bits in blocks of 128 keep Gemma-3-270M's parity (`model/README.md`).
pub const TABLE_BLOCK_SIZE: usize = 128;

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
            Some(b) if b > self.bits && !self.is_f16() => QuantSpec { bits: 8, ..self },
            _ => self,
        }
    }

    /// Whether weight matrices are stored as f16 (linear weights, the embedding, an untied
    /// head), each followed by a `Cast` to f32 in the graph: ONNX Runtime's CPU provider has
    /// no f16 `MatMul`, so its constant folding turns the cast weights into f32 at load.
    pub fn is_f16(&self) -> bool {
        self.bits == 16
    }

    /// The spec of the embedding and head (rows of `hidden` values): 8 bits under q4 and q8
    /// (see `model/README.md`), in blocks of [`TABLE_BLOCK_SIZE`] when that divides `hidden`
    /// and is not smaller than `self`'s, else `self`'s; f16 stays f16.
    pub fn for_table(self, hidden: usize) -> Self {
        if self.is_f16() {
            return self;
        }
        let block_size =
            if TABLE_BLOCK_SIZE >= self.block_size && hidden.is_multiple_of(TABLE_BLOCK_SIZE) {
                TABLE_BLOCK_SIZE
            } else {
                self.block_size
            };
        QuantSpec {
            bits: 8,
            block_size,
            ..self
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
        if self.is_f16() {
            return k * 2;
        }
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
                pack_nibbles(&q, out);
            }
        }
    }
    Ok(Quantized { packed, scales })
}

/// A 4-bit affine-quantised `[N, K]` matrix ([`quantize_affine`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AffineQuantized {
    /// Packed 4-bit values `[N, n_blocks, block_size / 2]`.
    pub packed: Vec<u8>,
    /// Scales `[N, n_blocks]`.
    pub scales: Vec<f32>,
    /// Zero points `[N, ceil(n_blocks / 2)]`, two per byte, the lower block in the low nibble.
    pub zeros: Vec<u8>,
    /// What `s * (q - z)` leaves out, per block: `[N, n_blocks]`.
    pub offsets: Vec<f32>,
}

/// Packs 4-bit values two per byte, the lower index in the low nibble.
fn pack_nibbles(q: &[u8], out: &mut [u8]) {
    for (o, pair) in out.iter_mut().zip(q.chunks_exact(2)) {
        *o = (pair[0] & 0x0f) | (pair[1] << 4);
    }
}

/// The best 4-bit affine grid of one block: `(scale, offset, q)` minimising the squared error.
fn fit_block(vals: &[f32], q: &mut [u8]) -> (f32, f32) {
    let lo = vals.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    q.iter_mut().for_each(|x| *x = 0);
    if vals.is_empty() || hi <= lo {
        return (0.0, if vals.is_empty() { 0.0 } else { lo });
    }
    let assign = |s: f32, a: f32, q: &mut [u8]| -> f64 {
        let inv = 1.0 / s;
        let mut err = 0.0f64;
        for (x, v) in q.iter_mut().zip(vals) {
            *x = ((v - a) * inv).round().clamp(0.0, 15.0) as u8;
            let d = f64::from(a + s * f32::from(*x) - v);
            err += d * d;
        }
        err
    };
    let mut best = (f64::INFINITY, 0.0f32, 0.0f32);
    let (mut tmp, mut refit) = (vec![0u8; vals.len()], vec![0u8; vals.len()]);
    for steps in 8..=15u8 {
        let s = (hi - lo) / f32::from(steps);
        let mut e = assign(s, lo, &mut tmp);
        let (mut s2, mut a2) = (s, lo);
        // Least squares of `v = a + s * q` on this assignment, then one more rounding.
        let n = vals.len() as f64;
        let (mut sq, mut sv, mut sqq, mut sqv) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for (x, v) in tmp.iter().zip(vals) {
            let (x, v) = (f64::from(*x), f64::from(*v));
            sq += x;
            sv += v;
            sqq += x * x;
            sqv += x * v;
        }
        let det = n * sqq - sq * sq;
        if det > 0.0 {
            let fs = ((n * sqv - sq * sv) / det) as f32;
            let fa = ((sv * sqq - sq * sqv) / det) as f32;
            if fs > 0.0 && fs.is_finite() && fa.is_finite() {
                let e2 = assign(fs, fa, &mut refit);
                if e2 < e {
                    (e, s2, a2) = (e2, fs, fa);
                    std::mem::swap(&mut tmp, &mut refit);
                }
            }
        }
        if e < best.0 {
            best = (e, s2, a2);
            q[..vals.len()].copy_from_slice(&tmp);
        }
        if e == 0.0 {
            break;
        }
    }
    (best.1, best.2)
}

/// Quantises row-major `data` of `n` rows by `k` columns to 4-bit affine blocks of
/// `block_size` (module docs).
pub fn quantize_affine(
    data: &[f32],
    n: usize,
    k: usize,
    block_size: usize,
) -> Result<AffineQuantized> {
    let spec = QuantSpec {
        bits: 4,
        block_size,
        accuracy_level: DEFAULT_ACCURACY_LEVEL,
    };
    if data.len() != n * k {
        return Err(Error::BadInput(format!(
            "{} values for a {n} x {k} matrix",
            data.len()
        )));
    }
    let (nb, blob, bs) = (spec.blocks(k), spec.blob(), block_size);
    let zrow = nb.div_ceil(2);
    let mut out = AffineQuantized {
        packed: vec![0u8; n * nb * blob],
        scales: vec![0f32; n * nb],
        zeros: vec![0u8; n * zrow],
        offsets: vec![0f32; n * nb],
    };
    let mut q = vec![0u8; bs];
    for r in 0..n {
        let row = &data[r * k..(r + 1) * k];
        for b in 0..nb {
            let vals = &row[b * bs..((b + 1) * bs).min(k)];
            let (s, a) = fit_block(vals, &mut q);
            // Any zero point is exact with the offset; the one nearest to the grid's zero
            // keeps the offset small.
            let z = if s > 0.0 {
                (-a / s).round().clamp(0.0, 15.0) as u8
            } else {
                0
            };
            out.scales[r * nb + b] = s;
            out.offsets[r * nb + b] = a + s * f32::from(z);
            out.zeros[r * zrow + b / 2] |= z << (4 * (b % 2));
            pack_nibbles(
                &q,
                &mut out.packed[(r * nb + b) * blob..(r * nb + b + 1) * blob],
            );
        }
    }
    Ok(out)
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

/// Dequantises to row-major `[N, K]` f32, or `[K, N]` when `transposed` (a MatMul weight),
/// with the default zero point.
pub fn dequantize(
    packed: &[u8],
    scales: &[f32],
    (n, k): (usize, usize),
    spec: QuantSpec,
    transposed: bool,
) -> Result<Vec<f32>> {
    dequantize_with_zeros(packed, scales, None, (n, k), spec, transposed)
}

/// [`dequantize`] with `zero_points` as `MatMulNBits` takes them (packed like the values,
/// `[N, ceil(n_blocks * bits / 8)]`), or the default zero point when `None`.
pub fn dequantize_with_zeros(
    packed: &[u8],
    scales: &[f32],
    zeros: Option<&[u8]>,
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
    let zrow = (nb * spec.bits as usize).div_ceil(8);
    if let Some(z) = zeros
        && z.len() != n * zrow
    {
        return Err(Error::BadInput(format!(
            "{} zero-point bytes for {n} rows of {nb} blocks",
            z.len()
        )));
    }
    let mut out = vec![0f32; n * k];
    for r in 0..n {
        let row = &packed[r * nb * blob..(r + 1) * nb * blob];
        for c in 0..k {
            let b = c / spec.block_size;
            let s = scales[r * nb + b];
            let zero = match zeros {
                Some(z) => value(&z[r * zrow..(r + 1) * zrow], b, spec.bits),
                None => spec.zero(),
            };
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

    /// `s * (q - z) + c` of every value, row-major.
    fn affine_values(q: &AffineQuantized, n: usize, k: usize, bs: usize) -> Vec<f32> {
        let s = spec(4, bs);
        let w =
            dequantize_with_zeros(&q.packed, &q.scales, Some(&q.zeros), (n, k), s, false).unwrap();
        let nb = s.blocks(k);
        w.iter()
            .enumerate()
            .map(|(i, v)| v + q.offsets[(i / k) * nb + (i % k) / bs])
            .collect()
    }

    #[test]
    fn affine_blocks_on_a_4_bit_grid_come_back_exactly() {
        // Q4_K-like blocks: d * q - m with q in 0..=15 (some blocks use fewer levels).
        let (n, k, bs) = (4, 96, 32);
        let mut data = Vec::new();
        for r in 0..n {
            for b in 0..k / bs {
                let (d, m) = (0.01 + 0.003 * (r * 3 + b) as f32, 0.05 * b as f32);
                let top = 15 - (r + b) % 5;
                data.extend((0..bs).map(|i| d * ((i * 7 + r) % (top + 1)) as f32 - m));
            }
        }
        let q = quantize_affine(&data, n, k, bs).unwrap();
        for (a, b) in data.iter().zip(affine_values(&q, n, k, bs)) {
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn affine_error_is_at_most_symmetric_error() {
        let (n, k, bs) = (8, 64, 32);
        let data: Vec<f32> = (0..n * k)
            .map(|i| (((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.3).powi(3))
            .collect();
        let sse = |w: &[f32]| -> f64 {
            data.iter()
                .zip(w)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum()
        };
        let affine = quantize_affine(&data, n, k, bs).unwrap();
        let sym = quantize(&data, n, k, spec(4, bs)).unwrap();
        let sym_w = dequantize(&sym.packed, &sym.scales, (n, k), spec(4, bs), false).unwrap();
        let (ea, es) = (sse(&affine_values(&affine, n, k, bs)), sse(&sym_w));
        assert!(ea <= es, "affine {ea} > symmetric {es}");
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
