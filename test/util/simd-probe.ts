// The child process of test/simd-paths.test.ts: run with LLAMA_ADAPTER_SIMD=<level>, it computes
// the outputs of every kernel that has plain / AVX2 / AVX-512 bodies (quantized decode, few-row
// and panel products, the input gradient, embedding, dequantisation of llama.cpp's golden blocks;
// f32 and bf16 matmul at the shapes of each dot loop; attention's strided dots and weighted rows)
// on fixed inputs, and writes them as JSON (base64 float32) to the file named by argv[2].
import * as fs from 'fs';
import * as os from 'os';
import * as nodePath from 'path';
import type { DType, QuantDType, Tensor } from '../../lib/native';
import { native } from '../../lib/native';
import { GgmlTypeName } from '../../lib/model/gguf';
import { quantize } from '../../tools/gguf-writer';

export const QUANT_TYPES: { q: QuantDType; g: GgmlTypeName; K: number }[] = [
  // K: Q8_0 / Q4_0 7 blocks of 32 (4 + 2 + 1 in the AVX-512 loop); the K types 3 blocks of 256
  { q: 'q8_0', g: 'Q8_0', K: 224 },
  { q: 'q4_0', g: 'Q4_0', K: 224 },
  { q: 'q4_k', g: 'Q4_K', K: 768 },
  { q: 'q5_k', g: 'Q5_K', K: 768 },
  { q: 'q6_k', g: 'Q6_K', K: 768 },
];
export const QUANT_N = 37; // weight rows: not a multiple of any unroll
export const QUANT_M = [1, 5, 13]; // decode, few rows (dequantised row · x), panels into sgemm
export const BACKWARD_M = 3;
export const EMBED_IDS = [3, 0, 36, 3, 17];
// f32 / bf16 matmul: [M, N, K] through dots_strided (small), dot_rows4 (large, M = 1), dots (M > 1);
// K = 1000 and 37 leave tails after 16- and 32-wide loops
export const DENSE_SHAPES: [number, number, number][] = [[1, 13, 37], [1, 67, 1000], [3, 29, 1000], [6, 9, 130]];
// attention: [T, H, Hkv, d, pos0]; d = 40 and 72 leave tails after 16 and 64 columns
export const ATTENTION_SHAPES: [number, number, number, number, number][] = [[3, 4, 2, 40, 17], [2, 2, 1, 72, 9]];

/** Deterministic values in [-scale, scale) with a spread of magnitudes per 32. */
export function values(n: number, seed: number, scale = 1): Float32Array {
  const w = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    w[i] = ((s / 2 ** 32) * 2 - 1) * scale * (1 + ((i >> 5) % 7));
  }
  return w;
}

export const b64 = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
export const unb64 = (s: string) => {
  const b = Buffer.from(s, 'base64');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};

/** A quantized (N, K) tensor holding `bytes`, through a mapped file as the loaders make them. */
export function quantTensor(bytes: Uint8Array, shape: number[], q: QuantDType, dir: string, name: string): Tensor {
  const file = nodePath.join(dir, name);
  fs.writeFileSync(file, bytes);
  const map = native.mapFile(file);
  try {
    return native.fromFile(map, 0, shape, q, q, 'w');
  } finally {
    map.close();
  }
}

async function read(t: Tensor): Promise<Float32Array> {
  const v = (await t.read()) as Float32Array;
  t.dispose();
  return v;
}

async function probe(goldenFile: string): Promise<Record<string, string>> {
  const out: Record<string, string> = { level: native.capabilities().simdLevel };
  const dir = fs.mkdtempSync(nodePath.join(os.tmpdir(), 'la-simd-'));
  try {
    // llama.cpp's golden blocks (256 values a row), dequantised by read()
    const golden = JSON.parse(fs.readFileSync(goldenFile, 'utf8')) as Record<string, { rows: number; blocks: string }>;
    for (const [q, { rows, blocks }] of Object.entries(golden))
      out[`golden.${q}`] = b64(await read(quantTensor(Buffer.from(blocks, 'base64'), [rows, 256], q as QuantDType, dir, `g-${q}`)));
    for (const { q, g, K } of QUANT_TYPES) {
      const bytes = quantize(values(QUANT_N * K, 7, 0.02), g);
      const w = quantTensor(bytes, [QUANT_N, K], q, dir, `w-${q}`);
      out[`${q}.read`] = b64(await (w.read() as Promise<Float32Array>));
      for (const M of QUANT_M) {
        const x = native.fromArray(values(M * K, 100 + M), [M, K], 'f32');
        out[`${q}.matmul.${M}`] = b64(await read(native.matmul(x, w)));
        x.dispose();
      }
      const dy = native.fromArray(values(BACKWARD_M * QUANT_N, 55), [BACKWARD_M, QUANT_N], 'f32');
      out[`${q}.backward`] = b64(await read(native.matmulBackward(dy, w)));
      dy.dispose();
      const ids = native.fromArray(Int32Array.from(EMBED_IDS), [EMBED_IDS.length], 'i32');
      out[`${q}.embedding`] = b64(await read(native.embedding(w, ids)));
      ids.dispose();
      w.dispose();
    }
    for (const dtype of ['f32', 'bf16'] as DType[])
      for (const [M, N, K] of DENSE_SHAPES) {
        const w = native.fromArray(values(N * K, 11, 0.05), [N, K], dtype);
        const x = native.fromArray(values(M * K, 12), [M, K], 'f32');
        out[`${dtype}.matmul.${M}x${N}x${K}`] = b64(await read(native.matmul(x, w)));
        [w, x].forEach((t) => t.dispose());
      }
    for (const [T, H, Hkv, d, pos0] of ATTENTION_SHAPES) {
      const S = pos0 + T;
      const q = native.fromArray(values(T * H * d, 21, 0.3), [T, H, d], 'f32');
      const k = native.fromArray(values(S * Hkv * d, 22, 0.3), [S, Hkv, d], 'f32');
      const v = native.fromArray(values(S * Hkv * d, 23), [S, Hkv, d], 'f32');
      out[`attention.${T}x${H}x${Hkv}x${d}x${pos0}`] = b64(await read(native.attention(q, k, v, pos0)));
      [q, k, v].forEach((t) => t.dispose());
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

if (require.main === module)
  probe(process.argv[3])
    .then((r) => fs.writeFileSync(process.argv[2], JSON.stringify(r)))
    .catch((e) => {
      console.error(e instanceof Error ? e.stack : e);
      process.exit(1);
    });
