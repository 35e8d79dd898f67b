#!/usr/bin/env python3
"""The image-encoder ops in PyTorch float32 at the shapes bench/encoder-ops.ts measures, for its
comparison column: the same operations the way a ViT/CLIP forward and backward run them in torch.

Output: one JSON line {op name: best seconds per call}. Threads: --threads sets
torch.set_num_threads.

Usage: /usr/bin/python3 bench/torch_encoder_ops.py --T 6304 --C 768 --F 3072 [--threads 2] [--seconds 1]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as Fn


def best_time(fn, seconds):
    fn()  # warm-up
    t0 = time.perf_counter()
    fn()
    est = max(time.perf_counter() - t0, 1e-7)
    reps = max(1, min(1000, round(0.03 / est)))
    times, spent = [], 0.0
    while len(times) < 3 or (spent < seconds and len(times) < 50):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        dt = time.perf_counter() - t
        spent += dt
        times.append(dt / reps)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, required=True)
    ap.add_argument("--C", type=int, required=True)
    ap.add_argument("--F", type=int, required=True)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    T, C, F = a.T, a.C, a.F
    x = torch.randn(T, C)
    w, b = torch.randn(C), torch.randn(C)
    dy_c = torch.randn(T, C)
    h = torch.randn(T, F) * 3
    dy_f = torch.randn(T, F)
    bias_f = torch.randn(F)
    img = torch.randn(a.B, 3, a.image, a.image)
    mean, rstd = torch.ops.aten.native_layer_norm(x, [C], w, b, 1e-5)[1:]
    quick = lambda v: v * torch.sigmoid(1.702 * v)  # HF CLIP's QuickGELUActivation
    hq = h.clone().requires_grad_(True)
    yq = quick(hq)
    out = {}
    with torch.no_grad():
        out["layerNorm"] = best_time(lambda: Fn.layer_norm(x, [C], w, b, 1e-5), a.seconds)
        out["layerNormBackward"] = best_time(
            lambda: torch.ops.aten.native_layer_norm_backward(dy_c, x, [C], mean, rstd, w, b, [True, True, True]), a.seconds)
        out["gelu"] = best_time(lambda: Fn.gelu(h), a.seconds)
        out["quick_gelu"] = best_time(lambda: quick(h), a.seconds)
        out["geluBackward"] = best_time(lambda: torch.ops.aten.gelu_backward(dy_f, h), a.seconds)
        out["addBias"] = best_time(lambda: h.add_(bias_f), a.seconds)
        out["biasGrad"] = best_time(lambda: dy_f.sum(0), a.seconds)
        out["matmulWeightGrad"] = best_time(lambda: torch.mm(dy_c.t(), h), a.seconds)
        out["patches"] = best_time(
            lambda: Fn.unfold(img, a.patch, stride=a.patch).transpose(1, 2).reshape(-1, 3 * a.patch * a.patch).contiguous(),
            a.seconds)
    out["quick_geluBackward"] = best_time(lambda: torch.autograd.grad(yq, hq, dy_f, retain_graph=True), a.seconds)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
