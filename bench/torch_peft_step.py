#!/usr/bin/env python3
"""The PyTorch side of the GPU check: LLaMA-Adapter training steps with PEFT's AdaptionPrompt on a
random-weight LLaMA-7B-shaped LlamaForCausalLM in bf16, on the same micro-batches as ours.

Run by scripts/gpu-check-run.sh on the device machine (python3 with torch, transformers, peft),
in the background while the addon compiles: it imports, builds the model on the GPU and runs one
untimed step, then waits for the --go file (touched once our benchmark is done, so that the two
never share the GPU while timing), then for each micro-batch size of the batches file:

  - torch.cuda.reset_peak_memory_stats(); one warm-up step on the longest batch; the timed steps,
    each on its own batch: forward with labels (Hugging Face's mean cross-entropy over the target
    tokens), backward, the gradient norm read back with .item() (as ours reads it), AdamW on the
    adapter only (PEFT freezes the rest), zero_grad;
  - tokens/s over real (unpadded) tokens; peak = torch.cuda.max_memory_allocated() (weights included);

then the same bf16 GEMM shapes as bench/gpu-7b.ts through torch.matmul (cuBLAS), and greedy decoding
at batch 1 with the KV cache (use_cache=True), timed from the first generated token.

What PEFT computes (peft/tuners/adaption_prompt): one scalar gate per layer, the prompt (1, K, C)
in the weights' dtype (bf16), and for each adapted layer it recomputes the queries (an extra q_proj
and v_proj forward) and runs the adapter output through o_proj, so it does more work per step than
the FLOP count the report divides by (that count is the same for both sides).

The model: LlamaConfig(hidden 4096, intermediate 11008, 32 layers, 32 heads, vocab 32000,
rms_norm_eps 1e-5), untied; every matrix re-drawn uniform with std 0.02 and every norm 1 (as ours),
in bf16 on the GPU; attention as transformers picks it (sdpa), recorded in the output. Batches: the
JSON written by scripts/gpu-check.ts (per example token ids and next-token labels, -1 = no loss),
padded on the right to the longest example of the batch with attention_mask and labels -100.

Usage: python3 bench/torch_peft_step.py --batches FILE --json OUT [--micro 4,8,16] [--steps 4]
         [--warmup 1] [--decode 64] [--go FILE] [--deadline UNIX_SECONDS] [--seed 1234]
Output: the JSON file, rewritten after each stage; one line per stage on stderr.
"""
import argparse
import json
import math
import os
import sys
import time

BF16_PEAK = 989.4e12  # H200 SXM dense bf16 FLOP/s (datasheet), as bench/flops.ts
GEMM_SHAPES = [("wq/wk/wv/wo", 4096, 4096), ("w1/w3", 11008, 4096), ("w2", 4096, 11008), ("LM head", 32000, 4096)]


def log(msg):
    print(f"torch-peft: {msg}", file=sys.stderr, flush=True)


def adapter_step_flops(seq_lens, targets, C=4096, F=11008, n_layers=32, H=32, V=32000, L=30, K=10):
    """The same count as bench/flops.ts adapterStepFlops (multi-head attention: Ckv = C)."""
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--micro", default="4,8,16")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--no-gemm", action="store_true")
    ap.add_argument("--go", default=None, help="wait for this file to exist before timing anything")
    ap.add_argument("--deadline", type=float, default=None, help="unix time by which to stop (skipping what is left)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    deadline = args.deadline if args.deadline else time.time() + 600
    res = {"skipped": [], "errors": [], "train": []}

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
    import transformers
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import AdaptionPromptConfig, get_peft_model

    res["versions"] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": sys.version.split()[0],
    }
    if not torch.cuda.is_available():
        raise SystemExit("torch sees no GPU")
    res["gpu"] = torch.cuda.get_device_name(0)
    log(f"imports {time.time() - t_start:.1f} s: {res['versions']}, {res['gpu']}")

    with open(args.batches) as f:
        spec = json.load(f)
    micro = [int(b) for b in args.micro.split(",")]

    # ---- the model ---------------------------------------------------------------------------
    t0 = time.time()
    torch.manual_seed(args.seed)
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        use_cache=False,
    )
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
    a = 0.02 * math.sqrt(3.0)
    with torch.no_grad():  # whatever the library's init did: the same distribution as ours
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.uniform_(-a, a)
            else:
                p.fill_(1.0)
    res["model"] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "dtype": str(next(model.parameters()).dtype),
    }
    pcfg = AdaptionPromptConfig(adapter_len=10, adapter_layers=30, task_type="CAUSAL_LM")
    model = get_peft_model(model, pcfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    res["model"]["trainable"] = sum(p.numel() for p in trainable)
    res["model"]["trainable_dtype"] = str(trainable[0].dtype) if trainable else None
    res["model"]["seconds"] = time.time() - t0
    opt = torch.optim.AdamW(trainable, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.02)
    model.train()
    log(f"model {res['model']['parameters'] / 1e9:.2f} B parameters, {res['model']['trainable']} trainable "
        f"({res['model']['trainable_dtype']}), attention {res['model']['attn_implementation']}, {time.time() - t0:.1f} s")
    save()

    def padded(b):
        ids, labels = b["ids"], b["labels"]
        B, T = len(ids), max(len(x) for x in ids)
        inp = torch.zeros(B, T, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        lab = torch.full((B, T), -100, dtype=torch.long)
        targets = 0
        for s, (x, y) in enumerate(zip(ids, labels)):
            n = len(x)
            inp[s, :n] = torch.tensor(x)
            mask[s, :n] = 1
            for i in range(n - 1):  # ours: labels[i] = the token predicted at i; HF shifts inside
                if y[i] >= 0:
                    lab[s, i + 1] = x[i + 1]
                    targets += 1
        return {
            "input_ids": inp.cuda(),
            "attention_mask": mask.cuda(),
            "labels": lab.cuda(),
            "tokens": sum(len(x) for x in ids),
            "padded": B * T,
            "targets": targets,
            "seq_lens": [len(x) for x in ids],
        }

    def step(b):
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
        out.loss.backward()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in trainable if p.grad is not None]))
        norm.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    # one untimed step before the go signal: CUDA context, cuBLAS and sdpa set-up, allocator pools
    try:
        first = next(m for m in spec["micro"] if m["B"] in micro)
        step(padded(first["steps"][0]))
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        log(f"first (untimed) step done, {time.time() - t_start:.1f} s after start")
    except Exception as e:  # noqa: BLE001 - recorded, the report shows it
        res["errors"].append(f"first step: {type(e).__name__}: {e}")
        save()
        raise

    if args.go:
        while not os.path.exists(args.go) and left() > 0:
            time.sleep(0.2)
        if not os.path.exists(args.go):
            res["skipped"].append("timed steps: the go signal never came (out of time)")
            save()
            return
        log(f"go after {time.time() - t_start:.1f} s ({left():.0f} s left)")

    # ---- training steps --------------------------------------------------------------------------
    for m in spec["micro"]:
        if m["B"] not in micro:
            continue
        if left() < 20:
            res["skipped"].append(f"train B={m['B']}: out of time")
            continue
        try:
            timed = [padded(b) for b in m["steps"][: args.steps]]
            warm = padded(m["warmup"])
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            for _ in range(args.warmup):
                step(warm)
            torch.cuda.synchronize()
            t = time.perf_counter()
            losses = []
            for b in timed:
                losses.append(step(b))
                if left() < 10:
                    break
            torch.cuda.synchronize()
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
                "mfu": flops / sec / BF16_PEAK,
                "peakBytes": torch.cuda.max_memory_allocated(),
                "reservedBytes": torch.cuda.max_memory_reserved(),
                "losses": losses,
            }
            res["train"].append(row)
            log(f"B={m['B']}: {row['tokPerS']:.0f} tok/s, {row['msPerStep']:.1f} ms/step, MFU {100 * row['mfu']:.1f}%, "
                f"peak {row['peakBytes'] / 2**30:.1f} GiB")
        except Exception as e:  # noqa: BLE001
            res["errors"].append(f"train B={m['B']}: {type(e).__name__}: {e}")
            log(f"B={m['B']} failed: {type(e).__name__}: {e}")
            torch.cuda.empty_cache()
        save()
    opt.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()

    # ---- GEMM: torch.matmul in bf16 (cuBLAS) at the same shapes ----------------------------------
    if not args.no_gemm:
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

    # ---- decode at batch 1 ------------------------------------------------------------------------
    if args.decode > 1 and left() > 10:
        try:
            model.eval()
            with torch.no_grad():
                ids = torch.tensor([spec["decodePrompt"]], device="cuda")
                out = model(input_ids=ids, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1)
                nxt.item()
                stamps = [time.perf_counter()]
                for _ in range(args.decode - 1):
                    out = model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    nxt = out.logits[:, -1].argmax(-1)
                    nxt.item()
                    stamps.append(time.perf_counter())
                    if left() < 3:
                        break
            C, F, V, n_layers = 4096, 11008, 32000, 32
            bytes_per_token = n_layers * (2 * (4 * C * C + 3 * C * F) + 2 * 2 * C) + 2 * C + 2 * V * C + 2 * C
            tps = (len(stamps) - 1) / (stamps[-1] - stamps[0])
            bound = 4.8e12 / bytes_per_token
            res["decode"] = {"promptTokens": len(spec["decodePrompt"]), "tokens": len(stamps), "tokPerS": tps,
                             "msPerToken": 1e3 / tps, "bytesPerToken": bytes_per_token, "boundTokPerS": bound,
                             "pctOfBound": 100 * tps / bound}
            log(f"decode {tps:.1f} tok/s ({res['decode']['pctOfBound']:.0f}% of the bandwidth bound)")
        except Exception as e:  # noqa: BLE001
            res["errors"].append(f"decode: {type(e).__name__}: {e}")
    elif args.decode > 1:
        res["skipped"].append("decode: out of time")
    res["seconds"] = time.time() - t_start
    save()


if __name__ == "__main__":
    main()
