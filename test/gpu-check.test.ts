// The GPU check's arithmetic and its no-GPU report (no GPU needed): the FLOP count behind MFU and the
// bytes behind the decode bound against hand counts, the packing of its batches, the node_modules it
// carries, a report of a run without a GPU that must show no figure at all in the GPU columns, and
// the image phases' device program (bench/gpu-mm.ts) and the Q4_K base's (bench/gpu-q4k.ts) run at
// a tiny shape on the CPU.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { adapterStepFlops, decodeWeightBytes, LLAMA_7B, ModelShape } from '../bench/flops';
import { LLAMA_7B_CONFIG, packJson } from '../bench/device-bench';
import { relL2 } from '../scripts/gpu-check-device';
import { Adapter } from '../lib/model/adapter';
import { Llama } from '../lib/model/llama';
import { Checkpoint, LayerWeights } from '../lib/model/weights';
import { generateTokens } from '../lib/generate/generate';
import { Random } from '../lib/generate/random';
import { AdapterGrads, AdapterGraph } from '../lib/train/graph';
import { AdamW, paperAdamW } from '../lib/train/optimizer';
import { CLIP_TINY, encoderFlopsPerImage, main as gpuMm, randomEncoderWeights } from '../bench/gpu-mm';
import { fullBatch, main as gpuQ4k, randomQ4kBytes, TINY_Q4K } from '../bench/gpu-q4k';
import { encoderTensors, EncoderLayerWeights } from '../lib/encoder/config';
import { ImageEncoder } from '../lib/encoder/encoder';
import { writeSafetensors, SafetensorsTensor } from '../lib/model/safetensors';
import { native, Tensor } from '../lib/native';
import { stepFlops } from '../bench/train-step';
import { LlamaConfig } from '../lib/model/config';
import { buildReport, formatCall, packageClosure, PHASES, reportMarkdown, RUN_BUDGET_S, runCall, RUNTIME_PACKAGES } from '../scripts/gpu-check';
import { gpuPeaks } from '../bench/gpu-peaks';
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
      for (const p of ['tests', 'parity', 'nccl', 'nccl-gpu', 'gemm-lt', 'gemm-own', 'ours7b', 'clip', 'mm7b', 'q4k7b', 'torch'])
        fs.writeFileSync(path.join(res, `${p}.status`), 'not run (no GPU)');
      const { table, json } = buildReport(res, dir, true);
      expect(table.rows.length).to.be.greaterThan(10);
      // the image phases have their rows too
      const labels = table.rows.map((r) => r[0]);
      expect(labels.filter((l) => /CLIP ViT-L\/14 image encoder/.test(l))).to.have.length(1);
      expect(labels.filter((l) => /image-conditioned step/.test(l))).to.deep.equal([
        'B=4: 7B + CLIP ViT-L/14 features, image-conditioned step: tok/s (ms/step), peak GPU memory',
        'B=16: 7B + CLIP ViT-L/14 features, image-conditioned step: tok/s (ms/step), peak GPU memory',
      ]);
      // and the Q4_K base (no GPU named: none ran)
      expect(labels.filter((l) => /7B Q4_K base/.test(l))).to.deep.equal([
        'B=4: 7B Q4_K base, adapter step: tok/s (ms/step), peak GPU memory',
        'B=4 x 512, checkpointing: 7B Q4_K base, adapter step: tok/s (ms/step), peak GPU memory (target ≤ 8 GB)',
        'B=16: 7B Q4_K base, adapter step: tok/s (ms/step), peak GPU memory',
      ]);
      for (const row of table.rows) {
        for (const cell of row.slice(1)) expect(cell === 'not run (no GPU)' || cell === '–', `${row[0]}: ${cell}`).to.equal(true);
      }
      expect(json.dryRun).to.equal(true);
      expect(table.notes[0]).to.match(/^DRY RUN without a GPU/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the Q4_K rows show what q4k7b measured, the GPU it ran on, the target met or not, and why a run is missing', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-gpu-report-'));
    try {
      const res = path.join(dir, 'results');
      fs.mkdirSync(res);
      fs.writeFileSync(path.join(res, 'env.json'), JSON.stringify({ gpu: 'NVIDIA H100 80GB HBM3, 570.1, 81559 MiB' }));
      fs.writeFileSync(path.join(res, 'q4k7b.status'), 'ok');
      const row = (batch: string, B: number, tokPerS: number, msPerStep: number, peakBytes: number) =>
        ({ batch, B, checkpointing: batch === 'full', steps: 3, tokens: 3 * B * 100, seconds: 1, tokPerS, msPerStep, peakBytes, losses: [] });
      fs.writeFileSync(path.join(res, 'q4k7b.json'), JSON.stringify({
        mode: 'train', device: 'cuda', targetBytes: 8e9, weights: { bytes: 3.8e9, seconds: 2 },
        train: [row('alpaca', 4, 1234.4, 456.78, 9.1e9), row('full', 4, 2000, 1024, 6.789e9)],
        skipped: ['train B=16: out of time'], errors: [],
      }));
      const { table, json } = buildReport(res, dir, false);
      const rows = table.rows.filter((r) => /7B Q4_K base/.test(r[0]));
      expect(rows).to.deep.equal([
        ['B=4: 7B Q4_K base, adapter step on NVIDIA H100 80GB HBM3: tok/s (ms/step), peak GPU memory', '1234 (456.8 ms), 9.10 GB', '–', '–', '–', '–'],
        ['B=4 x 512, checkpointing: 7B Q4_K base, adapter step on NVIDIA H100 80GB HBM3: tok/s (ms/step), peak GPU memory (target ≤ 8 GB)',
          '2000 (1024.0 ms), 6.79 GB (target ≤ 8.00 GB: met)', '–', '–', '–', '–'],
        ['B=16: 7B Q4_K base, adapter step on NVIDIA H100 80GB HBM3: tok/s (ms/step), peak GPU memory', 'skipped: out of time', '–', '–', '–', '–'],
      ]);
      expect(table.notes.find((n) => n.startsWith('Q4_K base'))).to.match(/Q4_K weights on the GPU: 3\.80 GB\.$/);
      expect(json.q4k7b.train).to.have.length(2);
      // over the target says so
      fs.writeFileSync(path.join(res, 'q4k7b.json'), JSON.stringify({ targetBytes: 8e9, train: [row('full', 4, 2000, 1024, 8.5e9)], skipped: [], errors: [] }));
      expect(buildReport(res, dir, false).table.rows.find((r) => /4 x 512/.test(r[0]))![1]).to.equal('2000 (1024.0 ms), 8.50 GB (target ≤ 8.00 GB: NOT met)');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("run.sh's GPU phases are the report's, in order, and a failed build lists them all as not run", () => {
    const sh = fs.readFileSync(path.join(repoRoot, 'scripts', 'gpu-check-run.sh'), 'utf8');
    const gpu = sh.match(/local gpu_phases="([^"]+)"/)![1].split(' ');
    expect(gpu).to.deep.equal(PHASES.slice(PHASES.indexOf('info') + 1));
    // a failed build stops everything, PyTorch's side included
    const failed = sh.match(/not_run "not run \(the build failed\)" ([^\n]+)/)![1].split(' ');
    expect(failed).to.deep.equal(['info', ...gpu]);
    // every phase after the build has a share of the budget, in the order they run, and a priority
    const order = sh.match(/local ORDER="([^"]+)"/)![1].split(' ');
    expect(order).to.deep.equal(['info', ...gpu.filter((p) => p !== 'torch')]);
    const shares = sh.match(/local -A SHARE=\(([^)]+)\)/)![1];
    for (const p of order) expect(shares, p).to.match(new RegExp(`\\[${p}\\]=\\d+`));
    const priority = sh.match(/local PRIORITY="([^"]+)"/)![1].split(' ');
    expect([...priority].sort()).to.deep.equal([...order].sort());
    expect(priority.slice(0, 2)).to.deep.equal(['info', 'ours7b']);
    // each phase after the build runs through `phase` (planned, or skipped saying so)
    for (const p of order) expect(sh, p).to.match(new RegExp(`\\n\\s+phase ${p} \\d+ \\d+ `));
  });
});

describe('gpu check: the image phases at a tiny shape on the CPU (bench/gpu-mm.ts)', () => {
  it('encoderFlopsPerImage matches a hand count (C 32, F 64, 2 layers, 28x28 at patch 14, Dp 16)', () => {
    // N = 4 patches, T = 5 tokens; patches 4·588·32, per layer 5·4·32² + 2·25·32 + 2·5·32·64, projection 32·16
    expect(encoderFlopsPerImage(CLIP_TINY)).to.equal(2 * (4 * 588 * 32 + 2 * (5 * 4 * 1024 + 2 * 25 * 32 + 2 * 5 * 32 * 64) + 32 * 16));
  });

  it('ImageEncoder.fromWeights on random weights gives the features of the same weights loaded from a CLIP folder', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-gpu-mm-'));
    const c = CLIP_TINY;
    const w = randomEncoderWeights(c, 'f32', 'cpu', 5);
    const enc = ImageEncoder.fromWeights(c, w, 'cpu');
    let loaded: ImageEncoder | undefined;
    const S = c.imageSize;
    const px = native.randomUniform([3, 3, S, S], 'f32', 'cpu', 11, 2);
    try {
      // the same values under Hugging Face's names (what bench/embed-images.ts writes)
      const val = async (t: Tensor) => (await t.read()) as Float32Array;
      const p = 'vision_model.';
      const list: SafetensorsTensor[] = [];
      const put = async (name: string, shape: readonly number[], t: Tensor) => list.push({ name, dtype: 'F32', shape: [...shape], data: await val(t) });
      await put(p + 'embeddings.class_embedding', [c.dim], w.cls);
      await put(p + 'embeddings.patch_embedding.weight', [c.dim, 3, c.patchSize, c.patchSize], w.patchW);
      await put(p + 'embeddings.position_embedding.weight', w.pos.shape, w.pos);
      await put(p + 'pre_layrnorm.weight', [c.dim], w.preNorm!.w);
      await put(p + 'pre_layrnorm.bias', [c.dim], w.preNorm!.b);
      const names: [keyof EncoderLayerWeights, string][] = [
        ['ln1w', 'layer_norm1.weight'], ['ln1b', 'layer_norm1.bias'], ['ln2w', 'layer_norm2.weight'], ['ln2b', 'layer_norm2.bias'],
        ['wq', 'self_attn.q_proj.weight'], ['bq', 'self_attn.q_proj.bias'], ['wk', 'self_attn.k_proj.weight'], ['bk', 'self_attn.k_proj.bias'],
        ['wv', 'self_attn.v_proj.weight'], ['bv', 'self_attn.v_proj.bias'], ['wo', 'self_attn.out_proj.weight'], ['bo', 'self_attn.out_proj.bias'],
        ['w1', 'mlp.fc1.weight'], ['b1', 'mlp.fc1.bias'], ['w2', 'mlp.fc2.weight'], ['b2', 'mlp.fc2.bias'],
      ];
      for (let l = 0; l < c.nLayers; l++)
        for (const [k, n] of names) await put(`${p}encoder.layers.${l}.${n}`, w.layers[l][k].shape, w.layers[l][k]);
      await put(p + 'post_layernorm.weight', [c.dim], w.postNorm.w);
      await put(p + 'post_layernorm.bias', [c.dim], w.postNorm.b);
      await put('visual_projection.weight', w.projection!.shape, w.projection!);
      expect(list.length).to.equal(encoderTensors(w).length);
      writeSafetensors(path.join(dir, 'model.safetensors'), list);
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({
        architectures: ['CLIPVisionModelWithProjection'], model_type: 'clip_vision_model', hidden_size: c.dim, intermediate_size: c.ffnDim,
        num_attention_heads: c.nHeads, num_hidden_layers: c.nLayers, image_size: S, patch_size: c.patchSize, projection_dim: c.projectionDim,
        hidden_act: 'quick_gelu', layer_norm_eps: c.eps, num_channels: 3,
      }));
      loaded = await ImageEncoder.load(dir, { device: 'cpu', dtype: 'f32' });
      const [a] = enc.forward(px);
      const [b] = loaded.forward(px);
      const fa = (await a.read()) as Float32Array;
      const fb = (await b.read()) as Float32Array;
      [a, b].forEach((t) => t.dispose());
      expect(fa.length).to.equal(3 * c.projectionDim!);
      expect(fa.every(Number.isFinite)).to.equal(true);
      expect(Math.max(...fa.map(Math.abs))).to.be.greaterThan(0.1); // not all zero
      expect(Array.from(fa)).to.deep.equal(Array.from(fb));
    } finally {
      px.dispose();
      enc.dispose();
      loaded?.dispose();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('ImageEncoder.fromWeights refuses weights on another device, naming it', () => {
    const w = randomEncoderWeights(CLIP_TINY, 'f32', 'cpu', 5);
    try {
      expect(() => ImageEncoder.fromWeights(CLIP_TINY, w, 'cuda')).to.throw(/every weight must be on cuda, got one \(32, 588\) on cpu/);
    } finally {
      encoderTensors(w).forEach((t) => t.dispose());
    }
  });

  it('encode and train modes run at the tiny shape on the CPU and report what they measured', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-gpu-mm-'));
    try {
      const enc = await gpuMm(['encode', '--shape', 'tiny', '--device', 'cpu', '--batch', '3', '--runs', '2', '--json', path.join(dir, 'clip.json')]);
      expect(enc.errors).to.deep.equal([]);
      expect(enc.encode!.batch).to.equal(3);
      expect(enc.encode!.all).to.have.length(2);
      expect(enc.encode!.imagesPerS).to.equal(Math.max(...enc.encode!.all));
      expect(enc.encode!.peakBytes).to.equal(0); // no device memory on the CPU
      expect(JSON.parse(fs.readFileSync(path.join(dir, 'clip.json'), 'utf8')).encode.imagesPerS).to.equal(enc.encode!.imagesPerS);

      // two micro-batch sizes; B = 2 has steps of 3 + 4 and 3 + 2 tokens, B = 3 is not asked for
      const ex = (ids: number[]) => ({ ids, labels: [...ids.slice(1), 2].map((y, i) => (i === 0 ? -1 : y)) });
      const mb = (xs: number[][]) => {
        const e = xs.map(ex);
        return { ids: e.map((x) => x.ids), labels: e.map((x) => x.labels) };
      };
      const batches = {
        source: 'by hand',
        maxSeqLen: 16,
        decodePrompt: [1, 5],
        micro: [
          { B: 2, warmup: mb([[1, 5, 6, 7], [1, 8, 9]]), steps: [mb([[1, 5, 6], [1, 7, 8, 9]]), mb([[1, 11, 12], [1, 13]])] },
          { B: 3, warmup: mb([[1, 5], [1, 6], [1, 7]]), steps: [mb([[1, 5], [1, 6], [1, 7]])] },
        ],
      };
      fs.writeFileSync(path.join(dir, 'b.json'), JSON.stringify(batches));
      const tr = await gpuMm(['train', '--shape', 'tiny', '--device', 'cpu', '--batches', path.join(dir, 'b.json'), '--micro', '2', '--steps', '2',
        '--json', path.join(dir, 'mm.json')]);
      expect(tr.errors).to.deep.equal([]);
      expect(tr.shape).to.include({ adapterLayers: 1, adapterLen: 10, featureSize: CLIP_TINY.dim });
      expect(tr.train).to.have.length(1);
      const row = tr.train![0];
      expect(row).to.include({ B: 2, steps: 2, tokens: 12, images: 4, peakBytes: 0 });
      // small random weights: near-uniform logits over the 32000-token vocabulary at the start
      expect(row.losses).to.have.length(2);
      for (const l of row.losses) expect(l).to.be.closeTo(Math.log(32000), 0.5);
      expect(row.tokPerS).to.be.closeTo(row.tokens / row.seconds, 1e-6 * row.tokPerS);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('gpu-mm refuses bad arguments with a clear error', async () => {
    for (const [argv, msg] of [
      [['bogus'], /usage: gpu-mm.js encode\|train/],
      [['encode', '--shape', '7b'], /--shape expects L\/14 or tiny, got 7b/],
      [['train', '--shape', 'tiny'], /gpu-mm train needs --batches FILE/],
      [['train', '--batches', '/nonexistent/b.json', '--device', 'cpu'], /--batches \/nonexistent\/b.json: ENOENT/],
      [['encode', '--batch', '0'], /--batch expects an integer >= 1, got 0/],
    ] as [string[], RegExp][]) {
      let err: Error | undefined;
      try {
        await gpuMm(argv);
      } catch (e) {
        err = e as Error;
      }
      expect(err?.message, argv.join(' ')).to.match(msg);
    }
  });
});

describe('gpu check: the Q4_K base at a tiny shape on the CPU (bench/gpu-q4k.ts)', () => {
  it('randomQ4kBytes makes valid Q4_K blocks: native dequantisation reads values of mean ~0 and std ~0.02, a function of the seed', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-gpu-q4k-'));
    try {
      const a = randomQ4kBytes(64, 512, 3);
      expect(a.length).to.equal(64 * 2 * 144);
      expect(Buffer.from(randomQ4kBytes(64, 512, 3)).equals(Buffer.from(a))).to.equal(true);
      expect(Buffer.from(randomQ4kBytes(64, 512, 4)).equals(Buffer.from(a))).to.equal(false);
      fs.writeFileSync(path.join(dir, 'w.q4k'), a);
      const map = native.mapFile(path.join(dir, 'w.q4k'), true);
      const t = native.fromFile(map, 0, [64, 512], 'q4_k', 'q4_k', 'random');
      map.close();
      const v = (await t.read()) as Float32Array; // every fp16 scale finite, or the read rejects
      t.dispose();
      let sum = 0;
      let sq = 0;
      for (const x of v) {
        sum += x;
        sq += x * x;
      }
      const mean = sum / v.length;
      expect(Math.abs(mean)).to.be.lessThan(1e-3);
      expect(Math.sqrt(sq / v.length - mean * mean)).to.be.within(0.018, 0.022);
      // |value| <= d·scale·15 at most: d < 1.1 x 7.8e-5, scale <= 63
      expect(Math.max(...v.map(Math.abs))).to.be.within(0.02, 1.1 * 7.8e-5 * 63 * 15);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('fullBatch: B sequences of T tokens in the vocabulary, every position but the last a target', () => {
    const b = fullBatch(2, 5, 10, 1);
    expect(b.ids.map((x) => x.length)).to.deep.equal([5, 5]);
    for (const x of b.ids.flat()) expect(x).to.be.within(3, 9);
    expect(b.labels).to.deep.equal(b.ids.map((x) => [...x.slice(1), -1]));
    expect(b.ids[0]).to.not.deep.equal(b.ids[1]);
  });

  it('train runs at the tiny shape on the CPU: B = 2 on the batches, the full-length batch with checkpointing', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-gpu-q4k-'));
    try {
      const ex = (ids: number[]) => ({ ids, labels: [...ids.slice(1), 2].map((y, i) => (i === 0 ? -1 : y)) });
      const mb = (xs: number[][]) => {
        const e = xs.map(ex);
        return { ids: e.map((x) => x.ids), labels: e.map((x) => x.labels) };
      };
      fs.writeFileSync(path.join(dir, 'b.json'), JSON.stringify({
        source: 'by hand', maxSeqLen: 16, decodePrompt: [1, 5],
        micro: [
          { B: 2, warmup: mb([[1, 5, 6, 7], [1, 8, 9]]), steps: [mb([[1, 5, 6], [1, 7, 8, 9]]), mb([[1, 11, 12], [1, 13]])] },
          { B: 3, warmup: mb([[1, 5], [1, 6], [1, 7]]), steps: [mb([[1, 5], [1, 6], [1, 7]])] },
        ],
      }));
      const r = await gpuQ4k(['train', '--shape', 'tiny', '--device', 'cpu', '--batches', path.join(dir, 'b.json'), '--micro', '2', '--full', '2',
        '--steps', '2', '--json', path.join(dir, 'q4k.json')]);
      expect(r.errors).to.deep.equal([]);
      expect(r.skipped).to.deep.equal([]);
      expect(r.shape).to.include({ dim: TINY_Q4K.dim, adapterLayers: 1, adapterLen: 10, weights: 'q4_k', maxSeqLen: 16 });
      expect(r.train.map((t) => [t.batch, t.B, t.checkpointing, t.steps, t.tokens, t.peakBytes])).to.deep.equal([
        ['alpaca', 2, false, 2, 12, 0],
        ['full', 2, true, 2, 2 * 2 * 16, 0],
      ]);
      for (const t of r.train) {
        // weights of std 0.02: near-uniform logits over the 32000-token vocabulary at the start
        expect(t.losses).to.have.length(2);
        for (const l of t.losses) expect(l).to.be.closeTo(Math.log(32000), 0.5);
        expect(t.tokPerS).to.be.closeTo(t.tokens / t.seconds, 1e-6 * t.tokPerS);
      }
      expect(JSON.parse(fs.readFileSync(path.join(dir, 'q4k.json'), 'utf8')).train).to.have.length(2);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('gpu-q4k refuses bad arguments with a clear error', async () => {
    for (const [argv, msg] of [
      [['bogus'], /usage: gpu-q4k.js train --batches FILE/],
      [['train'], /gpu-q4k train needs --batches FILE/],
      [['train', '--batches', 'b.json', '--shape', 'small'], /--shape expects 7b or tiny, got small/],
      [['train', '--batches', 'b.json', '--micro', '4,x'], /--micro expects sizes like 4,16, got 4,x/],
      [['train', '--batches', 'b.json', '--full', '-1'], /--full expects an integer >= 0, got -1/],
      [['train', '--batches', 'b.json', '--device', 'tpu'], /--device expects cuda or cpu, got tpu/],
      [['train', '--batches', 'b.json', '--frobnicate'], /gpu-q4k: unknown argument --frobnicate/],
      [['train', '--batches', '/nonexistent/b.json', '--device', 'cpu'], /--batches \/nonexistent\/b.json: ENOENT/],
    ] as [string[], RegExp][]) {
      let err: Error | undefined;
      try {
        await gpuQ4k(argv);
      } catch (e) {
        err = e as Error;
      }
      expect(err?.message, argv.join(' ')).to.match(msg);
    }
    expect(() => randomQ4kBytes(4, 100, 1)).to.throw(/a \(4, 100\) matrix: rows must be >= 1 and K a multiple of 256/);
  });
});

describe('gpu check: the plain PyTorch baseline (bench/torch_plain_adapter.py) on the CPU', function () {
  this.timeout(120_000);
  const PY = '/usr/bin/python3';
  const torchMissing: string | undefined = (() => {
    const r = spawnSync(PY, ['-c', 'import torch, numpy'], { encoding: 'utf8' });
    return r.status === 0 ? undefined : `${PY} cannot import torch (${(r.stderr || r.error?.message || '').trim().split('\n').pop()})`;
  })();

  it(`gives our losses, gradient norms, KV-cache logits and greedy tokens on the same weights and batches${torchMissing ? ` (skipped: ${torchMissing})` : ''}`, async function () {
    if (torchMissing) this.skip();
    // a tiny LLaMA with grouped-query attention (4 heads, 2 KV heads) and Hugging Face's RoPE layout
    const c: LlamaConfig = { ...LLAMA_7B_CONFIG, dim: 32, hiddenDim: 48, nLayers: 3, nHeads: 4, nKvHeads: 2, vocabSize: 64, maxSeqLen: 32 };
    const Ckv = (c.nKvHeads * c.dim) / c.nHeads;
    const rng = new Random(21);
    const values: SafetensorsTensor[] = [];
    const made: Tensor[] = [];
    // matrices of std ~0.3 (logits far enough apart for greedy tokens to be stable), norms in [0.5, 1.5)
    const tensor = (name: string, shape: number[], f: () => number) => {
      const data = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, f);
      values.push({ name, dtype: 'F32', shape, data });
      const t = native.fromArray(data, shape, 'f32', 'cpu');
      made.push(t);
      return t;
    };
    const mat = (name: string, r: number, k: number) => tensor(name, [r, k], () => (rng.next() - 0.5) * 1.0);
    const norm = (name: string) => tensor(name, [c.dim], () => 0.5 + rng.next());
    const layers: LayerWeights[] = [];
    const emb = mat('emb', c.vocabSize, c.dim);
    for (let l = 0; l < c.nLayers; l++)
      layers.push({
        attnNorm: norm(`layers.${l}.attn_norm`), wq: mat(`layers.${l}.wq`, c.dim, c.dim), wk: mat(`layers.${l}.wk`, Ckv, c.dim),
        wv: mat(`layers.${l}.wv`, Ckv, c.dim), wo: mat(`layers.${l}.wo`, c.dim, c.dim), ffnNorm: norm(`layers.${l}.ffn_norm`),
        w1: mat(`layers.${l}.w1`, c.hiddenDim, c.dim), w2: mat(`layers.${l}.w2`, c.dim, c.hiddenDim), w3: mat(`layers.${l}.w3`, c.hiddenDim, c.dim),
      });
    const finalNorm = norm('final_norm');
    const classifier = mat('cls', c.vocabSize, c.dim);
    const ckpt = {
      config: c, weights: { embedding: emb, layers, finalNorm, classifier }, format: 'hf', path: 'test weights', device: 'cpu',
      dispose: () => made.forEach((t) => t.dispose()),
    } as Checkpoint;
    const acfg = { layers: 2, len: 3, gate: 'per-head' as const };
    const init = {
      prompts: Float32Array.from({ length: acfg.layers * acfg.len * c.dim }, () => rng.next() * 2 - 1),
      gates: Float32Array.from({ length: acfg.layers * c.nHeads }, () => rng.next() - 0.5), // nonzero: prompts get gradients
    };
    const tok = () => 3 + Math.floor(rng.next() * (c.vocabSize - 3));
    const example = (n: number) => {
      const ids = [1, ...Array.from({ length: n - 1 }, tok)];
      return { ids, labels: ids.map((_, i) => (i === 0 || i === n - 1 ? -1 : ids[i + 1])) };
    };
    const micro = (lens: number[]) => {
      const e = lens.map(example);
      return { ids: e.map((x) => x.ids), labels: e.map((x) => x.labels) };
    };
    const batches = [micro([7, 3, 11]), micro([5, 9]), micro([12])]; // padding in the first two
    const probe = [1, tok(), tok(), tok(), tok(), tok()];
    const opt = { lr: 1e-2, ...paperAdamW };

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-torch-plain-'));
    const model = Llama.fromCheckpoint(ckpt);
    const adapter = Adapter.fromValues(c, acfg, init, 'cpu');
    const adamw = new AdamW(adapter.parameters(), paperAdamW);
    const grads = new AdapterGrads(adapter);
    const graph = new AdapterGraph(model, adapter);
    try {
      // ours
      const losses: number[] = [];
      const norms: number[] = [];
      for (const b of batches) {
        const pb = packJson(b);
        grads.zero();
        const out = await graph.run(pb, 1 / pb.targetCount, grads);
        norms.push(await adamw.update(grads.all(), opt.lr));
        losses.push(out.lossSum / out.targets);
      }
      model.setAdapter(adapter);
      const cache = model.newCache(probe.length + 1);
      const logitsT = model.forward(probe, cache, { allLogits: true });
      const logits = (await logitsT.read()) as Float32Array;
      logitsT.dispose();
      cache.dispose();
      const greedy: number[] = [];
      for await (const id of generateTokens(model, probe, { temperature: 0, maxTokens: 4, stopTokens: [] })) greedy.push(id);

      // the plain PyTorch baseline on the same weights, adapter and batches
      writeSafetensors(path.join(dir, 'w.safetensors'), values);
      fs.writeFileSync(path.join(dir, 'job.json'), JSON.stringify({
        config: c, weights: path.join(dir, 'w.safetensors'), adapter: acfg,
        init: { prompts: Array.from(init.prompts), gates: Array.from(init.gates) },
        optimizer: { lr: opt.lr, beta1: opt.beta1, beta2: opt.beta2, eps: opt.eps, weightDecay: opt.weightDecay },
        batches, probe,
      }));
      const r = spawnSync(PY, [path.join(repoRoot, 'bench', 'torch_plain_adapter.py'), '--check', path.join(dir, 'job.json')], { encoding: 'utf8' });
      expect(r.status, r.stderr).to.equal(0);
      const py = JSON.parse(r.stdout);
      expect(py.losses).to.have.length(3);
      py.losses.forEach((l: number, i: number) => expect(l, `loss ${i}`).to.be.closeTo(losses[i], 1e-5 * losses[i]));
      py.gradNorms.forEach((g: number, i: number) => expect(g, `gradient norm ${i}`).to.be.closeTo(norms[i], 1e-4 * norms[i]));
      expect(losses[2]).to.not.be.closeTo(losses[0], 1e-3); // the batches differ: a real comparison
      expect(py.probeLogits).to.have.length(logits.length);
      expect(relL2(py.probeLogits, logits)).to.be.lessThan(1e-5);
      expect(py.greedy).to.deep.equal(greedy);
    } finally {
      model.setAdapter(undefined);
      grads.dispose();
      adamw.dispose();
      adapter.dispose();
      model.dispose();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('gpu check: peaks by GPU name, the device call, a failed build (issue 12)', function () {
  this.timeout(120_000);

  it('gpuPeaks looks the datasheet peaks up by the name the device reports', () => {
    const p = (name: string) => {
      const x = gpuPeaks(name);
      return [x.model, x.bf16Flops, x.bandwidth, x.source];
    };
    expect(p('NVIDIA H100 80GB HBM3')).to.deep.equal(['H100 SXM', 989.4e12, 3.35e12, 'datasheet']);
    expect(p('NVIDIA H100 PCIe')).to.deep.equal(['H100 PCIe', 756.5e12, 2.0e12, 'datasheet']);
    expect(p('NVIDIA H100 NVL')).to.deep.equal(['H100 NVL', 835.5e12, 3.9e12, 'datasheet']);
    expect(p('NVIDIA H200')).to.deep.equal(['H200 SXM', 989.4e12, 4.8e12, 'datasheet']);
    expect(p('NVIDIA H200 NVL')).to.deep.equal(['H200 NVL', 835.5e12, 4.8e12, 'datasheet']);
    expect(gpuPeaks('NVIDIA H200').note).to.equal('H200 SXM datasheet: 989.4 TFLOP/s dense bf16, 4.80 TB/s');
    // a MIG slice is not the whole GPU; "H100" alone names no variant
    expect(p('NVIDIA H100 80GB HBM3 MIG 1g.10gb')).to.deep.equal([undefined, undefined, undefined, 'unknown']);
    expect(p('NVIDIA H100')).to.deep.equal([undefined, undefined, undefined, 'unknown']);
    expect(gpuPeaks('').note).to.match(/an unnamed GPU is not in the peak table/);
  });

  it('gpuPeaks estimates an unknown GPU from its attributes, marked, where the architecture\'s rate is known', () => {
    // an sm_90 part: 114 SMs at 1755 MHz x 4096 FLOP/clock; HBM 1593 MHz x 5120 bits, double data rate
    const h = gpuPeaks('Some Hopper', { sm: 90, multiprocessors: 114, clockKHz: 1755000, memoryClockKHz: 1593000, memoryBusBits: 5120 });
    expect(h.source).to.equal('estimate');
    expect(h.bf16Flops).to.equal(114 * 1755e6 * 4096);
    expect(h.bandwidth).to.equal((2 * 1593e6 * 5120) / 8);
    expect(h.note).to.equal(
      "ESTIMATE from Some Hopper's attributes (not in the peak table): 819.5 TFLOP/s dense bf16 = 114 SMs x 1755 MHz x 4096 (sm_90); 2.04 TB/s = 2 x 1593 MHz x 5120 bits",
    );
    // sm_89: the bf16 rate depends on the product: the bandwidth only
    const a = gpuPeaks('NVIDIA L40S', { sm: 89, multiprocessors: 142, clockKHz: 2520000, memoryClockKHz: 9001000, memoryBusBits: 384 });
    expect([a.bf16Flops, a.bandwidth, a.source]).to.deep.equal([undefined, (2 * 9001e6 * 384) / 8, 'estimate']);
    expect(a.note).to.contain('bf16 unknown (no per-SM rate for sm_89)');
    // the emulator: no clocks, no estimate
    expect(gpuPeaks('CUDA emulator', { sm: 0, multiprocessors: 4, clockKHz: 0 }).source).to.equal('unknown');
  });

  it('the device call names the machine kind and keeps well under the 600 s limit; --kind is checked', () => {
    expect(formatCall('nvidia-h200')).to.equal(
      `run(command: "bash .gpu-check/run.sh --budget ${RUN_BUDGET_S}", carry: [".gpu-check"], kind: "nvidia-h200", timeout_s: ${RUN_BUDGET_S + 90})`,
    );
    expect(runCall('nvidia-h100-x1').kind).to.equal('nvidia-h100-x1');
    expect(RUN_BUDGET_S).to.be.at.most(360);
    expect(runCall('nvidia-h100-x1').timeout_s).to.be.lessThan(600);
    const r = spawnSync(process.execPath, [path.join(repoRoot, 'dist', 'scripts', 'gpu-check.js'), '--kind', 'nvidia-a100'], { encoding: 'utf8' });
    expect(r.status).to.equal(1);
    expect(r.stderr).to.contain('--kind expects nvidia-h100-x1 or nvidia-h200, got nvidia-a100');
  });

  it('a run on an H100: MFU and the decode bound divide by the H100\'s peaks, the call\'s kind is checked, every table names the GPU', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-gpu-report-'));
    try {
      const res = path.join(dir, 'results');
      const prep = path.join(dir, 'prep');
      fs.mkdirSync(res);
      fs.mkdirSync(prep);
      fs.writeFileSync(path.join(prep, 'manifest.json'), JSON.stringify({ kind: 'nvidia-h200', budgetSeconds: 360 }));
      fs.writeFileSync(path.join(res, 'env.json'), JSON.stringify({ gpu: 'NVIDIA H100 80GB HBM3, 570.1, 81559 MiB' }));
      for (const [p, st, secs, el] of [['env', 'ok', 2, 2], ['node', 'ok', 1, 3], ['build', 'ok', 120, 123], ['ours7b', 'ok', 60, 200], ['torch', 'ok', 230, 280]] as const) {
        fs.writeFileSync(path.join(res, `${p}.status`), st);
        fs.writeFileSync(path.join(res, `${p}.seconds`), String(secs));
        fs.writeFileSync(path.join(res, `${p}.elapsed`), String(el));
      }
      const row = (B: number, tokPerS: number, tflops: number) => ({ B, steps: 4, tokens: 4 * B * 100, tokPerS, msPerStep: 100, tflops, peakBytes: 20 * 2 ** 30 });
      fs.writeFileSync(path.join(res, 'ours7b.json'), JSON.stringify({
        gpu: { name: 'NVIDIA H100 80GB HBM3', gemm: 'cublasLt 13.0.2 (/x/libcublasLt.so.13)', gemmAtEnd: 'own tensor-core kernel (cublasLt 13.0.2 (/x/libcublasLt.so.13) failed: cublasLtMatmul returned status 13 (forward M=900 N=4096 K=4096 bf16))' },
        train: [row(4, 5000, 494.7)], decode: { tokPerS: 200 }, skipped: [], errors: [],
      }));
      fs.writeFileSync(path.join(res, 'torch.json'), JSON.stringify({
        versions: { torch: '2.5.1', cuda: '12.4' },
        plain: { train: [row(4, 2500, 247.35)], decode: { tokPerS: 100 }, skipped: [], errors: [] },
        peft: { train: [], skipped: [], errors: [], notRun: "AttributeError: 'LlamaAttention' object has no attribute 'num_heads'" },
        skipped: [], errors: [],
      }));
      const rep = buildReport(res, dir, false, prep);
      const find = (re: RegExp) => rep.table.rows.find((r) => re.test(r[0]))!;
      const peft = "not run: AttributeError: 'LlamaAttention' object has no attribute 'num_heads'";
      expect(find(/^B=4: trained tok\/s/)).to.deep.equal(['B=4: trained tok/s (ms/step), 400 tokens/step', '5000 (100.0 ms)', '2500 (100.0 ms)', peft, '2.00x', '–']);
      // 494.7 TFLOP/s of the H100 SXM's 989.4 = 50%; the plain side 25%
      expect(find(/^B=4: MFU/)).to.deep.equal(['B=4: MFU (model TFLOP/s)', '50.0% (495)', '25.0% (247)', peft, '2.00x', '–']);
      // 3.35 TB/s / 13.215 GB per token = 253 tok/s
      expect(find(/^decode/)).to.deep.equal(['decode, batch 1 (bound 253 tok/s at 3.35 TB/s)', '200.0 tok/s, 79% of bound', '100.0 tok/s, 39% of bound', peft, '2.00x', '–']);
      expect(rep.title).to.match(/— NVIDIA H100 80GB HBM3$/);
      expect(rep.phaseTitle).to.equal('Phases on NVIDIA H100 80GB HBM3 (elapsed device time per phase)');
      expect(rep.table.notes.find((n) => n.startsWith('Peaks:'))).to.equal('Peaks: H100 SXM datasheet: 989.4 TFLOP/s dense bf16, 3.35 TB/s.');
      expect(rep.table.notes[0]).to.contain('the call named nvidia-h200 but the GPU is NVIDIA H100 80GB HBM3');
      const errors = rep.table.notes.find((n) => n.startsWith('Errors:'))!;
      expect(errors).to.contain('ours7b: the GEMM engine changed from cublasLt 13.0.2 to own tensor-core kernel (cublasLt 13.0.2');
      expect(errors).to.contain("PEFT not run: AttributeError: 'LlamaAttention'");
      // the phase table: seconds, the elapsed device time, the engine at the end
      expect(rep.phaseTable.rows.find((r) => r[0] === 'ours7b')).to.deep.equal(['ours7b', 'ok', '60', '200', rep.json.ours.gpu.gemmAtEnd]);
      expect(rep.phaseTable.rows.map((r) => r[0])).to.deep.equal(['env', 'node', 'build', 'ours7b', 'torch']);
      expect(reportMarkdown(rep)).to.contain('### Phases on NVIDIA H100 80GB HBM3');
      // an unknown GPU: no MFU, no bound, said so
      fs.writeFileSync(path.join(res, 'env.json'), JSON.stringify({ gpu: 'Mystery GPU, 1.0, 1 MiB' }));
      const u = buildReport(res, dir, false, prep);
      expect(u.table.rows.find((r) => /^B=4: MFU/.test(r[0]))!.slice(1, 3)).to.deep.equal(['unknown peak (495)', 'unknown peak (247)']);
      expect(u.table.rows.find((r) => /^decode/.test(r[0]))![0]).to.equal("decode, batch 1 (no bound: the GPU's bandwidth is unknown)");
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the report of a failed build: every later phase and PyTorch "not run (the build failed)", the build\'s error, the phase times', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-gpu-report-'));
    try {
      const res = path.join(dir, 'results');
      fs.mkdirSync(res);
      fs.writeFileSync(path.join(res, 'env.json'), JSON.stringify({ gpu: 'NVIDIA H200, 570.1, 143771 MiB' }));
      for (const [p, st, secs, el] of [['env', 'ok', 3, 3], ['node', 'ok', 2, 5], ['build', 'failed (exit 1)', 41, 47]] as const) {
        fs.writeFileSync(path.join(res, `${p}.status`), st);
        fs.writeFileSync(path.join(res, `${p}.seconds`), String(secs));
        fs.writeFileSync(path.join(res, `${p}.elapsed`), String(el));
      }
      for (const p of PHASES.slice(PHASES.indexOf('info'))) fs.writeFileSync(path.join(res, `${p}.status`), 'not run (the build failed)');
      fs.writeFileSync(path.join(dir, 'build.log'), 'cmake ...\n/r/native/cuda/rope.cu(12): error: identifier "x" is undefined\nninja: build stopped: subcommand failed.\n');
      const rep = buildReport(res, dir, false);
      for (const row of rep.table.rows)
        for (const cell of row.slice(1)) expect(cell === 'not run (the build failed)' || cell === '–', `${row[0]}: ${cell}`).to.equal(true);
      expect(rep.table.notes.find((n) => n.startsWith('Errors:'))).to.equal('Errors: build failed (exit 1): /r/native/cuda/rope.cu(12): error: identifier "x" is undefined.');
      expect(rep.phaseTable.rows.slice(0, 4)).to.deep.equal([
        ['env', 'ok', '3', '3', '–'],
        ['node', 'ok', '2', '5', '–'],
        ['build', 'failed (exit 1)', '41', '47', '–'],
        ['info', 'not run (the build failed)', '–', '–', '–'],
      ]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  const PY = '/usr/bin/python3';
  const torchMissing = spawnSync(PY, ['-c', 'import torch'], { encoding: 'utf8' }).status === 0 ? undefined : `${PY} cannot import torch`;

  it(`run.sh with a failing build stops PyTorch's side before it times anything and goes straight to the report${torchMissing ? ` (skipped: ${torchMissing})` : ''}`, function () {
    if (torchMissing) this.skip();
    // a repository as the device sees it: the sources, and .gpu-check/ as prepared (node from
    // GPU_CHECK_NODE instead of node.xz); the build fails at once (CUDACXX=/bin/false)
    const repo = fs.mkdtempSync(path.join(os.tmpdir(), 'la-gpu-run-'));
    try {
      const here = path.join(repo, '.gpu-check');
      fs.mkdirSync(path.join(here, 'data'), { recursive: true });
      for (const f of ['CMakeLists.txt', 'native', 'bench', 'package.json']) fs.symlinkSync(path.join(repoRoot, f), path.join(repo, f));
      fs.symlinkSync(path.join(repoRoot, 'dist'), path.join(here, 'dist'));
      fs.symlinkSync(path.join(repoRoot, 'node_modules'), path.join(here, 'node_modules'));
      fs.copyFileSync(path.join(repoRoot, 'scripts', 'gpu-check-run.sh'), path.join(here, 'run.sh'));
      fs.writeFileSync(path.join(here, 'manifest.json'), JSON.stringify({ kind: 'nvidia-h100-x1', budgetSeconds: 360 }));
      const ex = (ids: number[]) => ({ ids, labels: [...ids.slice(1), -1] });
      const mb = (xs: number[][]) => ({ ids: xs.map((x) => ex(x).ids), labels: xs.map((x) => ex(x).labels) });
      fs.writeFileSync(path.join(here, 'data', 'batches-7b.json'), JSON.stringify({
        source: 'by hand', maxSeqLen: 16, decodePrompt: [1, 5, 9],
        micro: [{ B: 2, warmup: mb([[1, 5, 6, 7], [1, 8, 9]]), steps: [mb([[1, 5, 6], [1, 7, 8, 9]])] }],
      }));
      const out = path.join(repo, 'out');
      const work = path.join(repo, 'work');
      const t0 = Date.now();
      const r = spawnSync('bash', [path.join(here, 'run.sh'), '--budget', '300'], {
        cwd: repo,
        encoding: 'utf8',
        timeout: 100_000,
        env: {
          ...process.env, OUT: out, GPU_CHECK_WORK: work, CUDACXX: '/bin/false', GPU_CHECK_NODE: process.execPath, GPU_CHECK_PYTHON: PY,
          GPU_CHECK_TORCH_ARGS: '--shape tiny --device cpu --micro 2 --steps 1 --decode 3', GPU_CHECK_JOBS: '1',
        },
      });
      const seconds = (Date.now() - t0) / 1e3;
      expect(r.status, r.stdout + r.stderr).to.equal(1); // a failed phase
      expect(seconds).to.be.lessThan(60); // not the budget: nothing waited for PyTorch
      const st = (p: string) => fs.readFileSync(path.join(work, 'results', `${p}.status`), 'utf8').trim();
      expect(st('build')).to.match(/^failed \(exit \d+\)$/);
      for (const p of PHASES.slice(PHASES.indexOf('info'))) expect(st(p), p).to.equal('not run (the build failed)');
      // PyTorch's side was stopped: no go signal, no timed step
      expect(fs.existsSync(path.join(work, 'go'))).to.equal(false);
      const tj = path.join(work, 'results', 'torch.json');
      if (fs.existsSync(tj)) expect(JSON.parse(fs.readFileSync(tj, 'utf8')).plain?.train ?? []).to.deep.equal([]);
      // the elapsed device time per phase, printed and in the report
      expect(r.stdout).to.match(/\(build: \d+ s; \d+ s of the device time elapsed, \d+ s of the budget left\)/);
      const md = fs.readFileSync(path.join(out, 'gpu-check.md'), 'utf8');
      expect(md).to.contain('### Phases on unknown GPU (elapsed device time per phase)');
      expect(md).to.match(/\| build +\| +failed \(exit \d+\) \| +\d+ \| +\d+ \|/);
      expect(md).to.contain('Errors: build failed');
      expect(fs.readFileSync(path.join(out, 'build.log'), 'utf8')).to.contain('/bin/false');
    } finally {
      fs.rmSync(repo, { recursive: true, force: true });
    }
  });

  it(`the PyTorch side runs at a tiny shape on the CPU: the plain baseline's rows, FLOPs as ours, PEFT "not run" with the reason${torchMissing ? ` (skipped: ${torchMissing})` : ''}`, function () {
    if (torchMissing) this.skip();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-torch-side-'));
    try {
      const ex = (ids: number[]) => ({ ids, labels: [...ids.slice(1), 2].map((y, i) => (i === 0 ? -1 : y)) });
      const mb = (xs: number[][]) => ({ ids: xs.map((x) => ex(x).ids), labels: xs.map((x) => ex(x).labels) });
      const steps = [mb([[1, 5, 6], [1, 7, 8, 9]]), mb([[1, 11, 12], [1, 13]])];
      fs.writeFileSync(path.join(dir, 'b.json'), JSON.stringify({
        source: 'by hand', maxSeqLen: 16, decodePrompt: [1, 5, 9],
        micro: [{ B: 2, warmup: mb([[1, 5, 6, 7], [1, 8, 9]]), steps }, { B: 3, warmup: mb([[1, 5], [1, 6], [1, 7]]), steps: [mb([[1, 5], [1, 6], [1, 7]])] }],
      }));
      const r = spawnSync(PY, [path.join(repoRoot, 'bench', 'torch_peft_step.py'), '--batches', path.join(dir, 'b.json'), '--json', path.join(dir, 't.json'),
        '--shape', 'tiny', '--device', 'cpu', '--micro', '2', '--steps', '2', '--decode', '4'], { encoding: 'utf8', env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' } });
      expect(r.status, r.stderr).to.equal(0);
      const t = JSON.parse(fs.readFileSync(path.join(dir, 't.json'), 'utf8'));
      expect(t.plain.errors).to.deep.equal([]);
      expect(t.plain.train).to.have.length(1);
      const row = t.plain.train[0];
      expect(row).to.include({ B: 2, steps: 2, tokens: 12, padded_tokens: 2 * 4 + 2 * 3, targets: 8, peakBytes: 0 });
      for (const l of row.losses) expect(l).to.be.closeTo(Math.log(32000), 0.5); // std 0.02 weights: near-uniform logits
      // the FLOP count is bench/flops.ts's, at the tiny shape (3 layers, 1 adapted)
      const tiny = { dim: 32, hiddenDim: 64, nLayers: 3, nHeads: 4, nKvHeads: 4, vocabSize: 32000 };
      const flops = steps.map((s) => adapterStepFlops(tiny, 1, 10, s.ids.map((x) => x.length), s.labels.flat().filter((y) => y >= 0).length).total);
      expect(row.flopsPerStep).to.equal((flops[0] + flops[1]) / 2);
      expect(t.plain.decode).to.include({ promptTokens: 3, tokens: 4 });
      // no PEFT at this shape (and here none installed): "not run" with the reason, no figure
      expect(t.peft.train).to.deep.equal([]);
      expect(t.peft.notRun).to.match(/^(import failed: ModuleNotFoundError: No module named '(transformers|peft)'|PEFT runs only at the 7B shape on the GPU)$/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
