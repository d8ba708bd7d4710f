//! GGML tensor element types as numbered in GGUF files, with their block geometry.

use std::fmt;

/// A GGML element type. Types this crate cannot size are kept as [`GgmlType::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// 32 weights: f16 scale, 16 bytes of 4-bit quants (offset 8).
    Q4_0,
    /// 32 weights: f16 scale and min, 16 bytes of 4-bit quants.
    Q4_1,
    /// 32 weights: f16 scale, 32 high bits, 16 bytes of low nibbles (offset 16).
    Q5_0,
    /// 32 weights: f16 scale and min, 32 high bits, 16 bytes of low nibbles.
    Q5_1,
    /// 32 weights: f16 scale, 32 signed bytes.
    Q8_0,
    /// 256 weights: 16 sub-blocks of 2 bits (not dequantised here).
    Q2K,
    /// 256 weights: 3 bits (not dequantised here).
    Q3K,
    /// 256 weights: f16 d and dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
    Q4K,
    /// 256 weights: as Q4_K plus 32 bytes of fifth bits.
    Q5K,
    /// 256 weights: 128 bytes low nibbles, 64 bytes high 2 bits, 16 i8 scales, f16 d.
    Q6K,
    /// 256 weights: f32 d, 256 i8, 16 i16 sums (not dequantised here).
    Q8K,
    /// Any other type id.
    Other(u32),
}

impl GgmlType {
    /// Bits of each stored value of a block-quantised type (scales and mins not counted);
    /// `None` for float types and types this crate does not know.
    pub fn value_bits(self) -> Option<u32> {
        match self {
            Self::Q2K => Some(2),
            Self::Q3K => Some(3),
            Self::Q4_0 | Self::Q4_1 | Self::Q4K => Some(4),
            Self::Q5_0 | Self::Q5_1 | Self::Q5K => Some(5),
            Self::Q6K => Some(6),
            Self::Q8_0 | Self::Q8K => Some(8),
            Self::F32 | Self::F16 | Self::Bf16 | Self::Other(_) => None,
        }
    }

    /// The type with GGUF id `id`.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            30 => Self::Bf16,
            other => Self::Other(other),
        }
    }

    /// The GGUF id of this type.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Q8K => 15,
            Self::Bf16 => 30,
            Self::Other(id) => id,
        }
    }

    /// `(elements per block, bytes per block)`, or `None` for an unknown type.
    pub fn block(self) -> Option<(u64, u64)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Q8K => (256, 292),
            Self::Other(_) => return None,
        })
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::F32 => f.write_str("F32"),
            Self::F16 => f.write_str("F16"),
            Self::Bf16 => f.write_str("BF16"),
            Self::Q4_0 => f.write_str("Q4_0"),
            Self::Q4_1 => f.write_str("Q4_1"),
            Self::Q5_0 => f.write_str("Q5_0"),
            Self::Q5_1 => f.write_str("Q5_1"),
            Self::Q8_0 => f.write_str("Q8_0"),
            Self::Q2K => f.write_str("Q2_K"),
            Self::Q3K => f.write_str("Q3_K"),
            Self::Q4K => f.write_str("Q4_K"),
            Self::Q5K => f.write_str("Q5_K"),
            Self::Q6K => f.write_str("Q6_K"),
            Self::Q8K => f.write_str("Q8_K"),
            Self::Other(id) => write!(f, "type #{id}"),
        }
    }
}
