// The training ops (backward passes, the fused gated attention, loss, optimiser) against the
// float64 references of test/util/train-reference.ts, against central finite differences taken
// through the native forward ops, and the properties SPEC §2 promises (zero-init gate, packing).
//
// Tolerances (a = native f32 result, e = float64 reference):
//   exact        ropeAt vs rope, gather/scatter, g = 0 vs no prompt, packed vs one at a time (word
//                gradients), thread counts: bit-equal
//   elementwise  |a - e| <= rtol |e| + atol * max|e| per tensor: attention out 1e-4 / 2e-6,
//                gradients 1e-4 / 1e-5 (measured: 1e-7 .. 1e-6 of the largest element)
//   finite diff. directional derivatives (L(x + h u) - L(x - h u)) / 2h through the native f32
//                forward against <grad, u>: relative 2e-3 (h = 1e-2: truncation ~1e-4, rounding ~1e-5)
import { expect } from 'chai';
import { native, Tensor, RopeLayout } from '../lib/native';
import * as ref from './util/reference';
import { bits, f32, i32, maxAbs, readF, rejects, throwsErr } from './util/tensors';
import * as tref from './util/train-reference';
import { CASES, Case, Data, dimsOf, inputsOf, makeData } from './util/attention-cases';

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}
/** Elementwise |a - e| <= rtol |e| + atol * max(max|e|, floor) (floor: the scale of a tensor that
 *  should be 0, e.g. dpk with a single prompt key) */
function close(a: ArrayLike<number>, e: ArrayLike<number>, rtol: number, atol: number, what: string, floor = 1e-30): void {
  ref.assertClose(a, e, rtol, atol * Math.max(maxAbs(e), floor), what);
}
/** The native attention gradients against the reference's (measured errors are ~1e-7 .. 1e-6 of
 *  each tensor's largest element). */
function closeGrads(g: (Float32Array | null)[], want: tref.AttnGrads): void {
  const floor = maxAbs(want.dq);
  close(g[0]!, want.dq, 1e-4, 1e-5, 'dq');
  close(g[1]!, want.dk, 1e-4, 1e-5, 'dk');
  close(g[2]!, want.dv, 1e-4, 1e-5, 'dv');
  if (!want.dpk) {
    expect([g[3], g[4], g[5]]).to.deep.equal([null, null, null]);
    return;
  }
  close(g[3]!, want.dpk, 1e-4, 1e-5, 'dpk', floor);
  close(g[4]!, want.dpv!, 1e-4, 1e-5, 'dpv', floor);
  close(g[5]!, want.dgate!, 1e-4, 1e-5, 'dgate');
}

// ---- gated attention test cases ---------------------------------------------------------------

interface Tensors {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  seg: Tensor;
  pk: Tensor | null;
  pv: Tensor | null;
  gate: Tensor | null;
}
function tensorsOf(x: Data): Tensors {
  const { H, Hkv, d, K } = x.c;
  return {
    q: f32(x.q, [x.N, H, d]),
    k: f32(x.k, [x.N, Hkv, d]),
    v: f32(x.v, [x.N, Hkv, d]),
    seg: i32(x.seg),
    pk: x.pk ? f32(x.pk, [K, Hkv, d]) : null,
    pv: x.pv ? f32(x.pv, [K, Hkv, d]) : null,
    gate: x.gate ? f32(x.gate, [x.gate.length]) : null,
  };
}
function forward(t: Tensors): [Tensor, Tensor] {
  return native.gatedAttention(t.q, t.k, t.v, t.seg, t.pk, t.pv, t.gate);
}
async function backward(t: Tensors, dout: Float32Array, x: Data): Promise<(Float32Array | null)[]> {
  const [out, stats] = forward(t);
  const g = native.gatedAttentionBackward(f32(dout, [x.N, x.c.H, x.c.d]), t.q, t.k, t.v, t.seg, t.pk, t.pv, t.gate, out, stats);
  return Promise.all(g.map((r) => (r ? readF(r) : Promise.resolve(null))));
}

describe('training ops (CPU)', function () {
  this.timeout(60000);

  afterEach(async () => {
    await native.synchronize();
  });

  // ---- ropeAt -----------------------------------------------------------------------------------
  describe('ropeAt', () => {
    for (const layout of ['interleaved', 'half'] as RopeLayout[])
      it(`${layout}: per-token positions (restarting per segment) against the reference, and inverse`, async () => {
        const rng = new ref.Rng(11);
        const N = 13, H = 3, d = 10;
        const pos = [0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 4, 5, 700];
        const x = rng.normals(N * H * d);
        for (const inverse of [false, true]) {
          const t = f32(x, [N, H, d]);
          native.ropeAt(t, i32(pos), 10000, layout, inverse);
          const got = await readF(t);
          const want = tref.ropeAt(x, N, H, d, pos, 10000, layout, inverse);
          ref.assertClose(got, want, 1e-5, 2e-6 * maxAbs(x), `ropeAt ${layout} inverse=${inverse}`);
        }
      });

    it('at positions pos0 + t it equals rope bit for bit; the inverse undoes it', async () => {
      const rng = new ref.Rng(12);
      const N = 9, H = 2, d = 16;
      const x = rng.normals(N * H * d);
      for (const layout of ['interleaved', 'half'] as RopeLayout[]) {
        const a = f32(x, [N, H, d]);
        const b = f32(x, [N, H, d]);
        native.rope(a, 5, 10000, layout);
        native.ropeAt(b, i32(Array.from({ length: N }, (_, t) => 5 + t)), 10000, layout, false);
        const ra = await readF(a);
        expect(Array.from(bits(await readF(b)))).to.deep.equal(Array.from(bits(ra)));
        native.ropeAt(b, i32(Array.from({ length: N }, (_, t) => 5 + t)), 10000, layout, true);
        ref.assertClose(await readF(b), x, 1e-5, 1e-6 * maxAbs(x), 'inverse(ropeAt(x))');
      }
    });

    it('rotates in place, in queue order (two rotations add their angles)', async () => {
      const rng = new ref.Rng(13);
      const x = rng.normals(4 * 1 * 8);
      const t = f32(x, [4, 1, 8]);
      native.ropeAt(t, i32([1, 2, 3, 4]), 10000, 'half', false);
      native.ropeAt(t, i32([1, 2, 3, 4]), 10000, 'half', false);
      const want = tref.ropeAt(x, 4, 1, 8, [2, 4, 6, 8], 10000, 'half');
      ref.assertClose(await readF(t), want, 1e-5, 1e-6 * maxAbs(x), 'ropeAt twice');
    });
  });

  // ---- the reference itself --------------------------------------------------------------------
  describe('the float64 reference (self-check)', () => {
    it('its gated attention backward matches central differences of its forward', () => {
      for (const c of [CASES[0], CASES[1], CASES[5]]) {
        const x = makeData(c, 21);
        const rng = new ref.Rng(22);
        const w = rng.normals(x.N * c.H * c.d);
        const L = (inp: tref.AttnInputs) => dot(tref.gatedAttention(dimsOf(x), inp).out, w);
        const g = tref.gatedAttentionBackward(dimsOf(x), inputsOf(x), w);
        const h = 1e-5;
        const names = ['q', 'k', 'v', 'pk', 'pv', 'gate'] as const;
        const grads = { q: g.dq, k: g.dk, v: g.dv, pk: g.dpk, pv: g.dpv, gate: g.dgate };
        for (const name of names) {
          const base = inputsOf(x)[name] as Float32Array | null;
          if (!base) continue;
          for (let trial = 0; trial < 4; trial++) {
            const i = rng.int(0, base.length);
            const plus = Float64Array.from(base);
            const minus = Float64Array.from(base);
            plus[i] += h;
            minus[i] -= h;
            const fd = (L({ ...inputsOf(x), [name]: plus }) - L({ ...inputsOf(x), [name]: minus })) / (2 * h);
            const an = grads[name]![i];
            expect(Math.abs(fd - an), `${c.name}: d${name}[${i}] ${an} vs ${fd}`).to.be.lessThan(1e-6 * (1 + Math.abs(fd)));
          }
        }
      }
    });
  });

  // ---- gatedAttention ---------------------------------------------------------------------------
  describe('gatedAttention (forward) against the float64 reference', () => {
    for (const c of CASES)
      it(c.name, async () => {
        const x = makeData(c, 31);
        const [out, stats] = forward(tensorsOf(x));
        expect(out.shape).to.deep.equal([x.N, c.H, c.d]);
        expect(stats.shape).to.deep.equal([x.N, c.H, 2]);
        const want = tref.gatedAttention(dimsOf(x), inputsOf(x));
        close(await readF(out), want.out, 1e-4, 2e-6, 'out');
        const st = await readF(stats);
        const lseW = st.filter((_, i) => i % 2 === 0);
        const lseP = st.filter((_, i) => i % 2 === 1);
        ref.assertClose(lseW, want.stats.filter((_, i) => i % 2 === 0), 1e-5, 1e-5, 'word log-sum-exp');
        if (c.gate === 'none') expect(lseP.every((s) => s === -Infinity)).to.equal(true);
        else ref.assertClose(lseP, want.stats.filter((_, i) => i % 2 === 1), 1e-5, 1e-5, 'prompt log-sum-exp');
      });

    it('a sharp softmax (scores of +-100) stays finite and correct', async () => {
      const c: Case = { name: 'sharp', H: 2, Hkv: 1, d: 16, lens: [9, 4], K: 3, gate: 'head' };
      const x = makeData(c, 32);
      for (const a of [x.q, x.pk!]) for (let i = 0; i < a.length; i++) a[i] *= 10;
      const [out] = forward(tensorsOf(x));
      const got = await readF(out);
      expect(got.every(Number.isFinite)).to.equal(true);
      close(got, tref.gatedAttention(dimsOf(x), inputsOf(x)).out, 1e-4, 1e-5, 'out');
    });
  });

  describe('gatedAttentionBackward against the float64 reference', () => {
    for (const c of CASES)
      it(c.name, async () => {
        const x = makeData(c, 41);
        const dout = new ref.Rng(42).normals(x.N * c.H * c.d);
        const g = await backward(tensorsOf(x), dout, x);
        closeGrads(g, tref.gatedAttentionBackward(dimsOf(x), inputsOf(x), dout));
        if (c.gate !== 'none') expect(g[5]!.length).to.equal(c.gate === 'scalar' ? 1 : c.H);
      });
  });

  describe('gatedAttentionBackward against finite differences of the native forward (f32)', () => {
    for (const c of [CASES[0], CASES[1], CASES[2], CASES[3]])
      it(c.name, async () => {
        const x = makeData(c, 51);
        const rng = new ref.Rng(52);
        const w = rng.normals(x.N * c.H * c.d);
        const t = tensorsOf(x);
        const grads = await backward(t, w, x);
        const names = ['q', 'k', 'v', 'pk', 'pv', 'gate'] as const;
        const h = 1e-2;
        // L(x) = sum w * out, through the native op
        const L = async (over: Partial<Record<(typeof names)[number], Float32Array>>): Promise<number> => {
          const tt = { ...t };
          for (const [name, arr] of Object.entries(over)) (tt as any)[name] = f32(arr!, (t as any)[name].shape);
          const [out] = forward(tt);
          return dot(await readF(out), w);
        };
        for (let n = 0; n < names.length; n++) {
          const name = names[n];
          const base = x[name];
          if (!base) continue;
          const u = rng.normals(base.length);
          const plus = base.map((b, i) => b + h * u[i]);
          const minus = base.map((b, i) => b - h * u[i]);
          const fd = ((await L({ [name]: plus })) - (await L({ [name]: minus }))) / (2 * h);
          const an = dot(grads[n]!, u);
          expect(Math.abs(fd - an), `<d${name}, u> = ${an}, finite difference ${fd}`).to.be.lessThan(2e-3 * Math.max(Math.abs(fd), 1e-2));
        }
      });

    it('per coordinate: every gate entry and a few prompt entries', async () => {
      const x = makeData(CASES[0], 53);
      const rng = new ref.Rng(54);
      const w = rng.normals(x.N * x.c.H * x.c.d);
      const t = tensorsOf(x);
      const [, , , dpk, , dgate] = await backward(t, w, x);
      const h = 1e-2;
      const L = async (name: 'gate' | 'pk', arr: Float32Array) => {
        const [out] = forward({ ...t, [name]: f32(arr, [...t[name]!.shape]) });
        return dot(await readF(out), w);
      };
      const coords: Array<['gate' | 'pk', number, number]> = [];
      for (let i = 0; i < x.gate!.length; i++) coords.push(['gate', i, dgate![i]]);
      for (let j = 0; j < 4; j++) {
        const i = rng.int(0, x.pk!.length);
        coords.push(['pk', i, dpk![i]]);
      }
      for (const [name, i, an] of coords) {
        const plus = Float32Array.from(x[name]!);
        const minus = Float32Array.from(x[name]!);
        plus[i] += h;
        minus[i] -= h;
        const fd = ((await L(name, plus)) - (await L(name, minus))) / (plus[i] - minus[i]); // the f32 step actually taken
        expect(Math.abs(fd - an), `d${name}[${i}] = ${an}, finite difference ${fd}`).to.be.lessThan(3e-3 * Math.max(Math.abs(fd), 1e-2));
      }
    });
  });

  describe('zero-init gate, packing and determinism', () => {
    it('at g = 0 the output equals plain attention exactly, dpk = dpv = 0 exactly, dgate != 0', async () => {
      for (const [c, gl] of [
        [CASES[0], 4],
        [CASES[1], 1],
        [CASES[4], 2],
      ] as Array<[Case, number]>) {
        const x = makeData(c, 61);
        x.gate = new Float32Array(gl);
        const t = tensorsOf(x);
        const plain = { ...t, pk: null, pv: null, gate: null };
        const [o1, s1] = forward(t);
        const [o0] = forward(plain);
        expect(Array.from(bits(await readF(o1)))).to.deep.equal(Array.from(bits(await readF(o0))));
        expect((await readF(s1)).filter((_, i) => i % 2 === 1).every(Number.isFinite)).to.equal(true);
        const dout = new ref.Rng(62).normals(x.N * c.H * c.d);
        const g1 = await backward(t, dout, x);
        const g0 = await backward(plain, dout, x);
        expect(g1[3]!.every((v) => v === 0), 'dpk is exactly 0').to.equal(true);
        expect(g1[4]!.every((v) => v === 0), 'dpv is exactly 0').to.equal(true);
        expect(g1[5]!.every((v) => v !== 0 && Number.isFinite(v)), `dgate ${g1[5]} is nonzero`).to.equal(true);
        for (let i = 0; i < 3; i++) expect(Array.from(g1[i]!)).to.deep.equal(Array.from(g0[i]!), `word gradient ${i} equals plain attention's`);
        // and dgate is (1 - 0) sum <dout, Y_p>: the reference agrees
        close(g1[5]!, tref.gatedAttentionBackward(dimsOf(x), inputsOf(x), dout).dgate!, 1e-4, 1e-5, 'dgate at 0');
      }
    });

    it('packed rows equal the same sequences run one at a time', async () => {
      const c = CASES[0];
      const x = makeData(c, 71);
      const dout = new ref.Rng(72).normals(x.N * c.H * c.d);
      const t = tensorsOf(x);
      const [out, stats] = forward(t);
      const po = await readF(out);
      const ps = await readF(stats);
      const pg = await backward(t, dout, x);
      const sums = [new Float64Array(pg[3]!.length), new Float64Array(pg[4]!.length), new Float64Array(pg[5]!.length)];
      const rowQ = c.H * c.d, rowK = c.Hkv * c.d;
      for (let s = 0; s < c.lens.length; s++) {
        const a = x.seg[s], n = c.lens[s];
        const one: Data = {
          ...x,
          N: n,
          seg: [0, n],
          q: x.q.slice(a * rowQ, (a + n) * rowQ),
          k: x.k.slice(a * rowK, (a + n) * rowK),
          v: x.v.slice(a * rowK, (a + n) * rowK),
        };
        const ot = tensorsOf(one);
        const [o1, s1] = forward(ot);
        expect(Array.from(bits(await readF(o1)))).to.deep.equal(Array.from(bits(po.slice(a * rowQ, (a + n) * rowQ))), `out of segment ${s}`);
        expect(Array.from(await readF(s1))).to.deep.equal(Array.from(ps.slice(a * c.H * 2, (a + n) * c.H * 2)), `stats of segment ${s}`);
        const g = await backward(ot, dout.slice(a * rowQ, (a + n) * rowQ), one);
        expect(Array.from(g[0]!)).to.deep.equal(Array.from(pg[0]!.slice(a * rowQ, (a + n) * rowQ)), `dq of segment ${s}`);
        expect(Array.from(g[1]!)).to.deep.equal(Array.from(pg[1]!.slice(a * rowK, (a + n) * rowK)), `dk of segment ${s}`);
        expect(Array.from(g[2]!)).to.deep.equal(Array.from(pg[2]!.slice(a * rowK, (a + n) * rowK)), `dv of segment ${s}`);
        for (let i = 0; i < 3; i++) g[3 + i]!.forEach((v, j) => (sums[i][j] += v));
      }
      close(pg[3]!, sums[0], 1e-4, 1e-5, 'dpk = sum over the segments');
      close(pg[4]!, sums[1], 1e-4, 1e-5, 'dpv = sum over the segments');
      close(pg[5]!, sums[2], 1e-4, 1e-5, 'dgate = sum over the segments');
    });

    for (const c of [CASES[4], CASES[6]])
      it(`results are bit-identical for 1, 2 and 3 threads (${c.name})`, async () => {
        const before = native.capabilities().threads;
        try {
          const x = makeData(c, 81);
          const dout = new ref.Rng(82).normals(x.N * c.H * c.d);
          const runs: Uint32Array[][] = [];
          for (const n of [1, 2, 3]) {
            native.setThreads(n);
            const t = tensorsOf(x);
            const [out, stats] = forward(t);
            const g = await backward(t, dout, x);
            runs.push([await readF(out), await readF(stats), ...g.map((a) => a!)].map((a) => bits(a)));
          }
          for (let r = 1; r < runs.length; r++)
            runs[r].forEach((a, i) => expect(Array.from(a)).to.deep.equal(Array.from(runs[0][i]), `output ${i} with ${r + 1} threads`));
        } finally {
          native.setThreads(before);
        }
      });

    it('a longer packed batch (4 segments up to 150 tokens, H = 4, Hkv = 2, d = 32) against the reference', async () => {
      const c: Case = { name: 'long', H: 4, Hkv: 2, d: 32, lens: [150, 37, 1, 96], K: 10, gate: 'head' };
      const x = makeData(c, 91);
      const dout = new ref.Rng(92).normals(x.N * c.H * c.d);
      const [out] = forward(tensorsOf(x));
      close(await readF(out), tref.gatedAttention(dimsOf(x), inputsOf(x)).out, 1e-4, 2e-6, 'out');
      closeGrads(await backward(tensorsOf(x), dout, x), tref.gatedAttentionBackward(dimsOf(x), inputsOf(x), dout));
    });
    it('the portable kernels (LLAMA_ADAPTER_NO_AVX2=1, in a child process) agree with the reference too', function () {
      const { spawnSync } = require('child_process') as typeof import('child_process');
      const path = require('path') as typeof import('path');
      const nativeJs = path.resolve(__dirname, '..', 'lib', 'native.js');
      const cases = [CASES[0], CASES[3], CASES[4]].map((c, i) => ({ x: makeData(c, 200 + i), dout: new ref.Rng(300 + i).normals(makeData(c, 200 + i).N * c.H * c.d) }));
      const plain = (a: Float32Array | null) => (a ? Array.from(a) : null);
      const input = cases.map(({ x, dout }) => ({
        N: x.N, H: x.c.H, Hkv: x.c.Hkv, d: x.c.d, K: x.c.K, seg: x.seg,
        q: plain(x.q), k: plain(x.k), v: plain(x.v), pk: plain(x.pk), pv: plain(x.pv), gate: plain(x.gate), dout: plain(dout),
      }));
      const fs = require('fs') as typeof import('fs');
      const os = require('os') as typeof import('os');
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-portable-'));
      const file = path.join(dir, 'cases.json'); // too large for a command-line argument
      fs.writeFileSync(file, JSON.stringify(input));
      const body = `
        const n = require(${JSON.stringify(nativeJs)}).native;
        const cases = JSON.parse(require('fs').readFileSync(${JSON.stringify(file)}, 'utf8'));
        const T = (a, s) => (a ? n.fromArray(Float32Array.from(a), s) : null);
        (async () => {
          const res = [];
          for (const c of cases) {
            const q = T(c.q, [c.N, c.H, c.d]), k = T(c.k, [c.N, c.Hkv, c.d]), v = T(c.v, [c.N, c.Hkv, c.d]);
            const seg = n.fromArray(Int32Array.from(c.seg), [c.seg.length]);
            const pk = T(c.pk, [c.K, c.Hkv, c.d]), pv = T(c.pv, [c.K, c.Hkv, c.d]), gate = c.gate ? T(c.gate, [c.gate.length]) : null;
            const [out, stats] = n.gatedAttention(q, k, v, seg, pk, pv, gate);
            const g = n.gatedAttentionBackward(T(c.dout, [c.N, c.H, c.d]), q, k, v, seg, pk, pv, gate, out, stats);
            const all = [out, ...g];
            res.push(await Promise.all(all.map(async (t) => (t ? Array.from(await t.read()) : null))));
          }
          const [loss, dl] = n.crossEntropy(n.fromArray(Float32Array.from({ length: 300 }, (_, i) => Math.sin(i)), [3, 100]), n.fromArray(Int32Array.from([5, 0, 99]), [3]), 0.5);
          res.push([Array.from(await loss.read()), Array.from(await dl.read())]);
          console.log('RESULT ' + JSON.stringify(res));
        })();
      `;
      const r = spawnSync(process.execPath, ['-e', body], { encoding: 'utf8', timeout: 30000, maxBuffer: 1 << 28, env: { ...process.env, LLAMA_ADAPTER_NO_AVX2: '1' } });
      fs.rmSync(dir, { recursive: true, force: true });
      expect(r.status, `${r.error ?? ''} ${r.stderr}`).to.equal(0);
      const res = JSON.parse(r.stdout.split('RESULT ')[1]) as (number[] | null)[][];
      cases.forEach(({ x, dout }, i) => {
        close(res[i][0]!, tref.gatedAttention(dimsOf(x), inputsOf(x)).out, 1e-4, 2e-6, `portable out (${x.c.name})`);
        closeGrads(res[i].slice(1).map((a) => (a ? Float32Array.from(a) : null)), tref.gatedAttentionBackward(dimsOf(x), inputsOf(x), dout));
      });
      const logits = Float32Array.from({ length: 300 }, (_, i) => Math.sin(i));
      const want = tref.crossEntropy(logits, 3, 100, [5, 0, 99], 0.5);
      expect(Math.abs(res[3][0]![0] - want.loss)).to.be.lessThan(1e-5);
      ref.assertClose(res[3][1]!, want.dlogits, 1e-5, 1e-8, 'portable dlogits');
    });
  });

  // ---- attention with the adapter branch (cached inference) ------------------------------------
  describe('attention with the adapter branch (KV cache)', () => {
    for (const [H, Hkv, gl] of [
      [4, 2, 4],
      [2, 2, 1],
    ])
      it(`H=${H}, Hkv=${Hkv}, gate (${gl}): equals the word attention plus tanh(g) * prompt branch`, async () => {
        const rng = new ref.Rng(101);
        const d = 8, S = 12, T = 3, pos0 = 4, K = 5;
        const q = rng.normals(T * H * d), k = rng.normals(S * Hkv * d), v = rng.normals(S * Hkv * d);
        const pk = rng.normals(K * Hkv * d), pv = rng.normals(K * Hkv * d), gate = rng.uniforms(gl, -1, 1);
        const got = await readF(
          native.attention(f32(q, [T, H, d]), f32(k, [S, Hkv, d]), f32(v, [S, Hkv, d]), pos0, f32(pk, [K, Hkv, d]), f32(pv, [K, Hkv, d]), f32(gate, [gl])),
        );
        const word = ref.attention(q, T, H, d, k, v, Hkv, pos0);
        const want = Float64Array.from(word);
        const scale = 1 / Math.sqrt(d);
        for (let t = 0; t < T; t++)
          for (let h = 0; h < H; h++) {
            const kvh = Math.floor(h / (H / Hkv));
            const s = Array.from({ length: K }, (_, p) => {
              let z = 0;
              for (let c = 0; c < d; c++) z += q[(t * H + h) * d + c] * pk[(p * Hkv + kvh) * d + c];
              return z * scale;
            });
            const mx = Math.max(...s);
            const e = s.map((z) => Math.exp(z - mx));
            const sum = e.reduce((a, b) => a + b, 0);
            const g = Math.tanh(gate[gl === 1 ? 0 : h]);
            for (let c = 0; c < d; c++)
              for (let p = 0; p < K; p++) want[(t * H + h) * d + c] += (g * e[p] * pv[(p * Hkv + kvh) * d + c]) / sum;
          }
        close(got, want, 1e-4, 5e-6, 'attention + adapter');
        // gate 0: exactly the 4-argument attention
        const z = await readF(
          native.attention(f32(q, [T, H, d]), f32(k, [S, Hkv, d]), f32(v, [S, Hkv, d]), pos0, f32(pk, [K, Hkv, d]), f32(pv, [K, Hkv, d]), native.zeros([gl])),
        );
        const plain = await readF(native.attention(f32(q, [T, H, d]), f32(k, [S, Hkv, d]), f32(v, [S, Hkv, d]), pos0));
        expect(Array.from(z)).to.deep.equal(Array.from(plain));
        // null/undefined adapter arguments: plain attention
        const n = await readF(native.attention(f32(q, [T, H, d]), f32(k, [S, Hkv, d]), f32(v, [S, Hkv, d]), pos0, null, null, null));
        expect(Array.from(n)).to.deep.equal(Array.from(plain));
      });

    it('prefill of a whole sequence agrees with gatedAttention on one segment', async () => {
      const c: Case = { name: 'one', H: 4, Hkv: 2, d: 16, lens: [11], K: 4, gate: 'head' };
      const x = makeData(c, 102);
      const t = tensorsOf(x);
      const [out] = forward(t);
      const inf = native.attention(t.q, t.k, t.v, 0, t.pk, t.pv, t.gate);
      close(await readF(inf), await readF(out), 1e-5, 1e-6, 'attention vs gatedAttention');
    });
  });

  // ---- the other backward ops -------------------------------------------------------------------
  describe('rmsnormBackward', () => {
    for (const [T, C] of [
      [1, 1],
      [3, 7],
      [5, 64],
      [2, 1000],
    ])
      it(`T=${T}, C=${C}: reference and finite differences through rmsnorm`, async () => {
        const rng = new ref.Rng(T * 100 + C);
        const x = rng.normals(T * C), w = rng.normals(C), dy = rng.normals(T * C);
        const eps = 1e-5;
        const got = await readF(native.rmsnormBackward(f32(dy, [T, C]), f32(x, [T, C]), f32(w, [C]), eps));
        close(got, tref.rmsnormBackward(dy, x, T, C, w, eps), 1e-4, 1e-5, 'dx');
        const u = rng.normals(T * C), h = 1e-2;
        const L = async (xx: Float32Array) => dot(await readF(native.rmsnorm(f32(xx, [T, C]), f32(w, [C]), eps)), dy);
        const fd = ((await L(x.map((a, i) => a + h * u[i]))) - (await L(x.map((a, i) => a - h * u[i])))) / (2 * h);
        const an = dot(got, u);
        if (C > 1) expect(Math.abs(fd - an), `${an} vs ${fd}`).to.be.lessThan(3e-3 * Math.max(Math.abs(fd), 1e-2));
      });
  });

  describe('swigluBackward', () => {
    it('reference, finite differences through swiglu, and saturated inputs (|a| = 100)', async () => {
      const rng = new ref.Rng(111);
      const n = 257;
      const a = rng.normals(n, 3), b = rng.normals(n), dout = rng.normals(n);
      a[0] = 100;
      a[1] = -100;
      const [da, db] = native.swigluBackward(f32(dout, [n]), f32(a, [n]), f32(b, [n]));
      const [wa, wb] = tref.swigluBackward(dout, a, b);
      const ga = await readF(da), gb = await readF(db);
      // da vanishes where silu' does (a near -1.28): absolute error relative to |dout * b| there
      ref.assertClose(ga, wa, 1e-5, Float64Array.from(a, (_, i) => 1e-6 * Math.abs(dout[i] * b[i]) + 1e-30), 'da');
      ref.assertClose(gb, wb, 1e-5, 1e-30, 'db');
      const u = rng.normals(n), h = 1e-2;
      for (const [which, grad] of [['a', ga], ['b', gb]] as Array<[string, Float32Array]>) {
        const L = async (s: number) => {
          const aa = which === 'a' ? a.map((x, i) => x + s * h * u[i]) : a;
          const bb = which === 'b' ? b.map((x, i) => x + s * h * u[i]) : b;
          return dot(await readF(native.swiglu(f32(aa, [n]), f32(bb, [n]))), dout);
        };
        const fd = ((await L(1)) - (await L(-1))) / (2 * h);
        expect(Math.abs(fd - dot(grad, u)), `d${which}`).to.be.lessThan(3e-3 * Math.abs(fd));
      }
    });
  });

  describe('matmulBackward dx = dy · w', () => {
    for (const dtype of ['f32', 'bf16'] as const)
      for (const [M, N, K] of [
        [1, 1, 1],
        [3, 5, 7],
        [9, 33, 17],
        [40, 64, 48],
        [10, 600, 4096],
      ])
        it(`${dtype} w, M=${M}, N=${N}, K=${K}`, async () => {
          const rng = new ref.Rng(M * 7 + N * 3 + K);
          const dy = rng.normals(M * N), w = rng.normals(N * K);
          const wr = dtype === 'bf16' ? ref.bf16RoundArray(w) : w;
          const got = await readF(native.matmulBackward(f32(dy, [M, N]), native.fromArray(w, [N, K], dtype)));
          const want = tref.matmulBackward(dy, M, N, wr, K);
          // per element: f32 sums of N products, error <= ~1e-6 * sum |dy_n w_nk|
          const absw = tref.matmulBackward(dy.map(Math.abs), M, N, wr.map(Math.abs), K);
          ref.assertClose(got, want, 1e-5, absw.map((s) => 2e-6 * s + 1e-30), 'dx');
        });

    it('is the input gradient of matmul (finite differences)', async () => {
      const rng = new ref.Rng(121);
      const M = 6, N = 9, K = 11;
      const x = rng.normals(M * K), w = rng.normals(N * K), dy = rng.normals(M * N), u = rng.normals(M * K);
      const dx = await readF(native.matmulBackward(f32(dy, [M, N]), f32(w, [N, K])));
      const L = async (s: number) => dot(await readF(native.matmul(f32(x.map((a, i) => a + s * 1e-2 * u[i]), [M, K]), f32(w, [N, K]))), dy);
      const fd = ((await L(1)) - (await L(-1))) / 2e-2;
      expect(Math.abs(fd - dot(dx, u))).to.be.lessThan(1e-3 * Math.abs(fd));
    });
  });

  describe('gatherRows and scatterAddRows', () => {
    it('gather picks rows (repeats allowed) for f32, bf16 and i32, keeping trailing dims', async () => {
      const x = Float32Array.from({ length: 5 * 2 * 3 }, (_, i) => i + 0.5);
      const idx = [4, 0, 4, 2];
      const want = idx.flatMap((r) => Array.from(x.slice(r * 6, r * 6 + 6)));
      const g = native.gatherRows(f32(x, [5, 2, 3]), i32(idx));
      expect(g.shape).to.deep.equal([4, 2, 3]);
      expect(Array.from(await g.read())).to.deep.equal(want);
      const gb = native.gatherRows(native.fromArray(x, [5, 6], 'bf16'), i32(idx));
      expect(gb.dtype).to.equal('bf16');
      expect(Array.from(await gb.read())).to.deep.equal(Array.from(ref.bf16RoundArray(want)));
      const gi = native.gatherRows(i32(Array.from({ length: 10 }, (_, i) => i * 3), [5, 2]), i32([1, 1, 3]));
      expect(Array.from(await gi.read())).to.deep.equal([6, 9, 6, 9, 18, 21]);
    });

    it('scatter adds rows in place; repeated indices accumulate in order; untouched rows stay', async () => {
      const rng = new ref.Rng(131);
      for (const [N, C, idx] of [
        [4, 3, [1, 3, 1, 1]],
        [7, 300, [6, 0, 6, 2, 2, 5]],
        [3, 1, [0, 0, 0, 2, 0]],
      ] as Array<[number, number, number[]]>) {
        const dst = rng.normals(N * C), src = rng.normals(idx.length * C);
        const t = f32(dst, [N, C]);
        native.scatterAddRows(t, i32(idx), f32(src, [idx.length, C]));
        const want = Float32Array.from(dst);
        idx.forEach((r, m) => {
          for (let c = 0; c < C; c++) want[r * C + c] = Math.fround(want[r * C + c] + src[m * C + c]);
        });
        expect(Array.from(await readF(t))).to.deep.equal(Array.from(want));
      }
    });

    it('indices outside [0, N) reject at read, naming the index', async () => {
      await rejects(() => native.gatherRows(native.zeros([3, 2]), i32([0, 3])).read(), /gatherRows.*idx\[1\] = 3 is outside \[0, 3\)/);
      const dst = native.zeros([3, 2]);
      native.scatterAddRows(dst, i32([-1]), native.zeros([1, 2]));
      await rejects(() => dst.read(), /scatterAddRows.*idx\[0\] = -1 is outside \[0, 3\)/);
      await native.synchronize().catch(() => undefined);
    });
  });

  describe('crossEntropy', () => {
    for (const [M, V, spread] of [
      [1, 1, 1],
      [7, 33, 3],
      [5, 1000, 80],
      [3, 32000, 5],
    ])
      it(`M=${M}, V=${V}, logits ~ N(0, ${spread}^2): loss and dlogits against the reference`, async () => {
        const rng = new ref.Rng(M * 1000 + V);
        const logits = rng.normals(M * V, spread);
        const targets = rng.ints(M, 0, V);
        const scale = 1 / (M + 2);
        const [loss, dl] = native.crossEntropy(f32(logits, [M, V]), i32(targets), scale);
        expect(loss.shape).to.deep.equal([1]);
        const want = tref.crossEntropy(logits, M, V, targets, scale);
        const l = (await readF(loss))[0];
        expect(Math.abs(l - want.loss), `loss ${l} vs ${want.loss}`).to.be.lessThan(1e-6 * Math.abs(want.loss) + 1e-5 * M);
        const g = await readF(dl);
        ref.assertClose(g, want.dlogits, 1e-5, 1e-7 * scale, 'dlogits');
        // the gradient rows sum to 0
        for (let m = 0; m < M; m++) expect(Math.abs(g.slice(m * V, (m + 1) * V).reduce((a, b) => a + b, 0))).to.be.lessThan(1e-5 * scale * Math.sqrt(V) + 1e-7);
      });

    it('dlogits is the gradient of the loss (finite differences through crossEntropy)', async () => {
      const rng = new ref.Rng(141);
      const M = 4, V = 50;
      const logits = rng.normals(M * V, 2), targets = rng.ints(M, 0, V), u = rng.normals(M * V);
      const [, dl] = native.crossEntropy(f32(logits, [M, V]), i32(targets), 1);
      const L = async (s: number) => (await readF(native.crossEntropy(f32(logits.map((a, i) => a + s * 1e-2 * u[i]), [M, V]), i32(targets), 1)[0]))[0];
      const fd = ((await L(1)) - (await L(-1))) / 2e-2;
      expect(Math.abs(fd - dot(await readF(dl), u))).to.be.lessThan(2e-3 * Math.abs(fd));
    });

    it('a target outside [0, V) rejects at read, naming the row', async () => {
      const [loss] = native.crossEntropy(native.zeros([2, 4]), i32([1, 4]), 1);
      await rejects(() => loss.read(), /crossEntropy.*targets\[1\] = 4 is outside the vocabulary \[0, 4\)/);
      const [, dl] = native.crossEntropy(native.zeros([1, 4]), i32([-1]), 1);
      await rejects(() => dl.read(), /targets\[0\] = -1 is outside/);
      await native.synchronize().catch(() => undefined);
    });
  });

  describe('adamw', () => {
    it('three steps against values worked out from the formula', async () => {
      // lr 0.01, betas (0.9, 0.95), eps 1e-8, weight decay 0.02; param [1, -2, 0.5, 0], m = v = 0.
      // Step 1: m = 0.1 g, v = 0.05 g², mhat = g, vhat = g², so the update is lr * g / (|g| + eps):
      //   p1 = p0 * (1 - 0.01 * 0.02) - 0.01 * g / (|g| + 1e-8)   (and 0 stays 0 for g = 0)
      // Steps 2 and 3 evaluated from the same formula in float64 (python), by hand, not by this code.
      const g = [
        [0.1, -0.2, 0.3, 0],
        [0.2, 0.1, -0.1, 1e-3],
        [-0.3, 0.05, 0.2, -4],
      ];
      const step1 = [1 * 0.9998 - (0.01 * 0.1) / (0.1 + 1e-8), -2 * 0.9998 + (0.01 * 0.2) / (0.2 + 1e-8), 0.5 * 0.9998 - (0.01 * 0.3) / (0.3 + 1e-8), 0];
      const expected = [
        { p: step1, m: [0.01, -0.02, 0.03, 0], v: [0.0005, 0.002, 0.0045, 0] },
        {
          p: [0.9800221829066733, -1.9865183861901146, 0.4857589534975599, -0.007349497392890488],
          m: [0.029, -0.008, 0.017, 1e-4],
          v: [0.002475, 0.0024, 0.004775, 5e-8],
        },
        {
          p: [0.9804827895660302, -1.9854959189683405, 0.4795771055614608, -0.0011171990510968509],
          m: [-0.0039, -0.0022, 0.0353, -0.39991],
          v: [0.00685125, 0.002405, 0.00653625, 0.8000000475],
        },
      ];
      const p = f32([1, -2, 0.5, 0], [4]), m = native.zeros([4]), v = native.zeros([4]);
      for (let s = 0; s < 3; s++) {
        native.adamw(p, f32(g[s], [4]), m, v, s + 1, 0.01, 0.9, 0.95, 1e-8, 0.02);
        ref.assertClose(await readF(p), expected[s].p, 2e-6, 1e-7, `param after step ${s + 1}`);
        ref.assertClose(await readF(m), expected[s].m, 1e-6, 1e-9, `m after step ${s + 1}`);
        ref.assertClose(await readF(v), expected[s].v, 1e-6, 1e-12, `v after step ${s + 1}`);
      }
      expect((await readF(p))[3]).to.not.equal(0);
    });

    it('many elements over 5 steps against the float64 formula; no decay without weight decay', async () => {
      const rng = new ref.Rng(151);
      const n = 20000;
      let P: ArrayLike<number> = rng.normals(n), M: ArrayLike<number> = new Float64Array(n), Vv: ArrayLike<number> = new Float64Array(n);
      const p = f32(P, [n]), m = native.zeros([n]), v = native.zeros([n]);
      for (let s = 1; s <= 5; s++) {
        const g = rng.normals(n, 0.1);
        native.adamw(p, f32(g, [n]), m, v, s, 3e-3, 0.9, 0.95, 1e-8, 0.02);
        ({ p: P, m: M, v: Vv } = tref.adamw(P, g, M, Vv, s, 3e-3, 0.9, 0.95, 1e-8, 0.02));
      }
      ref.assertClose(await readF(p), P, 1e-5, 1e-6, 'param');
      ref.assertClose(await readF(m), M, 1e-4, 1e-7, 'm');
      ref.assertClose(await readF(v), Vv, 1e-4, 1e-9, 'v');
      const q = f32([3], [1]);
      native.adamw(q, f32([0], [1]), native.zeros([1]), native.zeros([1]), 1, 0.1, 0.9, 0.95, 1e-8, 0);
      expect(Array.from(await readF(q))).to.deep.equal([3]);
    });
  });

  describe('sumSquares and scaleInPlace', () => {
    it('sum of squares in double precision, independent of the thread count', async () => {
      const rng = new ref.Rng(161);
      const before = native.capabilities().threads;
      try {
        for (const n of [1, 7, 100000]) {
          const x = rng.normals(n, 3);
          const want = tref.sumSquares(x);
          const results: number[] = [];
          for (const th of [1, 2]) {
            native.setThreads(th);
            results.push((await readF(native.sumSquares(f32(x, [n]))))[0]);
          }
          expect(results[0]).to.equal(results[1]);
          expect(results[0]).to.equal(Math.fround(want));
        }
      } finally {
        native.setThreads(before);
      }
    });

    it('scales in place; 0 clears, NaN and Inf included', async () => {
      const t = f32([1, -2, 3.5, NaN, Infinity], [5]);
      native.scaleInPlace(t, -0.5);
      const got = await readF(t);
      expect(Array.from(got.slice(0, 3))).to.deep.equal([-0.5, 1, -1.75]);
      expect(Number.isNaN(got[3])).to.equal(true);
      expect(got[4]).to.equal(-Infinity);
      native.scaleInPlace(t, 0);
      expect(Array.from(await readF(t))).to.deep.equal([0, 0, 0, 0, 0]);
    });
  });

  // ---- errors ---------------------------------------------------------------------------------
  describe('bad inputs are clear errors', () => {
    const n = native as any;
    const z = (...s: number[]) => native.zeros(s);
    const seg = (...o: number[]) => i32(o);

    it('non-Tensor arguments are TypeErrors naming the op and the argument', () => {
      throwsErr(() => n.gatedAttention(3, z(2, 1, 4), z(2, 1, 4), seg(0, 2), null, null, null), TypeError, /^gatedAttention: argument 1 \(q\) must be a Tensor/);
      throwsErr(() => n.gatedAttention(z(2, 1, 4), z(2, 1, 4), z(2, 1, 4), seg(0, 2), 'pk', null, null), TypeError, /^gatedAttention: argument 5 \(pk\) must be a Tensor or null/);
      throwsErr(() => n.gatedAttentionBackward(z(2, 1, 4), z(2, 1, 4), z(2, 1, 4), z(2, 1, 4), seg(0, 2), null, null, null, z(2, 1, 4)), TypeError, /argument 10 \(stats\) must be a Tensor/);
      throwsErr(() => n.ropeAt(z(1, 1, 2), i32([0]), 1e4, 'half'), TypeError, /^ropeAt: argument 5 \(inverse\) must be a boolean/);
      throwsErr(() => n.ropeAt(z(1, 1, 2), i32([0]), 1e4, 'full', false), TypeError, /^ropeAt: argument 4 \(layout\) must be 'interleaved' or 'half'/);
      throwsErr(() => n.adamw(z(2), z(2), z(2), z(2), 0, 0.1, 0.9, 0.95, 1e-8, 0), TypeError, /^adamw: argument 5 \(step\) must be a positive integer/);
      throwsErr(() => n.adamw(z(2), z(2), z(2), z(2), 1, 0.1, 0.9, 0.95, 1e-8), TypeError, /^adamw: argument 10 \(weightDecay\) must be a number/);
      throwsErr(() => n.crossEntropy(z(2, 3), i32([0, 1]), NaN), TypeError, /^crossEntropy: argument 3 \(scale\) must be a finite number/);
      throwsErr(() => n.scatterAddRows(z(2, 2), [0], z(1, 2)), TypeError, /^scatterAddRows: argument 2 \(idx\) must be a Tensor/);
      throwsErr(() => n.matmulBackward(z(2, 2)), TypeError, /^matmulBackward: argument 2 \(w\) must be a Tensor/);
      throwsErr(() => n.sumSquares({}), TypeError, /^sumSquares: argument 1 \(x\) must be a Tensor/);
      throwsErr(() => n.scaleInPlace(z(2), '2'), TypeError, /^scaleInPlace: argument 2 \(s\) must be a number/);
      throwsErr(() => n.attention(z(1, 1, 4), z(2, 1, 4), z(2, 1, 4), 0, 7), TypeError, /^attention: argument 5 \(pk\) must be a Tensor or null/);
    });

    it('gatedAttention: shapes and dtypes, named synchronously', () => {
      const q = z(5, 4, 8), k = z(5, 2, 8), s = seg(0, 5);
      throwsErr(() => native.gatedAttention(z(5, 8), k, k, s, null, null, null), Error, /^gatedAttention: q must have 3 dimensions, got f32\[5, 8\]/);
      throwsErr(() => native.gatedAttention(q, z(4, 2, 8), z(4, 2, 8), s, null, null, null), Error, /^gatedAttention: k f32\[4, 2, 8\] must have the 5 tokens of q f32\[5, 4, 8\]/);
      throwsErr(() => native.gatedAttention(q, k, z(5, 2, 4), s, null, null, null), Error, /^gatedAttention: k f32\[5, 2, 8\] and v f32\[5, 2, 4\] differ/);
      throwsErr(() => native.gatedAttention(z(5, 3, 8), k, k, s, null, null, null), Error, /^gatedAttention: heads 3 must be a multiple of kv heads 2/);
      throwsErr(() => native.gatedAttention(q, z(5, 2, 6), z(5, 2, 6), s, null, null, null), Error, /head size of q f32\[5, 4, 8\] and k f32\[5, 2, 6\] differ/);
      throwsErr(() => native.gatedAttention(q, k, k, z(2), null, null, null), Error, /^gatedAttention: segments must be i32, got f32\[2\]/);
      throwsErr(() => native.gatedAttention(q, k, k, i32([0]), null, null, null), Error, /segments must hold S\+1 >= 2 offsets, got i32\[1\]/);
      throwsErr(() => native.gatedAttention(q, k, k, s, z(3, 2, 8), null, null), Error, /pk, values pv and gate come together .* got pk, no pv, no gate/);
      throwsErr(() => native.gatedAttention(q, k, k, s, z(3, 2, 8), z(3, 2, 8), z(3)), Error, /^gatedAttention: gate must be \(4\) \(per head\) or \(1\) \(scalar\), got f32\[3\]/);
      throwsErr(() => native.gatedAttention(q, k, k, s, z(3, 1, 8), z(3, 1, 8), z(4)), Error, /^gatedAttention: pk f32\[3, 1, 8\] must be \(K, 2, 8\)/);
      throwsErr(() => native.gatedAttention(q, k, k, s, z(3, 2, 8), z(2, 2, 8), z(4)), Error, /^gatedAttention: pk f32\[3, 2, 8\] and pv f32\[2, 2, 8\] differ/);
      throwsErr(() => native.gatedAttention(q, k, k, s, z(3, 2, 8), z(3, 2, 8), native.zeros([4], 'bf16')), Error, /gate must be f32, got bf16\[4\]/);
      const [out, stats] = native.gatedAttention(q, k, k, s, null, null, null);
      throwsErr(() => native.gatedAttentionBackward(z(5, 4, 4), q, k, k, s, null, null, null, out, stats), Error, /^gatedAttentionBackward: dout must be \[5, 4, 8\] \(the shape of q\), got f32\[5, 4, 4\]/);
      throwsErr(() => native.gatedAttentionBackward(q, q, k, k, s, null, null, null, out, z(5, 4, 1)), Error, /^gatedAttentionBackward: stats must be \[5, 4, 2\] \(tokens, heads, 2\), got f32\[5, 4, 1\]/);
      throwsErr(() => native.attention(z(1, 4, 8), z(4, 2, 8), z(4, 2, 8), 0, z(3, 2, 8), z(3, 2, 8), z(2)), Error, /^attention: gate must be \(4\) \(per head\) or \(1\) \(scalar\), got f32\[2\]/);
      throwsErr(() => native.attention(z(1, 4, 8), z(4, 2, 8), z(4, 2, 8), 0, z(3, 2, 8), null, z(4)), Error, /^attention: the prompt keys pk, values pv and gate come together/);
    });

    it('bad segment offsets reject at read (and poison what depends on them)', async () => {
      const q = z(5, 2, 4), k = z(5, 1, 4);
      for (const [offs, re] of [
        [[1, 5], /segments\[0\] must be 0, got 1/],
        [[0, 3, 2, 5], /segments must be non-decreasing, but segments\[2\] = 2 < segments\[1\] = 3/],
        [[0, 4], /segments\[1\] \(the last offset\) must equal the token count 5, got 4/],
        [[0, 6], /must equal the token count 5, got 6/],
      ] as Array<[number[], RegExp]>) {
        const [out, stats] = native.gatedAttention(q, k, k, i32(offs), null, null, null);
        await rejects(() => out.read(), re);
        const g = native.gatedAttentionBackward(q, q, k, k, i32(offs), null, null, null, z(5, 2, 4), z(5, 2, 2));
        await rejects(() => g[1]!.read(), re);
        await rejects(() => native.matmul(native.reshape(stats, [5, 4]), z(3, 4)).read(), re);
        await native.synchronize().catch(() => undefined);
      }
      const t = z(2, 1, 2);
      native.ropeAt(t, i32([0, -3]), 1e4, 'half', false);
      await rejects(() => t.read(), /ropeAt.*positions\[1\] = -3 is negative/);
      await native.synchronize().catch(() => undefined);
    });

    it('the other ops: shapes, dtypes and values, named synchronously', () => {
      throwsErr(() => native.ropeAt(z(2, 1, 3), i32([0, 1]), 1e4, 'half', false), Error, /^ropeAt: head size must be even, got f32\[2, 1, 3\]/);
      throwsErr(() => native.ropeAt(z(2, 1, 2), i32([0]), 1e4, 'half', false), Error, /^ropeAt: positions i32\[1\] must have one entry per row of x f32\[2, 1, 2\]/);
      throwsErr(() => native.ropeAt(z(2, 1, 2), z(2), 1e4, 'half', false), Error, /^ropeAt: positions must be i32, got f32\[2\]/);
      throwsErr(() => native.ropeAt(z(2, 1, 2), i32([0, 1]), -1, 'half', false), Error, /^ropeAt: theta must be > 0/);
      throwsErr(() => native.rmsnormBackward(z(2, 3), z(2, 4), z(4), 1e-5), Error, /^rmsnormBackward: dy f32\[2, 3\] and x f32\[2, 4\] differ/);
      throwsErr(() => native.rmsnormBackward(z(2, 4), z(2, 4), z(3), 1e-5), Error, /^rmsnormBackward: w f32\[3\] does not match x f32\[2, 4\]/);
      throwsErr(() => native.swigluBackward(z(2, 3), z(2, 3), z(3, 2)), Error, /^swigluBackward: dout f32\[2, 3\], a f32\[2, 3\] and b f32\[3, 2\] must have the same shape/);
      throwsErr(() => native.matmulBackward(z(2, 3), z(4, 5)), Error, /^matmulBackward: dy f32\[2, 3\] · w needs w \(3, K\), got f32\[4, 5\]/);
      throwsErr(() => native.matmulBackward(z(2, 3), native.zeros([3, 2], 'i32')), Error, /^matmulBackward: w must be f32, bf16 or a quantized weight, got i32\[3, 2\]/);
      throwsErr(() => native.gatherRows(z(3, 2), z(2)), Error, /^gatherRows: idx must be i32, got f32\[2\]/);
      throwsErr(() => native.scatterAddRows(z(3, 2), i32([0, 1]), z(2, 3)), Error, /^scatterAddRows: src must be \[2, 2\] \(one row of dst f32\[3, 2\] per index of idx i32\[2\]\), got f32\[2, 3\]/);
      const d = z(3, 2);
      throwsErr(() => native.scatterAddRows(d, i32([0, 1, 2]), d), Error, /^scatterAddRows: dst and src must not share storage/);
      throwsErr(() => native.crossEntropy(z(2, 3), i32([0]), 1), Error, /^crossEntropy: targets i32\[1\] must have one entry per row of logits f32\[2, 3\]/);
      throwsErr(() => native.crossEntropy(z(6), i32([0]), 1), Error, /^crossEntropy: logits must have 2 dimensions, got f32\[6\]/);
      throwsErr(() => native.adamw(z(2), z(3), z(2), z(2), 1, 0.1, 0.9, 0.95, 1e-8, 0), Error, /^adamw: param f32\[2\], grad f32\[3\], m f32\[2\] and v f32\[2\] must have the same shape/);
      throwsErr(() => native.adamw(z(2), z(2), z(2), z(2), 1, 0.1, 1, 0.95, 1e-8, 0), Error, /^adamw: beta1 must be in \[0, 1\), got 1/);
      throwsErr(() => native.adamw(z(2), z(2), z(2), z(2), 1, -0.1, 0.9, 0.95, 1e-8, 0), Error, /^adamw: lr must be >= 0, got -0.1/);
      const p = z(2);
      throwsErr(() => native.adamw(p, z(2), p, z(2), 1, 0.1, 0.9, 0.95, 1e-8, 0), Error, /^adamw: param and m must not share storage/);
      throwsErr(() => native.adamw(z(2), z(2), z(2), native.zeros([2], 'bf16'), 1, 0.1, 0.9, 0.95, 1e-8, 0), Error, /^adamw: v must be f32, got bf16\[2\]/);
      throwsErr(() => native.sumSquares(native.zeros([2], 'i32')), Error, /^sumSquares: x must be f32, got i32\[2\]/);
      throwsErr(() => native.scaleInPlace(native.zeros([2], 'bf16'), 2), Error, /^scaleInPlace: x must be f32, got bf16\[2\]/);
      throwsErr(() => native.scaleInPlace(z(2), 1e39), Error, /^scaleInPlace: s must be finite/);
    });

    it('a child process survives every misuse above (no crash, exit code 0)', function () {
      // The main cases again, in a separate node process: an abort there would fail this test.
      const { spawnSync } = require('child_process') as typeof import('child_process');
      const path = require('path') as typeof import('path');
      const nativeJs = path.resolve(__dirname, '..', 'lib', 'native.js');
      const body = `
        const n = require(${JSON.stringify(nativeJs)}).native;
        const z = (...s) => n.zeros(s);
        const tryAll = (fs) => fs.forEach((f) => { try { f(); } catch (e) {} });
        tryAll([
          () => n.gatedAttention(z(5, 2, 4), z(5, 1, 4), z(5, 1, 4), n.fromArray(new Int32Array([0, 9]), [2]), null, null, null)[0].read().catch(() => 0),
          () => n.gatedAttention(z(5, 2, 4), z(5, 1, 4), z(5, 1, 4), n.fromArray(new Int32Array([0, -9, 5]), [3]), null, null, null)[0].read().catch(() => 0),
          () => n.gatedAttentionBackward(undefined),
          () => n.gatherRows(z(3, 2), n.fromArray(new Int32Array([1e9]), [1])).read().catch(() => 0),
          () => n.scatterAddRows(z(3, 2), n.fromArray(new Int32Array([-5]), [1]), z(1, 2)),
          () => n.crossEntropy(z(2, 3), n.fromArray(new Int32Array([7, 0]), [2]), 1)[1].read().catch(() => 0),
          () => n.ropeAt(z(2, 1, 2), n.fromArray(new Int32Array([0, -1]), [2]), 1e4, 'half', false),
          () => n.adamw(z(2), z(2), z(2), z(2), 1e300, 0.1, 0.9, 0.95, 1e-8, 0),
        ]);
        n.synchronize().catch(() => 0).then(() => console.log('CHILD-DONE'));
      `;
      const r = spawnSync(process.execPath, ['-e', body], { encoding: 'utf8', timeout: 20000 });
      expect(r.signal, r.stderr).to.equal(null);
      expect(r.status, r.stderr).to.equal(0);
      expect(r.stdout).to.contain('CHILD-DONE');
    });
  });
});
