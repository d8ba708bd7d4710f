#!/usr/bin/env python3
"""Write tiny random GGUF models and their reference logits for shoal's GGUF import tests.

- model/tests/data/tiny-gemma3.gguf: a 6-layer Gemma 3 (layer 5 global, the others local
  with a 3-token sliding window, so an 8-token prompt exercises the window), norms stored
  as `1 + w` the way llama.cpp's converter writes them. Reference: the NumPy Gemma 3 of
  scripts/gemma-reference.py.
- model/tests/data/tiny-gemma3-explicit.gguf: the same with `attention.sliding_window_pattern`
  (one bool per layer), `rope.freq_base_swa` and `final_logit_softcapping` written out.
- model/tests/data/tiny-llama.gguf: a 2-layer Llama with grouped-query attention, written
  the way llama.cpp's converter writes Llama: attn_q/attn_k rows permuted with its `permute`.
  Reference: a NumPy Hugging Face Llama forward pass on the unpermuted weights (rotate-half
  RoPE), so the test only passes if the importer undoes the permutation.
- model/tests/data/tiny-qwen2.gguf: the same family as Qwen2 writes it: q/k/v biases, no
  permutation, tied head.

Tensors are F32 except a few F16 ones (dequantisation of every block type is tested
elsewhere). Reference logits for every prompt position go to model/tests/data/tiny-*.json.
Needs `pip install gguf numpy`. Re-run only to regenerate the committed fixtures.
"""
import importlib.util
import json
import pathlib

import numpy as np
import gguf

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "model/tests/data"
PROMPT = [1, 7, 3, 12, 9, 30, 2, 5]


def load_gemma_reference():
    spec = importlib.util.spec_from_file_location("gemma_reference", ROOT / "scripts/gemma-reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rand(rng, *shape, scale=0.2):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def tiny_gemma3(rng, name="tiny-gemma3", explicit=False):
    """`explicit`: also write the layer pattern (globals at 1 and 4) and the local RoPE base
    (20 000) as newer converters may, instead of relying on llama.cpp's Gemma 3 defaults,
    and a final logit soft-cap of 8 (Gemma 2 style; Gemma 3 checkpoints have none)."""
    path = DATA / f"{name}.gguf"
    hidden, heads, kv, hd, ff, layers, vocab = 32, 2, 1, 16, 64, 6, 64
    w = gguf.GGUFWriter(str(path), arch="gemma3")
    if explicit:
        w.add_sliding_window_pattern([True, False, True, True, False, True])
        w.add_rope_freq_base_swa(20000.0)
        w.add_final_logit_softcapping(8.0)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1_000_000.0)
    w.add_sliding_window(3)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    norm = lambda n: (1.0 + rand(rng, n, scale=0.3)).astype(np.float32)
    w.add_tensor("token_embd.weight", rand(rng, vocab, hidden, scale=0.5).astype(np.float16))
    w.add_tensor("output_norm.weight", norm(hidden))
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(hidden))
        w.add_tensor(p + "attn_q.weight", rand(rng, heads * hd, hidden))
        w.add_tensor(p + "attn_k.weight", rand(rng, kv * hd, hidden))
        w.add_tensor(p + "attn_v.weight", rand(rng, kv * hd, hidden))
        w.add_tensor(p + "attn_q_norm.weight", norm(hd))
        w.add_tensor(p + "attn_k_norm.weight", norm(hd))
        w.add_tensor(p + "attn_output.weight", rand(rng, hidden, heads * hd))
        w.add_tensor(p + "post_attention_norm.weight", norm(hidden))
        w.add_tensor(p + "ffn_norm.weight", norm(hidden))
        w.add_tensor(p + "ffn_gate.weight", rand(rng, ff, hidden).astype(np.float16))
        w.add_tensor(p + "ffn_up.weight", rand(rng, ff, hidden))
        w.add_tensor(p + "ffn_down.weight", rand(rng, hidden, ff))
        w.add_tensor(p + "post_ffw_norm.weight", norm(hidden))
    finish(w)
    model = load_gemma_reference().Gemma3(path)
    return path, model.forward(PROMPT, all_positions=True)


def llama_cpp_permute(weights, n_head):
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half -> GGML pairs)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def rms(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * weight


def rope_hf(x, pos, theta):
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.outer(pos, inv)
    cos = np.cos(np.concatenate([ang, ang], -1)).astype(np.float32)
    sin = np.sin(np.concatenate([ang, ang], -1)).astype(np.float32)
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def tiny_llama(rng, arch="llama"):
    """`arch="qwen2"`: q/k/v biases, no Q/K permutation (the converter permutes only Llama),
    RoPE base 10^6, and a head tied to the embedding (no output.weight)."""
    path = DATA / f"tiny-{arch}.gguf"
    qwen = arch == "qwen2"
    hidden, heads, kv, ff, layers, vocab, eps = 32, 4, 2, 48, 2, 64, 1e-5
    theta = 1_000_000.0 if qwen else 10000.0
    hd = hidden // heads
    hf = {"embed": rand(rng, vocab, hidden, scale=0.5), "norm": 1.0 + rand(rng, hidden), "lm_head": rand(rng, vocab, hidden)}
    for i in range(layers):
        hf[i] = {
            "in_norm": 1.0 + rand(rng, hidden), "post_norm": 1.0 + rand(rng, hidden),
            "q": rand(rng, heads * hd, hidden), "k": rand(rng, kv * hd, hidden), "v": rand(rng, kv * hd, hidden),
            "o": rand(rng, hidden, heads * hd), "gate": rand(rng, ff, hidden), "up": rand(rng, ff, hidden),
            "down": rand(rng, hidden, ff),
        }
        if qwen:
            hf[i].update(bq=rand(rng, heads * hd), bk=rand(rng, kv * hd), bv=rand(rng, kv * hd))
    if qwen:
        hf["lm_head"] = hf["embed"]
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(eps)
    w.add_rope_freq_base(theta)
    w.add_rope_dimension_count(hd)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_tensor("token_embd.weight", hf["embed"])
    w.add_tensor("output_norm.weight", hf["norm"].astype(np.float32))
    if not qwen:
        w.add_tensor("output.weight", hf["lm_head"].astype(np.float16))
    for i in range(layers):
        p, l = f"blk.{i}.", hf[i]
        w.add_tensor(p + "attn_norm.weight", l["in_norm"].astype(np.float32))
        if qwen:
            w.add_tensor(p + "attn_q.weight", l["q"])
            w.add_tensor(p + "attn_k.weight", l["k"])
            for b in ("q", "k", "v"):
                w.add_tensor(p + f"attn_{b}.bias", l["b" + b])
        else:
            w.add_tensor(p + "attn_q.weight", llama_cpp_permute(l["q"], heads))
            w.add_tensor(p + "attn_k.weight", llama_cpp_permute(l["k"], kv))
        w.add_tensor(p + "attn_v.weight", l["v"])
        w.add_tensor(p + "attn_output.weight", l["o"])
        w.add_tensor(p + "ffn_norm.weight", l["post_norm"].astype(np.float32))
        w.add_tensor(p + "ffn_gate.weight", l["gate"])
        w.add_tensor(p + "ffn_up.weight", l["up"])
        w.add_tensor(p + "ffn_down.weight", l["down"])
    finish(w)
    # Hugging Face LlamaForCausalLM on the unpermuted weights.
    s = len(PROMPT)
    pos = np.arange(s)
    x = hf["embed"][PROMPT]
    causal = np.tril(np.ones((s, s), dtype=bool))
    for i in range(layers):
        l = hf[i]
        h = rms(x, l["in_norm"], eps)
        bq, bk, bv = (l.get(b, 0.0) for b in ("bq", "bk", "bv"))
        q = rope_hf((h @ l["q"].T + bq).reshape(s, heads, hd).transpose(1, 0, 2), pos, theta)
        k = rope_hf((h @ l["k"].T + bk).reshape(s, kv, hd).transpose(1, 0, 2), pos, theta)
        v = (h @ l["v"].T + bv).reshape(s, kv, hd).transpose(1, 0, 2)
        k, v = np.repeat(k, heads // kv, 0), np.repeat(v, heads // kv, 0)
        sc = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(hd), -np.inf)
        p = np.exp(sc - sc.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + (p @ v).transpose(1, 0, 2).reshape(s, -1) @ l["o"].T
        h = rms(x, l["post_norm"], eps)
        g = h @ l["gate"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ l["up"].T)) @ l["down"].T
    lm_head = hf["lm_head"] if qwen else hf["lm_head"].astype(np.float16).astype(np.float32)
    return path, rms(x, hf["norm"], eps) @ lm_head.T


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    rng = np.random.default_rng(7)
    makers = (
        tiny_gemma3,
        tiny_llama,
        lambda rng: tiny_gemma3(rng, "tiny-gemma3-explicit", True),
        lambda rng: tiny_llama(rng, "qwen2"),
    )
    for make in makers:
        path, logits = make(rng)
        out = path.with_suffix(".json")
        ref = {"prompt": PROMPT, "logits": [[float(v) for v in row] for row in logits]}
        out.write_text(json.dumps(ref) + "\n")
        print(f"wrote {path.name} ({path.stat().st_size} bytes) and {out.name}")


if __name__ == "__main__":
    main()
