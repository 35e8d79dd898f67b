#!/usr/bin/env python3
"""PyTorch float32 baseline of the SQuAD training step (bench/squad-step.ts writes the inputs).

The same encoder folder, the same batches and initial parameters: a frozen RoBERTa (post-norm,
written here from the published architecture; padded batches with an attention mask, as Hugging
Face runs them), K prompts with per-head tanh gates in the top L layers (SPEC §9), the span head,
the mean of the start/end cross-entropies over each window's tokens, autograd, torch.optim.AdamW
(lr, weight decay as given, constant lr). Prints ms per step (after 2 warm-up steps), tokens/s
(real tokens, not padding) and the per-step losses, which should equal the engine's.

Usage: /usr/bin/python3 bench/torch_squad_step.py OUT [--threads 2]
"""
import argparse
import json
import math
import os
import struct
import time

import numpy as np
import torch


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == '__metadata__':
            continue
        a, b = v['data_offsets']
        assert v['dtype'] == 'F32'
        out[k] = torch.from_numpy(np.frombuffer(data[a:b], dtype='<f4').reshape(v['shape']).copy())
    return out


def layer_norm(x, w, b, eps):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('out')
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = json.load(open(os.path.join(args.out, 'encoder', 'config.json')))
    w = read_safetensors(os.path.join(args.out, 'encoder', 'model.safetensors'))
    job = json.load(open(os.path.join(args.out, 'batches.json')))
    C, H, NL = cfg['hidden_size'], cfg['num_attention_heads'], cfg['num_hidden_layers']
    d, eps, pad = C // H, cfg['layer_norm_eps'], cfg['pad_token_id']
    L, K = job['adapt'], job['K']
    p = 'roberta.'
    vals = [torch.tensor(v, dtype=torch.float32) for v in job['params']]
    prompts = [vals[i].view(K, C).clone().requires_grad_() for i in range(L)]
    gates = [vals[L + i].clone().requires_grad_() for i in range(L)]
    head_w = vals[2 * L].view(2, C).clone().requires_grad_()
    head_b = vals[2 * L + 1].clone().requires_grad_()
    params = prompts + gates + [head_w, head_b]
    opt = torch.optim.AdamW(params, lr=job['lr'], betas=(0.9, 0.999), eps=1e-8, weight_decay=job['weightDecay'])

    def lw(i, name):
        return w[f'{p}encoder.layer.{i}.{name}']

    def step(batch):
        offs = batch['offsets']
        S = len(offs) - 1
        T = max(offs[s + 1] - offs[s] for s in range(S))
        ids = torch.full((S, T), pad, dtype=torch.long)
        types = torch.zeros((S, T), dtype=torch.long)
        mask = torch.zeros((S, T), dtype=torch.bool)
        for s in range(S):
            n = offs[s + 1] - offs[s]
            ids[s, :n] = torch.tensor(batch['ids'][offs[s]:offs[s + 1]])
            types[s, :n] = torch.tensor(batch['types'][offs[s]:offs[s + 1]])
            mask[s, :n] = True
        pos = torch.arange(T).unsqueeze(0) + pad + 1
        x = w[p + 'embeddings.word_embeddings.weight'][ids] + w[p + 'embeddings.position_embeddings.weight'][pos] \
            + w[p + 'embeddings.token_type_embeddings.weight'][types]
        x = layer_norm(x, w[p + 'embeddings.LayerNorm.weight'], w[p + 'embeddings.LayerNorm.bias'], eps)
        bias = torch.zeros((S, 1, 1, T)).masked_fill(~mask.view(S, 1, 1, T), float('-inf'))
        for i in range(NL):
            lin = lambda t, n: t @ lw(i, n + '.weight').T + lw(i, n + '.bias')
            q = lin(x, 'attention.self.query').view(S, T, H, d).transpose(1, 2)
            k = lin(x, 'attention.self.key').view(S, T, H, d).transpose(1, 2)
            v = lin(x, 'attention.self.value').view(S, T, H, d).transpose(1, 2)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, -1) @ v  # (S, H, T, d)
            a = i - (NL - L)
            if a >= 0:
                pk = lin(prompts[a], 'attention.self.key').view(K, H, d).transpose(0, 1)
                pv = lin(prompts[a], 'attention.self.value').view(K, H, d).transpose(0, 1)
                pa = torch.softmax(q @ pk.transpose(-1, -2) / math.sqrt(d), -1) @ pv
                att = att + torch.tanh(gates[a]).view(1, H, 1, 1) * pa
            o = att.transpose(1, 2).reshape(S, T, C)
            x = layer_norm(x + lin(o, 'attention.output.dense'), lw(i, 'attention.output.LayerNorm.weight'),
                           lw(i, 'attention.output.LayerNorm.bias'), eps)
            f = lin(torch.nn.functional.gelu(lin(x, 'intermediate.dense')), 'output.dense')
            x = layer_norm(x + f, lw(i, 'output.LayerNorm.weight'), lw(i, 'output.LayerNorm.bias'), eps)
        logits = (x @ head_w.T + head_b).masked_fill(~mask.unsqueeze(-1), float('-inf'))  # (S, T, 2)
        ls = torch.nn.functional.cross_entropy(logits[..., 0], torch.tensor(batch['start']))
        le = torch.nn.functional.cross_entropy(logits[..., 1], torch.tensor(batch['end']))
        loss = (ls + le) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item(), int(mask.sum()), S * T

    losses, ms, toks = [], 0.0, 0
    for s, b in enumerate(job['batches']):
        t0 = time.perf_counter()
        loss, real, padded = step(b)
        dt = (time.perf_counter() - t0) * 1000
        losses.append(loss)
        if s >= 2:
            ms += dt
            toks += real
    n = len(job['batches']) - 2
    print(json.dumps({'engine': f'PyTorch {torch.__version__} float32 CPU', 'threads': args.threads, 'ms_per_step': ms / n,
                      'tokens_per_s': toks * 1000 / ms, 'losses': losses}, indent=1))


if __name__ == '__main__':
    main()
