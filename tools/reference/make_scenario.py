#!/usr/bin/env python3
"""Build the golden-test scenario files (test/golden/scenario-{a,b,c}.json).

Deterministic: Python's own `random.Random(seed)` (no numpy/torch needed), and the
scenario file records every number the reference and the trainer need (initial
prompts and gates, token ids, labels, learning rate of every step), so nothing
downstream depends on this script's RNG.

Model: llama2.c stories260K (dim 64, 8 heads, 4 KV heads, 5 layers, vocab 512).
Text is tokenised with the model's own tok512.bin (a small pure-Python port of
llama2.c's BPE encoder, see `Tokenizer.encode`).

Usage (from the repository root):
    /usr/bin/python3 tools/reference/make_scenario.py \
        --model ../shared/data/stories260K/stories260K.bin \
        --tokenizer ../shared/data/stories260K/tok512.bin --outdir test/golden
"""
import argparse
import json
import math
import os
import random
import struct

BOS, EOS = 1, 2


# ---------------------------------------------------------------- tokenizer --

class Tokenizer:
    """llama2.c tokenizer.bin: u32 max_token_length, then per token
    {f32 score, i32 len, len bytes}. Byte fallback: byte b -> id b + 3."""

    def __init__(self, path):
        with open(path, "rb") as f:
            data = f.read()
        (self.max_len,) = struct.unpack_from("<I", data, 0)
        off = 4
        self.pieces, self.scores = [], []
        while off < len(data):
            score, n = struct.unpack_from("<fi", data, off)
            off += 8
            self.pieces.append(data[off:off + n])
            off += n
            self.scores.append(score)
        self.lookup = {}
        for i, p in enumerate(self.pieces):
            self.lookup.setdefault(p, i)  # first id wins on duplicates

    def encode(self, text):
        """run.c encode() without BOS/EOS: dummy-prefix space, per-codepoint
        lookup else byte+3, then greedy merges of the best-scoring pair."""
        toks = []
        if text:
            toks.append(self.lookup[b" "])
        for ch in text:
            b = ch.encode("utf-8")
            if b in self.lookup:
                toks.append(self.lookup[b])
            else:
                toks.extend(x + 3 for x in b)
        while True:
            best, best_i, best_id = -1e10, -1, -1
            for i in range(len(toks) - 1):
                merged = self.pieces[toks[i]] + self.pieces[toks[i + 1]]
                j = self.lookup.get(merged)
                if j is not None and self.scores[j] > best:
                    best, best_i, best_id = self.scores[j], i, j
            if best_i < 0:
                break
            toks[best_i:best_i + 2] = [best_id]
        return toks


# ----------------------------------------------------------------- the data --

# Short instruction / response pairs in the TinyStories register (the 260K model
# was trained on TinyStories, so its loss on these is meaningful).
PAIRS = [
    ("Tell a story about a girl and a ball.",
     " Once upon a time, there was a little girl named Lily. She had a big red ball. She loved to play with it in the park every day."),
    ("Write about a dog.",
     " Max was a happy dog. He liked to run in the sun and dig in the sand. One day he found a shiny stick and gave it to his friend."),
    ("What did Tom see?",
     " Tom saw a big bird in the tree. The bird sang a song. Tom smiled and said, \"Hello, bird!\" The bird flew away."),
    ("Tell a story about a cat.",
     " There was a cat named Kitty. Kitty was very sad because she lost her toy. Her mom helped her look for it under the bed."),
    ("Say something kind.",
     " You are a good friend. Thank you for sharing your toys with me. Let's play together again tomorrow."),
    ("Write about the rain.",
     " It was a rainy day. Ben and his sister stayed inside. They made a fort with blankets and read books all day long."),
    ("Why was Sue happy?",
     " Sue was happy because her dad gave her a new doll. She hugged him and said, \"I love you, Dad!\""),
    ("Tell a story about a fish.",
     " A little fish lived in a big blue sea. He wanted to see the world. One day he swam far away and met a kind turtle."),
]


def make_sequence(tok, rng, pair, min_len=20, max_len=60):
    """One Alpaca-style example: ids/labels of equal length, drawn in
    [max(min_len, prompt + 3), max_len] so that at least 3 positions carry a loss.
    full = [BOS] + encode(prompt + output) + [EOS]; ids = full[:-1];
    labels[i] = full[i + 1], or -1 for the prompt part (i + 1 < len(prompt_ids))."""
    instr, out = pair
    prompt = "Q: " + instr + "\nA:"
    prompt_ids = [BOS] + tok.encode(prompt)
    full = [BOS] + tok.encode(prompt + out) + [EOS]
    assert full[:len(prompt_ids)] == prompt_ids, "prompt tokenisation is not a prefix"
    length = rng.randint(max(min_len, len(prompt_ids) + 3), min(max_len, len(full) - 1))
    full = full[:length + 1]
    ids = full[:-1]
    labels = [full[i + 1] if i + 1 >= len(prompt_ids) else -1 for i in range(len(ids))]
    assert len(ids) == length and any(l >= 0 for l in labels)
    return {"ids": ids, "labels": labels}


def f32(x):
    """Round to the nearest float32 so the fp32 trainer and the fp64 reference
    start from the very same numbers."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def lr_schedule(steps, peak, warmup):
    """Linear warmup over `warmup` steps to `peak`, then half-cycle cosine that
    would reach 0 at step index `steps` (one past the last step)."""
    lrs = []
    for s in range(steps):
        if s < warmup:
            lr = peak * (s + 1) / warmup
        else:
            lr = peak * 0.5 * (1.0 + math.cos(math.pi * (s - warmup) / (steps - warmup)))
        lrs.append(f32(lr))
    return lrs


def read_header(path):
    with open(path, "rb") as f:
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", f.read(28))
    return dict(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads,
                n_kv_heads=n_kv, vocab_size=abs(vocab), seq_len=seq_len)


def build(name, cfg, tok, *, gate_mode, gate_scale, clip, micro_per_step, seed,
          adapter_layers=3, adapter_len=4, steps=10):
    rng = random.Random(seed)
    C, H = cfg["dim"], cfg["n_heads"]
    L, K = adapter_layers, adapter_len
    prompts = [[f32(rng.gauss(0.0, 1.0)) for _ in range(C)] for _ in range(L * K)]
    ng = H if gate_mode == "per-head" else 1
    gate_rng = random.Random(seed + 1000)
    gates = [[f32(gate_scale * gate_rng.gauss(0.0, 1.0)) if gate_scale else 0.0
              for _ in range(ng)] for _ in range(L)]
    data_rng = random.Random(seed + 2000)
    lrs = lr_schedule(steps, 1e-2, 3)
    step_list = []
    for s in range(steps):
        mbs = []
        for _ in range(micro_per_step):
            nseq = data_rng.choice([2, 3])
            mb = []
            for _ in range(nseq):
                pair = data_rng.choice(PAIRS)
                mb.append(make_sequence(tok, data_rng, pair))
            mbs.append(mb)
        step_list.append({"lr": lrs[s], "microBatches": mbs})
    return {
        "name": name,
        "model": "stories260K.bin",
        "adapterLayers": L,
        "adapterLen": K,
        "gate": gate_mode,
        "init": {"prompts": prompts, "gates": gates},
        "optimizer": {"betas": [0.9, 0.95], "eps": 1e-8, "weightDecay": 0.02, "clipGrad": clip},
        "steps": step_list,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="../shared/data/stories260K/stories260K.bin")
    ap.add_argument("--tokenizer", default="../shared/data/stories260K/tok512.bin")
    ap.add_argument("--outdir", default="test/golden")
    args = ap.parse_args()

    cfg = read_header(args.model)
    tok = Tokenizer(args.tokenizer)
    # Known answers of the llama2.c encoder for tok512 (shared/data/stories260K/SOURCES.md).
    assert tok.encode("abcdefgh") == [261, 430, 429, 418, 411, 431, 428, 415], tok.encode("abcdefgh")
    assert tok.encode("Once upon a time") == [403, 407, 261, 378], tok.encode("Once upon a time")

    os.makedirs(args.outdir, exist_ok=True)
    # A and B share prompts, data and schedule (same seed); only the gate init differs.
    scenarios = {
        "a": build("A: per-head gate, zero-init (the real init)", cfg, tok,
                   gate_mode="per-head", gate_scale=0.0, clip=None, micro_per_step=1, seed=1),
        "b": build("B: per-head gate, gates 0.1*N(0,1)", cfg, tok,
                   gate_mode="per-head", gate_scale=0.1, clip=None, micro_per_step=1, seed=1),
        # clipGrad 0.15, not 1.0: the step gradient norms of this scenario are 0.11-0.38, so
        # 1.0 would never clip; 0.15 clips about half of the steps.
        "c": build("C: scalar gate 0.1*N(0,1), clipGrad 0.15, 2 micro-batches per step", cfg, tok,
                   gate_mode="scalar", gate_scale=0.1, clip=0.15, micro_per_step=2, seed=3),
    }
    for key, sc in scenarios.items():
        path = os.path.join(args.outdir, f"scenario-{key}.json")
        with open(path, "w") as f:
            json.dump(sc, f, separators=(",", ":"))
            f.write("\n")
        ntok = sum(len(seq["ids"]) for st in sc["steps"] for mb in st["microBatches"] for seq in mb)
        print(f"wrote {path}: {len(sc['steps'])} steps, {ntok} tokens")


if __name__ == "__main__":
    main()
