#!/usr/bin/env python3
"""Write model/tests/data/gguf-vectors.gguf: the fixture for shoal's GGUF reader tests.

The file is written by the `gguf` Python package (llama.cpp's gguf-py, `pip install gguf`),
so it is an independent reference for both the container format and the block layouts:

- metadata: one key of every GGUF value type (`test.u8` ... `test.f64`, `test.string`,
  `test.array_i32`, `test.array_string`, `test.nested`), values listed in EXPECTED_METADATA;
- for every block type T in TYPES, a tensor `q.T` of shape [2, 512] holding random blocks
  (with finite f16 scales), and an F32 tensor `ref.T` holding what gguf-py's own
  `gguf.quants.dequantize` makes of those bytes;
- `ref.shape3`, an F32 tensor of shape [2, 3, 4] with values 0..24, to check dimension order.

The Rust test dequantises `q.T` and compares with `ref.T`. Re-run only to regenerate the
fixture (it is committed); the seed makes the output reproducible for a given gguf version.
"""
import importlib.metadata
import pathlib

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

OUT = pathlib.Path(__file__).resolve().parent.parent / "model/tests/data/gguf-vectors.gguf"
ROWS, COLS = 2, 512
TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
# Byte offsets of the f16 scale fields in each block, overwritten with finite values.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def random_blocks(rng, qtype):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = ROWS * COLS // block
    if qtype == T.F32:
        return rng.standard_normal(ROWS * COLS).astype("<f4").view(np.uint8)
    if qtype == T.F16:
        return rng.standard_normal(ROWS * COLS).astype("<f2").view(np.uint8)
    if qtype == T.BF16:
        bits = (rng.standard_normal(ROWS * COLS).astype("<f4").view("<u4") >> 16).astype("<u2")
        return bits.view(np.uint8)
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for at in F16_FIELDS[qtype]:
        scales = (rng.uniform(0.001, 0.1, n_blocks) * rng.choice([-1, 1], n_blocks)).astype("<f2")
        raw[:, at:at + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def main():
    rng = np.random.default_rng(20260226)
    w = gguf.GGUFWriter(str(OUT), arch="test")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 1.5)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo")
    w.add_uint64("test.u64", 2**40 + 7)
    w.add_int64("test.i64", -(2**40))
    w.add_float64("test.f64", -0.125)
    w.add_array("test.array_i32", [1, -2, 3])
    w.add_array("test.array_string", ["a", "bc", ""])
    w.add_array("test.nested", [[1, 2], [3]])
    for qtype in TYPES:
        raw = random_blocks(rng, qtype)
        ref = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(ROWS, COLS)
        assert np.all(np.isfinite(ref)), qtype.name
        w.add_tensor(f"q.{qtype.name}", raw.reshape(ROWS, -1), raw_dtype=qtype)
        w.add_tensor(f"ref.{qtype.name}", ref)
    w.add_tensor("ref.shape3", np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    version = importlib.metadata.version("gguf")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) with gguf {version}")


if __name__ == "__main__":
    main()
