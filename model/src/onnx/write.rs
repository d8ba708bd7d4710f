//! Serialises a [`GraphBuilder`] into an `.onnx` file whose large initializers live in an
//! external-data file next to it (ONNX "external data": location, offset, length).
//!
//! [`ExternalIndex`] remembers where every checkpoint tensor was written, so a later graph that
//! uses the same tensor (the head of a tied-embedding model) points at the existing bytes
//! instead of writing them again.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use prost::Message;
use tract_onnx::pb;

use super::{GraphBuilder, IR_VERSION, InitData, Initializer, MS_DOMAIN, OPSET};
use crate::error::{Error, Result};

/// Alignment of tensors inside an external-data file: lets runtimes map them directly.
const ALIGN: u64 = 64;
/// Derived constants at least this large go to the external file too.
const INLINE_LIMIT: usize = 4096;

/// Where a checkpoint tensor was stored: file (relative to the model directory), offset, length.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    file: String,
    offset: u64,
    length: u64,
}

/// Where each checkpoint tensor has been written so far, across the shards of one model.
#[derive(Debug, Default)]
pub struct ExternalIndex {
    written: HashMap<String, Location>,
}

impl ExternalIndex {
    /// Where `init`'s bytes already are when it is a slice of a tensor written before.
    fn slice(&self, init: &Initializer) -> Option<Location> {
        let (parent, offset) = init.slice_of.as_ref()?;
        let whole = self.written.get(parent)?;
        let length = init.data.byte_len() as u64;
        (offset + length <= whole.length).then(|| Location {
            file: whole.file.clone(),
            offset: whole.offset + offset,
            length,
        })
    }
}

/// What writing one graph produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenGraph {
    /// Every file the graph needs, relative to the model directory (the `.onnx` first).
    pub files: Vec<String>,
    /// Bytes of all initializers the graph uses (shared ones included).
    pub param_bytes: u64,
}

/// Writes `graph` to `dir/onnx_file`, its weights to `dir/weights_file`.
pub fn write_graph(
    graph: GraphBuilder,
    dir: &Path,
    onnx_file: &str,
    weights_file: &str,
    index: &mut ExternalIndex,
) -> Result<WrittenGraph> {
    let (mut proto, inits) = graph.into_parts();
    let mut weights = WeightsFile::new(dir, weights_file);
    let mut files = BTreeSet::new();
    let mut param_bytes = 0u64;
    for init in inits {
        param_bytes += init.data.byte_len() as u64;
        let external = init.source.is_some() || init.data.byte_len() >= INLINE_LIMIT;
        let tensor = if !external {
            inline_tensor(init)
        } else {
            let known = init
                .source
                .as_ref()
                .and_then(|s| index.written.get(s))
                .cloned()
                .or_else(|| index.slice(&init));
            let loc = match known {
                Some(loc) => loc,
                None => {
                    let loc = weights.append(&init.data)?;
                    if let Some(s) = &init.source {
                        index.written.insert(s.clone(), loc.clone());
                    }
                    loc
                }
            };
            files.insert(loc.file.clone());
            external_tensor(&init, &loc)
        };
        proto.initializer.push(tensor);
    }
    weights.finish()?;
    let path = dir.join(onnx_file);
    std::fs::write(&path, model(proto).encode_to_vec()).map_err(Error::io(&path))?;
    let mut all = vec![onnx_file.to_owned()];
    all.extend(files);
    Ok(WrittenGraph {
        files: all,
        param_bytes,
    })
}

/// `graph` as one serialised ONNX model with every initializer inline (for small graphs
/// built and run in memory, such as the runtime's calibration product).
pub fn encode_inline(graph: GraphBuilder) -> Vec<u8> {
    let (mut proto, inits) = graph.into_parts();
    proto.initializer = inits.into_iter().map(inline_tensor).collect();
    model(proto).encode_to_vec()
}

/// The model around `graph`, at shoal's IR version and opset.
fn model(graph: pb::GraphProto) -> pb::ModelProto {
    let mut opset_import = vec![pb::OperatorSetIdProto {
        domain: String::new(),
        version: OPSET,
    }];
    if graph.node.iter().any(|n| n.domain == MS_DOMAIN) {
        opset_import.push(pb::OperatorSetIdProto {
            domain: MS_DOMAIN.to_owned(),
            version: 1,
        });
    }
    pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import,
        producer_name: "shoal".to_owned(),
        producer_version: env!("CARGO_PKG_VERSION").to_owned(),
        graph: Some(graph),
        ..Default::default()
    }
}

fn inline_tensor(init: Initializer) -> pb::TensorProto {
    let mut t = pb::TensorProto {
        name: init.name,
        dims: init.dims.iter().map(|d| *d as i64).collect(),
        ..Default::default()
    };
    match init.data {
        InitData::F32(v) => {
            t.data_type = pb::tensor_proto::DataType::Float as i32;
            t.float_data = v;
        }
        InitData::I64(v) => {
            t.data_type = pb::tensor_proto::DataType::Int64 as i32;
            t.int64_data = v;
        }
        InitData::U8(v) => {
            t.data_type = pb::tensor_proto::DataType::Uint8 as i32;
            t.raw_data = v;
        }
        InitData::F16(v) => {
            t.data_type = pb::tensor_proto::DataType::Float16 as i32;
            t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        }
    }
    t
}

fn external_tensor(init: &Initializer, loc: &Location) -> pb::TensorProto {
    let data_type = match init.data {
        InitData::F32(_) => pb::tensor_proto::DataType::Float,
        InitData::I64(_) => pb::tensor_proto::DataType::Int64,
        InitData::U8(_) => pb::tensor_proto::DataType::Uint8,
        InitData::F16(_) => pb::tensor_proto::DataType::Float16,
    };
    let entry = |k: &str, v: String| pb::StringStringEntryProto {
        key: k.to_owned(),
        value: v,
    };
    pb::TensorProto {
        name: init.name.clone(),
        dims: init.dims.iter().map(|d| *d as i64).collect(),
        data_type: data_type as i32,
        data_location: Some(pb::tensor_proto::DataLocation::External as i32),
        external_data: vec![
            entry("location", loc.file.clone()),
            entry("offset", loc.offset.to_string()),
            entry("length", loc.length.to_string()),
        ],
        ..Default::default()
    }
}

/// An external-data file opened lazily: a graph without large tensors creates no file.
struct WeightsFile<'a> {
    dir: &'a Path,
    name: &'a str,
    out: Option<BufWriter<File>>,
    len: u64,
}

impl<'a> WeightsFile<'a> {
    fn new(dir: &'a Path, name: &'a str) -> Self {
        WeightsFile {
            dir,
            name,
            out: None,
            len: 0,
        }
    }

    fn append(&mut self, data: &InitData) -> Result<Location> {
        let path = self.dir.join(self.name);
        let out = match &mut self.out {
            Some(out) => out,
            None => {
                let f = File::create(&path).map_err(Error::io(&path))?;
                self.out.insert(BufWriter::new(f))
            }
        };
        let pad = (ALIGN - self.len % ALIGN) % ALIGN;
        out.write_all(&vec![0u8; pad as usize])
            .map_err(Error::io(&path))?;
        self.len += pad;
        let offset = self.len;
        let bytes = le_bytes(data);
        out.write_all(&bytes).map_err(Error::io(&path))?;
        self.len += bytes.len() as u64;
        Ok(Location {
            file: self.name.to_owned(),
            offset,
            length: bytes.len() as u64,
        })
    }

    fn finish(self) -> Result<()> {
        if let Some(mut out) = self.out {
            let path = self.dir.join(self.name);
            out.flush().map_err(Error::io(&path))?;
        }
        Ok(())
    }
}

fn le_bytes(data: &InitData) -> Vec<u8> {
    match data {
        InitData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        InitData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        InitData::U8(v) => v.clone(),
        InitData::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// (offset, length) of each external initializer of `dir/file`, by name.
    fn external(dir: &Path, file: &str) -> HashMap<String, (u64, u64)> {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let proto = pb::ModelProto::decode(bytes.as_slice()).unwrap();
        let mut out = HashMap::new();
        for t in proto.graph.unwrap().initializer {
            if t.external_data.is_empty() {
                continue;
            }
            let get = |k: &str| -> u64 {
                let e = t.external_data.iter().find(|e| e.key == k).unwrap();
                e.value.parse().unwrap()
            };
            out.insert(t.name.clone(), (get("offset"), get("length")));
        }
        out
    }

    #[test]
    fn slices_of_a_written_tensor_point_into_it_and_others_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = ExternalIndex::default();
        let table: Vec<u8> = (0..=255).collect();
        let mut g = GraphBuilder::new("whole");
        g.const_f32("pad", vec![3], vec![1.0, 2.0, 3.0]);
        g.derived("table", vec![16, 16], InitData::U8(table.clone()));
        write_graph(g, dir.path(), "a.onnx", "a.weights", &mut index).unwrap();
        let whole = external(dir.path(), "a.onnx")["table"];

        let mut g = GraphBuilder::new("slices");
        for (c, rows) in [(0usize, 0..10usize), (1, 10..16)] {
            let bytes = table[rows.start * 16..rows.end * 16].to_vec();
            let at = (rows.start * 16) as u64;
            g.derived_slice(
                &format!("table#{c}"),
                ("table", at),
                vec![rows.len(), 16],
                InitData::U8(bytes),
            );
        }
        // A slice of a key never written is stored itself.
        g.derived_slice("other#0", ("other", 0), vec![4], InitData::U8(vec![7; 4]));
        let w = write_graph(g, dir.path(), "b.onnx", "b.weights", &mut index).unwrap();
        assert_eq!(w.param_bytes, 256 + 4);
        assert_eq!(w.files, vec!["b.onnx", "a.weights", "b.weights"]);
        let got = external(dir.path(), "b.onnx");
        assert_eq!(got["table#0"], (whole.0, 160));
        assert_eq!(got["table#1"], (whole.0 + 160, 96));
        assert_eq!(got["other#0"], (0, 4));
        let a = std::fs::read(dir.path().join("a.weights")).unwrap();
        let (o, l) = got["table#1"];
        assert_eq!(&a[o as usize..(o + l) as usize], &table[160..]);
        assert_eq!(
            std::fs::metadata(dir.path().join("b.weights"))
                .unwrap()
                .len(),
            4
        );
    }
}
