// Argument reading for the GPU-check device programs (bench/gpu-mm.ts, bench/gpu-q4k.ts): they run
// on the lent machine from dist/ alone, so this stays a few lines with the messages the tests match.
import type { Device } from '../lib/native';

/** The options of every device program's training run (bench/gpu-7b.ts reads them its own way). */
export interface TrainOptions {
  /** the batches file scripts/gpu-check.ts writes */
  batches?: string;
  /** the micro-batch sizes to run */
  micro: number[];
  /** timed steps per size */
  steps: number;
  /** untimed steps before them */
  warmup: number;
  /** seconds for the whole program */
  budget: number;
  seed: number;
  /** the results file, rewritten after each measurement */
  json?: string;
  log: (s: string) => void;
}

export class DeviceArgs {
  private i = 0;
  /** the flag being read, for messages */
  flag = '';

  constructor(private readonly argv: string[]) {}

  /** The next flag, or undefined at the end. */
  next(): string | undefined {
    this.flag = this.argv[++this.i];
    return this.flag;
  }
  string(): string {
    return this.argv[++this.i];
  }
  int(min: number): number {
    const s = this.argv[++this.i];
    const v = Number(s);
    if (!Number.isInteger(v) || v < min) throw new Error(`${this.flag} expects an integer >= ${min}, got ${s}`);
    return v;
  }
  oneOf<T extends string>(allowed: readonly T[]): T {
    const v = this.argv[++this.i];
    if (!(allowed as readonly string[]).includes(v)) throw new Error(`${this.flag} expects ${allowed.join(' or ')}, got ${v}`);
    return v as T;
  }
  /** comma-separated positive integers (micro-batch sizes); `example` shows the form in the error */
  sizes(example: string): number[] {
    const s = this.argv[++this.i] ?? '';
    const v = s.split(',').map(Number);
    if (!v.every((b) => Number.isInteger(b) && b >= 1)) throw new Error(`${this.flag} expects sizes like ${example}, got ${s}`);
    return v;
  }

  /** Reads the flag just returned by next() when gpu-mm and gpu-q4k share it (into `o`); false for
   *  another flag. `microExample` shows the form of --micro in its error. */
  sharedFlag(o: TrainOptions & { device: Device }, microExample: string): boolean {
    if (this.flag === '--batches') o.batches = this.string();
    else if (this.flag === '--micro') o.micro = this.sizes(microExample);
    else if (this.flag === '--steps') o.steps = this.int(1);
    else if (this.flag === '--warmup') o.warmup = this.int(0);
    else if (this.flag === '--budget') o.budget = this.int(1);
    else if (this.flag === '--seed') o.seed = this.int(0);
    else if (this.flag === '--device') o.device = this.oneOf(['cuda', 'cpu'] as const);
    else if (this.flag === '--json') o.json = this.string();
    else return false;
    return true;
  }
}
