//! Building blocks shared by architectures: linear layers, RMSNorm, rotary embeddings, the
//! attention bias derived from `attention_mask` and `position_ids`, and grouped-query
//! attention over a KV cache.
//!
//! Layouts: hidden states `[B,S,H]`; per-head tensors `[B,heads,S,D]`; the cache
//! `[B,KV,T,D]` with `T = P + S`. Derived values shared by the layers of one graph (RoPE
//! tables, the bias) are memoised in the [`GraphBuilder`], so the unsplit graph builds them
//! once.

use crate::arch::{WeightSource, WeightTensor};
use crate::error::{Error, Result};
use crate::onnx::{DType, GraphBuilder, InitData, attr_int};
use crate::quant::{self, QuantSpec};

/// Value added to the scores of masked positions (finite, so a fully masked row stays finite).
pub const MASKED: f32 = -1.0e9;

/// Loads `name` and checks its shape.
pub fn load(w: &mut dyn WeightSource, name: &str, dims: &[usize]) -> Result<WeightTensor> {
    let t = w.tensor(name)?;
    if t.dims != dims {
        return Err(Error::BadTensor {
            name: name.to_owned(),
            reason: format!("shape {:?}, expected {:?}", t.dims, dims),
        });
    }
    Ok(t)
}

/// `x @ W^T (+ b)` for a Hugging Face linear weight `[out, in]` called `weight`.
pub fn linear(
    g: &mut GraphBuilder,
    w: &mut dyn WeightSource,
    x: &str,
    weight: &str,
    bias: Option<&str>,
    (out_dim, in_dim): (usize, usize),
) -> Result<String> {
    let t = load(w, weight, &[out_dim, in_dim])?;
    g.count_matmul((out_dim * in_dim) as u64);
    let y = match g.quant() {
        Some(spec) if spec.is_f16() => {
            let wt = g.weight_f16(
                &format!("{weight}^T"),
                vec![in_dim, out_dim],
                &transpose(&t.data, out_dim, in_dim),
            );
            g.matmul(x, &wt)
        }
        Some(spec) => {
            let spec = spec.for_source(t.source_bits);
            matmul_nbits(g, x, weight, &t.data, (out_dim, in_dim), spec)?
        }
        None => {
            let wt = g.weight(
                &format!("{weight}^T"),
                vec![in_dim, out_dim],
                transpose(&t.data, out_dim, in_dim),
            );
            g.matmul(x, &wt)
        }
    };
    match bias {
        Some(b) => {
            let bt = load(w, b, &[out_dim])?;
            let bv = g.weight(b, vec![out_dim], bt.data);
            Ok(g.add(&y, &bv))
        }
        None => Ok(y),
    }
}

/// Key under which the packed bytes of checkpoint tensor `source` are stored; its scales are
/// under the same key plus `/scales`. The embedding and a tied head use the same keys, so the
/// writer stores the bytes once.
fn quant_key(source: &str, spec: QuantSpec) -> String {
    format!("{source}@q{}b{}", spec.bits, spec.block_size)
}

/// `x @ W^T` through `com.microsoft.MatMulNBits` for a `[n, k]` weight `data`: B is
/// `[n, blocks, blob]` bytes, scales `[n * blocks]`, and the spec's `accuracy_level` (4, int8
/// activations, is the fast kernel on CPU). 8 bits are symmetric (no zero points); 4 bits are
/// affine ([`quant::quantize_affine`]): zero points `[n * ceil(blocks / 2)]`, and the blocks'
/// offsets `C [n, blocks]` added as `block_sums(x) @ C^T`.
pub fn matmul_nbits(
    g: &mut GraphBuilder,
    x: &str,
    source: &str,
    data: &[f32],
    (n, k): (usize, usize),
    spec: QuantSpec,
) -> Result<String> {
    let (key, packed, scales, affine) = if spec.bits == 4 {
        let q = quant::quantize_affine(data, n, k, spec.block_size)?;
        let key = format!("{}a", quant_key(source, spec));
        (key, q.packed, q.scales, Some((q.zeros, q.offsets)))
    } else {
        let q = quant::quantize(data, n, k, spec)?;
        (quant_key(source, spec), q.packed, q.scales, None)
    };
    let nb = spec.blocks(k);
    let b = g.derived(&key, vec![n, nb, spec.blob()], InitData::U8(packed));
    let s = g.derived(
        &format!("{key}/scales"),
        vec![n * nb],
        InitData::F32(scales),
    );
    let attrs = nbits_attrs((n, k), spec);
    let Some((zeros, offsets)) = affine else {
        return Ok(g.ms_op("MatMulNBits", &[x, &b, &s], attrs));
    };
    let z = g.derived(
        &format!("{key}/zeros"),
        vec![n * nb.div_ceil(2)],
        InitData::U8(zeros),
    );
    let y = g.ms_op("MatMulNBits", &[x, &b, &s, &z], attrs);
    // Offsets: C^T [blocks, n] times the activations summed per block.
    let c_t = g.weight(
        &format!("{key}/offsets^T"),
        vec![nb, n],
        transpose(&offsets, n, nb),
    );
    let padded = nb * spec.block_size;
    let xp = if padded == k {
        x.to_owned()
    } else {
        let pads = g.const_i64(vec![6], vec![0, 0, 0, 0, 0, (padded - k) as i64]);
        g.op("Pad", &[x, &pads], Vec::new())
    };
    let blocks = g.reshape(&xp, &[0, 0, nb as i64, spec.block_size as i64]);
    let axes = g.const_i64(vec![1], vec![-1]);
    let sums = g.op(
        "ReduceSum",
        &[&blocks, &axes],
        vec![attr_int("keepdims", 0)],
    );
    let correction = g.matmul(&sums, &c_t);
    Ok(g.add(&y, &correction))
}

/// `MatMulNBits`' attributes for a `[n, k]` weight.
fn nbits_attrs((n, k): (usize, usize), spec: QuantSpec) -> Vec<tract_onnx::pb::AttributeProto> {
    vec![
        attr_int("K", k as i64),
        attr_int("N", n as i64),
        attr_int("bits", i64::from(spec.bits)),
        attr_int("block_size", spec.block_size as i64),
        attr_int("accuracy_level", i64::from(spec.accuracy_level)),
    ]
}

/// Largest packed bytes of one head slice ([`head_logits`]). ONNX Runtime prepacks each
/// `MatMulNBits` weight into a copy of its own and unmaps the file pages it read only after
/// the prepack: one 168 MB head (Gemma-3's 262144 x 640 at 8 bits) raised the peak resident
/// memory of a load by 180 MB above what it keeps; in 16 MiB slices, by 22 MB
/// (`tests/gemma_rss.rs`).
pub const HEAD_SLICE_BYTES: usize = 16 << 20;

/// Rows of one head slice of `hidden`-wide rows: as many as fit [`HEAD_SLICE_BYTES`], a
/// multiple of 1024 (so every slice starts on a page of the file).
pub fn head_slice_rows(hidden: usize, spec: QuantSpec) -> usize {
    let row = spec.blocks(hidden) * spec.blob();
    (HEAD_SLICE_BYTES / row.max(1) / 1024).max(1) * 1024
}

/// Rows `input_ids` of the `[vocab, hidden]` checkpoint tensor `name`: a Gather on f32, or
/// `com.microsoft.GatherBlockQuantized` on the same bytes and scales a tied head's
/// `MatMulNBits` reads (declared `[vocab, blocks * blob]` and `[vocab, blocks]` here).
pub fn embedding_rows(
    g: &mut GraphBuilder,
    w: &mut dyn WeightSource,
    name: &str,
    (vocab, hidden): (usize, usize),
    input_ids: &str,
) -> Result<String> {
    let t = load(w, name, &[vocab, hidden])?;
    let Some(spec) = g.quant() else {
        let table = g.weight(name, t.dims, t.data);
        return Ok(g.gather(&table, input_ids, 0));
    };
    if spec.is_f16() {
        // Gather the f16 rows, then cast only those: the table stays f16 in memory.
        let table = g.derived(&format!("{name}@f16"), t.dims, f16_data(&t.data));
        let rows = g.gather(&table, input_ids, 0);
        return Ok(g.cast(&rows, DType::F32));
    }
    if !hidden.is_multiple_of(spec.block_size) {
        return Err(Error::Config(format!(
            "hidden size {hidden} is not a multiple of the block size {}",
            spec.block_size
        )));
    }
    let q = quant::quantize(&t.data, vocab, hidden, spec)?;
    let key = quant_key(name, spec);
    let nb = spec.blocks(hidden);
    let data = g.derived(&key, vec![vocab, nb * spec.blob()], InitData::U8(q.packed));
    let s = g.derived(
        &format!("{key}/scales"),
        vec![vocab, nb],
        InitData::F32(q.scales),
    );
    let attrs = vec![
        attr_int("gather_axis", 0),
        attr_int("quantize_axis", 1),
        attr_int("block_size", spec.block_size as i64),
        attr_int("bits", i64::from(spec.bits)),
    ];
    Ok(g.ms_op("GatherBlockQuantized", &[&data, input_ids, &s], attrs))
}

/// Logits `[B,S,V]` from normed hidden states `x` and the `[vocab, hidden]` checkpoint tensor
/// `name` (the embedding when tied): see [`logits_from_rows`] for f32, [`matmul_nbits`] for
/// quantised graphs.
pub fn head_logits(
    g: &mut GraphBuilder,
    w: &mut dyn WeightSource,
    x: &str,
    name: &str,
    (vocab, hidden): (usize, usize),
) -> Result<String> {
    let t = load(w, name, &[vocab, hidden])?;
    match g.quant() {
        Some(spec) if spec.is_f16() => {
            let rows = g.weight_f16(name, t.dims, &t.data);
            Ok(logits_from_rows(g, x, &rows, vocab, hidden))
        }
        Some(spec) => {
            g.count_matmul((vocab * hidden) as u64);
            let rows = head_slice_rows(hidden, spec);
            if vocab <= rows || spec.bits != 8 {
                return matmul_nbits(g, x, name, &t.data, (vocab, hidden), spec);
            }
            head_in_slices(g, x, name, &t.data, (vocab, hidden), spec, rows)
        }
        None => {
            let rows = g.weight(name, t.dims, t.data);
            Ok(logits_from_rows(g, x, &rows, vocab, hidden))
        }
    }
}

/// The 8-bit head as one `MatMulNBits` per `rows` vocabulary rows, logits concatenated. Each
/// slice's bytes and scales are declared as a part of the whole table's (the keys
/// [`embedding_rows`] stores), so a tied head still reads the embedding's bytes and the file
/// holds them once.
fn head_in_slices(
    g: &mut GraphBuilder,
    x: &str,
    name: &str,
    data: &[f32],
    (vocab, hidden): (usize, usize),
    spec: QuantSpec,
    rows: usize,
) -> Result<String> {
    let q = quant::quantize(data, vocab, hidden, spec)?;
    let key = quant_key(name, spec);
    let scales_key = format!("{key}/scales");
    let (nb, blob) = (spec.blocks(hidden), spec.blob());
    let row = nb * blob;
    let mut outs = Vec::new();
    for (c, a) in (0..vocab).step_by(rows).enumerate() {
        let b = (a + rows).min(vocab);
        let bytes = g.derived_slice(
            &format!("{key}#{c}"),
            (&key, (a * row) as u64),
            vec![b - a, nb, blob],
            InitData::U8(q.packed[a * row..b * row].to_vec()),
        );
        let s = g.derived_slice(
            &format!("{scales_key}#{c}"),
            (&scales_key, (a * nb * 4) as u64),
            vec![(b - a) * nb],
            InitData::F32(q.scales[a * nb..b * nb].to_vec()),
        );
        let attrs = nbits_attrs((b - a, hidden), spec);
        outs.push(g.ms_op("MatMulNBits", &[x, &bytes, &s], attrs));
    }
    let outs: Vec<&str> = outs.iter().map(String::as_str).collect();
    Ok(g.concat(&outs, -1))
}

/// f32 values as f16 initializer data.
fn f16_data(data: &[f32]) -> InitData {
    InitData::F16(data.iter().map(|v| half::f16::from_f32(*v)).collect())
}

/// Row-major transpose of a `rows x cols` matrix.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// RMSNorm over the last axis: `x / sqrt(mean(x^2) + eps) * (weight + offset)`; Llama uses
/// offset 0, Gemma 1.
pub fn rms_norm(
    g: &mut GraphBuilder,
    w: &mut dyn WeightSource,
    x: &str,
    weight: &str,
    size: usize,
    eps: f64,
    offset: f32,
) -> Result<String> {
    let t = load(w, weight, &[size])?;
    let wv = if offset == 0.0 {
        g.weight(weight, vec![size], t.data)
    } else {
        let data = t.data.iter().map(|v| v + offset).collect();
        g.weight(&format!("{weight}+{offset}"), vec![size], data)
    };
    Ok(rms_norm_with(g, x, &wv, eps))
}

/// RMSNorm with an already-added weight value.
pub fn rms_norm_with(g: &mut GraphBuilder, x: &str, weight: &str, eps: f64) -> String {
    // `Pow(x, 2)` rather than `x * x`: the form ONNX Runtime's optimizer fuses, with the rest,
    // into one `SimplifiedLayerNormalization` node.
    let two = g.scalar(2.0);
    let sq = g.op("Pow", &[x, &two], Vec::new());
    let mean = g.reduce_mean(&sq, &[-1]);
    let e = g.scalar(eps as f32);
    let var = g.add(&mean, &e);
    let rms = g.unary("Sqrt", &var);
    let n = g.div(x, &rms);
    g.mul(&n, weight)
}

/// RoPE inverse frequencies `theta^(-2i/D)` for `i < D/2`.
pub fn inv_freq(theta: f64, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect()
}

/// `(cos, sin)` tables `[B,1,S,D]` for `position_ids`, memoised under `key` (one per RoPE base).
pub fn rope_tables(
    g: &mut GraphBuilder,
    position_ids: &str,
    inv_freq: &[f32],
    key: &str,
) -> (String, String) {
    let emb = g.memo(&format!("{key}/emb"), |g| {
        let p = g.cast(position_ids, DType::F32);
        let p = g.unsqueeze(&p, &[2]);
        let f = g.const_f32("inv_freq", vec![inv_freq.len()], inv_freq.to_vec());
        let freqs = g.mul(&p, &f);
        let emb = g.concat(&[&freqs, &freqs], -1);
        g.unsqueeze(&emb, &[1])
    });
    let cos = g.memo(&format!("{key}/cos"), |g| g.unary("Cos", &emb));
    let sin = g.memo(&format!("{key}/sin"), |g| g.unary("Sin", &emb));
    (cos, sin)
}

/// Applies rotary embeddings (the "rotate half" convention) to `x` `[B,heads,S,D]`.
pub fn apply_rope(g: &mut GraphBuilder, x: &str, cos: &str, sin: &str, head_dim: usize) -> String {
    let half = (head_dim / 2) as i64;
    let x1 = g.slice(x, -1, 0, half);
    let x2 = g.slice(x, -1, half, head_dim as i64);
    let nx2 = g.unary("Neg", &x2);
    let rot = g.concat(&[&nx2, &x1], -1);
    let a = g.mul(x, cos);
    let b = g.mul(&rot, sin);
    g.add(&a, &b)
}

/// Additive attention bias `[B,1,G*S,T]` (0 or [`MASKED`]) for `groups` query heads per KV head.
///
/// Key positions are `cumsum(attention_mask) - 1`, query positions are `position_ids`; a key is
/// visible when it is not padding, not in the future, and (with `window`) less than `window`
/// positions back. Memoised per `(groups, window)`.
pub fn attention_bias(
    g: &mut GraphBuilder,
    attention_mask: &str,
    position_ids: &str,
    groups: usize,
    window: Option<usize>,
) -> String {
    let key = format!("bias/{groups}/{window:?}");
    g.memo(&key, |g| {
        let axis = g.const_i64(Vec::new(), vec![1]);
        let cum = g.op("CumSum", &[attention_mask, &axis], Vec::new());
        let one = g.const_i64(Vec::new(), vec![1]);
        let kpos = g.sub(&cum, &one);
        let k = g.unsqueeze(&kpos, &[1, 2]);
        let q = g.unsqueeze(position_ids, &[1, 3]);
        let zero = g.const_i64(Vec::new(), vec![0]);
        let valid = g.op("Greater", &[attention_mask, &zero], Vec::new());
        let valid = g.unsqueeze(&valid, &[1, 2]);
        let causal = g.op("LessOrEqual", &[&k, &q], Vec::new());
        let mut ok = g.op("And", &[&causal, &valid], Vec::new());
        if let Some(win) = window {
            let wv = g.const_i64(Vec::new(), vec![win as i64]);
            let lo = g.sub(&q, &wv);
            let near = g.op("Greater", &[&k, &lo], Vec::new());
            ok = g.op("And", &[&ok, &near], Vec::new());
        }
        let z = g.scalar(0.0);
        let m = g.scalar(MASKED);
        let bias = g.select(&ok, &z, &m);
        if groups == 1 {
            return bias;
        }
        let copies: Vec<&str> = (0..groups).map(|_| bias.as_str()).collect();
        g.concat(&copies, 2)
    })
}

/// Shape figures of one attention block.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head size.
    pub head_dim: usize,
    /// Multiplier of the scores (usually `1/sqrt(head_dim)`).
    pub scale: f32,
}

/// Splits `[B,S,heads*D]` into heads: `[B,heads,S,D]`.
pub fn split_heads(g: &mut GraphBuilder, x: &str, heads: usize, head_dim: usize) -> String {
    let r = g.reshape(x, &[0, 0, heads as i64, head_dim as i64]);
    g.transpose(&r, &[0, 2, 1, 3])
}

/// Grouped-query attention: `q` `[B,heads,S,D]`, `k`/`v` `[B,KV,T,D]`, `bias` from
/// [`attention_bias`]; returns `[B,S,heads*D]`.
pub fn attention(
    g: &mut GraphBuilder,
    q: &str,
    k: &str,
    v: &str,
    bias: &str,
    s: AttentionShape,
) -> String {
    let (h, kv, d) = (s.heads as i64, s.kv_heads as i64, s.head_dim as i64);
    let qg = g.reshape(q, &[0, kv, -1, d]);
    let kt = g.transpose(k, &[0, 1, 3, 2]);
    let scores = g.matmul(&qg, &kt);
    let sc = g.scalar(s.scale);
    let scores = g.mul(&scores, &sc);
    let scores = g.add(&scores, bias);
    let p = g.softmax(&scores, -1);
    let o = g.matmul(&p, v);
    let o = g.reshape(&o, &[0, h, -1, d]);
    let o = g.transpose(&o, &[0, 2, 1, 3]);
    g.reshape(&o, &[0, 0, h * d])
}

/// Logits `[B,S,V]` from normed hidden states and a `[V,H]` matrix used as stored (a tied
/// embedding is referenced, not copied; the transpose is folded by the runtime at load).
pub fn logits_from_rows(
    g: &mut GraphBuilder,
    x: &str,
    rows: &str,
    vocab: usize,
    hidden: usize,
) -> String {
    g.count_matmul((vocab * hidden) as u64);
    let t = g.transpose(rows, &[1, 0]);
    g.matmul(x, &t)
}
