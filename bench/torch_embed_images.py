#!/usr/bin/env python3
"""The CLIP vision encoder's forward in PyTorch float32, for bench/embed-images.ts.

Reads the random CLIPVisionModelWithProjection folder that embed-images.ts writes (safetensors read
by hand) and the same pixels (B, 3, S, S) float32, and times the forward from pixels to the global
features (SPEC §7: visual_projection · post_layernorm(h_last[cls])) in four configurations, under
torch.inference_mode():

  hf          the Hugging Face CLIPVisionModel computation written out in torch ops: Conv2d patch
              embedding, separate q/k/v Linear layers, bmm + softmax attention, quick_gelu
              (torch 1.13 has no scaled_dot_product_attention)
  fastpath    the same shapes through nn.TransformerEncoderLayer(norm_first=True, batch_first=True)
              in inference mode, PyTorch's fused encoder-layer kernel (torch._transformer_encoder_layer_fwd);
              it knows only relu/gelu, so it runs exact GELU where CLIP has quick_gelu (the same
              FLOPs; its features differ, so they are not compared)
  autocast_bf16  the hf module under torch.autocast('cpu', torch.bfloat16): its matmuls in bf16 on
              oneDNN (the counterpart of our bf16 weights with matmul precision "medium"); not float32
  jit         the hf module traced, frozen and passed through torch.jit.optimize_for_inference, which
              moves the Linear and Conv2d layers to oneDNN (MKL-DNN) where it expects that to pay

Output: one JSON line {configs: {name: {images_per_s, seconds, cpu_seconds}}, features (hf), features_bf16, ...}.
Threads: --threads sets torch.set_num_threads; OpenBLAS reads OPENBLAS_NUM_THREADS and
OPENBLAS_CORETYPE from the environment when it loads (the caller sets them).

Usage: /usr/bin/python3 bench/torch_embed_images.py DIR PIXELS.f32 [--threads N] [--runs N]
"""
import argparse
import json
import math
import struct
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as Fn


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == '__metadata__':
            continue
        assert v['dtype'] == 'F32', (k, v['dtype'])
        b, e = v['data_offsets']
        out[k] = torch.from_numpy(np.frombuffer(data[b:e], dtype='<f4').reshape(v['shape']).copy())
    return out


class HfClip(nn.Module):
    def __init__(self, w, cfg):
        super().__init__()
        self.w, self.cfg = w, cfg
        C, P = cfg['hidden_size'], cfg['patch_size']
        self.conv = nn.Conv2d(3, C, P, stride=P, bias=False)
        self.conv.weight.data = w['vision_model.embeddings.patch_embedding.weight']

    def forward(self, px):
        w, cfg = self.w, self.cfg
        C, H = cfg['hidden_size'], cfg['num_attention_heads']
        d, eps = C // H, cfg['layer_norm_eps']
        p = 'vision_model.'
        B = px.shape[0]
        x = self.conv(px).flatten(2).transpose(1, 2)
        cls = w[p + 'embeddings.class_embedding'].expand(B, 1, -1)
        x = torch.cat([cls, x], 1) + w[p + 'embeddings.position_embedding.weight']
        x = Fn.layer_norm(x, (C,), w[p + 'pre_layrnorm.weight'], w[p + 'pre_layrnorm.bias'], eps)
        for i in range(cfg['num_hidden_layers']):
            l = f'{p}encoder.layers.{i}.'
            g = lambda n: (w[l + n + '.weight'], w[l + n + '.bias'])  # noqa: E731
            a = Fn.layer_norm(x, (C,), *g('layer_norm1'), eps)
            T = a.shape[1]
            q = (Fn.linear(a, *g('self_attn.q_proj')) * (d ** -0.5)).view(B, T, H, d).transpose(1, 2).reshape(B * H, T, d)
            k = Fn.linear(a, *g('self_attn.k_proj')).view(B, T, H, d).transpose(1, 2).reshape(B * H, T, d)
            v = Fn.linear(a, *g('self_attn.v_proj')).view(B, T, H, d).transpose(1, 2).reshape(B * H, T, d)
            att = torch.softmax(torch.bmm(q, k.transpose(1, 2)), -1)
            o = torch.bmm(att, v).view(B, H, T, d).transpose(1, 2).reshape(B, T, C)
            x = x + Fn.linear(o, *g('self_attn.out_proj'))
            f = Fn.layer_norm(x, (C,), *g('layer_norm2'), eps)
            h = Fn.linear(f, *g('mlp.fc1'))
            x = x + Fn.linear(h * torch.sigmoid(1.702 * h), *g('mlp.fc2'))
        pooled = Fn.layer_norm(x[:, 0], (C,), w[p + 'post_layernorm.weight'], w[p + 'post_layernorm.bias'], eps)
        return pooled @ w['visual_projection.weight'].T


class FastPath(nn.Module):
    def __init__(self, w, cfg):
        super().__init__()
        self.w, self.cfg = w, cfg
        C, P, H = cfg['hidden_size'], cfg['patch_size'], cfg['num_attention_heads']
        self.conv = nn.Conv2d(3, C, P, stride=P, bias=False)
        self.conv.weight.data = w['vision_model.embeddings.patch_embedding.weight']
        self.layers = nn.ModuleList()
        for i in range(cfg['num_hidden_layers']):
            l = f'vision_model.encoder.layers.{i}.'
            m = nn.TransformerEncoderLayer(C, H, cfg['intermediate_size'], dropout=0.0, activation='gelu',
                                           layer_norm_eps=cfg['layer_norm_eps'], batch_first=True, norm_first=True)
            m.self_attn.in_proj_weight.data = torch.cat([w[l + f'self_attn.{n}_proj.weight'] for n in 'qkv'])
            m.self_attn.in_proj_bias.data = torch.cat([w[l + f'self_attn.{n}_proj.bias'] for n in 'qkv'])
            m.self_attn.out_proj.weight.data = w[l + 'self_attn.out_proj.weight']
            m.self_attn.out_proj.bias.data = w[l + 'self_attn.out_proj.bias']
            m.norm1.weight.data, m.norm1.bias.data = w[l + 'layer_norm1.weight'], w[l + 'layer_norm1.bias']
            m.norm2.weight.data, m.norm2.bias.data = w[l + 'layer_norm2.weight'], w[l + 'layer_norm2.bias']
            m.linear1.weight.data, m.linear1.bias.data = w[l + 'mlp.fc1.weight'], w[l + 'mlp.fc1.bias']
            m.linear2.weight.data, m.linear2.bias.data = w[l + 'mlp.fc2.weight'], w[l + 'mlp.fc2.bias']
            self.layers.append(m)

    def forward(self, px):
        w, cfg = self.w, self.cfg
        C, eps, p = cfg['hidden_size'], cfg['layer_norm_eps'], 'vision_model.'
        B = px.shape[0]
        x = self.conv(px).flatten(2).transpose(1, 2)
        x = torch.cat([w[p + 'embeddings.class_embedding'].expand(B, 1, -1), x], 1) + w[p + 'embeddings.position_embedding.weight']
        x = Fn.layer_norm(x, (C,), w[p + 'pre_layrnorm.weight'], w[p + 'pre_layrnorm.bias'], eps)
        for m in self.layers:
            x = m(x)
        pooled = Fn.layer_norm(x[:, 0], (C,), w[p + 'post_layernorm.weight'], w[p + 'post_layernorm.bias'], eps)
        return pooled @ w['visual_projection.weight'].T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('dir')
    ap.add_argument('pixels')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--runs', type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = json.load(open(args.dir + '/config.json'))
    w = read_safetensors(args.dir + '/model.safetensors')
    S = cfg['image_size']
    px = torch.from_numpy(np.fromfile(args.pixels, dtype='<f4')).reshape(-1, 3, S, S)
    res = {'torch': torch.__version__, 'threads': torch.get_num_threads(), 'batch': px.shape[0], 'configs': {}}
    try:
        res['blas'] = torch.__config__.show().split('BLAS_INFO=')[1].split(',')[0]
    except IndexError:
        res['blas'] = '?'
    def jit(w, cfg):
        with torch.no_grad():
            return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(HfClip(w, cfg).eval(), px[:2])))

    for name, M in [('hf', HfClip), ('fastpath', FastPath), ('jit', jit), ('autocast_bf16', HfClip)]:
        model = M(w, cfg).eval()
        autocast = torch.autocast('cpu', dtype=torch.bfloat16, enabled=name == 'autocast_bf16')
        with torch.inference_mode(), autocast:
            model(px[:2])  # warm-up (allocator, BLAS buffers, thread wake-up)
            times, cpu = [], []
            for _ in range(args.runs):
                t0, c0 = time.perf_counter(), time.process_time()
                feats = model(px)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        s = min(times)
        # process CPU seconds (all threads): what the run cost the machine, less sensitive to other load
        res['configs'][name] = {'images_per_s': px.shape[0] / s, 'seconds': s, 'cpu_seconds': min(cpu)}
        if name == 'hf':
            res['features'] = feats.numpy().astype(float).tolist()
        if name == 'autocast_bf16':
            res['features_bf16'] = feats.float().numpy().astype(float).tolist()
    print(json.dumps(res))


if __name__ == '__main__':
    main()
