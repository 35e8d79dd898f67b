// The rule every loader follows (llama2.c, Hugging Face, and the GGUF, .pth and encoder loaders to
// come): nothing proportional to a header field is allocated before the file is known to hold what
// the header claims. A loader first checks each size field against a sane upper bound
// (`limitProblems`), then computes what the header implies with exact integer arithmetic
// (`bytesOf`, BigInt: no overflow, no rounding) and compares it with what is there
// (`checkHolds`): only then does it build per-tensor lists or reserve memory.
// (Free of the native addon so tools can use it.)

/** Upper bounds on model size fields, far above any released model (LLaMA-3.1-405B: 126 layers,
 *  dim 16384, FFN 53248, 128 heads, vocab 128256; the longest contexts are ~10M positions). */
export const MODEL_LIMITS = {
  layers: 1024,
  dim: 1 << 17,
  hiddenDim: 1 << 20,
  heads: 1 << 12,
  vocab: 1 << 23,
  seqLen: 1 << 24,
} as const;

/** The most prompts per adapted layer (the paper uses 10; prefix methods a few hundred). */
export const ADAPTER_MAX_LEN = 4096;

/** "name value is above the supported maximum max" for each field over its bound. */
export function limitProblems(fields: [name: string, value: number, max: number][]): string[] {
  return fields.filter(([, v, max]) => v > max).map(([name, v, max]) => `${name} ${v} is above the supported maximum ${max}`);
}

/** Exact byte size of a tensor of `shape` with `elemBytes` per element. */
export function bytesOf(shape: readonly number[], elemBytes: number): bigint {
  let n = BigInt(elemBytes);
  for (const s of shape) n *= BigInt(s);
  return n;
}

/** Exact sum of byte sizes. */
export function sumOf(parts: readonly bigint[]): bigint {
  return parts.reduce((a, b) => a + b, 0n);
}

/**
 * Throws unless `have` (bytes, or tensors) is `need` — or at least `need` with `atLeast` — naming
 * `file`, what implies the need, and the unit. Call it before allocating anything of size `need`.
 */
export function checkHolds(
  file: string,
  what: string,
  need: bigint | number,
  have: number,
  opts: { atLeast?: boolean; unit?: string } = {},
): void {
  const unit = opts.unit ?? 'bytes';
  const n = BigInt(need);
  const h = BigInt(have);
  if (h < n) throw new Error(`${file} is truncated or does not match: ${what} implies ${n} ${unit} but it holds ${h}`);
  if (!opts.atLeast && h > n)
    throw new Error(`${file} has ${h - n} ${unit} more than ${what} implies (${n}): not a supported file, or a corrupt one`);
}
