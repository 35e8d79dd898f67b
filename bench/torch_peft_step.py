#!/usr/bin/env python3
"""The PyTorch side of the GPU check, two columns on the same micro-batches as ours:

  plain  LLaMA-Adapter in plain PyTorch (bench/torch_plain_adapter.py: the same math as ours, bf16
         weights and activations on the GPU, F.scaled_dot_product_attention), needing nothing but
         torch, so it runs whatever transformers/PEFT the device has;
  peft   PEFT's AdaptionPrompt on a random-weight LLaMA-7B-shaped LlamaForCausalLM in bf16, when
         transformers and peft import and work; when they do not, "not run: <reason>" (PEFT patches
         LlamaAttention internals that newer transformers releases reworked).

Run by scripts/gpu-check-run.sh on the device machine, in the background while the addon compiles:
it imports torch and tries to import transformers and peft, then waits for the --go file (touched
once our benchmarks are done, so that the two never share the GPU: no model is made before it, so
ours has the whole memory). Then, each side in turn (the plain model is freed before PEFT's is
built, so the two never hold 2 x 13.5 GB): the model with random bf16 weights made on the GPU, one
untimed step, and

  - per micro-batch size: torch.cuda.reset_peak_memory_stats(); one warm-up step on the longest
    batch; the timed steps, each on its own batch: forward, the loss over the target tokens,
    backward, the gradient norm read back with .item() (as ours reads it), AdamW on the adapter
    only, zero_grad; tokens/s over real (unpadded) tokens; peak = torch.cuda.max_memory_allocated()
    (weights included); model TFLOP/s by the same count as ours (bench/flops.ts);
  - greedy decoding at batch 1 with a KV cache, timed from the first generated token;

and, between the two, the same bf16 GEMM shapes as bench/gpu-7b.ts through torch.matmul (cuBLAS).
MFU and the decode bound are not computed here: the report divides by the peaks of the GPU it ran
on (bench/gpu-peaks.ts), the same for both sides.

What PEFT computes (peft/tuners/adaption_prompt): one scalar gate per layer, the prompt (1, K, C)
in the weights' dtype (bf16), and for each adapted layer it recomputes the queries (an extra q_proj
and v_proj forward) and runs the adapter output through o_proj, so it does more work per step than
the FLOP count (the same for every column).

The models: LLaMA-7B's shape (hidden 4096, intermediate 11008, 32 layers, 32 heads, vocab 32000,
rms_norm_eps 1e-5), untied; every matrix uniform with std 0.02 and every norm 1 (as ours), bf16 on
the GPU; adapter L = 30, K = 10. Batches: the JSON written by scripts/gpu-check.ts (per example
token ids and next-token labels, -1 = no loss), padded on the right to the longest example.

Usage: python3 bench/torch_peft_step.py --batches FILE --json OUT [--micro 4,8,16] [--steps 4]
         [--warmup 1] [--decode 64] [--no-gemm] [--no-peft] [--go FILE] [--deadline UNIX_SECONDS]
         [--seed 1234] [--shape 7b|tiny] [--device cuda|cpu]
Output: the JSON file {versions, gpu, plain: {...}, peft: {...} or {notRun}, gemm, skipped, errors},
rewritten after each stage; one line per stage on stderr.
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GEMM_SHAPES = [("wq/wk/wv/wo", 4096, 4096), ("w1/w3", 11008, 4096), ("w2", 4096, 11008), ("LM head", 32000, 4096)]
SHAPES = {
    "7b": {"dim": 4096, "hiddenDim": 11008, "nLayers": 32, "nHeads": 32, "nKvHeads": 32, "vocabSize": 32000,
           "normEps": 1e-5, "ropeTheta": 10000.0, "ropeLayout": "half"},
    # --shape tiny --device cpu: this program's code paths at a tiny shape (test/gpu-check.test.ts)
    "tiny": {"dim": 32, "hiddenDim": 64, "nLayers": 3, "nHeads": 4, "nKvHeads": 4, "vocabSize": 32000,
             "normEps": 1e-5, "ropeTheta": 10000.0, "ropeLayout": "half"},
}
ADAPTER_LEN = 10
# set by main: the model's shape, the device ("cuda", or "cpu" for the test) and the adapted layers
SHAPE, DEVICE, ADAPTER_LAYERS = SHAPES["7b"], "cuda", 30


def sync():
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def memory(what):
    """torch.cuda's peak allocated / reserved bytes (0 on the CPU), or reset the peaks."""
    import torch

    if DEVICE != "cuda":
        return 0
    if what == "reset":
        torch.cuda.reset_peak_memory_stats()
        return 0
    return torch.cuda.max_memory_allocated() if what == "peak" else torch.cuda.max_memory_reserved()


def empty_cache():
    import torch

    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def log(msg):
    print(f"torch: {msg}", file=sys.stderr, flush=True)


def adapter_step_flops(seq_lens, targets):
    """The same count as bench/flops.ts adapterStepFlops (multi-head attention: Ckv = C)."""
    C, F, n_layers, H, V = SHAPE["dim"], SHAPE["hiddenDim"], SHAPE["nLayers"], SHAPE["nHeads"], SHAPE["vocabSize"]
    L, K = ADAPTER_LAYERS, ADAPTER_LEN
    N = sum(seq_lens)
    P = sum(n * (n + 1) // 2 for n in seq_lens)
    d = C // H
    qkv = 3 * C * C
    rest = C * C + 3 * C * F
    fwd = n_layers * 2 * N * (qkv + rest) + L * 2 * K * C * 2 * C
    bwd = L * 2 * N * rest + max(0, L - 1) * 2 * N * qkv + L * 2 * 2 * K * C * C
    att = n_layers * H * 4 * d * P + L * H * 4 * d * K * N + L * H * (10 * d * P + 12 * d * K * N)
    head = 4 * targets * C * V
    return fwd + bwd + att + head


def decode_bytes_per_token():
    """bench/flops.ts decodeWeightBytes for bf16 matrices (KV cache not counted)."""
    C, F, V, n_layers = SHAPE["dim"], SHAPE["hiddenDim"], SHAPE["vocabSize"], SHAPE["nLayers"]
    return n_layers * (2 * (4 * C * C + 3 * C * F) + 4 * 2 * C) + 4 * C + 2 * V * C + 2 * C


def timed_training(side, res, spec, micro, args, left, step, prepare, save):
    """The timed steps of one side (step(batch) -> loss; prepare(json batch) -> batch with tokens,
    padded, targets, seq_lens) for each micro-batch size; rows into res["train"]."""
    import torch

    for m in spec["micro"]:
        if m["B"] not in micro:
            continue
        if left() < 20:
            res["skipped"].append(f"train B={m['B']}: out of time")
            continue
        try:
            timed = [prepare(b) for b in m["steps"][: args.steps]]
            warm = prepare(m["warmup"])
            sync()
            memory("reset")
            for _ in range(args.warmup):
                step(warm)
            sync()
            t = time.perf_counter()
            losses = []
            for b in timed:
                losses.append(step(b))
                if left() < 10:
                    break
            sync()
            sec = time.perf_counter() - t
            used = timed[: len(losses)]
            tokens = sum(b["tokens"] for b in used)
            flops = sum(adapter_step_flops(b["seq_lens"], b["targets"]) for b in used)
            row = {
                "B": m["B"],
                "steps": len(used),
                "tokens": tokens,
                "padded_tokens": sum(b["padded"] for b in used),
                "targets": sum(b["targets"] for b in used),
                "seconds": sec,
                "tokPerS": tokens / sec,
                "msPerStep": 1e3 * sec / len(used),
                "flopsPerStep": flops / len(used),
                "tflops": flops / sec / 1e12,
                "peakBytes": memory("peak"),
                "reservedBytes": memory("reserved"),
                "losses": losses,
            }
            res["train"].append(row)
            log(f"{side} B={m['B']}: {row['tokPerS']:.0f} tok/s, {row['msPerStep']:.1f} ms/step, {row['tflops']:.0f} TFLOP/s, "
                f"peak {row['peakBytes'] / 2**30:.1f} GiB")
        except Exception as e:  # noqa: BLE001 - recorded, the report shows it
            res["errors"].append(f"train B={m['B']}: {type(e).__name__}: {e}")
            log(f"{side} B={m['B']} failed: {type(e).__name__}: {e}")
            empty_cache()
        save()


def decode_row(prompt_len, stamps):
    tps = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return {"promptTokens": prompt_len, "tokens": len(stamps), "tokPerS": tps, "msPerToken": 1e3 / tps,
            "bytesPerToken": decode_bytes_per_token()}


def run_gemm(res, left, save):
    import torch

    a = 0.02 * math.sqrt(3.0)
    res["gemm"] = []
    for name, N, K in GEMM_SHAPES:
        copies = max(2, math.ceil((512 << 20) / (2 * N * K)))  # overflow the L2 cache at M = 1
        ws = [torch.empty(N, K, device="cuda", dtype=torch.bfloat16).uniform_(-a, a) for _ in range(copies)]
        for M in (1, 512, 4096):
            for op in ("forward", "backward"):
                if op == "backward" and M == 1:
                    continue
                if left() < 8:
                    res["skipped"].append(f"gemm {name} M={M} {op}: out of time")
                    continue
                x = torch.empty(M, K if op == "forward" else N, device="cuda", dtype=torch.bfloat16).uniform_(-1, 1)
                f = (lambda i: x @ ws[i % copies].T) if op == "forward" else (lambda i: x @ ws[i % copies])
                for i in range(3):
                    f(i)
                torch.cuda.synchronize()
                reps, sec = 3, 0.0
                while True:
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    for i in range(reps):
                        f(i)
                    e1.record()
                    e1.synchronize()
                    sec = e0.elapsed_time(e1) / 1e3
                    if sec >= 0.15 or reps >= 4096:
                        break
                    reps = min(4096, max(reps * 2, math.ceil(reps * 0.18 / max(sec, 1e-6))))
                s = sec / reps
                res["gemm"].append({"name": name, "op": op, "M": M, "N": N, "K": K, "ms": s * 1e3,
                                    "tflops": 2 * M * N * K / s / 1e12, "weightGBs": 2 * N * K / s / 1e9})
                del x
        del ws
        save()
    torch.cuda.empty_cache()
    log("gemm done")


# ---- the plain side ---------------------------------------------------------------------------------


def plain_setup(res, spec, micro, args):
    """The plain model (random bf16 weights on the GPU), its optimiser and one untimed step."""
    import torch
    import torch_plain_adapter as plain

    t0 = time.time()
    # bf16 on the GPU; f32 on the CPU (the test), where bf16 matmuls are slow or missing
    w = plain.random_weights(SHAPE, DEVICE, torch.bfloat16 if DEVICE == "cuda" else torch.float32, args.seed)
    model = plain.PlainAdapterModel(SHAPE, w, ADAPTER_LAYERS, ADAPTER_LEN, "per-head", seed=args.seed)
    opt = plain.make_optimizer(model)
    res["model"] = {
        "parameters": sum(t.numel() for t in w.values()),
        "trainable": sum(p.numel() for p in model.parameters()),
        "trainable_dtype": "torch.float32",
        "dtype": str(w["emb"].dtype),
        "attention": "F.scaled_dot_product_attention" if model.sdpa else "matmul + softmax",
        "gate": "per-head tanh",
        "seconds": time.time() - t0,
    }
    first = next(m for m in spec["micro"] if m["B"] in micro)
    plain.train_step(model, opt, plain.padded(first["steps"][0], DEVICE))
    sync()
    empty_cache()
    log(f"plain: model {res['model']['parameters'] / 1e9:.2f} B parameters, {res['model']['trainable']} trainable, "
        f"attention {res['model']['attention']}; first (untimed) step done in {time.time() - t0:.1f} s")
    return model, opt


def plain_timed(res, model, opt, spec, micro, args, left, save):
    import torch
    import torch_plain_adapter as plain

    def prepare(b):
        ids, labels, valid, tokens, n_padded = plain.padded(b, DEVICE)
        return {"batch": (ids, labels, valid), "tokens": tokens, "padded": n_padded,
                "targets": int((labels >= 0).sum()), "seq_lens": [len(x) for x in b["ids"]]}

    timed_training("plain", res, spec, micro, args, left, lambda b: plain.train_step(model, opt, b["batch"])[0], prepare, save)
    opt.zero_grad(set_to_none=True)
    empty_cache()
    if args.decode > 1 and left() > 10:
        try:
            stamps = []
            model.decode(spec["decodePrompt"], args.decode, lambda i: stamps.append(time.perf_counter()) or left() > 3)
            res["decode"] = decode_row(len(spec["decodePrompt"]), stamps)
            log(f"plain decode {res['decode']['tokPerS']:.1f} tok/s")
        except Exception as e:  # noqa: BLE001
            res["errors"].append(f"decode: {type(e).__name__}: {e}")
    elif args.decode > 1:
        res["skipped"].append("decode: out of time")
    save()


# ---- the PEFT side ----------------------------------------------------------------------------------


def peft_run(res, spec, micro, args, left, save, a):
    """PEFT's AdaptionPrompt: build, one untimed step, the timed steps, decode. Raises on failure
    before any timed figure (the caller records "not run: <reason>")."""
    import torch
    import transformers
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import AdaptionPromptConfig, get_peft_model

    res["versions"] = {"transformers": transformers.__version__, "peft": peft.__version__}
    t0 = time.time()
    torch.manual_seed(args.seed)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, use_cache=False)
    prev = torch.get_default_dtype()
    try:  # made in bf16 on the GPU directly (else in fp32, then converted below)
        torch.set_default_dtype(torch.bfloat16)
    except (TypeError, RuntimeError):
        pass
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model = model.to(device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():  # whatever the library's init did: the same distribution as ours
        for _, p in model.named_parameters():
            if p.dim() >= 2:
                p.uniform_(-a, a)
            else:
                p.fill_(1.0)
    res["model"] = {"parameters": sum(p.numel() for p in model.parameters()),
                    "attn_implementation": getattr(model.config, "_attn_implementation", None),
                    "dtype": str(next(model.parameters()).dtype)}
    model = get_peft_model(model, AdaptionPromptConfig(adapter_len=ADAPTER_LEN, adapter_layers=ADAPTER_LAYERS, task_type="CAUSAL_LM"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    res["model"]["trainable"] = sum(p.numel() for p in trainable)
    res["model"]["trainable_dtype"] = str(trainable[0].dtype) if trainable else None
    res["model"]["seconds"] = time.time() - t0
    opt = torch.optim.AdamW(trainable, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.02)
    model.train()
    save()

    def prepare(b):
        ids, labels = b["ids"], b["labels"]
        B, T = len(ids), max(len(x) for x in ids)
        inp = torch.zeros(B, T, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        lab = torch.full((B, T), -100, dtype=torch.long)
        targets = 0
        for s_, (x, y) in enumerate(zip(ids, labels)):
            n = len(x)
            inp[s_, :n] = torch.tensor(x)
            mask[s_, :n] = 1
            for i in range(n - 1):  # ours: labels[i] = the token predicted at i; HF shifts inside
                if y[i] >= 0:
                    lab[s_, i + 1] = x[i + 1]
                    targets += 1
        return {"input_ids": inp.cuda(), "attention_mask": mask.cuda(), "labels": lab.cuda(), "tokens": sum(len(x) for x in ids),
                "padded": B * T, "targets": targets, "seq_lens": [len(x) for x in ids]}

    def step(b):
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
        out.loss.backward()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in trainable if p.grad is not None]))
        norm.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    first = next(m for m in spec["micro"] if m["B"] in micro)
    step(prepare(first["steps"][0]))  # untimed: a PEFT/transformers mismatch fails here
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    log(f"peft: model built and first (untimed) step done in {time.time() - t0:.1f} s, attention {res['model']['attn_implementation']}")
    timed_training("peft", res, spec, micro, args, left, step, prepare, save)
    opt.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    if args.decode > 1 and left() > 10:
        try:
            model.eval()
            with torch.no_grad():
                out = model(input_ids=torch.tensor([spec["decodePrompt"]], device="cuda"), use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)
                nxt.item()
                stamps = [time.perf_counter()]
                for _ in range(args.decode - 1):
                    out = model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
                    past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)
                    nxt.item()
                    stamps.append(time.perf_counter())
                    if left() < 3:
                        break
            res["decode"] = decode_row(len(spec["decodePrompt"]), stamps)
            log(f"peft decode {res['decode']['tokPerS']:.1f} tok/s")
        except Exception as e:  # noqa: BLE001
            res["errors"].append(f"decode: {type(e).__name__}: {e}")
    elif args.decode > 1:
        res["skipped"].append("decode: out of time")
    save()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--micro", default="4,8,16")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--no-gemm", action="store_true")
    ap.add_argument("--no-peft", action="store_true")
    ap.add_argument("--go", default=None, help="wait for this file to exist before timing anything")
    ap.add_argument("--deadline", type=float, default=None, help="unix time by which to stop (skipping what is left)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: only with --shape tiny, for the test (no GEMM)")
    args = ap.parse_args()
    global SHAPE, DEVICE, ADAPTER_LAYERS
    SHAPE, DEVICE = SHAPES[args.shape], args.device
    ADAPTER_LAYERS = min(30, SHAPE["nLayers"] - 2)
    deadline = args.deadline if args.deadline else time.time() + 600
    res = {"skipped": [], "errors": [],
           "plain": {"train": [], "skipped": [], "errors": []},
           "peft": {"train": [], "skipped": [], "errors": []}}

    def save():
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, args.json)

    def left():
        return deadline - time.time()

    save()
    t_start = time.time()
    import torch

    res["versions"] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no GPU")
    res["gpu"] = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    res["shape"] = {**SHAPE, "adapterLayers": ADAPTER_LAYERS, "adapterLen": ADAPTER_LEN}
    log(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {res['gpu']}, imported in {time.time() - t_start:.1f} s")
    with open(args.batches) as f:
        spec = json.load(f)
    micro = [int(b) for b in args.micro.split(",")]

    # before the go signal, while our side has the GPU: imports only (torch's CUDA context, no model:
    # on an 80 GB GPU ours needs the memory)
    if args.no_peft:
        res["peft"]["notRun"] = "--no-peft"
    else:
        try:
            import transformers  # noqa: F401
            import peft  # noqa: F401
            res["versions"].update({"transformers": transformers.__version__, "peft": peft.__version__})
        except Exception as e:  # noqa: BLE001
            res["peft"]["notRun"] = f"import failed: {type(e).__name__}: {e}"
            log(f"peft not run: {res['peft']['notRun']}")
    save()

    if args.go:
        while not os.path.exists(args.go) and left() > 0:
            time.sleep(0.2)
        if not os.path.exists(args.go):
            res["skipped"].append("timed steps: the go signal never came (out of time)")
            save()
            return
        log(f"go after {time.time() - t_start:.1f} s ({left():.0f} s left)")

    plain_model = plain_opt = None
    try:
        plain_model, plain_opt = plain_setup(res["plain"], spec, micro, args)
    except Exception as e:  # noqa: BLE001
        res["plain"]["errors"].append(f"set-up: {type(e).__name__}: {e}")
        log(f"plain set-up failed: {type(e).__name__}: {e}")
        empty_cache()
    if plain_model is not None:
        plain_timed(res["plain"], plain_model, plain_opt, spec, micro, args, left, save)
    if not args.no_gemm and DEVICE == "cuda":
        run_gemm(res, left, save)
    del plain_model, plain_opt
    empty_cache()

    if "notRun" not in res["peft"]:
        if DEVICE != "cuda" or args.shape != "7b":
            res["peft"]["notRun"] = "PEFT runs only at the 7B shape on the GPU"
        elif left() < 30:
            res["peft"]["notRun"] = f"out of time ({left():.0f} s left)"
        else:
            try:
                peft_run(res["peft"], spec, micro, args, left, save, 0.02 * math.sqrt(3.0))
            except Exception as e:  # noqa: BLE001
                res["peft"]["notRun"] = f"{type(e).__name__}: {str(e)[:300]}"
                log(f"peft not run: {res['peft']['notRun']}")
                empty_cache()
    res["seconds"] = time.time() - t_start
    save()


if __name__ == "__main__":
    main()
