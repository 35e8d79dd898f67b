#!/usr/bin/env python3
"""Reference image encoders (../shared/SPEC.md §7, §9) and tiny random folders in Hugging Face layout.

Writes test/golden/encoders/<name>/ (config.json + safetensors, written by hand) and
test/golden/encoders/golden.json (input pixels and the expected features) for lib/encoder's tests:

  vit-f32    ViTForImageClassification ("vit." prefix, classifier), F32: checked against
             torchvision's VisionTransformer (an independent implementation) with mapped weights
  vit-bf16   ViTModel (no prefix), BF16 weights (the same values rounded to bf16)
  clip-f32   CLIPModel (vision_config nested, a text tower and int64 position_ids to ignore), F32,
             in two shards with model.safetensors.index.json
  clip-f16   CLIPVisionModelWithProjection (config at the top level), F16

Every expected value is computed in float64 from the weights as stored (after rounding to
f16/bf16): torchvision for vit-f32, and for all four by `encoder_forward` below, a plain torch
implementation of the published pre-norm ViT/CLIP (patches by reshaping, not conv), which also
gives the §9 prompt branch (per-head tanh gates, prompt keys/values through the layer's k/v
projections with biases, a separate softmax). It shares no code with lib/encoder.

Usage (from the repository root; ~2 s, byte-identical output between runs):
    /usr/bin/python3 tools/reference/encoder_reference.py --outdir test/golden/encoders
"""
import argparse
import base64
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as Fn
from torchvision.models.vision_transformer import VisionTransformer

torch.set_default_dtype(torch.float64)

C, H, F, LAYERS, S, P, CIN, B = 16, 2, 24, 2, 8, 4, 3, 3
T = 1 + (S // P) ** 2
PROJ, LABELS = 6, 5


def b64(a):
    return base64.b64encode(np.ascontiguousarray(np.asarray(a, dtype=np.float32)).tobytes()).decode('ascii')


# --------------------------------------------------------------- safetensors by hand --

def to_bytes(a, dtype):
    a = np.ascontiguousarray(a)
    if dtype == 'F32':
        return a.astype('<f4').tobytes()
    if dtype == 'F16':
        return a.astype('<f2').tobytes()
    if dtype == 'BF16':
        bits = a.astype('<f4').view('<u4').astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype('<u2').tobytes()
    if dtype == 'I64':
        return a.astype('<i8').tobytes()
    raise ValueError(dtype)


def round_to(a, dtype):
    """the values a file of `dtype` holds, as float64"""
    if dtype == 'F32':
        return a.astype(np.float32).astype(np.float64)
    if dtype == 'F16':
        return a.astype(np.float16).astype(np.float64)
    raw = np.frombuffer(to_bytes(a, 'BF16'), dtype='<u2').astype(np.uint32) << 16
    return raw.view(np.float32).astype(np.float64).reshape(a.shape)


def write_safetensors(path, tensors, dtype):
    """tensors: list of (name, array[, dtype])"""
    header, blobs, off = {}, [], 0
    for t in tensors:
        name, a = t[0], t[1]
        dt = t[2] if len(t) > 2 else dtype
        blob = to_bytes(a, dt)
        header[name] = {'dtype': dt, 'shape': list(a.shape), 'data_offsets': [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    js = json.dumps(header).encode()
    js += b' ' * ((8 - len(js) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(js)) + js + b''.join(blobs))


# --------------------------------------------------------------- the reference forward --

def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def act(x, kind):
    if kind == 'quick_gelu':
        return x * torch.sigmoid(1.702 * x)
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def encoder_forward(w, cfg, pixels, feature_layers, prompts=None, gates=None):
    """w: generic names (see generic_weights); pixels (B, Cin, S, S) float64.
    prompts (L, K, C) and gates (L, H) for the top L layers (SPEC §9).
    Returns (B, M, D) features and the classifier logits (ViT with a classifier)."""
    Bn = pixels.shape[0]
    g = cfg['S'] // cfg['P']
    # patches: (B, Cin, g, P, g, P) -> (B, g, g, Cin, P, P) -> (B, N, Cin*P*P), Conv2d weight order
    pt = pixels.reshape(Bn, cfg['Cin'], g, cfg['P'], g, cfg['P']).permute(0, 2, 4, 1, 3, 5).reshape(Bn, g * g, -1)
    x = pt @ w['patch_w'].reshape(cfg['C'], -1).T
    if 'patch_b' in w:
        x = x + w['patch_b']
    x = torch.cat([w['cls'].reshape(1, 1, -1).expand(Bn, 1, -1), x], 1) + w['pos']
    if 'pre_w' in w:
        x = layer_norm(x, w['pre_w'], w['pre_b'], cfg['eps'])
    nl, nh = len(w['layers']), cfg['H']
    d = cfg['C'] // nh
    L = 0 if prompts is None else prompts.shape[0]
    hs = []
    for i, lw in enumerate(w['layers']):
        a = layer_norm(x, lw['ln1w'], lw['ln1b'], cfg['eps'])
        q = (a @ lw['wq'].T + lw['bq']).reshape(Bn, -1, nh, d).transpose(1, 2)
        k = (a @ lw['wk'].T + lw['bk']).reshape(Bn, -1, nh, d).transpose(1, 2)
        v = (a @ lw['wv'].T + lw['bv']).reshape(Bn, -1, nh, d).transpose(1, 2)
        o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v  # (B, H, T, d)
        if L and i >= nl - L:
            pr = prompts[i - (nl - L)]
            pk = (pr @ lw['wk'].T + lw['bk']).reshape(-1, nh, d).transpose(0, 1)  # (H, K, d)
            pv = (pr @ lw['wv'].T + lw['bv']).reshape(-1, nh, d).transpose(0, 1)
            ap = torch.softmax(q @ pk.transpose(-1, -2) / math.sqrt(d), -1)  # (B, H, T, K)
            o = o + torch.tanh(gates[i - (nl - L)]).reshape(1, nh, 1, 1) * (ap @ pv)
        o = o.transpose(1, 2).reshape(Bn, -1, cfg['C'])
        x = x + o @ lw['wo'].T + lw['bo']
        f = layer_norm(x, lw['ln2w'], lw['ln2b'], cfg['eps'])
        x = x + act(f @ lw['w1'].T + lw['b1'], cfg['act']) @ lw['w2'].T + lw['b2']
        hs.append(x)
    feats = []
    for l in feature_layers:
        h = hs[l - 1 if l > 0 else nl + l]
        f = layer_norm(h[:, 0], w['post_w'], w['post_b'], cfg['eps'])
        if 'proj' in w:
            f = f @ w['proj'].T
        feats.append(f)
    logits = None
    if 'cls_w' in w:
        logits = layer_norm(hs[-1][:, 0], w['post_w'], w['post_b'], cfg['eps']) @ w['cls_w'].T + w['cls_b']
    return torch.stack(feats, 1), logits


def random_weights(rng, family, with_proj, with_classifier):
    n = lambda *s, sc=0.3: rng.normal(0, sc, s)  # noqa: E731
    ln = lambda: (1 + n(C, sc=0.1), n(C, sc=0.1))  # noqa: E731
    w = {'patch_w': n(C, CIN, P, P, sc=0.2), 'cls': n(C, sc=0.5), 'pos': n(T, C, sc=0.5), 'layers': []}
    if family == 'vit':
        w['patch_b'] = n(C, sc=0.1)
    else:
        w['pre_w'], w['pre_b'] = ln()
    for _ in range(LAYERS):
        lw = {}
        lw['ln1w'], lw['ln1b'] = ln()
        for m in 'qkvo':
            lw['w' + m], lw['b' + m] = n(C, C), n(C, sc=0.1)
        lw['ln2w'], lw['ln2b'] = ln()
        lw['w1'], lw['b1'], lw['w2'], lw['b2'] = n(F, C), n(F, sc=0.1), n(C, F), n(C, sc=0.1)
        w['layers'].append(lw)
    w['post_w'], w['post_b'] = ln()
    if with_proj:
        w['proj'] = n(PROJ, C)
    if with_classifier:
        w['cls_w'], w['cls_b'] = n(LABELS, C), n(LABELS, sc=0.1)
    return w


def map_weights(w, f):
    out = {k: f(v) for k, v in w.items() if k != 'layers'}
    out['layers'] = [{k: f(v) for k, v in lw.items()} for lw in w['layers']]
    return out


LAYER_KEYS = {
    'clip': {'ln1w': 'layer_norm1.weight', 'ln1b': 'layer_norm1.bias', 'wq': 'self_attn.q_proj.weight',
             'bq': 'self_attn.q_proj.bias', 'wk': 'self_attn.k_proj.weight', 'bk': 'self_attn.k_proj.bias',
             'wv': 'self_attn.v_proj.weight', 'bv': 'self_attn.v_proj.bias', 'wo': 'self_attn.out_proj.weight',
             'bo': 'self_attn.out_proj.bias', 'ln2w': 'layer_norm2.weight', 'ln2b': 'layer_norm2.bias',
             'w1': 'mlp.fc1.weight', 'b1': 'mlp.fc1.bias', 'w2': 'mlp.fc2.weight', 'b2': 'mlp.fc2.bias'},
    'vit': {'ln1w': 'layernorm_before.weight', 'ln1b': 'layernorm_before.bias',
            'wq': 'attention.attention.query.weight', 'bq': 'attention.attention.query.bias',
            'wk': 'attention.attention.key.weight', 'bk': 'attention.attention.key.bias',
            'wv': 'attention.attention.value.weight', 'bv': 'attention.attention.value.bias',
            'wo': 'attention.output.dense.weight', 'bo': 'attention.output.dense.bias',
            'ln2w': 'layernorm_after.weight', 'ln2b': 'layernorm_after.bias',
            'w1': 'intermediate.dense.weight', 'b1': 'intermediate.dense.bias',
            'w2': 'output.dense.weight', 'b2': 'output.dense.bias'},
}


def hf_tensors(w, family, prefix):
    out = []
    if family == 'clip':
        p = 'vision_model.'
        out += [(p + 'embeddings.class_embedding', w['cls']), (p + 'embeddings.patch_embedding.weight', w['patch_w']),
                (p + 'embeddings.position_embedding.weight', w['pos']),
                (p + 'pre_layrnorm.weight', w['pre_w']), (p + 'pre_layrnorm.bias', w['pre_b'])]
        for i, lw in enumerate(w['layers']):
            out += [(f'{p}encoder.layers.{i}.{LAYER_KEYS["clip"][k]}', v) for k, v in lw.items()]
        out += [(p + 'post_layernorm.weight', w['post_w']), (p + 'post_layernorm.bias', w['post_b'])]
        if 'proj' in w:
            out.append(('visual_projection.weight', w['proj']))
    else:
        p = prefix
        out += [(p + 'embeddings.cls_token', w['cls'].reshape(1, 1, C)),
                (p + 'embeddings.position_embeddings', w['pos'].reshape(1, T, C)),
                (p + 'embeddings.patch_embeddings.projection.weight', w['patch_w']),
                (p + 'embeddings.patch_embeddings.projection.bias', w['patch_b'])]
        for i, lw in enumerate(w['layers']):
            out += [(f'{p}encoder.layer.{i}.{LAYER_KEYS["vit"][k]}', v) for k, v in lw.items()]
        out += [(p + 'layernorm.weight', w['post_w']), (p + 'layernorm.bias', w['post_b'])]
        if 'cls_w' in w:
            out += [('classifier.weight', w['cls_w']), ('classifier.bias', w['cls_b'])]
    return out


def torchvision_features(w, pixels, feature_layers):
    """the same ViT through torchvision's VisionTransformer (mapped weights), float64"""
    m = VisionTransformer(S, P, LAYERS, H, C, F, num_classes=LABELS).double().eval()
    assert abs(m.encoder.ln.eps - 1e-6) < 1e-18
    sd = {'class_token': w['cls'].reshape(1, 1, C), 'conv_proj.weight': w['patch_w'], 'conv_proj.bias': w['patch_b'],
          'encoder.pos_embedding': w['pos'].reshape(1, T, C), 'encoder.ln.weight': w['post_w'],
          'encoder.ln.bias': w['post_b'], 'heads.head.weight': w['cls_w'], 'heads.head.bias': w['cls_b']}
    for i, lw in enumerate(w['layers']):
        p = f'encoder.layers.encoder_layer_{i}.'
        sd.update({p + 'ln_1.weight': lw['ln1w'], p + 'ln_1.bias': lw['ln1b'],
                   p + 'self_attention.in_proj_weight': np.concatenate([lw['wq'], lw['wk'], lw['wv']]),
                   p + 'self_attention.in_proj_bias': np.concatenate([lw['bq'], lw['bk'], lw['bv']]),
                   p + 'self_attention.out_proj.weight': lw['wo'], p + 'self_attention.out_proj.bias': lw['bo'],
                   p + 'ln_2.weight': lw['ln2w'], p + 'ln_2.bias': lw['ln2b'],
                   p + 'mlp.0.weight': lw['w1'], p + 'mlp.0.bias': lw['b1'],
                   p + 'mlp.3.weight': lw['w2'], p + 'mlp.3.bias': lw['b2']})
    m.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in sd.items()})
    x = torch.tensor(pixels)
    with torch.no_grad():
        logits = m(x)
        # hidden states after each layer, through torchvision's own modules
        h = m._process_input(x)
        h = torch.cat([m.class_token.expand(h.shape[0], -1, -1), h], 1) + m.encoder.pos_embedding
        hs = []
        for layer in m.encoder.layers:
            h = layer(h)
            hs.append(h)
        feats = torch.stack([m.encoder.ln(hs[l - 1 if l > 0 else LAYERS + l])[:, 0] for l in feature_layers], 1)
    return feats.numpy(), logits.numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--outdir', required=True)
    args = ap.parse_args()
    rng = np.random.default_rng(20261207)
    pixels = rng.normal(0, 1, (B, CIN, S, S)).astype(np.float32).astype(np.float64)
    L, K = 1, 3
    prompts = {f'L{l}': rng.normal(0, 1, (l, K, C)) for l in (1, 2)}
    gates = {f'L{l}': rng.normal(0, 1, (l, H)) for l in (1, 2)}
    golden = {'generator': 'tools/reference/encoder_reference.py', 'torch': torch.__version__,
              'pixels': b64(pixels), 'pixelShape': [B, CIN, S, S], 'folders': {}}
    os.makedirs(args.outdir, exist_ok=True)

    specs = [('vit-f32', 'vit', 'F32', 'ViTForImageClassification'), ('vit-bf16', 'vit', 'BF16', 'ViTModel'),
             ('clip-f32', 'clip', 'F32', 'CLIPModel'), ('clip-f16', 'clip', 'F16', 'CLIPVisionModelWithProjection')]
    for name, family, dtype, arch in specs:
        raw = random_weights(rng, family, arch != 'CLIPVisionModel' and family == 'clip', arch == 'ViTForImageClassification')
        w64 = map_weights(raw, lambda a: round_to(np.asarray(a), dtype))
        cfg = {'C': C, 'H': H, 'S': S, 'P': P, 'Cin': CIN, 'eps': 1e-6 if family == 'vit' else 1e-5,
               'act': 'gelu' if family == 'vit' else 'quick_gelu'}
        vision = {'hidden_size': C, 'intermediate_size': F, 'num_attention_heads': H, 'num_hidden_layers': LAYERS,
                  'image_size': S, 'patch_size': P, 'num_channels': CIN, 'layer_norm_eps': cfg['eps'],
                  'hidden_act': cfg['act']}
        if arch == 'CLIPModel':
            config = {'architectures': [arch], 'model_type': 'clip', 'projection_dim': PROJ,
                      'text_config': {'hidden_size': 4, 'num_hidden_layers': 1},
                      'vision_config': dict(vision, model_type='clip_vision_model')}
        elif family == 'clip':
            config = dict(vision, architectures=[arch], model_type='clip_vision_model', projection_dim=PROJ)
        else:
            config = dict(vision, architectures=[arch], model_type='vit', qkv_bias=True)
            if arch == 'ViTForImageClassification':
                config['id2label'] = {str(i): f'class {chr(65 + i)}' for i in range(LABELS)}
                config['label2id'] = {v: int(k) for k, v in config['id2label'].items()}
        d = os.path.join(args.outdir, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, 'config.json'), 'w') as f:
            json.dump(config, f, indent=2)
        tensors = [(k, np.asarray(v)) for k, v in hf_tensors(raw, family, 'vit.' if arch == 'ViTForImageClassification' else '')]
        if arch == 'CLIPModel':
            # the text tower, logit_scale and int64 position_ids are in such files and ignored
            tensors += [('text_model.embeddings.token_embedding.weight', rng.normal(0, 1, (7, 4))),
                        ('text_projection.weight', rng.normal(0, 1, (PROJ, 4))), ('logit_scale', np.array(2.6592)),
                        ('vision_model.embeddings.position_ids', np.arange(T).reshape(1, T), 'I64')]
            half = len(tensors) // 2
            shards = [tensors[:half], tensors[half:]]
            wm = {}
            for i, sh in enumerate(shards):
                fn = f'model-{i + 1:05d}-of-00002.safetensors'
                write_safetensors(os.path.join(d, fn), sh, dtype)
                wm.update({t[0]: fn for t in sh})
            with open(os.path.join(d, 'model.safetensors.index.json'), 'w') as f:
                json.dump({'metadata': {}, 'weight_map': wm}, f, indent=2)
        else:
            write_safetensors(os.path.join(d, 'model.safetensors'), tensors, dtype)

        tw = map_weights(w64, lambda a: torch.tensor(a))
        px = torch.tensor(pixels)
        entry = {'family': family, 'dtype': dtype, 'architecture': arch, 'features': {}, 'prompted': {}}
        for fl in ([-1], [1, 2], [2, -2]):
            feats, logits = encoder_forward(tw, cfg, px, fl)
            entry['features'][','.join(map(str, fl))] = b64(feats.numpy())
        if logits is not None:
            entry['logits'] = b64(logits.numpy())
        for key in prompts:
            feats, logits = encoder_forward(tw, cfg, px, [-1], torch.tensor(prompts[key]), torch.tensor(gates[key]))
            entry['prompted'][key] = {'features': b64(feats.numpy())}
            if logits is not None:
                entry['prompted'][key]['logits'] = b64(logits.numpy())
        if name == 'vit-f32':
            # the independent check: torchvision agrees with encoder_forward in float64
            for fl in ([-1], [1, 2]):
                tv, tv_logits = torchvision_features(w64, pixels, fl)
                ours, ours_logits = encoder_forward(tw, cfg, px, fl)
                assert np.abs(tv - ours.numpy()).max() < 1e-12, np.abs(tv - ours.numpy()).max()
                assert np.abs(tv_logits - ours_logits.numpy()).max() < 1e-12
                entry['torchvision'] = entry.get('torchvision', {})
                entry['torchvision'][','.join(map(str, fl))] = b64(tv)
            entry['torchvisionLogits'] = b64(tv_logits)
        golden['folders'][name] = entry
    golden['prompts'] = {k: {'values': b64(v), 'shape': list(v.shape), 'gates': b64(gates[k]), 'gateShape': list(gates[k].shape)}
                         for k, v in prompts.items()}
    with open(os.path.join(args.outdir, 'golden.json'), 'w') as f:
        json.dump(golden, f, indent=1)
        f.write('\n')


if __name__ == '__main__':
    main()
