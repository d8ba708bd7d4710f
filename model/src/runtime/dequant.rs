//! Rewrites a quantised shard for tract, which has no ONNX Runtime contrib ops: every
//! `com.microsoft.MatMulNBits` becomes a `MatMul` on the dequantised f32 weight `[K, N]`, every
//! `com.microsoft.GatherBlockQuantized` a `Gather` on the dequantised table. The rewritten
//! weights are inline f32 tensors of the returned model proto; the other initializers keep
//! pointing at the external data next to the shard. Memory then holds f32 weights (4 bytes per
//! weight instead of about 0.6 for q4): a node without ONNX Runtime runs a quantised model, at
//! f32 speed and size.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use tract_onnx::pb;

use crate::error::{Error, Result};
use crate::onnx::MS_DOMAIN;
use crate::quant::{self, QuantSpec};

fn bad(path: &Path, m: String) -> Error {
    Error::Tract(format!("{}: {m}", path.display()))
}

/// Whether `model` uses ONNX Runtime contrib ops.
pub(crate) fn is_quantized(model: &pb::ModelProto) -> bool {
    model
        .graph
        .as_ref()
        .is_some_and(|g| g.node.iter().any(|n| n.domain == MS_DOMAIN))
}

/// Replaces the contrib ops of `model` (loaded from `path`) by f32 equivalents.
pub(crate) fn dequantize_model(model: &mut pb::ModelProto, path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let Some(graph) = model.graph.as_mut() else {
        return Err(bad(path, "no graph".to_owned()));
    };
    let inits: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut added = Vec::new();
    let mut replaced = HashSet::new();
    for node in graph.node.iter_mut().filter(|n| n.domain == MS_DOMAIN) {
        let get = |name: &str| -> Result<&pb::TensorProto> {
            inits
                .get(name)
                .map(|i| &graph.initializer[*i])
                .ok_or_else(|| bad(path, format!("{name:?} is not an initializer")))
        };
        let attr = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.i);
        let need = |name: &str| {
            attr(name).ok_or_else(|| bad(path, format!("{} lacks {name}", node.op_type)))
        };
        let spec = QuantSpec {
            bits: need("bits")? as u32,
            block_size: need("block_size")? as usize,
            accuracy_level: 0,
        };
        let (data_name, scales_name) = match node.input.as_slice() {
            [_, b, s, ..] if node.op_type == "MatMulNBits" => (b.clone(), s.clone()),
            [d, _, s, ..] if node.op_type == "GatherBlockQuantized" => (d.clone(), s.clone()),
            _ => {
                return Err(bad(
                    path,
                    format!("contrib op {} is not supported on tract", node.op_type),
                ));
            }
        };
        let packed = tensor_bytes(get(&data_name)?, dir)?;
        let scales: Vec<f32> = tensor_bytes(get(&scales_name)?, dir)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let out = format!("{data_name}/f32");
        if node.op_type == "MatMulNBits" {
            let (k, n) = (need("K")? as usize, need("N")? as usize);
            let zeros_name = node.input.get(3).filter(|z| !z.is_empty()).cloned();
            let zeros = match &zeros_name {
                Some(z) => Some(tensor_bytes(get(z)?, dir)?),
                None => None,
            };
            let w = quant::dequantize_with_zeros(
                &packed,
                &scales,
                zeros.as_deref(),
                (n, k),
                spec,
                true,
            )?;
            if let Some(z) = zeros_name {
                replaced.insert(z);
            }
            added.push(f32_tensor(&out, &[k, n], w));
            let x = node.input[0].clone();
            node.input = vec![x, out];
            node.op_type = "MatMul".to_owned();
        } else {
            let dims = &get(&data_name)?.dims;
            let rows = dims.first().copied().unwrap_or(0) as usize;
            let cols = scales.len() / rows.max(1) * spec.block_size;
            let w = quant::dequantize(&packed, &scales, (rows, cols), spec, false)?;
            added.push(f32_tensor(&out, &[rows, cols], w));
            let ids = node.input[1].clone();
            node.input = vec![out, ids];
            node.op_type = "Gather".to_owned();
            node.attribute = vec![crate::onnx::attr_int("axis", 0)];
        }
        if node.op_type == "MatMul" {
            node.attribute.clear();
        }
        node.domain = String::new();
        replaced.insert(data_name);
        replaced.insert(scales_name);
    }
    graph.initializer.retain(|t| !replaced.contains(&t.name));
    graph.initializer.extend(added);
    model.opset_import.retain(|o| o.domain != MS_DOMAIN);
    Ok(())
}

fn f32_tensor(name: &str, dims: &[usize], data: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_owned(),
        dims: dims.iter().map(|d| *d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// The little-endian bytes of an initializer: inline (`raw_data` or `float_data`) or external.
fn tensor_bytes(t: &pb::TensorProto, dir: &Path) -> Result<Vec<u8>> {
    if !t.raw_data.is_empty() {
        return Ok(t.raw_data.clone());
    }
    if !t.float_data.is_empty() {
        return Ok(t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    let entry = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.as_str())
    };
    let fail = |m: &str| Error::Tract(format!("tensor {:?}: {m}", t.name));
    let location = entry("location").ok_or_else(|| fail("no data"))?;
    if location.contains("..") || Path::new(location).is_absolute() {
        return Err(fail("external data outside the model directory"));
    }
    let num = |k: &str| -> Result<u64> {
        entry(k)
            .unwrap_or("0")
            .parse()
            .map_err(|_| fail("bad external data entry"))
    };
    let (offset, length) = (num("offset")?, num("length")?);
    let path = dir.join(location);
    let mut f = std::fs::File::open(&path).map_err(Error::io(&path))?;
    f.seek(SeekFrom::Start(offset)).map_err(Error::io(&path))?;
    let len = usize::try_from(length).map_err(|_| fail("too long"))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).map_err(Error::io(&path))?;
    Ok(buf)
}
