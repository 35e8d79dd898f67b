// One batch of the parser fuzz (test/fuzz.test.ts), run in a child process so that a native crash
// is caught by the parent: `node fuzz-worker.js KIND SEED COUNT DIR`. KIND is llama2c, safetensors,
// hf-config or adapter. Each case is a seeded mutation of a valid file (stories260K), loaded the way
// the CLI loads it; a file that loads is also run (one forward pass, the adapter attached). Before
// each case the worker prints `case N`; at the end one JSON line: what the cases did, and the
// errors that were not Error objects or did not name the file.
import * as fs from 'fs';
import * as path from 'path';
import { Random } from '../../lib/generate/random';
import { Adapter } from '../../lib/model/adapter';
import { Llama } from '../../lib/model/llama';
import { readLlama2cHeader } from '../../lib/model/llama2c';
import { readSafetensorsHeader } from '../../lib/model/safetensors';
import { stories } from './stories';

type Kind = 'llama2c' | 'safetensors' | 'hf-config' | 'adapter';

const INTERESTING = [0, 1, -1, 2, 3, 7, 8, 64, 255, 256, 4096, 65535, 65536, 1e7, 2 ** 31 - 1, -(2 ** 31), 2 ** 32, 2 ** 53, -(2 ** 53), 1.5, 1e300];

class Mutator {
  constructor(readonly rng: Random) {}
  int(n: number): number {
    return Math.floor(this.rng.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  /** A number worth trying: an edge value, or a small change of `v`. */
  number(v: number): number {
    return this.rng.next() < 0.7 ? this.pick(INTERESTING) : v + this.int(9) - 4;
  }

  /** Byte-level mutations of `buf`, mostly in its first `head` bytes. */
  bytes(buf: Buffer, head: number): Buffer {
    let b = Buffer.from(buf);
    const n = 1 + this.int(3);
    for (let k = 0; k < n; k++) {
      switch (this.int(5)) {
        case 0: // flip bits in the header
          b[this.int(Math.min(head, b.length))] ^= 1 << this.int(8);
          break;
        case 1: // an int32 field of the header set to an edge value
          if (b.length >= 4) b.writeInt32LE(this.pick(INTERESTING.filter((x) => Number.isInteger(x) && Math.abs(x) < 2 ** 31)), 4 * this.int(Math.min(head, b.length - 4) >> 2));
          break;
        case 2: // truncated
          b = b.subarray(0, this.int(b.length));
          break;
        case 3: // extended
          b = Buffer.concat([b, Buffer.alloc(1 + this.int(64), this.int(256))]);
          break;
        default: // a random byte anywhere (weights included)
          b[this.int(b.length)] = this.int(256);
      }
    }
    return b;
  }

  /** A JSON value changed somewhere: a number, a key removed, a type swapped. */
  json(v: unknown, depth = 0): unknown {
    if (Array.isArray(v)) {
      const a = [...v];
      if (a.length && this.rng.next() < 0.8) a[this.int(a.length)] = this.json(a[this.int(a.length)], depth + 1);
      else if (this.rng.next() < 0.5) a.pop();
      else a.push(this.pick(INTERESTING));
      return a;
    }
    if (v && typeof v === 'object') {
      const o = { ...(v as Record<string, unknown>) };
      const keys = Object.keys(o);
      const k = this.pick(keys);
      const r = this.rng.next();
      if (r < 0.1) delete o[k];
      else if (r < 0.15) o[k] = null;
      else if (r < 0.2) o[k] = 'x';
      else o[k] = this.json(o[k], depth + 1);
      return o;
    }
    if (typeof v === 'number') return this.number(v);
    if (typeof v === 'string') return this.pick([v, '', 'F16', 'BF16', 'I64', 'F64', 'Q4', v + 'x']);
    if (typeof v === 'boolean') return !v;
    return this.pick(INTERESTING);
  }

  /** A safetensors file with its JSON header mutated (the length prefix rewritten to match). */
  safetensors(buf: Buffer): Buffer {
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
    const names = Object.keys(header);
    const name = this.pick(names);
    header[name] = this.json(header[name]);
    const json = Buffer.from(JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    return Buffer.concat([len, json, buf.subarray(8 + n)]);
  }
}

async function runModel(file: string, adapterFile?: string): Promise<string> {
  const model = await Llama.load(file, { device: 'cpu' });
  try {
    if (adapterFile) {
      const a = Adapter.load(adapterFile, model.config, 'cpu');
      try {
        model.setAdapter(a);
        await model.forward([1, 2, 3], model.newCache(4)).read();
        model.setAdapter(undefined);
      } finally {
        a.dispose();
      }
    } else await model.forward([1, 2, 3], model.newCache(4)).read();
    return 'loaded';
  } finally {
    model.dispose();
  }
}

async function main(): Promise<void> {
  const [kind, seedArg, countArg, dir] = process.argv.slice(2) as [Kind, string, string, string];
  const m = new Mutator(new Random(Number(seedArg)));
  const count = Number(countArg);
  fs.mkdirSync(dir, { recursive: true });
  const summary = { kind, cases: 0, loaded: 0, errors: 0, bad: [] as string[] };

  const v0 = fs.readFileSync(stories.v0);
  const v1 = fs.readFileSync(stories.v1);
  const hfConfig = JSON.parse(fs.readFileSync(path.join(stories.hf, 'config.json'), 'utf8'));
  const hfWeights = fs.readFileSync(path.join(stories.hf, 'model.safetensors'));
  const adapterFile = path.join(dir, 'base-adapter.safetensors');
  const config = readLlama2cHeader(stories.v0).config;
  const base = Adapter.init(config, { layers: 2, len: 3, gate: 'per-head' }, 1, 'cpu');
  await base.save(adapterFile);
  base.dispose();
  const adapterBuf = fs.readFileSync(adapterFile);

  for (let i = 0; i < count; i++) {
    process.stdout.write(`case ${i}\n`);
    let file: string; // what the error should name
    let attempt: () => Promise<string>;
    if (kind === 'llama2c') {
      const src = m.rng.next() < 0.5 ? v0 : v1;
      file = path.join(dir, `case-${i}.bin`);
      fs.writeFileSync(file, m.bytes(src, 64));
      const f = file;
      attempt = () => runModel(f);
    } else if (kind === 'safetensors' || kind === 'hf-config') {
      const d = path.join(dir, `case-${i}`);
      fs.mkdirSync(d);
      const cfg = kind === 'hf-config' ? m.json(m.rng.next() < 0.5 ? hfConfig : m.json(hfConfig)) : hfConfig;
      fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(cfg));
      const st = path.join(d, 'model.safetensors');
      if (kind === 'safetensors') fs.writeFileSync(st, m.rng.next() < 0.6 ? m.safetensors(hfWeights) : m.bytes(hfWeights, 512));
      else fs.symlinkSync(path.join(stories.hf, 'model.safetensors'), st);
      file = d;
      attempt = () => runModel(d);
    } else {
      file = path.join(dir, `case-${i}.safetensors`);
      fs.writeFileSync(file, m.rng.next() < 0.6 ? m.safetensors(adapterBuf) : m.bytes(adapterBuf, 256));
      const f = file;
      attempt = async () => {
        readSafetensorsHeader(f);
        return runModel(stories.v0, f);
      };
    }
    summary.cases++;
    try {
      await attempt();
      summary.loaded++;
    } catch (e) {
      summary.errors++;
      if (!(e instanceof Error)) summary.bad.push(`case ${i}: threw a non-Error ${String(e)}`);
      else if (!e.message.includes(path.basename(file)) && !/^(adapter|setAdapter|forward)/.test(e.message))
        summary.bad.push(`case ${i}: the error does not name ${path.basename(file)}: ${e.message.slice(0, 300)}`);
    }
    fs.rmSync(file, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(summary) + '\n');
}

main().catch((e) => {
  process.stderr.write(`fuzz worker failed: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(3);
});
