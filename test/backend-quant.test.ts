// Block-quantized frozen weights (q8_0, q4_0, q4_k, q5_k, q6_k) in the kernels, on every backend:
//
//   dequantisation  read() of a quantized tensor equals llama.cpp's dequantize_row_* bit for bit
//                   (test/golden/ggml-quants.bin, made by llama.cpp's own code: see its PROVENANCE)
//   quantizers      tools/gguf-writer's Q8_0 and Q4_0 bytes equal llama.cpp's quantize_row_*_ref;
//                   the K types (a simpler scale search) dequantise to within a stated error
//   kernels         matmul (decode M = 1, few rows, sgemm panels), matmulBackward and embedding
//                   against a float64 product of the dequantised weights: |a - e| <= 1e-5 (|e| + sum |x w|)
//                   on the CPU and on cuda (the emulator here), the embedding exactly.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as nodePath from 'path';
import type { NativeBinding, QuantDType, Tensor } from '../lib/native';
import { native } from '../lib/native';
import { Backend, describeEachBackend } from './util/backends';
import { readGolden } from './util/golden-quants';
import * as ref from './util/reference';
import { GgmlTypeName } from '../lib/model/gguf';
import { quantize } from '../tools/gguf-writer';

const TYPES: { q: QuantDType; g: GgmlTypeName }[] = [
  { q: 'q8_0', g: 'Q8_0' },
  { q: 'q4_0', g: 'Q4_0' },
  { q: 'q4_k', g: 'Q4_K' },
  { q: 'q5_k', g: 'Q5_K' },
  { q: 'q6_k', g: 'Q6_K' },
];

const tmp = fs.mkdtempSync(nodePath.join(os.tmpdir(), 'la-quant-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
let fileNo = 0;

/** A quantized tensor of `shape` holding `bytes`, made by `binding` on the host (through a file). */
function quantTensor(binding: NativeBinding, bytes: Uint8Array, shape: number[], q: QuantDType): Tensor {
  const file = nodePath.join(tmp, `w${fileNo++}.bin`);
  fs.writeFileSync(file, bytes);
  const map = binding.mapFile(file);
  try {
    return binding.fromFile(map, 0, shape, q, q, 'w');
  } finally {
    map.close();
  }
}

/** Deterministic weights with a spread of magnitudes per block. */
function weights(n: number, seed: number): Float32Array {
  const w = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const scale = 0.02 * (1 + ((i >> 5) % 7));
    w[i] = ((s / 2 ** 32) * 2 - 1) * scale;
  }
  return w;
}

describe('quantized weights: dequantisation equals llama.cpp', () => {
  const golden = readGolden();
  for (const { q } of TYPES) {
    it(`${q}: read() of llama.cpp's blocks equals dequantize_row_${q.replace('_k', '_K')} bit for bit`, async () => {
      const g = golden.get(q)!;
      expect(g, `golden section ${q}`).to.not.equal(undefined);
      const K = 256, rows = g.input.length / K;
      const t = quantTensor(native, g.blocks, [rows, K], q);
      const got = (await t.read()) as Float32Array;
      t.dispose();
      expect(Buffer.from(got.buffer).equals(Buffer.from(g.output.buffer)), `${q} dequantised values differ`).to.equal(true);
    });
  }

  for (const g of ['q8_0', 'q4_0'] as const) {
    it(`tools/gguf-writer quantizes ${g} to the same bytes as llama.cpp's quantize_row_${g}_ref`, () => {
      const s = golden.get(g)!;
      const mine = quantize(s.input, g === 'q8_0' ? 'Q8_0' : 'Q4_0');
      const diff = mine.findIndex((v, i) => v !== s.blocks[i]);
      expect(diff, `first differing byte`).to.equal(-1);
    });
  }

  // The simpler K scale search: every value within (its sub-block's range) / levels of the input,
  // checked through the exact dequantisation above.
  for (const [g, q, levels] of [['Q4_K', 'q4_k', 15], ['Q5_K', 'q5_k', 31], ['Q6_K', 'q6_k', 32]] as const) {
    it(`tools/gguf-writer's ${g} blocks dequantise to within range/${levels} of the input`, async () => {
      const x = golden.get(q)!.input;
      const t = quantTensor(native, quantize(x, g), [x.length / 256, 256], q);
      const y = (await t.read()) as Float32Array;
      t.dispose();
      const sub = g === 'Q6_K' ? 16 : 32;
      for (let s = 0; s < x.length / sub; s++) {
        const part = x.subarray(s * sub, s * sub + sub);
        // Q4_K/Q5_K cover [min(0, lo), hi]; Q6_K is symmetric around 0
        const lo = Math.min(0, ...part), hi = Math.max(...part), amax = Math.max(...part.map(Math.abs));
        const range = g === 'Q6_K' ? 2 * amax : hi - lo;
        // the 6-bit / int8 scale quantization and fp16 scales add a few % of the step
        const tol = (range / levels) * 0.75 + 1e-6 * amax + 1e-9;
        for (let i = 0; i < sub; i++) {
          const e = Math.abs(y[s * sub + i] - part[i]);
          if (e > tol) expect.fail(`${g} sub-block ${s} value ${i}: ${y[s * sub + i]} vs ${part[i]} (error ${e} > ${tol})`);
        }
      }
    });
  }
});

describeEachBackend(
  (name) => `quantized kernels on ${name}`,
  (b: Backend) => {
    const n = b.binding;
    const K = 512, N = 40;
    for (const { q, g } of TYPES) {
      const wv = weights(N * K, 7);
      const bytes = quantize(wv, g);
      const make = () => {
        const host = quantTensor(n, bytes, [N, K], q);
        if (b.device === 'cpu') return host;
        const d = n.toDevice(host, b.device);
        host.dispose();
        return d;
      };
      let W: Float32Array; // the dequantised weights (exact, checked above)
      before(async () => {
        const t = quantTensor(native, bytes, [N, K], q);
        W = (await t.read()) as Float32Array;
        t.dispose();
      });

      for (const M of [1, 3, 17]) {
        it(`matmul, ${q} weights, M=${M} (N=${N}, K=${K}) against the dequantised product`, async () => {
          const x = weights(M * K, 100 + M).map((v) => v * 10);
          const w = make();
          const xt = n.fromArray(x, [M, K], 'f32', b.device);
          const y = n.matmul(xt, w);
          expect(y.shape).to.deep.equal([M, N]);
          expect(y.device).to.equal(b.device);
          const got = (await y.read()) as Float32Array;
          [w, xt, y].forEach((t) => t.dispose());
          // The CPU's decode (M = 1) rounds x to int8 per 32 (Q8_0, Q4_0) or 256 (the K types) values,
          // as llama.cpp does: the error is at most sum_k |w_k| * xd(k) / 2 (xd = the block's max |x|
          // / 127) beyond f32's.
          const int8x = b.device === 'cpu' && M === 1;
          const xb = q === 'q8_0' || q === 'q4_0' ? 32 : 256;
          const xd = Float64Array.from({ length: (M * K) / xb }, (_, i) => Math.max(...x.subarray(xb * i, xb * i + xb).map(Math.abs)) / 127);
          const want = new Float64Array(M * N), atol = new Float64Array(M * N);
          for (let m = 0; m < M; m++)
            for (let j = 0; j < N; j++) {
              let s = 0, a = 0, e = 0;
              for (let k = 0; k < K; k++) {
                s += x[m * K + k] * W[j * K + k];
                a += Math.abs(x[m * K + k] * W[j * K + k]);
                e += (Math.abs(W[j * K + k]) * xd[Math.floor((m * K + k) / xb)]) / 2;
              }
              want[m * N + j] = s;
              atol[m * N + j] = 1e-5 * a + (int8x ? 1.01 * e : 0) + 1e-30;
            }
          ref.assertClose(got, want, 1e-5, atol, `matmul ${q} M=${M}`);
        });
      }

      it(`matmulBackward, ${q} weights (M=9) against dy · dequantised w`, async () => {
        const M = 9;
        const dy = weights(M * N, 55);
        const w = make();
        const dyt = n.fromArray(dy, [M, N], 'f32', b.device);
        const dx = n.matmulBackward(dyt, w);
        expect(dx.shape).to.deep.equal([M, K]);
        const got = (await dx.read()) as Float32Array;
        [w, dyt, dx].forEach((t) => t.dispose());
        const want = new Float64Array(M * K), scale = new Float64Array(M * K);
        for (let m = 0; m < M; m++)
          for (let k = 0; k < K; k++) {
            let s = 0, a = 0;
            for (let j = 0; j < N; j++) {
              s += dy[m * N + j] * W[j * K + k];
              a += Math.abs(dy[m * N + j] * W[j * K + k]);
            }
            want[m * K + k] = s;
            scale[m * K + k] = a;
          }
        ref.assertClose(got, want, 1e-5, Float64Array.from(scale, (s) => 1e-5 * s + 1e-30), `matmulBackward ${q}`);
      });

      it(`embedding of a ${q} table: the dequantised rows exactly`, async () => {
        const w = make();
        const ids = [3, 0, 39, 3, 17];
        const out = n.embedding(w, n.fromArray(Int32Array.from(ids), [ids.length], 'i32', 'cpu'));
        const got = (await out.read()) as Float32Array;
        [w, out].forEach((t) => t.dispose());
        const want = new Float32Array(ids.length * K);
        ids.forEach((id, t) => want.set(W.subarray(id * K, id * K + K), t * K));
        expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer))).to.equal(true);
      });

      it(`read() of a ${q} tensor on this device dequantises it`, async () => {
        const w = make();
        const got = (await w.read()) as Float32Array;
        w.dispose();
        expect(Buffer.from(got.buffer).equals(Buffer.from(W.buffer))).to.equal(true);
      });
    }

    it('refuses quantized tensors where elements are needed, naming the dtype', () => {
      const w = quantTensor(n, quantize(weights(64, 1), 'Q8_0'), [2, 32], 'q8_0');
      expect(() => n.convert(w, 'f32')).to.throw(/convert: only f32 <-> bf16.*q8_0/);
      w.dispose();
    });
  },
);
