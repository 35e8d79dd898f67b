#!/usr/bin/env python3
"""One LLaMA-Adapter optimiser step in PyTorch float32, for bench/train-step.ts.

The same step as the CPU trainer's (../shared/SPEC.md §2-§4), written the way PEFT-style training
code runs it: a padded (B, longest) batch with a causal + padding attention mask, plain
matmul + softmax attention (torch 1.13 has no scaled_dot_product_attention), the adapter's prompts
and per-head tanh gates as the only leaf tensors that require grad (frozen weights
requires_grad=False, so autograd forms input gradients only, from the lowest adapted layer up),
the loss = mean cross-entropy over the target tokens, torch.optim.AdamW.

LM head: --head targets (default) gathers the target rows of the final hidden states first and
runs the classifier on those only (what ours does, and the faster variant); --head all runs it
over every (padded) position and masks the loss with ignore_index, as most training loops do.

Input: the JSON job written by train-step.ts (checkpoint path, adapter shape, initial values,
batches of token ids and labels per example). Output: one JSON line on stdout
{tokens_per_s, ms_per_step, tokens, padded_tokens, losses, ...}. Threads: --threads sets
torch.set_num_threads; OpenBLAS reads OPENBLAS_NUM_THREADS and OPENBLAS_CORETYPE from the
environment when it loads (the caller sets them), OpenMP OMP_WAIT_POLICY.

Usage: /usr/bin/python3 bench/torch_train_step.py JOB.json [--threads 2] [--head targets|all] [--steps N]
"""
import argparse
import ctypes
import json
import math
import struct
import time

import numpy as np
import torch
import torch.nn.functional as Fn

from torch_batches import padded

EPS_NORM = 1e-5
ROPE_THETA = 10000.0


def load_v0(path):
    """A llama2.c v0 checkpoint as float32 tensors (N, out, in) per matrix kind."""
    with open(path, "rb") as f:
        head = f.read(28)
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", head)
    shared = vocab > 0
    vocab = abs(vocab)
    d = dim // n_heads
    data = np.fromfile(path, dtype=np.float32, offset=28)
    off = 0

    def take(*shape):
        nonlocal off
        n = math.prod(shape)
        t = torch.from_numpy(data[off:off + n].reshape(shape))
        off += n
        return t

    w = {}
    w["emb"] = take(vocab, dim)
    w["rms_att"] = take(n_layers, dim)
    w["wq"] = take(n_layers, dim, dim)
    w["wk"] = take(n_layers, n_kv * d, dim)
    w["wv"] = take(n_layers, n_kv * d, dim)
    w["wo"] = take(n_layers, dim, dim)
    w["rms_ffn"] = take(n_layers, dim)
    w["w1"] = take(n_layers, hidden, dim)
    w["w2"] = take(n_layers, dim, hidden)
    w["w3"] = take(n_layers, hidden, dim)
    w["rms_final"] = take(dim)
    off += seq_len * d  # freq_cis_real, freq_cis_imag (RoPE tables, recomputed below)
    w["cls"] = w["emb"] if shared else take(vocab, dim)
    for t in w.values():
        t.requires_grad_(False)
    cfg = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv=n_kv, vocab=vocab, seq_len=seq_len)
    return w, cfg


def rmsnorm(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS_NORM) * weight


def rope_tables(T, d):
    i = torch.arange(0, d, 2, dtype=torch.float64)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * (ROPE_THETA ** (-i / d))[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()  # (T, d/2)


def rope(x, cos, sin):
    """x (B, T, heads, d): rotate the pairs (2i, 2i+1) (llama2.c / Meta layout)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


class Step:
    def __init__(self, w, cfg, L, K, prompts, gates, head):
        self.w, self.cfg, self.L, self.K, self.head = w, cfg, L, K, head
        self.prompts, self.gates = prompts, gates
        self.first = cfg["n_layers"] - L

    def loss(self, ids, labels, valid):
        """ids, labels (B, T) long (labels -1 = no loss); valid (B, T) bool. The mean CE over targets."""
        w, c = self.w, self.cfg
        B, T = ids.shape
        C, H, Hkv = c["dim"], c["n_heads"], c["n_kv"]
        d = C // H
        rep = H // Hkv
        scale = 1.0 / math.sqrt(d)
        cos, sin = rope_tables(T, d)
        # additive mask (B, 1, T, T): key j visible to query i when j <= i and j is not padding
        allowed = torch.ones(T, T, dtype=torch.bool).tril()[None] & valid[:, None, :]
        mask = torch.zeros(B, 1, T, T).masked_fill_(~allowed[:, None], float("-inf"))
        x = w["emb"][ids]  # (B, T, C)
        for n in range(c["n_layers"]):
            a = rmsnorm(x, w["rms_att"][n])
            q = (a @ w["wq"][n].T).view(B, T, H, d)
            k = (a @ w["wk"][n].T).view(B, T, Hkv, d)
            v = (a @ w["wv"][n].T).view(B, T, Hkv, d)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, d)
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            s = (q @ k.transpose(-1, -2)) * scale + mask  # (B, H, T, T)
            o = torch.softmax(s, dim=-1) @ v  # (B, H, T, d)
            l = n - self.first
            if l >= 0:
                P = self.prompts[l]  # (K, C): no norm, no RoPE
                kp = (P @ w["wk"][n].T).view(self.K, Hkv, d).transpose(0, 1)  # (Hkv, K, d)
                vp = (P @ w["wv"][n].T).view(self.K, Hkv, d).transpose(0, 1)
                if rep > 1:
                    kp, vp = kp.repeat_interleave(rep, dim=0), vp.repeat_interleave(rep, dim=0)
                ap = torch.softmax((q @ kp.transpose(-1, -2)) * scale, dim=-1)  # (B, H, T, K)
                o = o + torch.tanh(self.gates[l]).view(1, H, 1, 1) * (ap @ vp)
            x = x + o.transpose(1, 2).reshape(B, T, C) @ w["wo"][n].T
            f = rmsnorm(x, w["rms_ffn"][n])
            x = x + (Fn.silu(f @ w["w1"][n].T) * (f @ w["w3"][n].T)) @ w["w2"][n].T
        target = labels >= 0
        count = int(target.sum())
        if self.head == "targets":
            h = rmsnorm(x[target], w["rms_final"])  # (M, C)
            return Fn.cross_entropy(h @ w["cls"].T, labels[target], reduction="sum") / count
        logits = rmsnorm(x, w["rms_final"]) @ w["cls"].T  # (B, T, V)
        return Fn.cross_entropy(logits.view(B * T, -1), labels.view(-1), ignore_index=-1, reduction="sum") / count


def openblas_info():
    """The OpenBLAS this process loaded (through libblas.so.3 or directly): its core type and threads."""
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "blas" in line and ".so" in line})
        for lib in libs:
            try:
                h = ctypes.CDLL(lib)
                h.openblas_get_corename.restype = ctypes.c_char_p
                return {"library": lib.rsplit("/", 1)[-1], "core": h.openblas_get_corename().decode(),
                        "threads": int(h.openblas_get_num_threads())}
            except (OSError, AttributeError):
                continue
    except OSError:
        pass
    return {"library": "unknown", "core": "unknown", "threads": 0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("job")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--head", choices=["targets", "all"], default="targets")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: all batches after the warm-up)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with open(a.job) as f:
        job = json.load(f)
    w, cfg = load_v0(job["model"])
    L, K = job["adapterLayers"], job["adapterLen"]
    C, H = cfg["dim"], cfg["n_heads"]
    G = H if job["gate"] == "per-head" else 1
    pinit = torch.tensor(job["init"]["prompts"], dtype=torch.float32).view(L, K, C)
    ginit = torch.tensor(job["init"]["gates"], dtype=torch.float32).view(L, G)
    prompts = [pinit[l].clone().requires_grad_(True) for l in range(L)]
    gates = [ginit[l].clone().requires_grad_(True) for l in range(L)]
    o = job["optimizer"]
    opt = torch.optim.AdamW(prompts + gates, lr=job["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                            weight_decay=o["weightDecay"])
    step = Step(w, cfg, L, K, prompts, gates, a.head)
    warmup = job["warmup"]
    batches = [padded(b) for b in job["batches"]]
    if a.steps is not None:
        batches = batches[: warmup + a.steps]

    losses, tokens, padded_tokens = [], 0, 0
    t0 = time.perf_counter()
    for i, (ids, labels, valid, n_tokens, n_padded) in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = step.loss(ids, labels, valid)
        loss.backward()
        # the global gradient norm, read back as the trainer does (logging, the non-finite check)
        grad_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in prompts + gates)).item()
        assert math.isfinite(grad_norm)
        opt.step()
        losses.append(loss.item())
        if i >= warmup:
            tokens += n_tokens
            padded_tokens += n_padded
    dt = time.perf_counter() - t0
    timed = len(batches) - warmup
    print(json.dumps({
        "tokens_per_s": tokens / dt, "ms_per_step": 1e3 * dt / timed, "tokens": tokens, "padded_tokens": padded_tokens,
        "losses": losses, "head": a.head, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "blas": openblas_info(),
    }))


if __name__ == "__main__":
    main()
