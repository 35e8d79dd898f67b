#!/usr/bin/env python3
"""The gated attention rows of bench/attention.ts in PyTorch float32, for its comparison column:
the same math (SPEC §2, §8, §9) written the way a torch ViT with zero-init gated prompts runs it
(PyTorch 1.13 has no fused attention on the CPU: softmax(Q Kᵀ / sqrt(d)) V with autograd, the
(L, L) probabilities stored for the backward), forward then backward of sum(out * dout).

Rows (as bench/attention.ts): bidirectional without a prompt, with one shared prompt, with
per-segment prompts (K keys each), and causal with a shared prompt.

Output: one JSON line {row: [forward seconds, backward seconds, CPU seconds of both]} (each the
best of the timed calls; CPU = this process's user + system time, all threads).

Usage: /usr/bin/python3 bench/torch_attention.py [--segments 32] [--tokens 197] [--heads 12]
       [--head-size 64] [--prompt 10] [--threads 2] [--runs 5]
"""
import argparse
import json
import math
import time

import torch


def attention(q, k, v, pk, pv, gate, causal):
    # q, k, v (B, H, L, d); pk, pv (H, K, d) shared or (B, H, K, d) per segment; gate (H)
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = q @ k.transpose(-1, -2) * scale
    if causal:
        L = q.shape[-2]
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.softmax(s, dim=-1) @ v
    if pk is not None:
        a = torch.softmax(q @ pk.transpose(-1, -2) * scale, dim=-1)  # (B, H, L, K)
        out = out + torch.tanh(gate).view(1, -1, 1, 1) * (a @ pv)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=197)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    B, L, H, d, K = a.segments, a.tokens, a.heads, a.head_size, a.prompt
    leaf = lambda *shape: (torch.rand(*shape) * 2 - 1).requires_grad_(True)
    q, k, v = leaf(B, H, L, d), leaf(B, H, L, d), leaf(B, H, L, d)
    dout = torch.rand(B, H, L, d) * 2 - 1
    shared = (leaf(H, K, d), leaf(H, K, d))
    per_seg = (leaf(B, H, K, d), leaf(B, H, K, d))
    gate = leaf(H)
    rows = {
        "bidirectional, none": (None, None, False),
        "bidirectional, shared": (*shared, False),
        "bidirectional, per segment": (*per_seg, False),
        "causal, shared": (*shared, True),
    }
    best = {name: [math.inf, math.inf, math.inf] for name in rows}
    for run in range(a.runs + 1):  # run 0 warms up; rounds over all rows
        for name, (pk, pv, causal) in rows.items():
            for t in (q, k, v, gate, pk, pv):
                if t is not None:
                    t.grad = None
            c0 = time.process_time()
            t0 = time.perf_counter()
            out = attention(q, k, v, pk, pv, gate, causal)
            t1 = time.perf_counter()
            out.backward(dout)
            t2 = time.perf_counter()
            c = time.process_time() - c0
            if run > 0:
                best[name] = [min(best[name][0], t1 - t0), min(best[name][1], t2 - t1), min(best[name][2], c)]
    print(json.dumps(best))


if __name__ == "__main__":
    main()
