// One batch of the .pth fuzz (test/pth.test.ts), in a child process so that a native crash is
// caught by the parent, as test/util/fuzz-worker.ts does for the other parsers:
// `node pth-fuzz-worker.js KIND SEED COUNT DIR`. KIND is meta (a stories260K Meta folder, one
// shard) or adapter (the committed official F16 adapter). Each case mutates the file one of three
// ways: the pickle (re-zipped with a valid CRC, so the unpickler sees it), the zip's central
// directory and end record, or any bytes. A case that loads is run (one forward pass). Prints
// `case N` before each case, then one JSON line of what the cases did and the errors that were not
// Error objects or did not name the file.
import * as fs from 'fs';
import * as path from 'path';
import { Random } from '../../lib/generate/random';
import { Adapter } from '../../lib/model/adapter';
import { Llama } from '../../lib/model/llama';
import { readEntry, readZip } from '../../lib/model/pth/zip';
import { writeZip } from '../../lib/model/pth/write';
import { writeMetaFolder } from './meta-writer';
import { repoRoot } from './paths';
import { stories } from './stories';

const EDGE = [0, 1, 2, 0x7f, 0x80, 0xff, 0xffff, 0xffffffff, 0x7fffffff, 0x10000, 46, 64];

async function run(modelPath: string, adapterFile?: string): Promise<void> {
  const model = await Llama.load(modelPath, { device: 'cpu' });
  let adapter: Adapter | undefined;
  try {
    if (adapterFile) model.setAdapter((adapter = Adapter.load(adapterFile, model.config, 'cpu')));
    await model.forward([1, 2, 3], model.newCache(4)).read();
  } finally {
    model.setAdapter(undefined);
    adapter?.dispose();
    model.dispose();
  }
}

async function main(): Promise<void> {
  const [kind, seedArg, countArg, dir] = process.argv.slice(2) as ['meta' | 'adapter', string, string, string];
  const rng = new Random(Number(seedArg));
  const int = (n: number) => Math.floor(rng.next() * n);
  const count = Number(countArg);
  fs.mkdirSync(dir, { recursive: true });
  const summary = { kind, cases: 0, loaded: 0, errors: 0, bad: [] as string[] };

  let source: string;
  if (kind === 'meta') {
    writeMetaFolder(stories.v0, path.join(dir, 'base'), 'F32', 1);
    source = path.join(dir, 'base', 'consolidated.00.pth');
  } else source = path.join(repoRoot, 'test', 'fixtures', 'pth', 'adapter-official-f16.pth');
  const whole = fs.readFileSync(source);
  const zip = readZip(source);
  const records: [string, Buffer][] = [...zip.entries.values()].map((e) => [e.name, readEntry(zip, e)]);
  const pkl = records.findIndex(([n]) => n.endsWith('data.pkl'));

  for (let i = 0; i < count; i++) {
    process.stdout.write(`case ${i}\n`);
    const caseDir = path.join(dir, `case-${i}`);
    fs.mkdirSync(caseDir);
    const file = path.join(caseDir, kind === 'meta' ? 'consolidated.00.pth' : 'adapter.pth');
    const how = int(3);
    if (how === 0) {
      // the pickle: bytes flipped, replaced, cut or repeated
      let p = Buffer.from(records[pkl][1]);
      for (let k = 1 + int(3); k > 0; k--) {
        const r = int(4);
        if (r === 0) p[int(p.length)] ^= 1 << int(8);
        else if (r === 1) p[int(p.length)] = int(256);
        else if (r === 2) p = p.subarray(0, int(p.length));
        else {
          const a = int(p.length);
          p = Buffer.concat([p.subarray(0, a), p.subarray(int(p.length)), p.subarray(a)]);
        }
      }
      const recs = records.map(([n, b], j): [string, Buffer] => [n, j === pkl ? p : b]);
      writeZip(file, recs);
    } else {
      const b = Buffer.from(whole);
      for (let k = 1 + int(3); k > 0; k--) {
        // the central directory and end record (the last ~100 bytes per entry), or anywhere
        const at = how === 1 ? Math.max(0, b.length - 1 - int(Math.min(b.length, 60 * records.length + 22))) : int(b.length);
        if (rng.next() < 0.5 && at + 4 <= b.length) b.writeUInt32LE(EDGE[int(EDGE.length)] >>> 0, at);
        else b[at] ^= 1 << int(8);
      }
      fs.writeFileSync(file, rng.next() < 0.1 ? b.subarray(0, int(b.length)) : b);
    }
    let attempt: () => Promise<void>;
    if (kind === 'meta') {
      fs.copyFileSync(path.join(dir, 'base', 'params.json'), path.join(caseDir, 'params.json'));
      attempt = () => run(caseDir);
    } else attempt = () => run(stories.v0, file);
    summary.cases++;
    try {
      await attempt();
      summary.loaded++;
    } catch (e) {
      summary.errors++;
      if (!(e instanceof Error)) summary.bad.push(`case ${i}: threw a non-Error ${String(e)}`);
      else if (!e.message.includes(`case-${i}`)) summary.bad.push(`case ${i}: the error does not name the file: ${e.message.slice(0, 300)}`);
    }
    fs.rmSync(caseDir, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(summary) + '\n');
}

main().catch((e) => {
  process.stderr.write(`pth fuzz worker failed: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(3);
});
