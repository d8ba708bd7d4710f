//! Parsing of the GGUF header: magic, version, metadata key/values and tensor infos.
//!
//! Every length read from the file is checked against a fixed limit and against the bytes
//! left in the file before anything is allocated, and the total number of metadata values
//! is budgeted, so the memory a header can make us allocate is bounded.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use super::value::type_id;
use super::{GgmlType, GgufError, TensorInfo, Value};

/// Longest string (key, value or tensor name) accepted, in bytes.
pub const MAX_STRING_LEN: u64 = 16 << 20;
/// Longest metadata array accepted, in elements.
pub const MAX_ARRAY_LEN: u64 = 16 << 20;
/// Most tensors a file may declare.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most metadata key/values a file may declare.
const MAX_KVS: u64 = 1 << 20;
/// Budget of metadata values (array elements included) over the whole header.
const MAX_VALUES: u64 = 64 << 20;
/// Deepest array nesting accepted (arrays of arrays are legal GGUF but rare).
const MAX_DEPTH: u32 = 3;
/// Most dimensions of a tensor (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// `GGUF` read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// Alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// What the header says.
pub(crate) struct Parsed {
    pub(crate) version: u32,
    pub(crate) metadata: BTreeMap<String, Value>,
    pub(crate) tensors: Vec<TensorInfo>,
    pub(crate) alignment: u64,
    pub(crate) data_offset: u64,
}

/// A reader that knows its position and how many bytes the file has left.
struct Source<R> {
    inner: R,
    pos: u64,
    len: u64,
    values_left: u64,
}

impl<R: Read> Source<R> {
    fn ensure(&self, needed: u64, what: &'static str) -> Result<(), GgufError> {
        let available = self.len.saturating_sub(self.pos);
        if needed > available {
            return Err(GgufError::Truncated {
                what,
                offset: self.pos,
                needed,
                available,
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        self.ensure(N as u64, what)?;
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf)?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>, GgufError> {
        let len = self.u64(what)?;
        limit(what, len, MAX_STRING_LEN)?;
        self.ensure(len, what)?;
        // `ensure` bounded len by the file length, and MAX_STRING_LEN fits in usize.
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf)?;
        self.pos += len;
        Ok(buf)
    }

    fn name(&mut self, what: &'static str) -> Result<String, GgufError> {
        let offset = self.pos;
        String::from_utf8(self.bytes(what)?).map_err(|_| GgufError::BadUtf8 { what, offset })
    }

    fn spend_values(&mut self, n: u64) -> Result<(), GgufError> {
        self.values_left = self.values_left.checked_sub(n).ok_or(GgufError::TooLarge {
            what: "metadata value count",
            value: MAX_VALUES.saturating_add(n),
            limit: MAX_VALUES,
        })?;
        Ok(())
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value, GgufError> {
        const W: &str = "metadata value";
        Ok(match ty {
            type_id::U8 => Value::U8(u8::from_le_bytes(self.array(W)?)),
            type_id::I8 => Value::I8(i8::from_le_bytes(self.array(W)?)),
            type_id::U16 => Value::U16(u16::from_le_bytes(self.array(W)?)),
            type_id::I16 => Value::I16(i16::from_le_bytes(self.array(W)?)),
            type_id::U32 => Value::U32(u32::from_le_bytes(self.array(W)?)),
            type_id::I32 => Value::I32(i32::from_le_bytes(self.array(W)?)),
            type_id::F32 => Value::F32(f32::from_le_bytes(self.array(W)?)),
            type_id::U64 => Value::U64(u64::from_le_bytes(self.array(W)?)),
            type_id::I64 => Value::I64(i64::from_le_bytes(self.array(W)?)),
            type_id::F64 => Value::F64(f64::from_le_bytes(self.array(W)?)),
            type_id::BOOL => Value::Bool(u8::from_le_bytes(self.array(W)?) != 0),
            type_id::STRING => {
                Value::String(String::from_utf8_lossy(&self.bytes("string value")?).into_owned())
            }
            type_id::ARRAY => self.array_value(depth)?,
            other => {
                return Err(GgufError::BadValueType {
                    ty: other,
                    offset: self.pos.saturating_sub(4),
                });
            }
        })
    }

    fn array_value(&mut self, depth: u32) -> Result<Value, GgufError> {
        limit(
            "array nesting depth",
            u64::from(depth) + 1,
            u64::from(MAX_DEPTH),
        )?;
        let offset = self.pos;
        let elem_ty = self.u32("array element type")?;
        let len = self.u64("array length")?;
        let min = type_id::min_size(elem_ty).ok_or(GgufError::BadValueType {
            ty: elem_ty,
            offset,
        })?;
        limit("array length", len, MAX_ARRAY_LEN)?;
        self.ensure(len.saturating_mul(min), "array elements")?;
        self.spend_values(len)?;
        // len <= MAX_ARRAY_LEN, which fits in usize.
        let mut items = Vec::with_capacity(len as usize);
        for _ in 0..len {
            items.push(self.value(elem_ty, depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, GgufError> {
        let name = self.name("tensor name")?;
        let n_dims = self.u32("tensor dimension count")?;
        if n_dims > MAX_DIMS {
            return Err(bad_tensor(
                &name,
                format!("{n_dims} dimensions, at most {MAX_DIMS}"),
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(self.u64("tensor dimension")?);
        }
        let ty = GgmlType::from_id(self.u32("tensor type")?);
        let offset = self.u64("tensor offset")?;
        Ok(TensorInfo {
            name,
            ne,
            ty,
            offset,
        })
    }
}

fn limit(what: &'static str, value: u64, limit: u64) -> Result<(), GgufError> {
    if value > limit {
        return Err(GgufError::TooLarge { what, value, limit });
    }
    Ok(())
}

fn bad_tensor(name: &str, reason: String) -> GgufError {
    GgufError::BadTensor {
        name: name.to_owned(),
        reason,
    }
}

/// Parse a header from `reader`, positioned at the start of a file of `file_len` bytes.
pub(crate) fn parse<R: Read>(reader: R, file_len: u64) -> Result<Parsed, GgufError> {
    let mut src = Source {
        inner: reader,
        pos: 0,
        len: file_len,
        values_left: MAX_VALUES,
    };
    let magic = src.u32("magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic(magic));
    }
    let version = src.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let n_tensors = src.u64("tensor count")?;
    limit("tensor count", n_tensors, MAX_TENSORS)?;
    let n_kv = src.u64("metadata count")?;
    limit("metadata count", n_kv, MAX_KVS)?;

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = src.name("metadata key")?;
        let ty = src.u32("metadata type")?;
        src.spend_values(1)?;
        let value = src.value(ty, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(GgufError::DuplicateKey(key));
        }
    }

    // Each tensor info takes at least 8 (name len) + 4 + 4 + 8 bytes.
    src.ensure(n_tensors.saturating_mul(24), "tensor infos")?;
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::new();
    for _ in 0..n_tensors {
        let info = src.tensor_info()?;
        if !names.insert(info.name.clone()) {
            return Err(GgufError::DuplicateTensor(info.name));
        }
        tensors.push(info);
    }

    let alignment = alignment(&metadata)?;
    let data_offset = src.pos.div_ceil(alignment) * alignment;
    for info in &tensors {
        check_tensor(info, alignment, data_offset, file_len)?;
    }
    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

fn alignment(metadata: &BTreeMap<String, Value>) -> Result<u64, GgufError> {
    let Some(value) = metadata.get("general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value.as_u64() {
        Some(a) if a.is_power_of_two() && a <= 1 << 20 => Ok(a),
        _ => Err(GgufError::BadMetadata {
            key: "general.alignment".into(),
            reason: format!("{value:?} is not a power of two up to 1 MiB"),
        }),
    }
}

fn check_tensor(
    info: &TensorInfo,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    let n = info
        .ne
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad_tensor(&info.name, format!("dimensions {:?} overflow", info.ne)))?;
    if !info.offset.is_multiple_of(alignment) {
        return Err(bad_tensor(
            &info.name,
            format!("offset {} is not a multiple of {alignment}", info.offset),
        ));
    }
    let Some((block, size)) = info.ty.block() else {
        // Unknown types cannot be sized; reading them fails later with UnsupportedType.
        return Ok(());
    };
    let row = info.ne.first().copied().unwrap_or(1);
    if !row.is_multiple_of(block) {
        return Err(bad_tensor(
            &info.name,
            format!(
                "row length {row} is not a multiple of the {} block size {block}",
                info.ty
            ),
        ));
    }
    let bytes = (n / block)
        .checked_mul(size)
        .ok_or_else(|| bad_tensor(&info.name, "byte size overflows".into()))?;
    let end = data_offset
        .checked_add(info.offset)
        .and_then(|s| s.checked_add(bytes))
        .ok_or_else(|| bad_tensor(&info.name, "data range overflows".into()))?;
    if end > file_len {
        return Err(bad_tensor(
            &info.name,
            format!("data ends at byte {end}, past the end of the file ({file_len})"),
        ));
    }
    Ok(())
}
