#!/usr/bin/env python3
"""Reference text encoders (BERT, RoBERTa; ../shared/SPEC.md §9) and tiny random folders in Hugging Face layout.

Writes test/golden/text-encoders/<name>/ (config.json + safetensors, written by hand) and
test/golden/text-encoders/golden.json (packed input ids/types/offsets and the expected last hidden
states and QA logits) for lib/text's tests:

  roberta-qa-f32   RobertaForQuestionAnswering ("roberta." prefix, qa_outputs), F32, pad_token_id 1
                   (positions from 2), type_vocab_size 1
  roberta-f16      RobertaModel (no prefix), F16
  bert-qa-bf16     BertForQuestionAnswering ("bert." prefix, qa_outputs), BF16, two token types
  bert-f32         BertModel (no prefix), F32, in two shards with model.safetensors.index.json;
                   checked here against torch.nn.TransformerEncoderLayer (post-norm, exact GELU: an
                   independent implementation of the same layer) with mapped weights

Each text of the batch is encoded on its own (no packing, no mask); expected values in float64
from the weights as stored (after rounding to f16/bf16), by `text_forward` below: a plain torch
implementation of the published BERT/RoBERTa encoder (embeddings + LayerNorm, post-norm layers),
with the §9 prompt branch in the top L layers. It shares no code with lib/text.

Usage (from the repository root; ~2 s, byte-identical output between runs):
    /usr/bin/python3 tools/reference/text_encoder_reference.py --outdir test/golden/text-encoders
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from encoder_reference import b64, layer_norm, round_to, write_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)

C, H, F, LAYERS, V = 16, 2, 24, 2, 40
LENGTHS = [5, 9, 3]


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def text_forward(w, cfg, ids, types, prompts=None, gates=None):
    """one text: ids, types (T) -> last hidden states (T, C)"""
    T = len(ids)
    d = C // H
    pos = torch.arange(T) + cfg['pos_offset']
    x = w['word'][ids] + w['pos'][pos] + w['type'][types]
    x = layer_norm(x, w['emb_ln_w'], w['emb_ln_b'], cfg['eps'])
    L = 0 if prompts is None else prompts.shape[0]
    for i, lw in enumerate(w['layers']):
        q = (x @ lw['wq'].T + lw['bq']).view(T, H, d).transpose(0, 1)
        k = (x @ lw['wk'].T + lw['bk']).view(T, H, d).transpose(0, 1)
        v = (x @ lw['wv'].T + lw['bv']).view(T, H, d).transpose(0, 1)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), -1) @ v  # (H, T, d)
        a = i - (LAYERS - L)
        if a >= 0:
            K = prompts.shape[1]
            pk = (prompts[a] @ lw['wk'].T + lw['bk']).view(K, H, d).transpose(0, 1)
            pv = (prompts[a] @ lw['wv'].T + lw['bv']).view(K, H, d).transpose(0, 1)
            pa = torch.softmax(q @ pk.transpose(1, 2) / math.sqrt(d), -1) @ pv
            att = att + torch.tanh(gates[a]).view(H, 1, 1) * pa
        o = att.transpose(0, 1).reshape(T, C)
        x = layer_norm(x + o @ lw['wo'].T + lw['bo'], lw['ln1w'], lw['ln1b'], cfg['eps'])
        f = gelu(x @ lw['w1'].T + lw['b1']) @ lw['w2'].T + lw['b2']
        x = layer_norm(x + f, lw['ln2w'], lw['ln2b'], cfg['eps'])
    return x


def random_weights(rng, n_pos, n_types, qa):
    g = lambda *s: rng.normal(0, 0.5, s)
    w = {'word': g(V, C), 'pos': g(n_pos, C), 'type': g(n_types, C),
         'emb_ln_w': 1 + 0.2 * g(C), 'emb_ln_b': 0.2 * g(C), 'layers': []}
    for _ in range(LAYERS):
        w['layers'].append({'wq': g(C, C), 'bq': g(C), 'wk': g(C, C), 'bk': g(C), 'wv': g(C, C), 'bv': g(C),
                            'wo': g(C, C), 'bo': g(C), 'ln1w': 1 + 0.2 * g(C), 'ln1b': 0.2 * g(C),
                            'w1': g(F, C), 'b1': g(F), 'w2': g(C, F), 'b2': g(C),
                            'ln2w': 1 + 0.2 * g(C), 'ln2b': 0.2 * g(C)})
    if qa:
        w['qa_w'], w['qa_b'] = g(2, C), g(2)
    return w


def map_weights(w, f):
    out = {k: f(v) for k, v in w.items() if k != 'layers'}
    out['layers'] = [{k: f(v) for k, v in lw.items()} for lw in w['layers']]
    return out


def hf_tensors(w, prefix):
    e = prefix + 'embeddings.'
    t = [(e + 'word_embeddings.weight', w['word']), (e + 'position_embeddings.weight', w['pos']),
         (e + 'token_type_embeddings.weight', w['type']), (e + 'LayerNorm.weight', w['emb_ln_w']),
         (e + 'LayerNorm.bias', w['emb_ln_b'])]
    names = {'wq': 'attention.self.query.weight', 'bq': 'attention.self.query.bias',
             'wk': 'attention.self.key.weight', 'bk': 'attention.self.key.bias',
             'wv': 'attention.self.value.weight', 'bv': 'attention.self.value.bias',
             'wo': 'attention.output.dense.weight', 'bo': 'attention.output.dense.bias',
             'ln1w': 'attention.output.LayerNorm.weight', 'ln1b': 'attention.output.LayerNorm.bias',
             'w1': 'intermediate.dense.weight', 'b1': 'intermediate.dense.bias',
             'w2': 'output.dense.weight', 'b2': 'output.dense.bias',
             'ln2w': 'output.LayerNorm.weight', 'ln2b': 'output.LayerNorm.bias'}
    for i, lw in enumerate(w['layers']):
        t += [(f'{prefix}encoder.layer.{i}.{names[k]}', v) for k, v in lw.items()]
    # the pooler is in such files and not used by extractive QA
    t += [(prefix + 'pooler.dense.weight', np.eye(C)), (prefix + 'pooler.dense.bias', np.zeros(C))]
    if 'qa_w' in w:
        t += [('qa_outputs.weight', w['qa_w']), ('qa_outputs.bias', w['qa_b'])]
    return t


def torch_layer_check(w, cfg, ids, types):
    """the same forward with torch.nn.TransformerEncoderLayer (post-norm, gelu) for the layers"""
    T = len(ids)
    pos = torch.arange(T) + cfg['pos_offset']
    x = layer_norm(w['word'][ids] + w['pos'][pos] + w['type'][types], w['emb_ln_w'], w['emb_ln_b'], cfg['eps'])
    x = x.unsqueeze(0)
    for lw in w['layers']:
        layer = torch.nn.TransformerEncoderLayer(C, H, F, dropout=0.0, activation='gelu', layer_norm_eps=cfg['eps'],
                                                 batch_first=True, norm_first=False)
        with torch.no_grad():
            layer.self_attn.in_proj_weight.copy_(torch.cat([lw['wq'], lw['wk'], lw['wv']]))
            layer.self_attn.in_proj_bias.copy_(torch.cat([lw['bq'], lw['bk'], lw['bv']]))
            layer.self_attn.out_proj.weight.copy_(lw['wo'])
            layer.self_attn.out_proj.bias.copy_(lw['bo'])
            layer.norm1.weight.copy_(lw['ln1w'])
            layer.norm1.bias.copy_(lw['ln1b'])
            layer.linear1.weight.copy_(lw['w1'])
            layer.linear1.bias.copy_(lw['b1'])
            layer.linear2.weight.copy_(lw['w2'])
            layer.linear2.bias.copy_(lw['b2'])
            layer.norm2.weight.copy_(lw['ln2w'])
            layer.norm2.bias.copy_(lw['ln2b'])
        layer.eval()
        with torch.no_grad():
            x = layer(x)
    return x[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--outdir', required=True)
    args = ap.parse_args()
    rng = np.random.default_rng(20261208)
    K = 3
    prompts = {f'L{l}': rng.normal(0, 1, (l, K, C)) for l in (1, 2)}
    gates = {f'L{l}': rng.normal(0, 1, (l, H)) for l in (1, 2)}
    golden = {'generator': 'tools/reference/text_encoder_reference.py', 'torch': torch.__version__,
              'lengths': LENGTHS, 'K': K, 'folders': {},
              'prompts': {k: {'values': b64(v), 'shape': list(v.shape), 'gates': b64(gates[k]), 'gateShape': list(gates[k].shape)}
                          for k, v in prompts.items()}}
    os.makedirs(args.outdir, exist_ok=True)
    specs = [('roberta-qa-f32', 'roberta', 'F32', 'RobertaForQuestionAnswering'),
             ('roberta-f16', 'roberta', 'F16', 'RobertaModel'),
             ('bert-qa-bf16', 'bert', 'BF16', 'BertForQuestionAnswering'),
             ('bert-f32', 'bert', 'F32', 'BertModel')]
    for name, family, dtype, arch in specs:
        roberta = family == 'roberta'
        pad = 1 if roberta else 0
        n_types = 1 if roberta else 2
        max_pos = 14 if roberta else 12  # RoBERTa: 12 tokens from position pad + 1 = 2
        qa = arch.endswith('QuestionAnswering')
        raw = random_weights(rng, max_pos, n_types, qa)
        w64 = map_weights(raw, lambda a: round_to(np.asarray(a, dtype=np.float64), dtype))
        cfg = {'pos_offset': pad + 1 if roberta else 0, 'eps': 1e-5 if roberta else 1e-12}
        config = {'architectures': [arch], 'model_type': family, 'hidden_size': C, 'intermediate_size': F,
                  'num_attention_heads': H, 'num_hidden_layers': LAYERS, 'vocab_size': V,
                  'max_position_embeddings': max_pos, 'type_vocab_size': n_types, 'pad_token_id': pad,
                  'layer_norm_eps': cfg['eps'], 'hidden_act': 'gelu', 'position_embedding_type': 'absolute',
                  'hidden_dropout_prob': 0.1, 'attention_probs_dropout_prob': 0.1}
        d = os.path.join(args.outdir, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, 'config.json'), 'w') as f:
            json.dump(config, f, indent=2)
        prefix = (family + '.') if qa else ''
        tensors = [(k, np.asarray(v)) for k, v in hf_tensors(raw, prefix)]
        if name == 'bert-f32':
            half = len(tensors) // 2
            wm = {}
            for i, sh in enumerate([tensors[:half], tensors[half:]]):
                fn = f'model-{i + 1:05d}-of-00002.safetensors'
                write_safetensors(os.path.join(d, fn), sh, dtype)
                wm.update({t[0]: fn for t in sh})
            with open(os.path.join(d, 'model.safetensors.index.json'), 'w') as f:
                json.dump({'metadata': {}, 'weight_map': wm}, f, indent=2)
        else:
            write_safetensors(os.path.join(d, 'model.safetensors'), tensors, dtype)

        # the batch: ids avoid the pad id (any id is legal, this is a test of arithmetic)
        ids = [rng.integers(0, V, n).tolist() for n in LENGTHS]
        types = [rng.integers(0, n_types, n).tolist() for n in LENGTHS]
        tw = map_weights(w64, lambda a: torch.tensor(a))
        entry = {'family': family, 'dtype': dtype, 'architecture': arch,
                 'ids': sum(ids, []), 'types': sum(types, []), 'hidden': None, 'prompted': {}}
        hs = [text_forward(tw, cfg, torch.tensor(i), torch.tensor(t)) for i, t in zip(ids, types)]
        entry['hidden'] = b64(torch.cat(hs).numpy())
        if qa:
            entry['logits'] = b64((torch.cat(hs) @ tw['qa_w'].T + tw['qa_b']).numpy())
        for key in prompts:
            ph = [text_forward(tw, cfg, torch.tensor(i), torch.tensor(t), torch.tensor(prompts[key]), torch.tensor(gates[key]))
                  for i, t in zip(ids, types)]
            entry['prompted'][key] = b64(torch.cat(ph).numpy())
        if name == 'bert-f32':
            for i, t, h in zip(ids, types, hs):
                ref = torch_layer_check(tw, cfg, torch.tensor(i), torch.tensor(t))
                err = (ref - h).abs().max().item()
                assert err < 1e-10, err
            entry['torchLayerCheck'] = 'torch.nn.TransformerEncoderLayer agrees to < 1e-10'
        golden['folders'][name] = entry
    with open(os.path.join(args.outdir, 'golden.json'), 'w') as f:
        json.dump(golden, f, indent=1)


if __name__ == '__main__':
    main()
