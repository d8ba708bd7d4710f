//! A small ONNX graph builder on the prost types that `tract-onnx` exposes (`tract_onnx::pb`).
//!
//! Architectures (`crate::arch`) call [`GraphBuilder`] to emit nodes; values are named by
//! strings, each op returns the name of its output. Weights are added with
//! [`GraphBuilder::weight`] and keep the checkpoint name they came from, so the writer
//! ([`write_graph`]) stores a tensor shared by two shards (a tied embedding) once, in the external
//! data file of the shard that wrote it first. The op set is restricted to what both ONNX
//! Runtime and tract-onnx 0.23 run: MatMul, Gemm, Add, Sub, Mul, Div, Neg, Sqrt, Pow,
//! ReduceMean, Sigmoid, Softmax, Gather, Concat, Reshape, Transpose, Unsqueeze, Slice, Shape,
//! Cast, CumSum, LessOrEqual, Greater, And, Where, Sin, Cos, Identity, at opset
//! [`OPSET`]. Quantised graphs add two ONNX Runtime contrib ops ([`MS_DOMAIN`]):
//! `MatMulNBits` for linear layers and `GatherBlockQuantized` for the embedding.

pub mod write;

use std::collections::HashMap;

use tract_onnx::pb;

use crate::quant::QuantSpec;
pub use write::{ExternalIndex, WrittenGraph, encode_inline, write_graph};

/// ONNX opset the graphs declare. 17 keeps `ReduceMean` axes an attribute, which both runtimes
/// accept, and is the first opset with `LayerNormalization`.
pub const OPSET: i64 = 17;
/// IR version matching [`OPSET`].
pub const IR_VERSION: i64 = 8;
/// Domain of ONNX Runtime's contrib ops (`MatMulNBits`, `GatherBlockQuantized`): quantised
/// shards need ONNX Runtime, or the rewrite in `runtime::dequant` for tract.
pub const MS_DOMAIN: &str = "com.microsoft";

/// Element types the graphs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float: activations and weights.
    F32,
    /// 64-bit integer: token ids, positions, masks, shapes.
    I64,
    /// Boolean: intermediate masks.
    Bool,
    /// Unsigned byte: packed quantised weights.
    U8,
}

impl DType {
    /// The `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        match self {
            DType::F32 => pb::tensor_proto::DataType::Float as i32,
            DType::I64 => pb::tensor_proto::DataType::Int64 as i32,
            DType::Bool => pb::tensor_proto::DataType::Bool as i32,
            DType::U8 => pb::tensor_proto::DataType::Uint8 as i32,
        }
    }
}

/// One dimension of a graph input or output: fixed, or a named symbol (`batch`, `seq`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A symbolic size; inputs sharing a name share the size.
    Sym(&'static str),
}

/// Data of an initializer.
#[derive(Debug, Clone, PartialEq)]
pub enum InitData {
    /// f32 values, row-major.
    F32(Vec<f32>),
    /// i64 values, row-major.
    I64(Vec<i64>),
    /// Bytes (packed quantised weights).
    U8(Vec<u8>),
    /// IEEE half floats (`--dtype f16` weight matrices), row-major.
    F16(Vec<half::f16>),
}

impl InitData {
    /// Size in bytes when stored.
    pub fn byte_len(&self) -> usize {
        match self {
            InitData::F32(v) => v.len() * 4,
            InitData::I64(v) => v.len() * 8,
            InitData::U8(v) => v.len(),
            InitData::F16(v) => v.len() * 2,
        }
    }
}

/// A constant tensor of the graph.
#[derive(Debug, Clone)]
pub struct Initializer {
    /// Value name inside the graph.
    pub name: String,
    /// Shape.
    pub dims: Vec<usize>,
    /// Contents.
    pub data: InitData,
    /// Checkpoint tensor this came from: the writer stores each source once across shards.
    pub source: Option<String>,
    /// A part of the tensor stored under another key, starting this many bytes into it: the
    /// writer points at those bytes when that key was written already (a tied head's slices
    /// of the embedding table), and stores `data` itself otherwise.
    pub slice_of: Option<(String, u64)>,
}

/// Builds one ONNX graph: inputs, nodes, initializers, outputs.
#[derive(Debug)]
pub struct GraphBuilder {
    name: String,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<Initializer>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    memo: HashMap<String, String>,
    counter: usize,
    matmul_weights: u64,
    quant: Option<QuantSpec>,
}

impl GraphBuilder {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            name: name.to_owned(),
            nodes: Vec::new(),
            inits: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            memo: HashMap::new(),
            counter: 0,
            matmul_weights: 0,
            quant: None,
        }
    }

    /// Declares a graph input and returns its name.
    pub fn input(&mut self, name: &str, dtype: DType, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, dtype, dims));
        name.to_owned()
    }

    /// Declares `value` as graph output `name` (through an Identity node if the names differ).
    pub fn output(&mut self, value: &str, name: &str, dtype: DType, dims: &[Dim]) {
        if value != name {
            self.nodes
                .push(node("Identity", &[value], &[name], Vec::new(), name));
        }
        self.outputs.push(value_info(name, dtype, dims));
    }

    /// A fresh value name with a readable stem.
    pub fn fresh(&mut self, stem: &str) -> String {
        self.counter += 1;
        format!("{stem}_{}", self.counter)
    }

    /// Emits `op_type` with one output and returns the output's name.
    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> String {
        let out = self.fresh(op_type);
        let name = format!("n_{out}");
        self.nodes
            .push(node(op_type, inputs, &[out.as_str()], attrs, &name));
        out
    }

    /// Emits ONNX Runtime contrib op `op_type` (domain [`MS_DOMAIN`]) with one output; the
    /// writer then imports that domain too.
    pub fn ms_op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> String {
        let out = self.op(op_type, inputs, attrs);
        if let Some(n) = self.nodes.last_mut() {
            n.domain = MS_DOMAIN.to_owned();
        }
        out
    }

    /// Adds a byte tensor derived from the checkpoint tensor `source` (packed quantised
    /// weights) under the key `source`; graphs that add the same key share the stored bytes,
    /// each with its own `dims`.
    pub fn derived(&mut self, source: &str, dims: Vec<usize>, data: InitData) -> String {
        self.add_derived(source, dims, data, None)
    }

    /// Adds `data`, the part of the tensor stored under key `parent` that starts `offset` bytes
    /// into it, as the initializer `name` (a fresh checkpoint key): a graph that reads a large
    /// tensor in row slices (the head, [`crate::arch::common::head_logits`]) shares the bytes
    /// another shard stored whole.
    pub fn derived_slice(
        &mut self,
        name: &str,
        (parent, offset): (&str, u64),
        dims: Vec<usize>,
        data: InitData,
    ) -> String {
        self.add_derived(name, dims, data, Some((parent.to_owned(), offset)))
    }

    /// Adds the derived initializer `name` (its own checkpoint key), once per graph.
    fn add_derived(
        &mut self,
        name: &str,
        dims: Vec<usize>,
        data: InitData,
        slice_of: Option<(String, u64)>,
    ) -> String {
        if !self.inits.iter().any(|i| i.name == name) {
            self.inits.push(Initializer {
                name: name.to_owned(),
                dims,
                data,
                source: Some(name.to_owned()),
                slice_of,
            });
        }
        name.to_owned()
    }

    /// The weight quantisation of the graph being built (`None`: f32).
    pub fn quant(&self) -> Option<QuantSpec> {
        self.quant
    }

    /// Sets how linear layers and the embedding are stored.
    pub fn set_quant(&mut self, quant: Option<QuantSpec>) {
        self.quant = quant;
    }

    /// Adds a weight taken from the checkpoint tensor `source` and returns its value name.
    pub fn weight(&mut self, source: &str, dims: Vec<usize>, data: Vec<f32>) -> String {
        self.add_derived(source, dims, InitData::F32(data), None)
    }

    /// Adds the weight `source` (f32 values) stored as f16 under the key `{source}@f16` and
    /// returns the value of a `Cast` of it to f32: graphs stay f32 between ops, ONNX Runtime
    /// folds the cast of a constant into an f32 initializer at load, and tract likewise.
    pub fn weight_f16(&mut self, source: &str, dims: Vec<usize>, data: &[f32]) -> String {
        let name = format!("{source}@f16");
        if !self.inits.iter().any(|i| i.name == name) {
            let data = data.iter().map(|v| half::f16::from_f32(*v)).collect();
            self.add_derived(&name, dims, InitData::F16(data), None);
        }
        self.cast(&name, DType::F32)
    }

    /// Adds a derived f32 constant (not stored under a checkpoint name).
    pub fn const_f32(&mut self, stem: &str, dims: Vec<usize>, data: Vec<f32>) -> String {
        let name = self.fresh(stem);
        self.inits.push(Initializer {
            name: name.clone(),
            dims,
            data: InitData::F32(data),
            source: None,
            slice_of: None,
        });
        name
    }

    /// Adds an i64 constant (shapes, axes, indices).
    pub fn const_i64(&mut self, dims: Vec<usize>, data: Vec<i64>) -> String {
        let name = self.fresh("c");
        self.inits.push(Initializer {
            name: name.clone(),
            dims,
            data: InitData::I64(data),
            source: None,
            slice_of: None,
        });
        name
    }

    /// A 1-D i64 constant.
    pub fn ints(&mut self, data: &[i64]) -> String {
        self.const_i64(vec![data.len()], data.to_vec())
    }

    /// A scalar f32 constant.
    pub fn scalar(&mut self, v: f32) -> String {
        self.const_f32("s", Vec::new(), vec![v])
    }

    /// Returns the value cached under `key`, building it with `f` the first time: derived
    /// values shared by several layers of one graph (RoPE tables, attention bias) are built once.
    pub fn memo(&mut self, key: &str, f: impl FnOnce(&mut Self) -> String) -> String {
        if let Some(v) = self.memo.get(key) {
            return v.clone();
        }
        let v = f(self);
        self.memo.insert(key.to_owned(), v.clone());
        v
    }

    /// Counts `elems` weight elements multiplied once per token (for the flops figure).
    pub fn count_matmul(&mut self, elems: u64) {
        self.matmul_weights += elems;
    }

    /// Weight elements multiplied per token so far: flops per token is twice this.
    pub fn matmul_weight_elems(&self) -> u64 {
        self.matmul_weights
    }

    /// The graph's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The initializers added so far.
    pub fn initializers(&self) -> &[Initializer] {
        &self.inits
    }

    /// Splits into the graph (initializers without data) and the initializers.
    pub(crate) fn into_parts(self) -> (pb::GraphProto, Vec<Initializer>) {
        let graph = pb::GraphProto {
            name: self.name,
            node: self.nodes,
            input: self.inputs,
            output: self.outputs,
            ..Default::default()
        };
        (graph, self.inits)
    }
}

/// Shorthand ops, each one node.
impl GraphBuilder {
    /// `a @ b`.
    pub fn matmul(&mut self, a: &str, b: &str) -> String {
        self.op("MatMul", &[a, b], Vec::new())
    }
    /// `a + b`.
    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b], Vec::new())
    }
    /// `a - b`.
    pub fn sub(&mut self, a: &str, b: &str) -> String {
        self.op("Sub", &[a, b], Vec::new())
    }
    /// `a * b`.
    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], Vec::new())
    }
    /// `a / b`.
    pub fn div(&mut self, a: &str, b: &str) -> String {
        self.op("Div", &[a, b], Vec::new())
    }
    /// Elementwise unary op such as `Neg`, `Sqrt`, `Sigmoid`, `Sin`, `Cos`, `Tanh`.
    pub fn unary(&mut self, op_type: &str, x: &str) -> String {
        self.op(op_type, &[x], Vec::new())
    }
    /// Reshape to `shape` (0 copies the input dimension, -1 infers one).
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.ints(shape);
        self.op("Reshape", &[x, &s], Vec::new())
    }
    /// Reshape to a shape computed in the graph.
    pub fn reshape_to(&mut self, x: &str, shape: &str) -> String {
        self.op("Reshape", &[x, shape], Vec::new())
    }
    /// Permute axes.
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], vec![attr_ints("perm", perm)])
    }
    /// Insert size-1 axes.
    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        let a = self.ints(axes);
        self.op("Unsqueeze", &[x, &a], Vec::new())
    }
    /// Concatenate along `axis`.
    pub fn concat(&mut self, xs: &[&str], axis: i64) -> String {
        self.op("Concat", xs, vec![attr_int("axis", axis)])
    }
    /// `x[start:end]` along `axis`.
    pub fn slice(&mut self, x: &str, axis: i64, start: i64, end: i64) -> String {
        let s = self.ints(&[start]);
        let e = self.ints(&[end]);
        let a = self.ints(&[axis]);
        self.op("Slice", &[x, &s, &e, &a], Vec::new())
    }
    /// Softmax along `axis`.
    pub fn softmax(&mut self, x: &str, axis: i64) -> String {
        self.op("Softmax", &[x], vec![attr_int("axis", axis)])
    }
    /// Mean over `axes`, keeping them as size 1.
    pub fn reduce_mean(&mut self, x: &str, axes: &[i64]) -> String {
        self.op(
            "ReduceMean",
            &[x],
            vec![attr_ints("axes", axes), attr_int("keepdims", 1)],
        )
    }
    /// Convert element type.
    pub fn cast(&mut self, x: &str, to: DType) -> String {
        self.op(
            "Cast",
            &[x],
            vec![attr_int("to", i64::from(to.onnx_code()))],
        )
    }
    /// Rows of `table` selected by `indices`.
    pub fn gather(&mut self, table: &str, indices: &str, axis: i64) -> String {
        self.op("Gather", &[table, indices], vec![attr_int("axis", axis)])
    }
    /// `cond ? a : b`.
    pub fn select(&mut self, cond: &str, a: &str, b: &str) -> String {
        self.op("Where", &[cond, a, b], Vec::new())
    }
}

/// An integer attribute.
pub fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_owned(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

/// A list-of-integers attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_owned(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A float attribute.
pub fn attr_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_owned(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

fn node(
    op_type: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<pb::AttributeProto>,
    name: &str,
) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: outputs.iter().map(|s| (*s).to_owned()).collect(),
        name: name.to_owned(),
        op_type: op_type.to_owned(),
        attribute,
        ..Default::default()
    }
}

fn value_info(name: &str, dtype: DType, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => Value::DimValue(*n as i64),
                Dim::Sym(s) => Value::DimParam((*s).to_owned()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: dtype.onnx_code(),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
