#!/usr/bin/env python3
"""PyTorch-side reference for the .pth readers and writer (issue 13 items 1-2).

Uses the real torch.save / torch.load (Debian's PyTorch for /usr/bin/python3) and shares no code
with the TypeScript reader/writer.

    meta     --model stories260K.bin --out DIR [--dtype f32|f16|bf16] [--shards N]
             Writes a Meta checkpoint folder (params.json + consolidated.NN.pth) from a llama2.c v0
             checkpoint, split over N model-parallel ranks the way Meta's fairscale layers are:
             wq/wk/wv/w1/w3/output by rows, wo/w2 and tok_embeddings by columns, norms replicated;
             each shard also carries LLaMA 1's rope.freqs buffer, and is a module-style
             OrderedDict state dict (with _metadata).
    adapter  --from ADAPTER.safetensors --out FILE.pth [--dtype f32|f16]
             Writes our adapter in the official release layout with torch.save: adapter_query.weight
             (L*K, C) and layers.N.attention.gate (1, G, 1, 1), the gates as views into one shared
             storage (non-zero storage offsets).
    check    --pth FILE.pth --against ADAPTER.safetensors
             torch.load()s FILE.pth (e.g. our `export --format official` output) and checks every
             tensor equals the safetensors adapter's (read here with json + struct); prints a line.
    check-meta --dir DIR --model stories260K.bin [--dtype f32|f16]
             torch.load()s every shard of a Meta folder (e.g. one our writer made), merges it as
             Meta's code does and checks it equals the .bin's weights (cast to dtype) exactly.
"""
import argparse
import collections
import json
import os
import struct
import sys

import torch

DT = {'f32': torch.float32, 'f16': torch.float16, 'bf16': torch.bfloat16}


def read_llama2c(path):
    """A llama2.c v0 checkpoint as Meta's state dict names (float32)."""
    with open(path, 'rb') as f:
        data = f.read()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = struct.unpack('7i', data[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    head = dim // n_heads
    kv_dim = n_kv * head
    buf = torch.frombuffer(bytearray(data[28:]), dtype=torch.float32)
    off = 0

    def take(*shape):
        nonlocal off
        n = 1
        for s in shape:
            n *= s
        t = buf[off:off + n].reshape(shape).clone()
        off += n
        return t

    emb = take(vocab, dim)
    per = {}
    for key, shape in [('attention_norm', (dim,)), ('wq', (dim, dim)), ('wk', (kv_dim, dim)), ('wv', (kv_dim, dim)),
                       ('wo', (dim, dim)), ('ffn_norm', (dim,)), ('w1', (hidden, dim)), ('w2', (dim, hidden)),
                       ('w3', (hidden, dim))]:
        per[key] = [take(*shape) for _ in range(n_layers)]
    norm = take(dim)
    off += seq * head  # freq_cis_real, freq_cis_imag
    out = emb if shared else take(vocab, dim)
    sd = collections.OrderedDict()
    sd['tok_embeddings.weight'] = emb
    for l in range(n_layers):
        p = f'layers.{l}.'
        sd[p + 'attention.wq.weight'] = per['wq'][l]
        sd[p + 'attention.wk.weight'] = per['wk'][l]
        sd[p + 'attention.wv.weight'] = per['wv'][l]
        sd[p + 'attention.wo.weight'] = per['wo'][l]
        sd[p + 'feed_forward.w1.weight'] = per['w1'][l]
        sd[p + 'feed_forward.w2.weight'] = per['w2'][l]
        sd[p + 'feed_forward.w3.weight'] = per['w3'][l]
        sd[p + 'attention_norm.weight'] = per['attention_norm'][l]
        sd[p + 'ffn_norm.weight'] = per['ffn_norm'][l]
    sd['norm.weight'] = norm
    sd['output.weight'] = out.clone()
    params = {'dim': dim, 'multiple_of': 4, 'n_heads': n_heads, 'n_kv_heads': n_kv, 'n_layers': n_layers,
              'norm_eps': 1e-05, 'vocab_size': -1}
    assert hidden == 4 * ((int(2 * 4 * dim / 3) + 3) // 4), 'hidden_dim is not Meta\'s formula with multiple_of 4'
    return sd, params, head


def split_dim(name):
    """The dimension Meta's model parallelism splits `name` along (None: replicated)."""
    if name.endswith(('wq.weight', 'wk.weight', 'wv.weight', 'w1.weight', 'w3.weight')) or name == 'output.weight':
        return 0  # ColumnParallelLinear
    if name.endswith(('wo.weight', 'w2.weight')) or name == 'tok_embeddings.weight':
        return 1  # RowParallelLinear, ParallelEmbedding
    return None


def cmd_meta(a):
    sd, params, head = read_llama2c(a.model)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, 'params.json'), 'w') as f:
        json.dump(params, f)
    # LLaMA 1's checkpoints carry the RoPE frequencies as a buffer
    freqs = 1.0 / (10000.0 ** (torch.arange(0, head, 2).float() / head))
    for k in range(a.shards):
        shard = collections.OrderedDict()
        for name, t in sd.items():
            d = split_dim(name)
            t = t.to(DT[a.dtype])  # Meta stores the norms in the weights' dtype too
            shard[name] = t if d is None else torch.chunk(t, a.shards, dim=d)[k].clone(memory_format=torch.contiguous_format)
        shard['rope.freqs'] = freqs.to(DT[a.dtype])
        shard._metadata = collections.OrderedDict([('', {'version': 1})])
        torch.save(shard, os.path.join(a.out, f'consolidated.{k:02d}.pth'))
    print(f'wrote {a.out}: {a.shards} shard(s), {a.dtype}, {len(sd)} tensors (+ rope.freqs)')


def read_safetensors(path):
    with open(path, 'rb') as f:
        data = f.read()
    n = struct.unpack('<Q', data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = collections.OrderedDict()
    for name, e in header.items():
        if name == '__metadata__':
            continue
        assert e['dtype'] == 'F32'
        b, end = e['data_offsets']
        out[name] = torch.frombuffer(bytearray(data[8 + n + b:8 + n + end]), dtype=torch.float32).reshape(e['shape'])
    return out


def cmd_adapter(a):
    src = read_safetensors(a.src)
    gates = sorted((k for k in src if k.endswith('.attention.gate')), key=lambda k: int(k.split('.')[1]))
    G = src[gates[0]].numel()
    # one storage for all gates: each layer's gate is a view at a non-zero storage offset
    allg = torch.stack([src[k].reshape(1, G, 1, 1) for k in gates]).to(DT[a.dtype])
    out = {'adapter_query.weight': src['adapter_query.weight'].to(DT[a.dtype])}
    for i, k in enumerate(gates):
        out[k] = allg[i]
    torch.save(out, a.out)
    print(f'wrote {a.out}: adapter_query.weight {tuple(out["adapter_query.weight"].shape)}, {len(gates)} gates (1, {G}, 1, 1), {a.dtype}')


def cmd_check(a):
    got = torch.load(a.pth, map_location='cpu')
    want = read_safetensors(a.against)
    assert set(got) == set(want), f'keys differ: {sorted(set(got) ^ set(want))}'
    for k, v in want.items():
        g = got[k]
        assert g.dtype == torch.float32, f'{k}: {g.dtype}'
        assert g.numel() == v.numel(), f'{k}: {tuple(g.shape)} vs {tuple(v.shape)}'
        assert torch.equal(g.reshape(-1), v.reshape(-1)), f'{k}: values differ'
    shapes = ', '.join(f'{k} {tuple(got[k].shape)}' for k in list(got)[:2])
    print(f'torch.load OK: {len(got)} tensors equal ({shapes}, ...)')


def cmd_check_meta(a):
    sd, params, _ = read_llama2c(a.model)
    files = sorted(f for f in os.listdir(a.dir) if f.startswith('consolidated.'))
    shards = [torch.load(os.path.join(a.dir, f), map_location='cpu') for f in files]
    n = 0
    for name, want in sd.items():
        d = split_dim(name)
        got = shards[0][name] if d is None or len(shards) == 1 else torch.cat([s[name] for s in shards], dim=d)
        want = want.to(DT[a.dtype])
        assert got.dtype == want.dtype and torch.equal(got, want), f'{name} differs'
        n += 1
    print(f'torch.load OK: {len(files)} shard(s), {n} tensors equal the .bin ({a.dtype})')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    m = sub.add_parser('meta')
    m.add_argument('--model', required=True)
    m.add_argument('--out', required=True)
    m.add_argument('--dtype', default='f32', choices=DT)
    m.add_argument('--shards', type=int, default=1)
    ad = sub.add_parser('adapter')
    ad.add_argument('--from', dest='src', required=True)
    ad.add_argument('--out', required=True)
    ad.add_argument('--dtype', default='f32', choices=['f32', 'f16'])
    c = sub.add_parser('check')
    c.add_argument('--pth', required=True)
    c.add_argument('--against', required=True)
    cm = sub.add_parser('check-meta')
    cm.add_argument('--dir', required=True)
    cm.add_argument('--model', required=True)
    cm.add_argument('--dtype', default='f32', choices=DT)
    a = ap.parse_args()
    torch.set_num_threads(1)
    {'meta': cmd_meta, 'adapter': cmd_adapter, 'check': cmd_check, 'check-meta': cmd_check_meta}[a.cmd](a)


if __name__ == '__main__':
    sys.exit(main())
