//! `Tensor` and `DType`: a raw little-endian tensor as it travels between stages.
//!
//! The bytes are the tensor's elements in row-major order, little-endian, exactly as ONNX
//! Runtime lays them out on every platform shoal targets, so a stage hands them to the next
//! session without conversion. [`Tensor::check`] ties the three fields together: at most
//! [`MAX_RANK`] dimensions, and `product(shape) * dtype.size() == data.len()`.

use serde::{Deserialize, Serialize};

use crate::{Kind, ProtocolError};

/// Most dimensions a tensor may have (`[batch, seq, hidden]` needs 3; K/V layouts need 4).
pub const MAX_RANK: usize = 4;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16.
    Bf16,
    /// Signed 64-bit integer (token ids, position ids as ONNX models take them).
    I64,
    /// Signed 32-bit integer.
    I32,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::I64 => 8,
            DType::I8 | DType::U8 => 1,
        }
    }
}

/// A dense tensor: element type, shape and raw little-endian bytes.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tensor {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first; at most [`MAX_RANK`].
    pub shape: Vec<u32>,
    /// `product(shape) * dtype.size()` bytes, row-major, little-endian.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Tensor {
    /// Number of elements the shape describes (`None` if it overflows `usize`).
    pub fn elements(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
    }

    /// Checks rank, size agreement and the byte limit `max_bytes`; `kind` names the message
    /// in the error.
    pub fn check(&self, kind: Kind, max_bytes: usize) -> Result<(), ProtocolError> {
        if self.shape.len() > MAX_RANK {
            return Err(ProtocolError::invalid(
                kind,
                format!("tensor rank {} exceeds {MAX_RANK}", self.shape.len()),
            ));
        }
        if self.data.len() > max_bytes {
            return Err(ProtocolError::invalid(
                kind,
                format!("tensor of {} bytes exceeds {max_bytes}", self.data.len()),
            ));
        }
        let expected = self
            .elements()
            .and_then(|n| n.checked_mul(self.dtype.size()));
        if expected != Some(self.data.len()) {
            return Err(ProtocolError::invalid(
                kind,
                format!(
                    "tensor {:?} {:?} needs {} bytes, carries {}",
                    self.dtype,
                    self.shape,
                    expected.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                    self.data.len()
                ),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Tensor {
    /// Prints the byte count, not the bytes: activations can be megabytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.data.len())
            .finish()
    }
}
