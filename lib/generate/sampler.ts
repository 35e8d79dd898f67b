// Next-token choice (SPEC §5): temperature 0 is greedy argmax; otherwise softmax(logits / T),
// nucleus (top-p) truncation — sort descending, keep the smallest prefix whose mass reaches p,
// renormalise — and a draw from the seeded generator.
import { Random } from './random';

export interface SamplerOptions {
  /** 0 = greedy. Default 0.1 (the paper's). */
  temperature?: number;
  /** Nucleus mass in (0, 1]; 1 disables truncation. Default 0.75 (the paper's). */
  topP?: number;
  /** Seed of the sampling stream; the same seed gives the same text. Default: random. */
  seed?: number;
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

export class Sampler {
  readonly temperature: number;
  readonly topP: number;
  private readonly random: Random;

  constructor(opts: SamplerOptions = {}) {
    this.temperature = opts.temperature ?? 0.1;
    this.topP = opts.topP ?? 0.75;
    if (!(Number.isFinite(this.temperature) && this.temperature >= 0))
      throw new RangeError(`Expected a temperature >= 0 but received ${opts.temperature}`);
    if (!(this.topP > 0 && this.topP <= 1)) throw new RangeError(`Expected top-p in (0, 1] but received ${opts.topP}`);
    this.random = new Random(opts.seed ?? Math.floor(Math.random() * 0x100000000));
  }

  sample(logits: Float32Array): number {
    if (this.temperature === 0) return argmax(logits);
    const n = logits.length;
    const probs = new Float64Array(n);
    let max = -Infinity;
    for (let i = 0; i < n; i++) max = Math.max(max, logits[i]);
    let sum = 0;
    for (let i = 0; i < n; i++) sum += probs[i] = Math.exp((logits[i] - max) / this.temperature);
    for (let i = 0; i < n; i++) probs[i] /= sum;
    const u = this.random.next();
    if (this.topP >= 1) return drawFrom(probs, u);
    return drawTopP(probs, this.topP, u);
  }
}

function drawFrom(probs: Float64Array, u: number): number {
  let cdf = 0;
  for (let i = 0; i < probs.length; i++) {
    cdf += probs[i];
    if (u < cdf) return i;
  }
  return probs.length - 1; // rounding
}

function drawTopP(probs: Float64Array, p: number, u: number): number {
  const n = probs.length;
  // A token below (1 - p) / (n - 1) can never be in the nucleus (the rest would already reach p),
  // so only the few above it are sorted.
  const cutoff = n > 1 ? (1 - p) / (n - 1) : 0;
  const cand: number[] = [];
  for (let i = 0; i < n; i++) if (probs[i] >= cutoff) cand.push(i);
  cand.sort((a, b) => probs[b] - probs[a] || a - b);
  let mass = 0;
  let last = cand.length - 1;
  for (let i = 0; i < cand.length; i++) {
    mass += probs[cand[i]];
    if (mass >= p) {
      last = i;
      break;
    }
  }
  const r = u * mass;
  let cdf = 0;
  for (let i = 0; i <= last; i++) {
    cdf += probs[cand[i]];
    if (r < cdf) return cand[i];
  }
  return cand[last];
}
