// The GPU check's arithmetic and its no-GPU report (no GPU needed): the FLOP count behind MFU and the
// bytes behind the decode bound against hand counts, the packing of its batches, the node_modules it
// carries, and a report of a run without a GPU that must show no figure at all in the GPU columns.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adapterStepFlops, decodeWeightBytes, LLAMA_7B, ModelShape } from '../bench/flops';
import { packJson } from '../bench/gpu-7b';
import { stepFlops } from '../bench/train-step';
import { LlamaConfig } from '../lib/model/config';
import { buildReport, packageClosure, RUNTIME_PACKAGES } from '../scripts/gpu-check';
import { repoRoot } from './util/paths';

// C = 8, F = 12, 3 layers, H = 2 (d = 4), Hkv = 1 (Ckv = 4), V = 10
const TINY: ModelShape = { dim: 8, hiddenDim: 12, nLayers: 3, nHeads: 2, nKvHeads: 1, vocabSize: 10 };

describe('gpu check: FLOPs, bytes, batches, report', () => {
  it('adapterStepFlops matches a hand count (L = 2, K = 3, sequences of 2 and 3 tokens, 3 targets)', () => {
    // N = 5 tokens, P = 2·3/2 + 3·4/2 = 9 causal pairs, M = 3 targets
    // multiply-adds per token and layer: wq 8·8, wk 8·4, wv 8·4, wo 8·8, w1 8·12, w3 8·12, w2 12·8
    const macQkv = 64 + 32 + 32;
    const macRest = 64 + 96 + 96 + 96;
    const forward = 2 * 5 * (macQkv + macRest) * 3 /* all layers */ + 2 * (3 * 8 * 4 * 2) * 2 /* Kp, Vp per adapted layer */;
    const backward = 2 * 5 * macRest * 2 /* both adapted layers */ + 2 * 5 * macQkv * 1 /* not the lowest */ + 2 * (3 * 4 * 8 * 2) * 2 /* dP */;
    // attention, per head (2) and d = 4: forward 4d per causal pair in all 3 layers, 4d·K·N for the
    // prompt in the 2 adapted ones; backward 10d per pair + 12d·K·N in the adapted ones
    const attention = 2 * (16 * 9) * 3 + 2 * (16 * 3 * 5) * 2 + 2 * (40 * 9 + 48 * 3 * 5) * 2;
    const head = 4 * 3 * 8 * 10;
    expect(forward).to.equal(15168);
    expect(backward).to.equal(9088);
    expect(attention).to.equal(6144);
    const f = adapterStepFlops(TINY, 2, 3, [2, 3], 3);
    expect(f).to.deep.equal({ forwardMatmul: forward, backwardMatmul: backward, attention, head, total: 31360 });
  });

  it('adapterStepFlops is the CPU table\'s stepFlops (train-step.ts) for the same packed batch', () => {
    const c: LlamaConfig = { ...LLAMA_7B, maxSeqLen: 2048, normEps: 1e-5, ropeTheta: 10000, ropeLayout: 'half', tiedEmbeddings: false };
    const lens = [37, 1, 120, 64];
    const segments = Int32Array.from([0, 37, 38, 158, 222]);
    const batch = {
      tokens: new Int32Array(222),
      labels: new Int32Array(222),
      positions: new Int32Array(222),
      segments,
      targetCount: 150,
      exampleIndices: [0, 1, 2, 3],
    };
    expect(adapterStepFlops(c, 30, 10, lens, 150)).to.deep.equal(stepFlops(c, 30, 10, batch));
    // the 7B step is ~3x its forward matmuls when nearly every layer is adapted: a sanity bound
    const f = adapterStepFlops(LLAMA_7B, 30, 10, lens, 150);
    expect(f.backwardMatmul / f.forwardMatmul).to.be.within(0.85, 0.95);
  });

  it('decodeWeightBytes matches a hand count, and the 7B bf16 figure', () => {
    // per layer (8·8 + 8·4 + 8·4 + 8·8 + 3·8·12) bf16 + two f32 norms; final norm; classifier; one row
    expect(decodeWeightBytes(TINY, 2)).to.equal(3 * (2 * 480 + 2 * 8 * 4) + 8 * 4 + 2 * 10 * 8 + 2 * 8);
    expect(decodeWeightBytes(LLAMA_7B, 2)).to.equal(13_215_227_904);
  });

  it('packJson lays the examples end to end with restarting positions and counts the targets', () => {
    const b = packJson({ ids: [[1, 5, 6], [1, 7]], labels: [[-1, 6, -1], [7, -1]] });
    expect(Array.from(b.tokens)).to.deep.equal([1, 5, 6, 1, 7]);
    expect(Array.from(b.positions)).to.deep.equal([0, 1, 2, 0, 1]);
    expect(Array.from(b.segments)).to.deep.equal([0, 3, 5]);
    expect(b.targetCount).to.equal(2);
    expect(b.seqLens).to.deep.equal([3, 2]);
  });

  it('carries the runtime packages and their dependencies, not the build tools', () => {
    const pkgs = packageClosure(path.join(repoRoot, 'node_modules'), RUNTIME_PACKAGES);
    for (const p of RUNTIME_PACKAGES) expect(pkgs).to.include(p);
    expect(pkgs).to.not.include('typescript');
    expect(pkgs).to.not.include('cmake-js');
    expect(pkgs.length).to.be.greaterThan(RUNTIME_PACKAGES.length); // mocha and chai have dependencies
  });

  it('a run without a GPU reports no GPU figure: every measured cell says "not run (no GPU)"', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-gpu-report-'));
    try {
      const res = path.join(dir, 'results');
      fs.mkdirSync(res);
      for (const p of ['env', 'node', 'build', 'info']) fs.writeFileSync(path.join(res, `${p}.status`), 'ok');
      for (const p of ['tests', 'parity', 'nccl', 'nccl-gpu', 'gemm-lt', 'gemm-own', 'ours7b', 'torch'])
        fs.writeFileSync(path.join(res, `${p}.status`), 'not run (no GPU)');
      const { table, json } = buildReport(res, dir, true);
      expect(table.rows.length).to.be.greaterThan(10);
      for (const row of table.rows) {
        for (const cell of row.slice(1)) expect(cell === 'not run (no GPU)' || cell === '–', `${row[0]}: ${cell}`).to.equal(true);
      }
      expect(json.dryRun).to.equal(true);
      expect(table.notes[0]).to.match(/^DRY RUN without a GPU/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
