#!/usr/bin/env python3
"""Independent PyTorch reference of the image-conditioned LLaMA-Adapter (../shared/SPEC.md §8).

Float64 autograd, like adapter_reference.py (whose frozen-model forward it reuses: the frozen
LLaMA and the gated prompt branch are §1-§2, already checked there). New here, written plainly:

    I_p   = fc2 · GELU(fc1 · concat(g_1 .. g_M) + b1) + b2     (exact erf GELU)
    P_l^v = P_l + I_p   for every one of the K prompts of every adapted layer, per sequence;
    a sequence without an image uses P_l.

AdamW with two parameter groups: weight decay on the tensors of two or more dimensions (prompts,
gates, fc1, fc2), none on b1, b2 (SPEC §8).

Dimension letters: C = dim, H = heads, L = adapted layers, K = prompts per layer, M = feature
layers, D = feature size, R = projection width.

Usage (from the repository root):
    /usr/bin/python3 tools/reference/mm_reference.py --make-scenario \
        --base test/golden/scenario-c.json --gates-from test/golden/scenario-b.json \
        --scenario test/golden/scenario-mm.json
    /usr/bin/python3 tools/reference/mm_reference.py \
        --model ../shared/data/stories260K/stories260K.bin \
        --scenario test/golden/scenario-mm.json --out test/golden/golden-mm.json
    /usr/bin/python3 tools/reference/mm_reference.py --self-check \
        --model ../shared/data/stories260K/stories260K.bin
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from adapter_reference import forward, load_llama2c  # noqa: E402  the frozen model + §2 branch


def gelu(x):
    # exact: x * Phi(x)
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def image_prompt(proj, feats):
    """I_p (C,) of one image. feats (M, D); proj: fc1 (R, M*D), b1 (R), fc2 (C, R), b2 (C)."""
    z = proj["fc1"] @ feats.reshape(-1) + proj["b1"]          # (R,)
    return proj["fc2"] @ gelu(z) + proj["b2"]                  # (C,)


def seq_loss_sum(m, seq, prompts, gates, L, proj, features):
    """Sum of CE over the labelled positions of one sequence, with its image's prompts."""
    P = prompts
    if seq.get("image") is not None:
        P = prompts + image_prompt(proj, features[seq["image"]])[None, :]   # (L*K, C)
    logits = forward(m, seq["ids"], P, gates, L)
    labels = torch.tensor(seq["labels"], dtype=torch.long)
    mask = labels != -1
    return torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum")


def params_of(sc, dtype):
    p = {
        "prompts": torch.tensor(sc["init"]["prompts"], dtype=dtype),   # (L*K, C)
        "gates": torch.tensor(sc["init"]["gates"], dtype=dtype),       # (L, H)
        "fc1": torch.tensor(sc["init"]["fc1"], dtype=dtype),           # (R, M*D)
        "b1": torch.tensor(sc["init"]["b1"], dtype=dtype),             # (R,)
        "fc2": torch.tensor(sc["init"]["fc2"], dtype=dtype),           # (C, R)
        "b2": torch.tensor(sc["init"]["b2"], dtype=dtype),             # (C,)
    }
    for t in p.values():
        t.requires_grad_(True)
    return p


ORDER = ["prompts", "gates", "fc1", "b1", "fc2", "b2"]


def run_scenario(m, sc, dtype):
    L = sc["adapterLayers"]
    p = params_of(sc, dtype)
    features = {k: torch.tensor(v, dtype=dtype) for k, v in sc["features"].items()}  # (M, D) each
    o = sc["optimizer"]
    decay = [p["prompts"], p["gates"], p["fc1"], p["fc2"]]       # two or more dimensions (gates: (L, H))
    no_decay = [p["b1"], p["b2"]]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weightDecay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=0.0, betas=tuple(o["betas"]), eps=o["eps"])
    proj = p

    # logits of the first 8 positions of the first image sequence: adapted and frozen
    first = next(s for st in sc["steps"] for mb in st["microBatches"] for s in mb if s.get("image"))
    with torch.no_grad():
        Pv = p["prompts"] + image_prompt(proj, features[first["image"]])[None, :]
        logits0 = forward(m, first["ids"], Pv, p["gates"], L)[:8]
        base0 = forward(m, first["ids"])[:8]
        zero_g = forward(m, first["ids"], Pv, torch.zeros_like(p["gates"]), L)[:8]

    out = {"losses": [], "gradNorms": [], "targetCounts": [], "lrs": []}
    for si, step in enumerate(sc["steps"]):
        opt.zero_grad(set_to_none=False)
        n_targets = sum(1 for mb in step["microBatches"] for s in mb for t in s["labels"] if t != -1)
        step_loss = 0.0
        for mb in step["microBatches"]:
            mb_sum = sum(seq_loss_sum(m, s, p["prompts"], p["gates"], L, proj, features) for s in mb)
            (mb_sum / n_targets).backward()
            step_loss += mb_sum.item() / n_targets
        gn = math.sqrt(sum(p[k].grad.pow(2).sum().item() for k in ORDER))
        if si == 0:
            out["step0"] = {k: p[k].grad.tolist() for k in ORDER}
        for g in opt.param_groups:
            g["lr"] = step["lr"]
        opt.step()
        out["losses"].append(step_loss)
        out["gradNorms"].append(gn)
        out["targetCounts"].append(n_targets)
        out["lrs"].append(step["lr"])
    out["final"] = {k: p[k].detach().tolist() for k in ORDER}
    out["imageLogits0"] = logits0.tolist()
    out["baseLogits0"] = base0.tolist()
    out["meta"] = {"torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""),
                   "scenario": sc.get("name"), "model": m.cfg,
                   "zeroGateEqualsFrozen": bool(torch.equal(zero_g, base0)),
                   "weightDecay": "prompts, gates, fc1, fc2 (>= 2-D); not b1, b2"}
    return out


# ----------------------------------------------------------------- scenario --

def f32(x):
    """Round to float32 (so an fp32 trainer starts from exactly the reference's values)."""
    return torch.as_tensor(x, dtype=torch.float64).to(torch.float32).to(torch.float64).tolist()


def make_scenario(base_path, gates_path, out_path):
    """The sequences, prompts and lrs of an existing scenario (2 micro-batches per step), per-head
    gates 0.1·N(0,1), 4 images (M 2 feature layers of D 6) shared between sequences, every third
    sequence without an image; fc1, fc2 ~ N(0, 1/fan_in); b1, b2 small nonzero (to test their path)."""
    with open(base_path) as f:
        sc = json.load(f)
    with open(gates_path) as f:
        gates = json.load(f)["init"]["gates"]
    g = torch.Generator().manual_seed(11)
    M, D, R, C = 2, 6, 5, len(sc["init"]["prompts"][0])
    keys = ["img/a.png", "img/b.png", "img/c.png", "img/d.png"]
    features = {k: f32(torch.randn(M, D, generator=g, dtype=torch.float64) * 2.0) for k in keys}
    n = 0
    for st in sc["steps"]:
        for mb in st["microBatches"]:
            for s in mb:
                s["image"] = None if n % 3 == 2 else keys[n % len(keys)]
                n += 1
    sc["name"] = "MM: image-conditioned, per-head gates 0.1*N(0,1), 2 micro-batches per step, mixed image/text"
    sc["gate"] = "per-head"
    sc["init"]["gates"] = gates
    sc["init"]["fc1"] = f32(torch.randn(R, M * D, generator=g, dtype=torch.float64) / math.sqrt(M * D))
    sc["init"]["b1"] = f32(torch.randn(R, generator=g, dtype=torch.float64) * 0.1)
    sc["init"]["fc2"] = f32(torch.randn(C, R, generator=g, dtype=torch.float64) / math.sqrt(R))
    sc["init"]["b2"] = f32(torch.randn(C, generator=g, dtype=torch.float64) * 0.1)
    sc["featureLayers"] = [-2, -1]
    sc["featureSize"] = D
    sc["projWidth"] = R
    sc["features"] = features
    sc["optimizer"] = {"betas": [0.9, 0.95], "eps": 1e-8, "weightDecay": 0.02, "clipGrad": None}
    with open(out_path, "w") as f:
        json.dump(sc, f, separators=(",", ":"))
        f.write("\n")
    print(f"{out_path}: {n} sequences, {len(sc['steps'])} steps")


# ---------------------------------------------------------------- self checks --

def self_check(model_path):
    ok = True

    def report(name, passed):
        nonlocal ok
        ok &= passed
        print(("PASS " if passed else "FAIL ") + name)

    m = load_llama2c(model_path)
    torch.manual_seed(0)
    L, K, C, H = 2, 3, m.dim, m.n_heads
    M, D, R = 2, 4, 3
    prompts = torch.randn(L * K, C, dtype=torch.float64)
    proj = {"fc1": torch.randn(R, M * D, dtype=torch.float64), "b1": torch.randn(R, dtype=torch.float64),
            "fc2": torch.randn(C, R, dtype=torch.float64), "b2": torch.randn(C, dtype=torch.float64)}
    ids = [1, 403, 407, 261, 378, 432]
    base = forward(m, ids)
    same = True
    for _ in range(3):
        feats = torch.randn(M, D, dtype=torch.float64) * 5
        Pv = prompts + image_prompt(proj, feats)[None, :]
        same &= torch.equal(forward(m, ids, Pv, torch.zeros(L, H, dtype=torch.float64), L), base)
    report("g = 0: logits equal the frozen model's for any image", same)
    # gradcheck of one sequence's loss w.r.t. the projection and prompts (nonzero gates)
    gates = torch.randn(L, H, dtype=torch.float64) * 0.5
    feats = torch.randn(M, D, dtype=torch.float64)
    seq = {"ids": ids, "labels": [-1, -1, 407, 261, 378, 432][1:] + [5], "image": "x"}

    def f(P, fc1, b1, fc2, b2):
        return seq_loss_sum(m, seq, P, gates, L, {"fc1": fc1, "b1": b1, "fc2": fc2, "b2": b2}, {"x": feats})

    args = [t.clone().requires_grad_(True) for t in (prompts, proj["fc1"], proj["b1"], proj["fc2"], proj["b2"])]
    report("gradcheck of the loss w.r.t. prompts, fc1, b1, fc2, b2", torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--scenario")
    ap.add_argument("--out")
    ap.add_argument("--make-scenario", action="store_true")
    ap.add_argument("--base", default="test/golden/scenario-c.json")
    ap.add_argument("--gates-from", default="test/golden/scenario-b.json")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--self-check", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.make_scenario:
        make_scenario(args.base, args.gates_from, args.scenario)
        return
    if args.self_check:
        t0 = time.time()
        if not self_check(args.model):
            print("self-check FAILED")
            sys.exit(1)
        print(f"self-check passed in {time.time() - t0:.1f} s")
        return
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    m = load_llama2c(args.model, dtype)
    with open(args.scenario) as f:
        sc = json.load(f)
    t1 = time.time()
    out = run_scenario(m, sc, dtype)
    with open(args.out, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"{args.scenario} -> {args.out}: losses {[round(x, 5) for x in out['losses']]}, "
          f"gradNorms {[round(x, 5) for x in out['gradNorms']]}, zero gate = frozen: "
          f"{out['meta']['zeroGateEqualsFrozen']} ({time.time() - t1:.1f} s)")


if __name__ == "__main__":
    main()
