// test/golden/ggml-quants.bin: llama.cpp's own quantize_row_* / dequantize_row_* on fixed inputs
// (see its PROVENANCE), read for the dequantisation tests.
import { expect } from 'chai';
import * as fs from 'fs';
import * as nodePath from 'path';
import { repoRoot } from './paths';

export interface GoldenSection {
  name: string;
  input: Float32Array;
  blocks: Uint8Array;
  output: Float32Array;
}

/** test/golden/ggml-quants.bin: "LAQG", u32 version, u32 count, then per type: char[8] name,
 *  u32 n, u32 nbytes, f32 in[n], u8 q[nbytes], f32 out[n]. */
export function readGolden(): Map<string, GoldenSection> {
  const b = fs.readFileSync(nodePath.join(repoRoot, 'test', 'golden', 'ggml-quants.bin'));
  expect(b.toString('latin1', 0, 4)).to.equal('LAQG');
  const count = b.readUInt32LE(8);
  const out = new Map<string, GoldenSection>();
  let o = 12;
  const floats = (n: number) => {
    const f = new Float32Array(n);
    for (let i = 0; i < n; i++) f[i] = b.readFloatLE(o + 4 * i);
    o += 4 * n;
    return f;
  };
  for (let s = 0; s < count; s++) {
    const name = b.toString('latin1', o, o + 8).replace(/\0+$/, '');
    const n = b.readUInt32LE(o + 8), nbytes = b.readUInt32LE(o + 12);
    o += 16;
    const input = floats(n);
    const blocks = new Uint8Array(b.subarray(o, o + nbytes));
    o += nbytes;
    out.set(name.toLowerCase(), { name, input, blocks, output: floats(n) });
  }
  return out;
}

