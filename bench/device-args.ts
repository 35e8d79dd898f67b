// Argument reading for the GPU-check device programs (bench/gpu-mm.ts, bench/gpu-q4k.ts): they run
// on the lent machine from dist/ alone, so this stays a few lines with the messages the tests match.
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
}
