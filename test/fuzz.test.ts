// A bounded fuzz of the file parsers (issue 15): seeded mutations of valid files for the llama2.c,
// safetensors, Hugging Face config.json and adapter loaders, each batch in a child process so that
// a native crash (SIGSEGV, SIGBUS, an abort) is caught and reported with its case. Every case must
// load (and run a forward pass) or fail with an Error that names its file. Fixed seeds: the same
// cases on every run.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const worker = path.join(__dirname, 'util', 'fuzz-worker.js');
const CASES = 400; // per parser: 1,600 files in all, a few seconds

describe('parser fuzz (fixed seeds, a child process per parser)', function () {
  this.timeout(60_000);
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-fuzz-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  (['llama2c', 'safetensors', 'hf-config', 'adapter'] as const).forEach((kind, k) => {
    it(`${kind}: ${CASES} mutated files, no crash, every failure a clear error naming the file`, () => {
      const seed = 1500 + k;
      const r = spawnSync(process.execPath, [worker, kind, String(seed), String(CASES), path.join(dir, kind)], { encoding: 'utf8', timeout: 50_000 });
      const lines = r.stdout.trim().split('\n');
      const last = lines[lines.length - 1];
      expect(r.signal, `${kind} (seed ${seed}) crashed with ${r.signal} at ${last}: ${r.stderr}`).to.equal(null);
      expect(r.status, `${kind} (seed ${seed}) exited ${r.status} at ${last}: ${r.stderr}`).to.equal(0);
      const summary = JSON.parse(last);
      expect(summary.cases).to.equal(CASES);
      expect(summary.bad, summary.bad.join('\n')).to.deep.equal([]);
      expect(summary.errors).to.be.greaterThan(CASES / 4); // the mutations do reach the checks
    });
  });
});
