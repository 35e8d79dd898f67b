#!/usr/bin/env python3
"""LLaMA-Adapter (../shared/SPEC.md §1-§2) in plain PyTorch: the GPU check's baseline that depends on
nothing but torch, so it survives whatever transformers and PEFT releases the device has
(bench/torch_peft_step.py runs it first, then PEFT's AdaptionPrompt when that works).

The same math as ours and as bench/torch_train_step.py: the frozen LLaMA (pre-norm, RMSNorm, RoPE,
SwiGLU), the top L layers adapted with K prompts each (keys/values through wk/wv, no norm, no RoPE,
their own softmax, per-head tanh gates, or one scalar gate), the LM head at the target rows only,
the loss = mean cross-entropy over the targets. Written as PyTorch training code is: padded
(B, longest) batches with a causal + padding mask, the frozen weights requires_grad=False (autograd
forms input gradients from the lowest adapted layer up only), the prompts and gates f32 leaves,
torch.optim.AdamW. On the GPU the weights and activations are bf16 (norms and the loss in f32) and
word attention goes through F.scaled_dot_product_attention when torch has it; on the CPU (the test)
everything may be f32.

RoPE layout 'half' (Hugging Face's: pairs (i, i + d/2)) or 'pairs' (Meta / llama2.c: (2i, 2i+1)).
Greedy decoding at batch 1 keeps a preallocated KV cache per layer.

Check mode (test/gpu-check.test.ts, on the CPU):
  /usr/bin/python3 bench/torch_plain_adapter.py --check JOB.json
JOB: {config: {dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, normEps, ropeTheta, ropeLayout},
      weights: a safetensors file (F32) with emb, layers.<l>.{attn_norm,wq,wk,wv,wo,ffn_norm,w1,w2,w3},
      final_norm, cls; adapter: {layers, len, gate}; init: {prompts, gates} (flat);
      optimizer: {lr, beta1, beta2, eps, weightDecay}; batches: [{ids, labels}] (labels: the token
      predicted at each position, -1 = no loss)}
      probe (optional): token ids
prints {losses, gradNorms}: one optimiser step per batch, the loss before it and the gradient norm;
with a probe, the trained adapter's logits at every probe position through the KV cache
(probeLogits, flat) and 4 greedy tokens after it.
"""
import json
import math
import struct
import sys
import time

import torch
import torch.nn.functional as Fn

from torch_batches import padded  # (torch_peft_step.py pads through this module: plain.padded)

# ---- weights --------------------------------------------------------------------------------------


def read_safetensors(path, device="cpu", dtype=torch.float32):
    """The tensors of a safetensors file (F32 or BF16) as `dtype` on `device`; numpy only."""
    import numpy as np

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        buf = np.array(raw[base + a: base + b])
        if h["dtype"] == "F32":
            v = buf.view(np.float32)
        elif h["dtype"] == "BF16":
            v = (buf.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: {name} is {h['dtype']}; F32 or BF16 expected")
        out[name] = torch.from_numpy(v.reshape(h["shape"]).copy()).to(device=device, dtype=dtype)
    return out


def random_weights(cfg, device, dtype, seed, std=0.02):
    """Uniform matrices of std `std` and unit norms, made on `device` (as bench/gpu-7b.ts)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    a = std * math.sqrt(3.0)
    C, F, V = cfg["dim"], cfg["hiddenDim"], cfg["vocabSize"]
    Ckv = cfg["nKvHeads"] * (C // cfg["nHeads"])

    def mat(r, c):
        return torch.empty(r, c, device=device, dtype=dtype).uniform_(-a, a, generator=g)

    w = {"emb": mat(V, C), "final_norm": torch.ones(C, device=device, dtype=torch.float32), "cls": mat(V, C)}
    for l in range(cfg["nLayers"]):
        w.update({
            f"layers.{l}.attn_norm": torch.ones(C, device=device, dtype=torch.float32),
            f"layers.{l}.wq": mat(C, C), f"layers.{l}.wk": mat(Ckv, C), f"layers.{l}.wv": mat(Ckv, C),
            f"layers.{l}.wo": mat(C, C),
            f"layers.{l}.ffn_norm": torch.ones(C, device=device, dtype=torch.float32),
            f"layers.{l}.w1": mat(F, C), f"layers.{l}.w2": mat(C, F), f"layers.{l}.w3": mat(F, C),
        })
    return w


# ---- the model ------------------------------------------------------------------------------------


class PlainAdapterModel:
    """The frozen LLaMA `w` (names as read_safetensors gives) with an adapter on its top L layers."""

    def __init__(self, cfg, w, L, K, gate="per-head", prompts=None, gates=None, seed=0):
        self.cfg, self.w, self.L, self.K = cfg, w, L, K
        self.device = w["emb"].device
        self.dtype = w["emb"].dtype
        self.first = cfg["nLayers"] - L
        C, H = cfg["dim"], cfg["nHeads"]
        self.H, self.Hkv, self.d = H, cfg["nKvHeads"], C // H
        G = H if gate == "per-head" else 1
        for t in w.values():
            t.requires_grad_(False)
        if prompts is None:  # SPEC §2: P ~ N(0, 1), g = 0
            gen = torch.Generator(device="cpu")
            gen.manual_seed(seed)
            prompts = torch.randn(L, K, C, generator=gen)
        if gates is None:
            gates = torch.zeros(L, G)
        prompts = torch.as_tensor(prompts, dtype=torch.float32).reshape(L, K, C)
        gates = torch.as_tensor(gates, dtype=torch.float32).reshape(L, G)
        self.prompts = [prompts[l].clone().to(self.device).requires_grad_(True) for l in range(L)]
        self.gates = [gates[l].clone().to(self.device).requires_grad_(True) for l in range(L)]
        self.sdpa = self.device.type == "cuda" and hasattr(Fn, "scaled_dot_product_attention")
        self._rope = {}

    def parameters(self):
        return self.prompts + self.gates

    def rope_tables(self, T):
        """cos, sin (T, d/2) in f32, cached per length."""
        if T not in self._rope or self._rope[T][0].shape[0] < T:
            d = self.d
            i = torch.arange(0, d, 2, dtype=torch.float64)
            ang = torch.arange(T, dtype=torch.float64)[:, None] * (self.cfg["ropeTheta"] ** (-i / d))[None, :]
            self._rope[T] = (torch.cos(ang).float().to(self.device), torch.sin(ang).float().to(self.device))
        return self._rope[T]

    def rope(self, x, cos, sin):
        """x (B, T, heads, d); cos, sin (T, d/2) for these positions."""
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        xf = x.float()
        if self.cfg.get("ropeLayout", "half") == "half":
            h = self.d // 2
            x0, x1 = xf[..., :h], xf[..., h:]
            return torch.cat((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).to(x.dtype)
        x0, x1 = xf[..., 0::2], xf[..., 1::2]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2).to(x.dtype)

    def rmsnorm(self, x, weight):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg["normEps"]) * weight.float()).to(self.dtype)

    def word_attention(self, q, k, v, allowed):
        """q (B, H, T, d), k, v (B, H, S, d), allowed (B, 1, T, S) bool -> (B, H, T, d)."""
        if self.sdpa:
            return Fn.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.d))
        s = s.masked_fill(~allowed, float("-inf"))
        return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v

    def hidden(self, ids, valid, cache=None, pos0=0):
        """The final hidden states (B, T, C) of ids (B, T) at positions pos0.. (valid (B, T): not
        padding). With `cache` (batch 1: per layer k, v (1, Hkv, Tmax, d)), the keys and values of
        these positions are written there and attention reads every cached position."""
        w, B, T = self.w, ids.shape[0], ids.shape[1]
        H, Hkv, d, C = self.H, self.Hkv, self.d, self.cfg["dim"]
        rep = H // Hkv
        cos, sin = self.rope_tables(pos0 + T)
        cos, sin = cos[pos0:pos0 + T], sin[pos0:pos0 + T]
        S = pos0 + T
        # key j visible to query i (at position pos0 + i) when j <= pos0 + i and j is not padding
        allowed = torch.ones(T, S, dtype=torch.bool, device=self.device).tril(diagonal=pos0)[None, None]
        if cache is None:
            allowed = allowed & valid[:, None, None, :]
        x = w["emb"][ids]
        scale = 1.0 / math.sqrt(d)
        for n in range(self.cfg["nLayers"]):
            a = self.rmsnorm(x, w[f"layers.{n}.attn_norm"])
            q = self.rope((a @ w[f"layers.{n}.wq"].T).view(B, T, H, d), cos, sin).transpose(1, 2)
            k = self.rope((a @ w[f"layers.{n}.wk"].T).view(B, T, Hkv, d), cos, sin).transpose(1, 2)
            v = (a @ w[f"layers.{n}.wv"].T).view(B, T, Hkv, d).transpose(1, 2)
            if cache is not None:
                ck, cv = cache[n]
                ck[:, :, pos0:S] = k
                cv[:, :, pos0:S] = v
                k, v = ck[:, :, :S], cv[:, :, :S]
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            o = self.word_attention(q, k, v, allowed)  # (B, H, T, d)
            l = n - self.first
            if l >= 0:
                P = self.prompts[l].to(self.dtype)  # (K, C): no norm, no RoPE
                kp = (P @ w[f"layers.{n}.wk"].T).view(self.K, Hkv, d).transpose(0, 1)  # (Hkv, K, d)
                vp = (P @ w[f"layers.{n}.wv"].T).view(self.K, Hkv, d).transpose(0, 1)
                if rep > 1:
                    kp, vp = kp.repeat_interleave(rep, dim=0), vp.repeat_interleave(rep, dim=0)
                ap = torch.softmax(((q @ kp.transpose(-1, -2)) * scale).float(), dim=-1).to(self.dtype)  # (B, H, T, K)
                gate = torch.tanh(self.gates[l]).to(self.dtype)
                o = o + gate.view(1, -1, 1, 1) * (ap @ vp)
            x = x + o.transpose(1, 2).reshape(B, T, C) @ w[f"layers.{n}.wo"].T
            f = self.rmsnorm(x, w[f"layers.{n}.ffn_norm"])
            x = x + (Fn.silu(f @ w[f"layers.{n}.w1"].T) * (f @ w[f"layers.{n}.w3"].T)) @ w[f"layers.{n}.w2"].T
        return x

    def loss(self, ids, labels, valid):
        """Mean cross-entropy over the targets (labels >= 0), the LM head at the target rows only."""
        x = self.hidden(ids, valid)
        target = labels >= 0
        h = self.rmsnorm(x[target], self.w["final_norm"])  # (M, C)
        logits = (h @ self.w["cls"].T).float()
        return Fn.cross_entropy(logits, labels[target], reduction="sum") / int(target.sum())

    def logits_of(self, h):
        """h (B, C) hidden states -> logits (B, V) in f32."""
        return (self.rmsnorm(h, self.w["final_norm"]) @ self.w["cls"].T).float()

    def new_cache(self, Tmax):
        return [(torch.empty(1, self.Hkv, Tmax, self.d, device=self.device, dtype=self.dtype),
                 torch.empty(1, self.Hkv, Tmax, self.d, device=self.device, dtype=self.dtype)) for _ in range(self.cfg["nLayers"])]

    @torch.no_grad()
    def decode(self, prompt, tokens, on_token=None):
        """Greedy decoding at batch 1: `tokens` new tokens after `prompt` (the prompt in one block,
        then one token at a time through the cache); on_token(i) after each (False: stop)."""
        cache = self.new_cache(len(prompt) + tokens)
        nxt = self.logits_of(self.hidden(torch.tensor([prompt], device=self.device), None, cache, 0)[:, -1]).argmax(-1)
        pos, out = len(prompt), []
        for i in range(tokens):
            out.append(int(nxt.item()))
            if (on_token is not None and on_token(i) is False) or i == tokens - 1:
                break
            nxt = self.logits_of(self.hidden(nxt[:, None], None, cache, pos)[:, -1]).argmax(-1)
            pos += 1
        return out

    @torch.no_grad()
    def cached_logits(self, tokens):
        """The logits (T, V) at every position of `tokens`, as decoding computes them: the first two
        in one block, then one token at a time through the KV cache (the check compares them with
        ours' whole-prompt forward)."""
        cache = self.new_cache(len(tokens))
        x = self.hidden(torch.tensor([tokens[:2]], device=self.device), None, cache, 0)
        rows = [self.logits_of(x[:, i]) for i in range(x.shape[1])]
        for p in range(2, len(tokens)):
            rows.append(self.logits_of(self.hidden(torch.tensor([[tokens[p]]], device=self.device), None, cache, p)[:, 0]))
        return torch.cat(rows, dim=0)


def train_step(model, opt, batch):
    """One optimiser step on a padded batch: the loss and the global gradient norm (read back, as
    ours reads it every step)."""
    ids, labels, valid = batch[:3]
    loss = model.loss(ids, labels, valid)
    loss.backward()
    norm = torch.sqrt(sum(p.grad.float().pow(2).sum() for p in model.parameters())).item()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item(), norm


def make_optimizer(model, lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.02):
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


def check(job_path):
    with open(job_path) as f:
        job = json.load(f)
    cfg = job["config"]
    w = read_safetensors(job["weights"])
    a = job["adapter"]
    model = PlainAdapterModel(cfg, w, a["layers"], a["len"], a["gate"], job["init"]["prompts"], job["init"]["gates"])
    o = job["optimizer"]
    opt = make_optimizer(model, o["lr"], o["beta1"], o["beta2"], o["eps"], o["weightDecay"])
    losses, norms = [], []
    t0 = time.time()
    for b in job["batches"]:
        loss, norm = train_step(model, opt, padded(b))
        losses.append(loss)
        norms.append(norm)
    out = {"losses": losses, "gradNorms": norms, "torch": torch.__version__, "seconds": time.time() - t0}
    if job.get("probe"):
        out["probeLogits"] = model.cached_logits(job["probe"]).flatten().tolist()
        out["greedy"] = model.decode(job["probe"], 4)
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    else:
        raise SystemExit(__doc__)
