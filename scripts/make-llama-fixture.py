#!/usr/bin/env python3
"""Writes tiny random Hugging Face checkpoints (Llama and Qwen2 layout) and reference logits
computed by an independent numpy implementation of their forward pass.

Not run in CI: its outputs are committed under model/tests/fixtures/, and
model/tests/hf_fixture.rs checks that shoal's import + runtime reproduce the logits.

The forward pass below follows Hugging Face's modeling_llama.py / modeling_qwen2.py
(RMSNorm, rotate-half RoPE with optional llama3 rope_scaling, GQA with repeated KV heads,
causal softmax attention, SwiGLU, tied or untied head), in float64, written from the papers'
and transformers' equations without sharing code with shoal.

Usage: scripts/make-llama-fixture.py [OUT_DIR]   (default model/tests/fixtures)
"""
import json
import os
import struct
import sys

import numpy as np

PROMPT = [1, 5, 9, 33, 2, 100, 7]
DECODE_STEPS = 8


def write_safetensors(path, tensors):
    """Minimal safetensors writer: 8-byte header length, JSON header, raw little-endian data."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        dtype = {np.float32: "F32", np.float16: "F16"}[arr.dtype.type]
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def make_weights(cfg, rng, qkv_bias, f16_names=()):
    h, nh, kv, f, v = (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
                       cfg["intermediate_size"], cfg["vocab_size"])
    d = h // nh
    w = {"model.embed_tokens.weight": rng.normal(0, 0.5, (v, h)),
         "model.norm.weight": 1 + rng.normal(0, 0.1, (h,))}
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = rng.normal(0, 0.3, (v, h))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        lin = lambda o, n: rng.normal(0, 1 / np.sqrt(n), (o, n))
        w[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, (h,))
        w[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, (h,))
        w[p + "self_attn.q_proj.weight"] = lin(nh * d, h)
        w[p + "self_attn.k_proj.weight"] = lin(kv * d, h)
        w[p + "self_attn.v_proj.weight"] = lin(kv * d, h)
        w[p + "self_attn.o_proj.weight"] = lin(h, nh * d)
        w[p + "mlp.gate_proj.weight"] = lin(f, h)
        w[p + "mlp.up_proj.weight"] = lin(f, h)
        w[p + "mlp.down_proj.weight"] = lin(h, f)
        if qkv_bias:
            for n, o in (("q", nh * d), ("k", kv * d), ("v", kv * d)):
                w[p + f"self_attn.{n}_proj.bias"] = rng.normal(0, 0.2, (o,))
    stored = {}
    for k, a in w.items():
        stored[k] = a.astype(np.float16 if k in f16_names else np.float32)
    # The reference uses exactly the stored values.
    return stored, {k: a.astype(np.float64) for k, a in stored.items()}


def inv_freq(cfg):
    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    inv = 1.0 / (cfg["rope_theta"] ** (np.arange(0, d, 2, dtype=np.float64) / d))
    s = cfg.get("rope_scaling")
    if s and s.get("rope_type") == "llama3":
        factor, lo, hi, old = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv
        smooth = (old / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * inv / factor + smooth * inv
        inv = np.where(wavelen < old / hi, inv, np.where(wavelen > old / lo, inv / factor, mid))
    return inv


def rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def forward(cfg, w, ids, cache):
    """Logits [S, V] for ids continuing the sequence held in cache (list of (K, V) per layer)."""
    h, nh, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d, eps = h // nh, cfg["rms_norm_eps"]
    past = cache[0][0].shape[1] if cache else 0
    s = len(ids)
    x = w["model.embed_tokens.weight"][ids]
    pos = np.arange(past, past + s, dtype=np.float64)
    ang = np.outer(pos, inv_freq(cfg))
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(t):  # t: [heads, S, D]
        half = d // 2
        rot = np.concatenate([-t[..., half:], t[..., :half]], -1)
        return t * cos + rot * sin

    def lin(t, name, bias=None):
        y = t @ w[name].T
        return y + w[bias] if bias and bias in w else y

    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = rms(x, w[p + "input_layernorm.weight"], eps)
        q = lin(a, p + "self_attn.q_proj.weight", p + "self_attn.q_proj.bias").reshape(s, nh, d).transpose(1, 0, 2)
        k = lin(a, p + "self_attn.k_proj.weight", p + "self_attn.k_proj.bias").reshape(s, kv, d).transpose(1, 0, 2)
        v = lin(a, p + "self_attn.v_proj.weight", p + "self_attn.v_proj.bias").reshape(s, kv, d).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        if len(cache) > i:
            k = np.concatenate([cache[i][0], k], 1)
            v = np.concatenate([cache[i][1], v], 1)
            cache[i] = (k, v)
        else:
            cache.append((k, v))
        rep = nh // kv
        kr, vr = np.repeat(k, rep, axis=0), np.repeat(v, rep, axis=0)
        scores = q @ kr.transpose(0, 2, 1) / np.sqrt(d)
        t = past + s
        causal = np.arange(t)[None, :] <= (past + np.arange(s))[:, None]
        scores = np.where(causal[None], scores, -np.inf)
        scores = scores - scores.max(-1, keepdims=True)
        prob = np.exp(scores)
        prob /= prob.sum(-1, keepdims=True)
        o = (prob @ vr).transpose(1, 0, 2).reshape(s, nh * d)
        x = x + lin(o, p + "self_attn.o_proj.weight")
        a = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g = lin(a, p + "mlp.gate_proj.weight")
        x = x + lin(g / (1 + np.exp(-g)) * lin(a, p + "mlp.up_proj.weight"), p + "mlp.down_proj.weight")
    x = rms(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def build(out, name, cfg, qkv_bias, seed, f16_names=()):
    rng = np.random.default_rng(seed)
    stored, w = make_weights(cfg, rng, qkv_bias, f16_names)
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    write_safetensors(os.path.join(d, "model.safetensors"), stored)
    cache = []
    prefill = forward(cfg, w, PROMPT, cache)
    tokens, steps = [], []
    nxt = int(np.argmax(prefill[-1]))
    for _ in range(DECODE_STEPS):
        tokens.append(nxt)
        logits = forward(cfg, w, [nxt], cache)[-1]
        steps.append(logits)
        nxt = int(np.argmax(logits))
    ref = {"how": "scripts/make-llama-fixture.py: numpy float64 forward pass, greedy decoding",
           "prompt_ids": PROMPT, "prefill_logits": prefill.round(7).tolist(),
           "decode_ids": tokens, "decode_logits": [l.round(7).tolist() for l in steps]}
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(d, "greedy continuation", tokens)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "model", "tests", "fixtures")
    base = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 384, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2}
    llama = dict(base, model_type="llama", architectures=["LlamaForCausalLM"], tie_word_embeddings=False,
                 rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    # One F16 tensor exercises the half-precision path of the reader.
    build(out, "tiny-llama", llama, qkv_bias=False, seed=1, f16_names=("model.layers.0.mlp.up_proj.weight",))
    qwen = dict(base, model_type="qwen2", architectures=["Qwen2ForCausalLM"], tie_word_embeddings=True,
                rope_theta=1000000.0, num_key_value_heads=1, rms_norm_eps=1e-6)
    build(out, "tiny-qwen2", qwen, qkv_bias=True, seed=2)


if __name__ == "__main__":
    main()
