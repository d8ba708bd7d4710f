//! Dequantisation of GGML tensor data to f32.
//!
//! [`dequantize`] dispatches on the element type; float types are converted element by
//! element, block-quantised types block by block ([`blocks`]). Block layouts follow ggml's
//! `ggml-common.h` (all multi-byte fields little-endian); the unit tests in
//! `model/tests/gguf_dequant.rs` check each format against vectors produced by the `gguf`
//! Python package (`scripts/gguf-test-vectors.py`).

mod blocks;

use half::{bf16, f16};

use super::GgmlType;

/// The types [`dequantize`] accepts, for messages.
pub const SUPPORTED: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K";

/// Why a buffer could not be dequantised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    /// The type has no dequantiser here.
    #[error("cannot dequantise {0} (supported: {SUPPORTED})")]
    Unsupported(GgmlType),
    /// The element count is not a whole number of blocks.
    #[error("{n} elements of {ty} are not a whole number of {block}-element blocks")]
    PartialBlock {
        /// Element type.
        ty: GgmlType,
        /// Requested element count.
        n: u64,
        /// Elements per block.
        block: u64,
    },
    /// The buffer length does not match the element count.
    #[error("{n} elements of {ty} need {expected} bytes, got {actual}")]
    Length {
        /// Element type.
        ty: GgmlType,
        /// Requested element count.
        n: u64,
        /// Bytes needed.
        expected: u64,
        /// Bytes given.
        actual: u64,
    },
}

/// Dequantise `n` elements of type `ty` stored in `bytes` (exactly their size) to f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: u64) -> Result<Vec<f32>, DequantError> {
    let (block, size) = ty.block().ok_or(DequantError::Unsupported(ty))?;
    if !n.is_multiple_of(block) {
        return Err(DequantError::PartialBlock { ty, n, block });
    }
    let expected = n / block * size;
    if expected != bytes.len() as u64 {
        return Err(DequantError::Length {
            ty,
            n,
            expected,
            actual: bytes.len() as u64,
        });
    }
    let len = usize::try_from(n).map_err(|_| DequantError::Length {
        ty,
        n,
        expected,
        actual: bytes.len() as u64,
    })?;
    let mut out = vec![0f32; len];
    let block = block as usize;
    let size = size as usize;
    let per_block: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => |b, o| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, o| o[0] = f16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Bf16 => |b, o| o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q4_0 => blocks::q4_0,
        GgmlType::Q4_1 => blocks::q4_1,
        GgmlType::Q5_0 => blocks::q5_0,
        GgmlType::Q5_1 => blocks::q5_1,
        GgmlType::Q8_0 => blocks::q8_0,
        GgmlType::Q4K => blocks::q4_k,
        GgmlType::Q5K => blocks::q5_k,
        GgmlType::Q6K => blocks::q6_k,
        other => return Err(DequantError::Unsupported(other)),
    };
    for (src, dst) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(block)) {
        per_block(src, dst);
    }
    Ok(out)
}
