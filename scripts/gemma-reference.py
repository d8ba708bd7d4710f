#!/usr/bin/env python3
"""Reference greedy continuations of Gemma-3-270M (Q4_K_M GGUF) for shoal's Gemma test.

Two implementations that share no code with shoal:

1. llama.cpp through `llama-cpp-python` (`pip install llama-cpp-python`, builds llama.cpp from
   the PyPI sdist): the GGUF's home runtime, with its own tokenizer and quantised kernels.
2. A float32 NumPy forward pass written here from the Hugging Face Gemma 3 definition, on
   weights dequantised by the `gguf` package (`pip install gguf`, llama.cpp's gguf-py). It
   mirrors shoal's numerics (f32 everywhere on dequantised weights), so it is the reference
   when llama.cpp's quantised dot products flip a near-tie.

Prints, for each, the prompt ids, the greedy ids with the top-1/top-2 logit margin per step,
and the text. Not run in CI; the committed ids live in model/tests/gemma.rs.

Usage: scripts/gemma-reference.py [GGUF] [--steps N] [--prompt TEXT]
"""
import argparse
import math
import pathlib

import numpy as np
import gguf

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_GGUF = ROOT / ".cache/gemma3-270m/gemma-3-270m-q4_k_m.gguf"
PROMPT = "The capital of France is"


def run_llama_cpp(path, prompt, steps):
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama.cpp: llama-cpp-python not installed, skipped")
        return None
    model = Llama(str(path), n_ctx=256, n_threads=2, verbose=False, logits_all=True)
    ids = model.tokenize(prompt.encode(), add_bos=True)
    model.reset()
    model.eval(ids)
    out, margins = [], []
    for _ in range(steps):
        logits = np.array(model.scores[model.n_tokens - 1])
        top2 = np.sort(logits)[-2:]
        tok = int(np.argmax(logits))
        out.append(tok)
        margins.append(float(top2[1] - top2[0]))
        model.eval([tok])
    return ids, out, margins, model.detokenize(out).decode(errors="replace")


class Gemma3:
    """Gemma 3 text decoder in NumPy f32, weights from a GGUF file."""

    def __init__(self, path):
        r = gguf.GGUFReader(str(path))
        f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.")}
        a = f["general.architecture"]
        assert a == "gemma3", a
        self.n_layer = f[f"{a}.block_count"]
        self.hidden = f[f"{a}.embedding_length"]
        self.n_head = f[f"{a}.attention.head_count"]
        self.n_kv = f[f"{a}.attention.head_count_kv"]
        self.head_dim = f[f"{a}.attention.key_length"]
        self.eps = f[f"{a}.attention.layer_norm_rms_epsilon"]
        self.window = f[f"{a}.attention.sliding_window"]
        self.theta_global = f[f"{a}.rope.freq_base"]
        # Gemma 3's rope_local_base_freq and layer pattern: llama.cpp assumes 10 000 and every
        # sixth layer global unless the file says otherwise.
        self.theta_local = f.get(f"{a}.rope.freq_base_swa", 10000.0)
        self.softcap = f.get(f"{a}.final_logit_softcapping")
        pattern = f.get(f"{a}.attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):
            self.is_global = [not sliding for sliding in pattern]
        else:
            self.is_global = [pattern != 0 and (i + 1) % pattern == 0 for i in range(self.n_layer)]
        # query_pre_attn_scalar: head_dim for every size but 27B (62 layers: hidden / heads).
        scalar = self.hidden / self.n_head if self.n_layer == 62 else self.head_dim
        self.scale = scalar ** -0.5
        self.w = {}
        for t in r.tensors:
            shape = [int(d) for d in reversed(t.shape)]
            self.w[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        tokens = r.fields.get("tokenizer.ggml.tokens")
        self.tokens = tokens.contents() if tokens is not None else None

    def norm(self, x, name):
        # The GGUF converter stored Gemma's (1 + weight): apply it as is.
        var = np.mean(x * x, axis=-1, keepdims=True)
        return x / np.sqrt(var + self.eps) * self.w[name]

    @staticmethod
    def rope(x, pos, theta):
        d = x.shape[-1]
        inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
        ang = np.outer(pos, inv)
        cos = np.cos(np.concatenate([ang, ang], -1)).astype(np.float32)
        sin = np.sin(np.concatenate([ang, ang], -1)).astype(np.float32)
        rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
        return x * cos + rot * sin

    @staticmethod
    def gelu_tanh(x):
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))

    def forward(self, ids, all_positions=False):
        """Logits of the last position (or of every position) for the whole sequence `ids`
        (no cache: simple)."""
        s = len(ids)
        pos = np.arange(s)
        x = self.w["token_embd.weight"][ids] * np.float32(math.sqrt(self.hidden))
        for i in range(self.n_layer):
            p = f"blk.{i}."
            is_global = self.is_global[i]
            h = self.norm(x, p + "attn_norm.weight")
            q = (h @ self.w[p + "attn_q.weight"].T).reshape(s, self.n_head, self.head_dim)
            k = (h @ self.w[p + "attn_k.weight"].T).reshape(s, self.n_kv, self.head_dim)
            v = (h @ self.w[p + "attn_v.weight"].T).reshape(s, self.n_kv, self.head_dim)
            q = self.norm(q, p + "attn_q_norm.weight")
            k = self.norm(k, p + "attn_k_norm.weight")
            theta = self.theta_global if is_global else self.theta_local
            q = self.rope(q.transpose(1, 0, 2), pos, theta)
            k = self.rope(k.transpose(1, 0, 2), pos, theta)
            v = v.transpose(1, 0, 2)
            rep = self.n_head // self.n_kv
            k, v = np.repeat(k, rep, 0), np.repeat(v, rep, 0)
            scores = q @ k.transpose(0, 2, 1) * np.float32(self.scale)
            qi, ki = np.meshgrid(pos, pos, indexing="ij")
            visible = ki <= qi
            if not is_global:
                visible &= qi - ki < self.window
            scores = np.where(visible, scores, -np.inf)
            scores = scores - scores.max(-1, keepdims=True)
            prob = np.exp(scores)
            prob /= prob.sum(-1, keepdims=True)
            o = (prob @ v).transpose(1, 0, 2).reshape(s, -1)
            o = o @ self.w[p + "attn_output.weight"].T
            x = x + self.norm(o, p + "post_attention_norm.weight")
            h = self.norm(x, p + "ffn_norm.weight")
            g = self.gelu_tanh(h @ self.w[p + "ffn_gate.weight"].T) * (h @ self.w[p + "ffn_up.weight"].T)
            f = g @ self.w[p + "ffn_down.weight"].T
            x = x + self.norm(f, p + "post_ffw_norm.weight")
        x = self.norm(x if all_positions else x[-1:], "output_norm.weight")
        head = self.w.get("output.weight", self.w["token_embd.weight"])
        logits = x @ head.T
        if self.softcap is not None:
            logits = np.tanh(logits / self.softcap) * self.softcap
        return logits if all_positions else logits[0]


def run_numpy(path, prompt_ids, steps):
    model = Gemma3(path)
    ids = list(prompt_ids)
    out, margins = [], []
    for step in range(steps):
        logits = model.forward(ids)
        if step == 0:
            top = np.argsort(logits)[::-1][:5]
            print("numpy f32 first-step top-5 (id, logit):", [(int(t), round(float(logits[t]), 4)) for t in top])
        top2 = np.sort(logits)[-2:]
        tok = int(np.argmax(logits))
        out.append(tok)
        margins.append(float(top2[1] - top2[0]))
        ids.append(tok)
    text = "".join(model.tokens[t] for t in out).replace("\u2581", " ")
    return out, margins, text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", nargs="?", default=str(DEFAULT_GGUF))
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--prompt", default=PROMPT)
    args = ap.parse_args()
    ref = run_llama_cpp(args.gguf, args.prompt, args.steps)
    if ref is not None:
        ids, out, margins, text = ref
        print("llama.cpp prompt ids:", ids)
        print("llama.cpp greedy ids:", out)
        print("llama.cpp margins:   ", [round(m, 3) for m in margins])
        print("llama.cpp text:      ", repr(text))
        prompt_ids = ids
    else:
        # Gemma's tokenizer for the default prompt (llama.cpp and tokenizer.json agree).
        assert args.prompt == PROMPT, "without llama.cpp only the default prompt is tokenised"
        prompt_ids = [2, 818, 5279, 529, 7001, 563]
    out, margins, text = run_numpy(args.gguf, prompt_ids, args.steps)
    print("numpy f32 greedy ids:", out)
    print("numpy f32 margins:   ", [round(m, 3) for m in margins])
    print("numpy f32 text:      ", repr(text))


if __name__ == "__main__":
    main()
