// One batch of the GGUF reader fuzz (test/gguf.test.ts), in a child process so that a native crash
// is caught by the parent: `node gguf-fuzz-worker.js BASE.gguf SEED COUNT DIR`. Each case is a
// seeded mutation of a valid GGUF: bits flipped and u32/u64 fields set to edge values in the header,
// truncation, bytes appended, random bytes in the data. A file that loads runs one forward pass.
// Before each case the worker prints `case N`; at the end one JSON line: what the cases did, and
// the errors that were not Error objects or did not name the file.
import * as fs from 'fs';
import * as path from 'path';
import { Random } from '../../lib/generate/random';
import { Llama } from '../../lib/model/llama';
import { readGgufHeader } from '../../lib/model/gguf';

const EDGE = [0n, 1n, 2n, 3n, 7n, 31n, 32n, 33n, 255n, 256n, 4096n, 65535n, 2n ** 31n - 1n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 60n, 2n ** 63n, 2n ** 64n - 1n];

async function main(): Promise<void> {
  const [base, seedArg, countArg, dir] = process.argv.slice(2);
  const rng = new Random(Number(seedArg));
  const int = (n: number) => Math.floor(rng.next() * n);
  const src = fs.readFileSync(base);
  const head = readGgufHeader(base).dataStart;
  fs.mkdirSync(dir, { recursive: true });
  const summary = { cases: 0, loaded: 0, errors: 0, bad: [] as string[] };
  for (let i = 0; i < Number(countArg); i++) {
    process.stdout.write(`case ${i}\n`);
    let b = Buffer.from(src);
    for (let k = 1 + int(3); k > 0; k--) {
      switch (int(6)) {
        case 0: b[int(Math.min(head, b.length))] ^= 1 << int(8); break;
        case 1: if (b.length >= 8) b.writeBigUInt64LE(EDGE[int(EDGE.length)] & (2n ** 64n - 1n), int(Math.min(head, b.length) - 7)); break;
        case 2: if (b.length >= 4) b.writeUInt32LE(Number(EDGE[int(8)]), int(Math.min(head, b.length) - 3)); break;
        case 3: b = b.subarray(0, int(b.length)); break;
        case 4: b = Buffer.concat([b, Buffer.alloc(1 + int(64), int(256))]); break;
        default: b[int(b.length)] = int(256);
      }
    }
    const file = path.join(dir, `case-${i}.gguf`);
    fs.writeFileSync(file, b);
    summary.cases++;
    try {
      const m = await Llama.load(file, { device: 'cpu' });
      try {
        const c = m.newCache(4);
        await m.forward([1, 2, 3], c).read();
        c.dispose();
        m.loadTokenizer().encode('Once upon a time');
      } finally {
        m.dispose();
      }
      summary.loaded++;
    } catch (e) {
      summary.errors++;
      if (!(e instanceof Error)) summary.bad.push(`case ${i}: threw a non-Error ${String(e)}`);
      else if (!e.message.includes(path.basename(file)) && !/^forward/.test(e.message))
        summary.bad.push(`case ${i}: the error does not name ${path.basename(file)}: ${e.message.slice(0, 300)}`);
    }
    fs.rmSync(file, { force: true });
  }
  process.stdout.write(JSON.stringify(summary) + '\n');
}

main().catch((e) => {
  process.stderr.write(`gguf fuzz worker failed: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(3);
});
