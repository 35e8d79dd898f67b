// The gated attention's two encoder / image-conditioned modes on the CPU (SPEC §8, §9):
// `{ causal: false }` (every token attends to its whole segment) and per-segment prompts (pk, pv
// (S, K, Hkv, d), segment s reads pk[s]), alone and together, against the float64 reference of
// test/util/train-reference.ts, against central finite differences through the native forward,
// and the identities the modes promise (per-segment copies of one prompt = the shared prompt, bit
// for bit; packed = one segment at a time; any thread count; the portable kernels).
//
// Tolerances as in train-ops.test.ts: out 1e-4 / 2e-6, gradients 1e-4 / 1e-5 of each tensor's
// largest element; finite differences relative 2e-3 (h = 1e-2 through the f32 forward).
import { expect } from 'chai';
import { native, Tensor } from '../lib/native';
import * as ref from './util/reference';
import { bits, f32, i32, maxAbs, readF, throwsErr } from './util/tensors';
import * as tref from './util/train-reference';
import { Case, CASES, Data, dimsOf, inputsOf, makeData, MODE_CASES, optionsOf, promptShape } from './util/attention-cases';

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}
function close(a: ArrayLike<number>, e: ArrayLike<number>, rtol: number, atol: number, what: string, floor = 1e-30): void {
  ref.assertClose(a, e, rtol, atol * Math.max(maxAbs(e), floor), what);
}
function closeGrads(g: (Float32Array | null)[], want: tref.AttnGrads, what: string): void {
  const floor = maxAbs(want.dq);
  close(g[0]!, want.dq, 1e-4, 1e-5, `${what}: dq`);
  close(g[1]!, want.dk, 1e-4, 1e-5, `${what}: dk`);
  close(g[2]!, want.dv, 1e-4, 1e-5, `${what}: dv`);
  if (!want.dpk) {
    expect([g[3], g[4], g[5]]).to.deep.equal([null, null, null]);
    return;
  }
  close(g[3]!, want.dpk, 1e-4, 1e-5, `${what}: dpk`, floor);
  close(g[4]!, want.dpv!, 1e-4, 1e-5, `${what}: dpv`, floor);
  close(g[5]!, want.dgate!, 1e-4, 1e-5, `${what}: dgate`);
}
const same = (a: Float32Array, b: Float32Array, what: string) =>
  expect(Array.from(bits(a)), what).to.deep.equal(Array.from(bits(b)));

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
  const { H, Hkv, d } = x.c;
  return {
    q: f32(x.q, [x.N, H, d]),
    k: f32(x.k, [x.N, Hkv, d]),
    v: f32(x.v, [x.N, Hkv, d]),
    seg: i32(x.seg),
    pk: x.pk ? f32(x.pk, promptShape(x.c)) : null,
    pv: x.pv ? f32(x.pv, promptShape(x.c)) : null,
    gate: x.gate ? f32(x.gate, [x.gate.length]) : null,
  };
}
function forward(t: Tensors, c: Case): [Tensor, Tensor] {
  return native.gatedAttention(t.q, t.k, t.v, t.seg, t.pk, t.pv, t.gate, optionsOf(c));
}
async function backward(t: Tensors, dout: Float32Array, x: Data): Promise<(Float32Array | null)[]> {
  const [out, stats] = forward(t, x.c);
  const g = native.gatedAttentionBackward(f32(dout, [x.N, x.c.H, x.c.d]), t.q, t.k, t.v, t.seg, t.pk, t.pv, t.gate, out, stats, optionsOf(x.c));
  return Promise.all(g.map((r) => (r ? readF(r) : Promise.resolve(null))));
}
/** x with its shared prompt copied to every segment (a per-segment case with equal prompts). */
function replicated(x: Data): Data {
  const S = x.c.lens.length;
  const rep = (a: Float32Array) => {
    const r = new Float32Array(S * a.length);
    for (let s = 0; s < S; s++) r.set(a, s * a.length);
    return r;
  };
  return { ...x, c: { ...x.c, perSegment: true }, pk: rep(x.pk!), pv: rep(x.pv!) };
}

describe('gated attention modes: non-causal and per-segment prompts (CPU)', function () {
  before(() => {
    expect(native.capabilities().threads).to.be.greaterThan(0);
  });

  describe('the float64 reference (self-check)', () => {
    it('its backward matches central differences of its forward in the new modes', () => {
      for (const c of [MODE_CASES[0], MODE_CASES[2], MODE_CASES[5], MODE_CASES[6]]) {
        const x = makeData(c, 21);
        const rng = new ref.Rng(22);
        const w = rng.normals(x.N * c.H * c.d);
        const L = (inp: tref.AttnInputs) => dot(tref.gatedAttention(dimsOf(x), inp).out, w);
        const g = tref.gatedAttentionBackward(dimsOf(x), inputsOf(x), w);
        const h = 1e-5;
        const grads = { q: g.dq, k: g.dk, v: g.dv, pk: g.dpk, pv: g.dpv, gate: g.dgate };
        for (const name of ['q', 'k', 'v', 'pk', 'pv', 'gate'] as const) {
          const base = inputsOf(x)[name] as Float32Array | null;
          if (!base) continue;
          for (let trial = 0; trial < 6; trial++) {
            const i = rng.int(0, base.length);
            const plus = Float64Array.from(base);
            const minus = Float64Array.from(base);
            plus[i] += h;
            minus[i] -= h;
            const fd = (L({ ...inputsOf(x), [name]: plus }) - L({ ...inputsOf(x), [name]: minus })) / (2 * h);
            expect(Math.abs(fd - grads[name]![i]), `${c.name}: d${name}[${i}]`).to.be.lessThan(1e-6 * (1 + Math.abs(fd)));
          }
        }
      }
    });

    it('non-causal really sees later keys: it differs from causal except on segments of one token', () => {
      const c = MODE_CASES[0];
      const x = makeData(c, 23);
      const nc = tref.gatedAttention(dimsOf(x), inputsOf(x)).out;
      const ca = tref.gatedAttention({ ...dimsOf(x), causal: true }, inputsOf(x)).out;
      const row = c.H * c.d;
      x.seg.slice(0, -1).forEach((s0, s) => {
        const last = x.seg[s + 1] - 1; // the last token sees its whole segment either way
        for (let t = s0; t <= last; t++) {
          const diff = maxAbs(nc.slice(t * row, (t + 1) * row).map((v, i) => v - ca[t * row + i]));
          if (t === last) expect(diff, `token ${t}`).to.equal(0);
          else expect(diff, `token ${t}`).to.be.greaterThan(1e-3);
        }
      });
    });
  });

  describe('forward against the float64 reference', () => {
    for (const c of MODE_CASES)
      it(c.name, async () => {
        const x = makeData(c, 31);
        const [out, stats] = forward(tensorsOf(x), c);
        expect(out.shape).to.deep.equal([x.N, c.H, c.d]);
        const want = tref.gatedAttention(dimsOf(x), inputsOf(x));
        close(await readF(out), want.out, 1e-4, 2e-6, 'out');
        const st = await readF(stats);
        ref.assertClose(st.filter((_, i) => i % 2 === 0), want.stats.filter((_, i) => i % 2 === 0), 1e-5, 1e-5, 'word log-sum-exp');
        if (c.gate === 'none') expect(st.filter((_, i) => i % 2 === 1).every((s) => s === -Infinity)).to.equal(true);
        else ref.assertClose(st.filter((_, i) => i % 2 === 1), want.stats.filter((_, i) => i % 2 === 1), 1e-5, 1e-5, 'prompt log-sum-exp');
      });
  });

  describe('backward against the float64 reference', () => {
    for (const c of MODE_CASES)
      it(c.name, async () => {
        const x = makeData(c, 41);
        const dout = new ref.Rng(42).normals(x.N * c.H * c.d);
        const g = await backward(tensorsOf(x), dout, x);
        closeGrads(g, tref.gatedAttentionBackward(dimsOf(x), inputsOf(x), dout), c.name);
        if (c.perSegment) expect(g[3]!.length).to.equal(c.lens.length * c.K * c.Hkv * c.d);
      });

    it('per-segment dpk, dpv of an empty segment are exactly 0', async () => {
      const c = MODE_CASES[5]; // segments 0, 3, 0, 2, 0
      const x = makeData(c, 43);
      const g = await backward(tensorsOf(x), new ref.Rng(44).normals(x.N * c.H * c.d), x);
      const per = c.K * c.Hkv * c.d;
      for (const s of [0, 2, 4])
        for (const i of [3, 4]) expect(Array.from(g[i]!.slice(s * per, (s + 1) * per)).every((v) => v === 0), `grad ${i} of segment ${s}`).to.equal(true);
      // (K = 1: the prompt softmax is constant, so dpk = 0 everywhere; dpv is not)
      for (const s of [1, 3]) expect(maxAbs(g[4]!.slice(s * per, (s + 1) * per))).to.be.greaterThan(0);
    });
  });

  describe('backward against finite differences of the native forward (f32)', () => {
    for (const c of [MODE_CASES[0], MODE_CASES[1], MODE_CASES[4], MODE_CASES[6]])
      it(c.name, async () => {
        const x = makeData(c, 51);
        const rng = new ref.Rng(52);
        const w = rng.normals(x.N * c.H * c.d);
        const t = tensorsOf(x);
        const grads = await backward(t, w, x);
        const names = ['q', 'k', 'v', 'pk', 'pv', 'gate'] as const;
        const h = 1e-2;
        const L = async (name: string, arr: Float32Array): Promise<number> => {
          const [out] = forward({ ...t, [name]: f32(arr, [...(t as any)[name].shape]) }, c);
          return dot(await readF(out), w);
        };
        for (let n = 0; n < names.length; n++) {
          const base = x[names[n]];
          if (!base) continue;
          const u = rng.normals(base.length);
          const fd = ((await L(names[n], base.map((b, i) => b + h * u[i]))) - (await L(names[n], base.map((b, i) => b - h * u[i])))) / (2 * h);
          const an = dot(grads[n]!, u);
          expect(Math.abs(fd - an), `<d${names[n]}, u> = ${an}, finite difference ${fd}`).to.be.lessThan(2e-3 * Math.max(Math.abs(fd), 1e-2));
        }
      });

    it('per coordinate: per-segment dpk, dpv entries of every segment, and the gates', async () => {
      const c = MODE_CASES[6]; // per-segment, non-causal, segments 33, 1, 70
      const x = makeData(c, 53);
      const rng = new ref.Rng(54);
      const w = rng.normals(x.N * c.H * c.d);
      const t = tensorsOf(x);
      const g = await backward(t, w, x);
      const h = 1e-2;
      const L = async (name: 'gate' | 'pk' | 'pv', arr: Float32Array) => {
        const [out] = forward({ ...t, [name]: f32(arr, [...t[name]!.shape]) }, c);
        return dot(await readF(out), w);
      };
      const per = c.K * c.Hkv * c.d;
      const coords: Array<['gate' | 'pk' | 'pv', number, number]> = [];
      for (let i = 0; i < x.gate!.length; i++) coords.push(['gate', i, g[5]![i]]);
      for (let s = 0; s < c.lens.length; s++)
        for (let j = 0; j < 2; j++) {
          const i = s * per + rng.int(0, per);
          coords.push(['pk', i, g[3]![i]], ['pv', i, g[4]![i]]);
        }
      for (const [name, i, an] of coords) {
        const plus = Float32Array.from(x[name]!);
        const minus = Float32Array.from(x[name]!);
        plus[i] += h;
        minus[i] -= h;
        const fd = ((await L(name, plus)) - (await L(name, minus))) / (plus[i] - minus[i]);
        // the floor: f32 rounding of L (~1e2) over the step 2h leaves ~1e-5 of noise in fd
        expect(Math.abs(fd - an), `d${name}[${i}] = ${an}, finite difference ${fd}`).to.be.lessThan(3e-3 * Math.max(Math.abs(fd), 5e-2));
      }
    });
  });

  describe('identities', () => {
    for (const causal of [true, false])
      for (const c of [CASES[0], CASES[2], CASES[5], CASES[6]])
        it(`per-segment copies of one prompt equal the shared prompt bit for bit (causal: ${causal}; ${c.name})`, async () => {
          const x = makeData({ ...c, causal }, 61);
          const xs = replicated(x);
          const dout = new ref.Rng(62).normals(x.N * c.H * c.d);
          const [o1, s1] = forward(tensorsOf(x), x.c);
          const [o2, s2] = forward(tensorsOf(xs), xs.c);
          same(await readF(o2), await readF(o1), 'out');
          same(await readF(s2), await readF(s1), 'stats');
          const g1 = await backward(tensorsOf(x), dout, x);
          const g2 = await backward(tensorsOf(xs), dout, xs);
          ['dq', 'dk', 'dv'].forEach((name, i) => same(g2[i]!, g1[i]!, name));
          same(g2[5]!, g1[5]!, 'dgate');
          // dpk, dpv summed over the segments equal the shared ones (to float rounding)
          const per = g1[3]!.length;
          for (const i of [3, 4]) {
            const sum = new Float64Array(per);
            for (let s = 0; s < c.lens.length; s++) for (let j = 0; j < per; j++) sum[j] += g2[i]![s * per + j];
            close(g1[i]!, sum, 1e-5, 1e-6, i === 3 ? 'sum of dpk' : 'sum of dpv');
          }
        });

    it('{ causal: true } and no options give the same bits as before (the default is causal)', async () => {
      const c = CASES[0];
      const x = makeData(c, 63);
      const t = tensorsOf(x);
      const dout = f32(new ref.Rng(64).normals(x.N * c.H * c.d), [x.N, c.H, c.d]);
      const runs: Float32Array[][] = [];
      for (const opt of [undefined, { causal: true }, {}]) {
        const [out, stats] = native.gatedAttention(t.q, t.k, t.v, t.seg, t.pk, t.pv, t.gate, opt);
        const g = native.gatedAttentionBackward(dout, t.q, t.k, t.v, t.seg, t.pk, t.pv, t.gate, out, stats, opt);
        runs.push(await Promise.all([out, stats, ...g].map((r) => readF(r!))));
      }
      for (const r of runs.slice(1)) r.forEach((a, i) => same(a, runs[0][i], `output ${i}`));
      // and the values are the causal reference's
      close(runs[0][0], tref.gatedAttention(dimsOf(x), inputsOf(x)).out, 1e-4, 2e-6, 'out');
    });

    it('non-causal on segments of one token equals causal bit for bit', async () => {
      const c: Case = { name: 'ones', H: 2, Hkv: 1, d: 12, lens: [1, 1, 1, 1, 1], K: 2, gate: 'head' };
      const x = makeData(c, 65);
      const dout = new ref.Rng(66).normals(x.N * c.H * c.d);
      const a = await backward(tensorsOf(x), dout, x);
      const b = await backward(tensorsOf(x), dout, { ...x, c: { ...c, causal: false } });
      a.forEach((v, i) => same(b[i]!, v!, `gradient ${i}`));
    });

    for (const c of [MODE_CASES[0], MODE_CASES[6]])
      it(`packed segments equal the segments run one at a time, bit for bit (${c.name})`, async () => {
        const x = makeData(c, 71);
        const dout = new ref.Rng(72).normals(x.N * c.H * c.d);
        const t = tensorsOf(x);
        const [out] = forward(t, c);
        const po = await readF(out);
        const pg = await backward(t, dout, x);
        const rowQ = c.H * c.d, rowK = c.Hkv * c.d, per = c.K * c.Hkv * c.d;
        for (let s = 0; s < c.lens.length; s++) {
          const a = x.seg[s], n = c.lens[s];
          if (n === 0) continue;
          const one: Data = {
            ...x,
            c: { ...c, lens: [n], perSegment: false },
            N: n,
            seg: [0, n],
            q: x.q.slice(a * rowQ, (a + n) * rowQ),
            k: x.k.slice(a * rowK, (a + n) * rowK),
            v: x.v.slice(a * rowK, (a + n) * rowK),
            pk: c.perSegment ? x.pk!.slice(s * per, (s + 1) * per) : x.pk,
            pv: c.perSegment ? x.pv!.slice(s * per, (s + 1) * per) : x.pv,
          };
          const [o1] = forward(tensorsOf(one), one.c);
          same(await readF(o1), po.slice(a * rowQ, (a + n) * rowQ), `out of segment ${s}`);
          const g = await backward(tensorsOf(one), dout.slice(a * rowQ, (a + n) * rowQ), one);
          same(g[0]!, pg[0]!.slice(a * rowQ, (a + n) * rowQ), `dq of segment ${s}`);
          same(g[1]!, pg[1]!.slice(a * rowK, (a + n) * rowK), `dk of segment ${s}`);
          same(g[2]!, pg[2]!.slice(a * rowK, (a + n) * rowK), `dv of segment ${s}`);
          if (c.perSegment) {
            same(g[3]!, pg[3]!.slice(s * per, (s + 1) * per), `dpk[${s}]`);
            same(g[4]!, pg[4]!.slice(s * per, (s + 1) * per), `dpv[${s}]`);
          }
        }
      });

    for (const c of [MODE_CASES[3], MODE_CASES[7]])
      it(`results are bit-identical for 1, 2 and 3 threads (${c.name})`, async () => {
        const before = native.capabilities().threads;
        try {
          const x = makeData(c, 81);
          const dout = new ref.Rng(82).normals(x.N * c.H * c.d);
          const runs: Uint32Array[][] = [];
          for (const n of [1, 2, 3]) {
            native.setThreads(n);
            const t = tensorsOf(x);
            const [out, stats] = forward(t, c);
            const g = await backward(t, dout, x);
            runs.push([await readF(out), await readF(stats), ...g.map((a) => a!)].map((a) => bits(a)));
          }
          for (let r = 1; r < runs.length; r++)
            runs[r].forEach((a, i) => expect(Array.from(a)).to.deep.equal(Array.from(runs[0][i]), `output ${i} with ${r + 1} threads`));
        } finally {
          native.setThreads(before);
        }
      });

    it('the portable kernels (LLAMA_ADAPTER_NO_AVX2=1, in a child process) agree with the reference', function () {
      const { spawnSync } = require('child_process') as typeof import('child_process');
      const path = require('path') as typeof import('path');
      const fs = require('fs') as typeof import('fs');
      const os = require('os') as typeof import('os');
      const nativeJs = path.resolve(__dirname, '..', 'lib', 'native.js');
      const cases = [MODE_CASES[0], MODE_CASES[5], MODE_CASES[6]].map((c, i) => {
        const x = makeData(c, 200 + i);
        return { x, dout: new ref.Rng(300 + i).normals(x.N * c.H * c.d) };
      });
      const plain = (a: Float32Array | null) => (a ? Array.from(a) : null);
      const input = cases.map(({ x, dout }) => ({
        N: x.N, H: x.c.H, Hkv: x.c.Hkv, d: x.c.d, P: promptShape(x.c), seg: x.seg, options: optionsOf(x.c),
        q: plain(x.q), k: plain(x.k), v: plain(x.v), pk: plain(x.pk), pv: plain(x.pv), gate: plain(x.gate), dout: plain(dout),
      }));
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-portable-'));
      const file = path.join(dir, 'cases.json');
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
            const pk = T(c.pk, c.P), pv = T(c.pv, c.P), gate = c.gate ? T(c.gate, [c.gate.length]) : null;
            const [out, stats] = n.gatedAttention(q, k, v, seg, pk, pv, gate, c.options);
            const g = n.gatedAttentionBackward(T(c.dout, [c.N, c.H, c.d]), q, k, v, seg, pk, pv, gate, out, stats, c.options);
            res.push(await Promise.all([out, ...g].map(async (t) => (t ? Array.from(await t.read()) : null))));
          }
          console.log('RESULT ' + JSON.stringify(res));
        })();
      `;
      const r = spawnSync(process.execPath, ['-e', body], { encoding: 'utf8', timeout: 60000, maxBuffer: 1 << 28, env: { ...process.env, LLAMA_ADAPTER_NO_AVX2: '1' } });
      fs.rmSync(dir, { recursive: true, force: true });
      expect(r.status, `${r.error ?? ''} ${r.stderr}`).to.equal(0);
      const res = JSON.parse(r.stdout.split('RESULT ')[1]) as (number[] | null)[][];
      cases.forEach(({ x, dout }, i) => {
        close(res[i][0]!, tref.gatedAttention(dimsOf(x), inputsOf(x)).out, 1e-4, 2e-6, `portable out (${x.c.name})`);
        closeGrads(res[i].slice(1).map((a) => (a ? Float32Array.from(a) : null)), tref.gatedAttentionBackward(dimsOf(x), inputsOf(x), dout), `portable (${x.c.name})`);
      });
    });
  });

  describe('bad inputs are clear errors', () => {
    const n = native as any;
    const z = (...s: number[]) => native.zeros(s);
    const q = z(5, 4, 8), k = z(5, 2, 8), seg3 = i32([0, 2, 2, 5]); // S = 3

    it('per-segment pk with the wrong S, or of the wrong rank or shape, is named synchronously', () => {
      throwsErr(() => native.gatedAttention(q, k, k, seg3, z(2, 3, 2, 8), z(2, 3, 2, 8), z(4)), Error,
        /^gatedAttention: per-segment pk f32\[2, 3, 2, 8\] must be \(S, K, Hkv, d\) with S = 3 \(the number of segments\)/);
      throwsErr(() => native.gatedAttention(q, k, k, seg3, z(3, 3, 1, 8), z(3, 3, 1, 8), z(4)), Error,
        /^gatedAttention: pk f32\[3, 3, 1, 8\] must be \(S, K, 2, 8\) to match the kv heads and head size/);
      throwsErr(() => native.gatedAttention(q, k, k, seg3, z(3, 3, 2, 8), z(3, 2, 2, 8), z(4)), Error,
        /^gatedAttention: pk f32\[3, 3, 2, 8\] and pv f32\[3, 2, 2, 8\] differ/);
      throwsErr(() => native.gatedAttention(q, k, k, seg3, z(3, 3, 2, 8), z(3, 3, 2, 8), z(3)), Error,
        /^gatedAttention: gate must be \(4\) \(per head\) or \(1\) \(scalar\)/);
      throwsErr(() => native.gatedAttention(q, k, k, seg3, z(1, 3, 3, 2, 8), z(1, 3, 3, 2, 8), z(4)), Error,
        /^gatedAttention: pk must have 3 dimensions \(K, Hkv, d\) or 4 \(S, K, Hkv, d: one prompt per segment\), got f32\[1, 3, 3, 2, 8\]/);
      const [out, stats] = native.gatedAttention(q, k, k, seg3, null, null, null);
      throwsErr(() => native.gatedAttentionBackward(q, q, k, k, seg3, z(4, 3, 2, 8), z(4, 3, 2, 8), z(4), out, stats), Error,
        /^gatedAttentionBackward: per-segment pk f32\[4, 3, 2, 8\] must be \(S, K, Hkv, d\) with S = 3/);
      // cached attention has no segments: its prompt is (K, Hkv, d) only
      throwsErr(() => native.attention(z(1, 4, 8), z(4, 2, 8), z(4, 2, 8), 0, z(1, 3, 2, 8), z(1, 3, 2, 8), z(4)), Error,
        /^attention: pk must have 3 dimensions \(K, Hkv, d\), got f32\[1, 3, 2, 8\]/);
    });

    it('options: an object whose causal is a boolean; anything else is a TypeError', () => {
      const s = i32([0, 5]);
      throwsErr(() => n.gatedAttention(q, k, k, s, null, null, null, { causal: 'no' }), TypeError, /^gatedAttention: options.causal must be a boolean/);
      throwsErr(() => n.gatedAttention(q, k, k, s, null, null, null, { causal: 0 }), TypeError, /^gatedAttention: options.causal must be a boolean/);
      throwsErr(() => n.gatedAttention(q, k, k, s, null, null, null, false), TypeError, /^gatedAttention: argument 8 \(options\) must be an object \{causal\?: boolean\} or undefined/);
      throwsErr(() => n.gatedAttention(q, k, k, s, null, null, null, null), TypeError, /argument 8 \(options\) must be an object/);
      throwsErr(() => n.gatedAttention(q, k, k, s, null, null, null, [true]), TypeError, /argument 8 \(options\) must be an object/);
      throwsErr(() => n.gatedAttention(q, k, k, s, null, null, null, { casual: false }), TypeError, /^gatedAttention: unknown option 'casual' \(options are \{causal\?: boolean\}\)/);
      const [out, stats] = native.gatedAttention(q, k, k, s, null, null, null, { causal: false });
      throwsErr(() => n.gatedAttentionBackward(q, q, k, k, s, null, null, null, out, stats, { causal: 1 }), TypeError, /^gatedAttentionBackward: options.causal must be a boolean/);
      throwsErr(() => n.gatedAttentionBackward(q, q, k, k, s, null, null, null, out, stats, 'causal'), TypeError, /^gatedAttentionBackward: argument 11 \(options\) must be an object/);
    });
  });
});
