// Meta checkpoint folders of stories260K written with our own torch.save writer (lib/model/pth/write),
// so the .pth tests run where PyTorch is absent; tools/reference/pth_reference.py check-meta proves
// torch.load reads them (test/pth.test.ts runs it when /usr/bin/python3 has torch). The split is
// written here from Meta's model-parallel layers, independently of the loader's merge.
import * as fs from 'fs';
import * as path from 'path';
import { readLlama2cHeader } from '../../lib/model/llama2c';
import { f32ToF16 } from '../../lib/model/pth/half';
import { PthTensor, writeTorchStateDict } from '../../lib/model/pth/write';

const META_NAMES: Record<string, string> = {
  wq: 'attention.wq.weight',
  wk: 'attention.wk.weight',
  wv: 'attention.wv.weight',
  wo: 'attention.wo.weight',
  w1: 'feed_forward.w1.weight',
  w2: 'feed_forward.w2.weight',
  w3: 'feed_forward.w3.weight',
  attnNorm: 'attention_norm.weight',
  ffnNorm: 'ffn_norm.weight',
};

/** (rows, cols) block `k` of `n` along dimension `dim` of a row-major matrix. */
function chunk(v: Float32Array, shape: number[], dim: number, k: number, n: number): { data: Float32Array; shape: number[] } {
  if (shape.length === 1 || n === 1) return { data: v, shape };
  const [R, C] = shape;
  if (dim === 0) return { data: v.slice((k * R * C) / n, ((k + 1) * R * C) / n), shape: [R / n, C] };
  const w = C / n;
  const out = new Float32Array(R * w);
  for (let r = 0; r < R; r++) out.set(v.subarray(r * C + k * w, r * C + (k + 1) * w), r * w);
  return { data: out, shape: [R, w] };
}

/** The bf16 bits of f32 values, rounded to nearest even (as torch's .to(torch.bfloat16)). */
function bf16Bits(v: Float32Array): Uint16Array {
  const u = new Uint32Array(v.buffer, v.byteOffset, v.length);
  return Uint16Array.from(u, (x) => ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff);
}

/** Writes `dir`/params.json + consolidated.NN.pth of a llama2.c v0 file, `shards` ranks.
 *  `llama3`: LLaMA 3's layout instead of LLaMA 1/2's: the embedding split by rows
 *  (VocabParallelEmbedding), no rope.freqs, and LLaMA 3's params.json fields. */
export function writeMetaFolder(bin: string, dir: string, dtype: 'F32' | 'F16' | 'BF16', shards: number, llama3 = false): void {
  const h = readLlama2cHeader(bin);
  const c = h.config;
  const buf = fs.readFileSync(bin);
  const named: { name: string; shape: number[]; data: Float32Array; dim: number | null }[] = [];
  for (const s of h.slots) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(buf.buffer.slice(buf.byteOffset + s.byteOffset, buf.byteOffset + s.byteOffset + 4 * n));
    if (s.key === 'embedding') {
      named.push({ name: 'tok_embeddings.weight', shape: s.shape, data, dim: llama3 ? 0 : 1 });
      named.push({ name: 'output.weight', shape: s.shape, data, dim: 0 }); // tied in the .bin
    } else if (s.key === 'finalNorm') named.push({ name: 'norm.weight', shape: s.shape, data, dim: null });
    else {
      const key = s.key as keyof typeof META_NAMES;
      const dim = key === 'wo' || key === 'w2' ? 1 : key === 'attnNorm' || key === 'ffnNorm' ? null : 0;
      named.push({ name: `layers.${s.layer}.${META_NAMES[key]}`, shape: s.shape, data, dim });
    }
  }
  fs.mkdirSync(dir, { recursive: true });
  const params = llama3
    ? { dim: c.dim, n_layers: c.nLayers, n_heads: c.nHeads, n_kv_heads: c.nKvHeads, vocab_size: c.vocabSize, multiple_of: 4, ffn_dim_multiplier: 1.0, norm_eps: 1e-5, rope_theta: 500000.0 }
    : { dim: c.dim, multiple_of: 4, n_heads: c.nHeads, n_kv_heads: c.nKvHeads, n_layers: c.nLayers, norm_eps: 1e-5, vocab_size: -1 };
  fs.writeFileSync(path.join(dir, 'params.json'), JSON.stringify(params));
  const d = c.dim / c.nHeads;
  const freqs = Float32Array.from({ length: d / 2 }, (_, i) => 1 / Math.pow(10000, (2 * i) / d));
  const cast = (v: Float32Array): Pick<PthTensor, 'data' | 'dtype'> =>
    dtype === 'F32' ? { data: v, dtype } : { data: dtype === 'F16' ? f32ToF16(v) : bf16Bits(v), dtype };
  for (let k = 0; k < shards; k++) {
    const tensors: PthTensor[] = named.map((t) => {
      const part = t.dim === null ? { data: t.data, shape: t.shape } : chunk(t.data, t.shape, t.dim, k, shards);
      return { name: t.name, shape: part.shape, ...cast(part.data) };
    });
    if (!llama3) tensors.push({ name: 'rope.freqs', shape: [d / 2], ...cast(freqs) });
    writeTorchStateDict(path.join(dir, `consolidated.${String(k).padStart(2, '0')}.pth`), tensors, { ordered: true });
  }
}
