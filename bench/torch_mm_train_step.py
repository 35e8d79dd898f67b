#!/usr/bin/env python3
"""One image-conditioned LLaMA-Adapter optimiser step in PyTorch float32, for bench/mm-train-step.ts.

The text step of bench/torch_train_step.py (padded (B, longest) batch, causal + padding mask,
plain matmul + softmax attention, frozen weights requires_grad=False, LM head on the target rows),
with SPEC §8's per-example prompts: I_p = fc2 · GELU(fc1 · g + b1) + b2 for each distinct image of
the step (once), P_l^v = P_l + I_p per example (P_l for an example without an image), prompt keys
and values per example (B, H, K, d), trainable prompts, gates, fc1, b1, fc2, b2; torch.optim.AdamW
with weight decay on the >= 2-D tensors only.

Input: the JSON job written by mm-train-step.ts. Output: one JSON line on stdout
{tokens_per_s, ms_per_step, tokens, losses, ...}.

--text runs the text step on the same batches instead (images ignored: shared prompts, no
projection), for the cost of the image conditioning.

Usage: /usr/bin/python3 bench/torch_mm_train_step.py JOB.json [--threads 2] [--text]
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as Fn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_batches import padded  # noqa: E402
from torch_train_step import load_v0, openblas_info, rmsnorm, rope, rope_tables  # noqa: E402


class MMStep:
    def __init__(self, w, cfg, L, K, p, text=False):
        self.w, self.cfg, self.L, self.K, self.p, self.text = w, cfg, L, K, p, text
        self.first = cfg["n_layers"] - L

    def loss(self, ids, labels, valid, feats, image_of):
        """feats (U, M*D): the step's distinct images; image_of (B) long: row of feats or -1."""
        w, c, p = self.w, self.cfg, self.p
        B, T = ids.shape
        C, H, Hkv = c["dim"], c["n_heads"], c["n_kv"]
        d = C // H
        rep = H // Hkv
        K = self.K
        scale = 1.0 / math.sqrt(d)
        cos, sin = rope_tables(T, d)
        allowed = torch.ones(T, T, dtype=torch.bool).tril()[None] & valid[:, None, :]
        mask = torch.zeros(B, 1, T, T).masked_fill_(~allowed[:, None], float("-inf"))
        # I_p once per image, then per example (zeros without an image)
        if not self.text:
            ip = Fn.gelu(feats @ p["fc1"].T + p["b1"]) @ p["fc2"].T + p["b2"]  # (U, C)
            ip = torch.cat([ip, torch.zeros(1, C)])[image_of]  # (B, C); index -1 = the zero row
        x = w["emb"][ids]
        for n in range(c["n_layers"]):
            a = rmsnorm(x, w["rms_att"][n])
            q = (a @ w["wq"][n].T).view(B, T, H, d)
            k = (a @ w["wk"][n].T).view(B, T, Hkv, d)
            v = (a @ w["wv"][n].T).view(B, T, Hkv, d)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            s = (q @ k.transpose(-1, -2)) * scale + mask
            o = torch.softmax(s, dim=-1) @ v  # (B, H, T, d)
            l = n - self.first
            if l >= 0 and self.text:
                # the text step: prompts shared by the batch (bench/torch_train_step.py)
                P = p["prompts"][l]
                kp = (P @ w["wk"][n].T).view(K, Hkv, d).transpose(0, 1)
                vp = (P @ w["wv"][n].T).view(K, Hkv, d).transpose(0, 1)
                if rep > 1:
                    kp, vp = kp.repeat_interleave(rep, dim=0), vp.repeat_interleave(rep, dim=0)
                ap = torch.softmax((q @ kp.transpose(-1, -2)) * scale, dim=-1)
                o = o + torch.tanh(p["gates"][l]).view(1, H, 1, 1) * (ap @ vp)
            elif l >= 0:
                P = p["prompts"][l][None] + ip[:, None, :]  # (B, K, C) per example
                kp = (P @ w["wk"][n].T).view(B, K, Hkv, d).transpose(1, 2)  # (B, Hkv, K, d)
                vp = (P @ w["wv"][n].T).view(B, K, Hkv, d).transpose(1, 2)
                if rep > 1:
                    kp, vp = kp.repeat_interleave(rep, dim=1), vp.repeat_interleave(rep, dim=1)
                ap = torch.softmax((q @ kp.transpose(-1, -2)) * scale, dim=-1)  # (B, H, T, K)
                o = o + torch.tanh(p["gates"][l]).view(1, H, 1, 1) * (ap @ vp)
            x = x + o.transpose(1, 2).reshape(B, T, C) @ w["wo"][n].T
            f = rmsnorm(x, w["rms_ffn"][n])
            x = x + (Fn.silu(f @ w["w1"][n].T) * (f @ w["w3"][n].T)) @ w["w2"][n].T
        target = labels >= 0
        h = rmsnorm(x[target], w["rms_final"])
        return Fn.cross_entropy(h @ w["cls"].T, labels[target], reduction="sum") / int(target.sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("job")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--text", action="store_true", help="the text step on the same batches (images ignored)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with open(a.job) as f:
        job = json.load(f)
    w, cfg = load_v0(job["model"])
    L, K = job["adapterLayers"], job["adapterLen"]
    C, H = cfg["dim"], cfg["n_heads"]
    i = job["init"]
    t = lambda x, *shape: torch.tensor(x, dtype=torch.float32).view(*shape)  # noqa: E731
    R, MD = job["projWidth"], job["featureValues"]
    p = {
        "prompts": [t(i["prompts"], L, K, C)[l].clone().requires_grad_(True) for l in range(L)],
        "gates": [t(i["gates"], L, H)[l].clone().requires_grad_(True) for l in range(L)],
        "fc1": t(i["fc1"], R, MD).requires_grad_(True),
        "b1": t(i["b1"], R).requires_grad_(True),
        "fc2": t(i["fc2"], C, R).requires_grad_(True),
        "b2": t(i["b2"], C).requires_grad_(True),
    }
    o = job["optimizer"]
    decay = p["prompts"] + p["gates"] + ([] if a.text else [p["fc1"], p["fc2"]])
    no_decay = [] if a.text else [p["b1"], p["b2"]]
    params = decay + no_decay
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weightDecay"]}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=job["lr"], betas=tuple(o["betas"]), eps=o["eps"])
    step = MMStep(w, cfg, L, K, p, a.text)
    warmup = job["warmup"]
    batches = []
    for b in job["batches"]:
        ids, labels, valid, n_tokens, _ = padded(b)
        feats = torch.tensor(b["features"], dtype=torch.float32).view(-1, MD)
        batches.append((ids, labels, valid, n_tokens, feats, torch.tensor(b["imageOf"], dtype=torch.long)))

    losses, tokens = [], 0
    t0 = time.perf_counter()
    for n, (ids, labels, valid, n_tokens, feats, image_of) in enumerate(batches):
        if n == warmup:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = step.loss(ids, labels, valid, feats, image_of)
        loss.backward()
        grad_norm = torch.sqrt(sum(q.grad.pow(2).sum() for q in params)).item()
        assert math.isfinite(grad_norm)
        opt.step()
        losses.append(loss.item())
        if n >= warmup:
            tokens += n_tokens
    dt = time.perf_counter() - t0
    timed = len(batches) - warmup
    print(json.dumps({"tokens_per_s": tokens / dt, "ms_per_step": 1e3 * dt / timed, "tokens": tokens, "losses": losses,
                      "torch": torch.__version__, "threads": torch.get_num_threads(), "blas": openblas_info()}))


if __name__ == "__main__":
    main()
