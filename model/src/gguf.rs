//! GGUF (llama.cpp's checkpoint format) reader: header, metadata, tensor infos, tensor data.
//!
//! Data flow: [`GgufReader::new`] parses the header of any `Read + Seek` source (versions 2 and
//! 3) into metadata key/values ([`Value`]) and tensor infos ([`TensorInfo`]), checking every
//! length against the bytes left in the file before it allocates, so a truncated or hostile
//! file yields a typed [`GgufError`] and never a panic or a huge allocation. Tensor data is read
//! on demand by [`GgufReader::tensor_f32`], which dequantises F32, F16, BF16, Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0, Q4_K, Q5_K and Q6_K blocks ([`dequant`]) into a row-major f32 buffer.
//!
//! GGUF lists a tensor's dimensions innermost first (`ne[0]` is the row length); the shapes
//! returned here are row-major (outermost first), so a GGUF `[in, out]` matrix comes back as
//! `[out, in]`, the layout of a Hugging Face `nn.Linear` weight.
//!
//! On top of the reader, [`import`] maps GGUF names and metadata to the architectures of
//! `crate::arch` ([`names`] holds the name table and the Llama Q/K un-permutation).

pub mod dequant;
mod ggml_type;
mod header;
pub mod import;
pub mod names;
mod value;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

pub use ggml_type::GgmlType;
pub use header::{MAX_ARRAY_LEN, MAX_STRING_LEN, MAX_TENSORS};
pub use import::{GgufWeights, architecture, import, import_as};
pub use names::Family;
pub use value::Value;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The underlying reader failed.
    #[error("GGUF read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The file does not start with the `GGUF` magic.
    #[error("not a GGUF file (magic {0:#010x}, expected 0x46554747)")]
    BadMagic(u32),
    /// A GGUF version other than 2 or 3.
    #[error("unsupported GGUF version {0} (versions 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    /// The file ends before a field it announces.
    #[error("file ends early: {what} at byte {offset} needs {needed} bytes, {available} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Byte offset of the field.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A count or length above this reader's limit.
    #[error("{what} is {value}, above the limit {limit}")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// A metadata value type id that GGUF does not define.
    #[error("unknown metadata value type {ty} at byte {offset}")]
    BadValueType {
        /// The type id.
        ty: u32,
        /// Byte offset of the type id.
        offset: u64,
    },
    /// A key or tensor name that is not UTF-8.
    #[error("{what} at byte {offset} is not valid UTF-8")]
    BadUtf8 {
        /// The field.
        what: &'static str,
        /// Byte offset of the string.
        offset: u64,
    },
    /// The same metadata key twice.
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    /// The same tensor name twice.
    #[error("duplicate tensor {0:?}")]
    DuplicateTensor(String),
    /// A tensor info that is inconsistent (dims, offset, size).
    #[error("tensor {name:?}: {reason}")]
    BadTensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A metadata value of the wrong type or out of range.
    #[error("metadata {key:?}: {reason}")]
    BadMetadata {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A required metadata key is absent.
    #[error("metadata key {0:?} is missing")]
    MissingKey(String),
    /// A requested tensor is absent.
    #[error("tensor {0:?} is not in the file")]
    MissingTensor(String),
    /// The tensor's type has no dequantiser here.
    #[error("tensor {name:?}: type {ty} cannot be dequantised (supported: {supported})")]
    UnsupportedType {
        /// Tensor name.
        name: String,
        /// Its GGML type.
        ty: GgmlType,
        /// The supported types, for the message.
        supported: &'static str,
    },
}

/// One tensor's entry in the GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions as stored (innermost first, GGML's `ne`).
    pub ne: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Row-major shape (outermost first), as a Hugging Face tensor would have it.
    pub fn shape(&self) -> Vec<usize> {
        // Dims were checked at parse time so that their product fits in the file.
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }

    /// Bytes of data, when the type's block size is known.
    pub fn n_bytes(&self) -> Option<u64> {
        let (block, size) = self.ty.block()?;
        Some(self.n_elements() / block * size)
    }
}

/// A parsed GGUF header plus the source it came from, for reading tensor data.
#[derive(Debug)]
pub struct GgufReader<R> {
    source: R,
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata key/values in key order.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment (`general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Length of the whole file.
    pub file_len: u64,
}

impl<R: Read + Seek> GgufReader<R> {
    /// Parse the header of `source` (read from its start) and validate every tensor info.
    pub fn new(mut source: R) -> Result<Self, GgufError> {
        let file_len = source.seek(SeekFrom::End(0))?;
        source.seek(SeekFrom::Start(0))?;
        let parsed = header::parse(std::io::BufReader::new(&mut source), file_len)?;
        Ok(Self {
            source,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            file_len,
        })
    }

    /// The tensor info called `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of tensor `name`, exactly as stored.
    pub fn tensor_bytes(&mut self, name: &str) -> Result<(TensorInfo, Vec<u8>), GgufError> {
        let info = self
            .tensor_info(name)
            .cloned()
            .ok_or_else(|| GgufError::MissingTensor(name.to_owned()))?;
        let n_bytes = info.n_bytes().ok_or_else(|| GgufError::UnsupportedType {
            name: info.name.clone(),
            ty: info.ty,
            supported: dequant::SUPPORTED,
        })?;
        // Parse-time validation guarantees data_offset + offset + n_bytes <= file_len.
        let len = usize::try_from(n_bytes).map_err(|_| GgufError::TooLarge {
            what: "tensor bytes",
            value: n_bytes,
            limit: usize::MAX as u64,
        })?;
        self.source
            .seek(SeekFrom::Start(self.data_offset + info.offset))?;
        let mut bytes = vec![0u8; len];
        self.source.read_exact(&mut bytes)?;
        Ok((info, bytes))
    }

    /// Tensor `name` dequantised to f32, with its row-major shape.
    pub fn tensor_f32(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let (info, bytes) = self.tensor_bytes(name)?;
        let values =
            dequant::dequantize(info.ty, &bytes, info.n_elements()).map_err(|e| match e {
                dequant::DequantError::Unsupported(ty) => GgufError::UnsupportedType {
                    name: info.name.clone(),
                    ty,
                    supported: dequant::SUPPORTED,
                },
                other => GgufError::BadTensor {
                    name: info.name.clone(),
                    reason: other.to_string(),
                },
            })?;
        Ok((info.shape(), values))
    }

    /// The architecture named by `general.architecture`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let value = self.get(key)?;
        value
            .as_str()
            .ok_or_else(|| wrong_type(key, "a string", value))
    }

    /// A required non-negative integer value (any integer type).
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let value = self.get(key)?;
        value
            .as_u64()
            .ok_or_else(|| wrong_type(key, "a non-negative integer", value))
    }

    /// A required number (any integer or float type) as f64.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let value = self.get(key)?;
        value
            .as_f64()
            .ok_or_else(|| wrong_type(key, "a number", value))
    }

    /// A required value.
    pub fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata
            .get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_owned()))
    }
}

fn wrong_type(key: &str, expected: &str, value: &Value) -> GgufError {
    GgufError::BadMetadata {
        key: key.to_owned(),
        reason: format!("expected {expected}, found {}", value.type_name()),
    }
}
