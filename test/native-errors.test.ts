// The JS boundary of the native addon: every misuse from JS is a clear TypeError/Error (naming the
// function, the argument or the op and its shapes), never a crash; failures inside queued ops
// surface at read()/synchronize() and leave the addon usable. The riskiest cases also run in a
// child process, to prove that the process survives them and exits 0.
import { expect } from 'chai';
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native, Tensor } from '../lib/native';
import * as ref from './util/reference';
import { f32, i32, rejects, throwsErr } from './util/tensors';

// The compiled lib/native.js beside this file's compiled copy (dist/test -> dist/lib).
const NATIVE_JS = path.resolve(__dirname, '..', 'lib', 'native.js');

interface ChildResult {
  status: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}
function childScript(body: string): string {
  return (
    `const n = require(${JSON.stringify(NATIVE_JS)}).native;\n` +
    `(async () => {\n${body}\n})().then(() => { console.log('CHILD-DONE'); }, (e) => { console.log('CHILD-FAILED ' + e.stack); process.exitCode = 3; });`
  );
}
/** Runs `body` (JS, with `n` bound to the native binding, `await` allowed) in a child node process. */
function child(body: string, timeout = 15000): ChildResult {
  const r = spawnSync(process.execPath, ['-e', childScript(body)], { encoding: 'utf8', timeout });
  const timedOut = (r.error as NodeJS.ErrnoException | undefined)?.code === 'ETIMEDOUT';
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '', timedOut };
}
/** The same, asynchronously, so that several children can run at once. */
function childAsync(body: string, timeout = 8000): Promise<ChildResult> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ['-e', childScript(body)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      p.kill('SIGKILL');
    }, timeout);
    p.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr, timedOut });
    });
  });
}
function expectSurvived(r: ChildResult): void {
  const info = `status ${r.status}, signal ${r.signal}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
  expect(r.timedOut, `the child process hung and was killed after its timeout: ${info}`).to.equal(false);
  expect(r.signal, `the child process was killed: ${info}`).to.equal(null);
  expect(r.status, info).to.equal(0);
  expect(r.stdout, info).to.contain('CHILD-DONE');
}

describe('native boundary: wrong arguments and failures are clear errors, never crashes', function () {
  this.timeout(30000);

  // Every test consumes the errors it causes; this drains anything left so tests stay independent.
  afterEach(async () => {
    await native.synchronize().catch(() => undefined);
  });

  let tmp: string;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'la-native-errors-'));
  });
  after(() => {
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  function writeFile(name: string, bytes: ArrayBufferView): string {
    const p = path.join(tmp, name);
    fs.writeFileSync(p, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    return p;
  }

  const n = native as any; // to pass what the types forbid
  const x22 = () => f32([1, 2, 3, 4], [2, 2]);

  describe('tensor arguments', () => {
    const ops: Array<[string, (a: unknown) => unknown]> = [
      ['embedding', (a) => n.embedding(a, i32([0]))],
      ['rmsnorm', (a) => n.rmsnorm(a, f32([1, 1], [2]), 1e-5)],
      ['rope', (a) => n.rope(a, 0, 10000, 'half')],
      ['matmul', (a) => n.matmul(a, x22())],
      ['kvWrite', (a) => n.kvWrite(a, native.zeros([1, 1, 2]), 0)],
      ['attention', (a) => n.attention(a, native.zeros([1, 1, 2]), native.zeros([1, 1, 2]), 0)],
      ['swiglu', (a) => n.swiglu(a, x22())],
      ['addInPlace', (a) => n.addInPlace(a, x22())],
      ['sliceRows', (a) => n.sliceRows(a, 0, 1)],
      ['convert', (a) => n.convert(a, 'bf16')],
      ['reshape', (a) => n.reshape(a, [4])],
    ];
    const bad: Array<[string, () => unknown]> = [
      ['undefined', () => undefined],
      ['null', () => null],
      ['a number', () => 3],
      ['a string', () => 'tensor'],
      ['a plain object shaped like a Tensor', () => ({ shape: [2, 2], dtype: 'f32', device: 'cpu', bytes: 16 })],
      ['a Float32Array', () => new Float32Array(4)],
      ['an array', () => [[1, 2], [3, 4]]],
    ];
    for (const [op, call] of ops)
      it(`${op}: non-Tensor first arguments are TypeErrors naming ${op} and the argument`, () => {
        for (const [what, make] of bad) {
          let err: unknown;
          try {
            call(make());
          } catch (e) {
            err = e;
          }
          expect(err, `${op}(${what})`).to.be.instanceOf(TypeError);
          expect((err as Error).message, `${op}(${what})`).to.match(new RegExp(`^${op}: argument 1 \\(\\w+\\) must be a Tensor`));
        }
      });

    it('missing arguments are TypeErrors naming the argument', () => {
      throwsErr(() => n.matmul(), TypeError, /^matmul: argument [12] \((x|w)\) must be a Tensor/);
      throwsErr(() => n.matmul(x22()), TypeError, /^matmul: argument 2 \(w\) must be a Tensor/);
      throwsErr(() => n.rmsnorm(x22(), f32([1, 1], [2])), TypeError, /^rmsnorm: argument 3 \(eps\) must be a number/);
      throwsErr(() => n.kvWrite(native.zeros([2, 1, 2]), native.zeros([1, 1, 2])), TypeError, /^kvWrite: argument 3 \(pos0\)/);
      throwsErr(() => n.attention(native.zeros([1, 1, 2]), native.zeros([1, 1, 2])), TypeError, /^attention: argument (3 \(vCache\)|4 \(pos0\))/);
      throwsErr(() => n.sliceRows(x22(), 0), TypeError, /^sliceRows: argument 3 \(count\)/);
      throwsErr(() => n.embedding(f32([1, 2], [1, 2])), TypeError, /^embedding: argument 2 \(tokens\)/);
      throwsErr(() => n.fromArray(), TypeError, /^fromArray: argument 1 \(data\)/);
      throwsErr(() => n.fromArray(new Float32Array(2)), TypeError, /^fromArray: argument 2 \(shape\)/);
      throwsErr(() => n.zeros(), TypeError, /^zeros: argument 1 \(shape\)/);
      throwsErr(() => n.mapFile(), TypeError, /^mapFile: argument 1 \(path\) must be a string/);
      throwsErr(() => n.setThreads(), TypeError, /^setThreads: argument 1 \(n\)/);
    });

    it('a FileMapping where a Tensor is expected is a TypeError', () => {
      const p = writeFile('four.f32', new Float32Array([1, 2, 3, 4]));
      const map = native.mapFile(p);
      throwsErr(() => n.matmul(map, x22()), TypeError, /^matmul: argument 1 \(x\) must be a Tensor/);
      throwsErr(() => n.addInPlace(x22(), map), TypeError, /^addInPlace: argument 2 \(y\) must be a Tensor/);
      throwsErr(() => n.fromFile(x22(), 0, [1], 'f32', 'f32'), TypeError, /^fromFile: argument 1 \(map\) must be a FileMapping/);
      map.close();
    });

    it('an object with the Tensor prototype but no native tensor is an Error, not a crash', () => {
      const fake = Object.create(n.Tensor.prototype);
      expect(() => n.matmul(fake, x22())).to.throw(Error);
      expect(() => n.Tensor.prototype.read.call({})).to.throw(TypeError);
      const blank = new n.Tensor(); // constructed from JS: holds nothing
      expect(() => n.matmul(blank, x22())).to.throw(Error, /matmul/);
    });
  });

  describe('shapes, dtypes and typed arrays', () => {
    const badShapes: Array<[string, unknown]> = [
      ['negative', [2, -1]],
      ['zero', [0]],
      ['fractional', [2.5]],
      ['NaN', [NaN]],
      ['Infinity', [Infinity]],
      ['a string element', ['2']],
      ['empty', []],
      ['nine dims', [1, 1, 1, 1, 1, 1, 1, 1, 1]],
      ['not an array', 4],
      ['an array-like object', { length: 1, 0: 1 }],
      ['1e15 elements in one dim', [1e15]],
    ];
    for (const [what, shape] of badShapes)
      it(`zeros/fromArray/fromFile: a ${what} shape is a TypeError`, () => {
        throwsErr(() => n.zeros(shape), TypeError, /^zeros: argument 1 \(shape\) must be an array of/);
        throwsErr(() => n.fromArray(new Float32Array(1), shape), TypeError, /^fromArray: argument 2 \(shape\)/);
        const map = native.mapFile(writeFile('shape.f32', new Float32Array(4)));
        throwsErr(() => n.fromFile(map, 0, shape, 'f32', 'f32'), TypeError, /^fromFile: argument 3 \(shape\)/);
        map.close();
      });

    it('huge shapes are Errors naming the shape (no allocation attempted)', () => {
      throwsErr(() => native.zeros([1e14]), Error, /\[100000000000000\] is too large/);
      throwsErr(() => native.zeros([2 ** 30, 2 ** 30]), Error, /too large/);
      throwsErr(() => native.zeros([2 ** 20, 2 ** 20, 2]), Error, /too large/);
      throwsErr(
        () => native.fromArray(new Float32Array(4), [2 ** 20, 2 ** 20]),
        Error,
        /^fromArray: data has 4 elements but shape \[1048576, 1048576\] needs 1099511627776/,
      );
    });

    it('typed arrays of the wrong kind or length', () => {
      for (const arr of [new Float64Array(4), new Uint8Array(4), new Int16Array(4), new Uint32Array(4), [1, 2, 3, 4], new ArrayBuffer(16)])
        throwsErr(() => n.fromArray(arr, [4]), TypeError, /^fromArray: argument 1 \(data\) must be a Float32Array or Int32Array/);
      throwsErr(() => native.fromArray(new Float32Array(3), [2, 2]), Error, /^fromArray: data has 3 elements but shape \[2, 2\] needs 4/);
      throwsErr(() => native.fromArray(new Float32Array(5), [2, 2]), Error, /data has 5 elements/);
      throwsErr(() => native.fromArray(new Int32Array(4), [2, 2], 'f32'), TypeError, /an Int32Array cannot make a tensor of dtype f32/);
      throwsErr(() => native.fromArray(new Int32Array(4), [4], 'bf16'), TypeError, /an Int32Array cannot make a tensor of dtype bf16/);
      throwsErr(() => native.fromArray(new Float32Array(4), [4], 'i32'), TypeError, /fromArray: a Float32Array cannot make a tensor of dtype i32/);
      throwsErr(() => n.fromArray(new Float32Array(4), [4], 'f16'), TypeError, /argument 3 \(dtype\) must be 'f32', 'bf16' or 'i32'/);
      throwsErr(() => n.zeros([4], 'float'), TypeError, /^zeros: argument 2 \(dtype\)/);
      throwsErr(() => n.zeros([4], 5), TypeError, /^zeros: argument 2 \(dtype\) must be a string/);
    });

    it('wrong dtypes for every op name the op and the tensor', () => {
      const i22 = native.zeros([2, 2], 'i32');
      const b22 = native.zeros([2, 2], 'bf16');
      throwsErr(() => native.matmul(x22(), i22), Error, /^matmul: w must be f32, bf16 or a quantized weight, got i32\[2, 2\]/);
      throwsErr(() => native.matmul(i22, x22()), Error, /^matmul: x must be f32, got i32\[2, 2\]/);
      throwsErr(() => native.matmul(b22, x22()), Error, /^matmul: x must be f32, got bf16\[2, 2\]/);
      throwsErr(() => native.embedding(i22, i32([0])), Error, /^embedding: table must be f32, bf16 or a quantized weight, got i32\[2, 2\]/);
      throwsErr(() => native.embedding(x22(), native.zeros([2])), Error, /^embedding: tokens must be i32, got f32\[2\]/);
      throwsErr(() => native.rmsnorm(b22, native.zeros([2]), 1e-5), Error, /^rmsnorm: x must be f32, got bf16\[2, 2\]/);
      throwsErr(() => native.rmsnorm(x22(), native.zeros([2], 'bf16'), 1e-5), Error, /^rmsnorm: w must be f32/);
      throwsErr(() => native.rope(native.zeros([1, 1, 2], 'bf16'), 0, 1e4, 'half'), Error, /^rope: x must be f32/);
      throwsErr(() => native.kvWrite(native.zeros([2, 1, 2], 'bf16'), native.zeros([1, 1, 2]), 0), Error, /^kvWrite: cache must be f32/);
      throwsErr(() => native.attention(native.zeros([1, 1, 2], 'i32'), native.zeros([1, 1, 2]), native.zeros([1, 1, 2]), 0), Error, /^attention: .*must be f32, got i32\[1, 1, 2\]/);
      throwsErr(() => native.swiglu(i22, i22), Error, /^swiglu: a must be f32, got i32\[2, 2\]/);
      throwsErr(() => native.addInPlace(b22, b22), Error, /^addInPlace: x must be f32, got bf16\[2, 2\]/);
      throwsErr(() => native.convert(i22, 'f32'), Error, /^convert: only f32 <-> bf16, got i32\[2, 2\] to f32/);
      throwsErr(() => native.convert(x22(), 'i32'), Error, /^convert: only f32 <-> bf16, got f32\[2, 2\] to i32/);
      throwsErr(() => n.convert(x22(), 'f16'), TypeError, /^convert: argument 2 \(dtype\)/);
    });

    it('mismatched shapes for every op name the op and both shapes', () => {
      const z = (...s: number[]) => native.zeros(s);
      throwsErr(() => native.embedding(z(4), i32([0])), Error, /^embedding: table must have 2 dimensions, got f32\[4\]/);
      throwsErr(() => native.embedding(z(4, 3), native.zeros([1, 2], 'i32')), Error, /^embedding: tokens must have 1 dimensions, got i32\[1, 2\]/);
      throwsErr(() => native.rmsnorm(z(2, 3), z(4), 1e-5), Error, /^rmsnorm: w f32\[4\] does not match x f32\[2, 3\]/);
      throwsErr(() => native.rmsnorm(z(2, 3, 4), z(4), 1e-5), Error, /^rmsnorm: x must have 2 dimensions, got f32\[2, 3, 4\]/);
      throwsErr(() => native.rope(z(2, 4), 0, 1e4, 'half'), Error, /^rope: x must have 3 dimensions, got f32\[2, 4\]/);
      throwsErr(() => native.rope(z(1, 2, 3), 0, 1e4, 'interleaved'), Error, /^rope: head size must be even, got f32\[1, 2, 3\]/);
      throwsErr(() => native.matmul(z(2, 3), z(4, 5)), Error, /^matmul: x f32\[2, 3\] · wᵀ needs w \(N, 3\), got f32\[4, 5\]/);
      throwsErr(() => native.matmul(z(2, 3, 1), z(4, 3)), Error, /^matmul: x must have 2 dimensions, got f32\[2, 3, 1\]/);
      throwsErr(() => native.matmul(z(2, 3), z(3)), Error, /^matmul: w must have 2 dimensions, got f32\[3\]/);
      throwsErr(() => native.kvWrite(z(4, 2, 8), z(1, 3, 8), 0), Error, /^kvWrite: src f32\[1, 3, 8\] does not match cache f32\[4, 2, 8\]/);
      throwsErr(() => native.kvWrite(z(4, 2, 8), z(1, 2, 4), 0), Error, /^kvWrite: src f32\[1, 2, 4\] does not match cache f32\[4, 2, 8\]/);
      throwsErr(() => native.kvWrite(z(4, 16), z(1, 16), 0), Error, /^kvWrite: cache must have 3 dimensions, got f32\[4, 16\]/);
      throwsErr(() => native.attention(z(1, 4, 8), z(4, 3, 8), z(4, 3, 8), 0), Error, /^attention: heads 4 must be a multiple of kv heads 3/);
      throwsErr(() => native.attention(z(1, 2, 8), z(4, 4, 8), z(4, 4, 8), 0), Error, /^attention: heads 2 must be a multiple of kv heads 4/);
      throwsErr(() => native.attention(z(1, 4, 8), z(4, 2, 16), z(4, 2, 16), 0), Error, /^attention: head size of q f32\[1, 4, 8\] and k f32\[4, 2, 16\] differ/);
      throwsErr(() => native.attention(z(1, 4, 8), z(4, 2, 8), z(5, 2, 8), 0), Error, /^attention: k f32\[4, 2, 8\] and v f32\[5, 2, 8\] differ/);
      throwsErr(() => native.attention(z(4, 8), z(4, 2, 8), z(4, 2, 8), 0), Error, /^attention: q must have 3 dimensions, got f32\[4, 8\]/);
      throwsErr(() => native.swiglu(z(2, 3), z(3, 2)), Error, /^swiglu: a f32\[2, 3\] and b f32\[3, 2\] differ/);
      throwsErr(() => native.addInPlace(z(2, 3), z(6)), Error, /^addInPlace: x f32\[2, 3\] and y f32\[6\] differ/);
      throwsErr(() => native.sliceRows(z(2, 3), 1, 2), Error, /^sliceRows: rows 1\.\.3 are outside f32\[2, 3\]/);
      throwsErr(() => native.sliceRows(z(2, 3), 2, 1), Error, /^sliceRows: rows 2\.\.3 are outside f32\[2, 3\]/);
      throwsErr(() => native.reshape(z(2, 3), [4]), Error, /^reshape: f32\[2, 3\] has 6 elements, shape \[4\] needs 4/);
      throwsErr(() => native.reshape(z(2, 3), [2, 3, 2]), Error, /^reshape: .*needs 12/);
      throwsErr(() => n.reshape(z(2, 3), [6, 0]), TypeError, /^reshape: argument 2 \(shape\) must be an array of positive integers/);
      throwsErr(() => n.reshape(z(2, 3), [-6]), TypeError, /^reshape: argument 2 \(shape\)/);
      throwsErr(() => n.reshape(z(2, 3)), TypeError, /^reshape: argument 2 \(shape\)/);
      throwsErr(() => native.sliceRows(z(2, 3), 0, 0), TypeError, /^sliceRows: argument 3 \(count\) must be a positive integer/);
      throwsErr(() => native.sliceRows(z(2, 3), -1, 1), TypeError, /^sliceRows: argument 2 \(start\) must be a non-negative integer/);
    });
  });

  describe('scalar arguments', () => {
    const big = 2 ** 53; // beyond the integers a double holds exactly
    for (const [what, v] of [
      ['negative', -1],
      ['fractional', 1.5],
      ['NaN', NaN],
      ['Infinity', Infinity],
      ['2^53', big],
      ['a string', '1'],
    ] as Array<[string, unknown]>)
      it(`pos0 ${what}: a TypeError for rope, kvWrite and attention`, () => {
        throwsErr(() => n.rope(native.zeros([1, 1, 4]), v, 1e4, 'half'), TypeError, /^rope: argument 2 \(pos0\) must be a/);
        throwsErr(() => n.kvWrite(native.zeros([4, 1, 2]), native.zeros([1, 1, 2]), v), TypeError, /^kvWrite: argument 3 \(pos0\) must be a/);
        throwsErr(() => n.attention(native.zeros([1, 1, 2]), native.zeros([4, 1, 2]), native.zeros([4, 1, 2]), v), TypeError, /^attention: argument 4 \(pos0\) must be a/);
      });

    it('device, randomUniform and toDevice arguments: clear errors, nothing made', () => {
      throwsErr(() => n.zeros([2], 'f32', 'gpu'), TypeError, /^zeros: argument 3 \(device\) must be 'cpu' or 'cuda'/);
      throwsErr(() => n.toDevice(native.zeros([2])), TypeError, /^toDevice: argument 2 \(device\) must be 'cpu' or 'cuda'/);
      throwsErr(() => n.toDevice(null, 'cpu'), TypeError, /^toDevice: argument 1 \(x\) must be a Tensor/);
      throwsErr(() => native.randomUniform([2], 'i32', 'cpu', 1, 1), Error, /^randomUniform: dtype must be f32 or bf16/);
      throwsErr(() => native.randomUniform([2], 'f32', 'cpu', -1, 1), TypeError, /^randomUniform: argument 4 \(seed\) must be a non-negative integer/);
      throwsErr(() => native.randomUniform([2], 'f32', 'cpu', 1, NaN), TypeError, /^randomUniform: argument 5 \(scale\) must be a finite number/);
      throwsErr(() => native.randomUniform([1e12], 'f32', 'cpu', 1, 1), Error, /out of memory allocating f32\[1000000000000\]/);
      if (!native.capabilities().cuda.available) {
        // no GPU: asking for one is an Error that says why (never a crash), and memory reads as 0
        throwsErr(() => native.zeros([2], 'f32', 'cuda'), Error, /CUDA|cuda/);
        throwsErr(() => native.toDevice(native.zeros([2]), 'cuda'), Error, /CUDA|cuda/);
        expect(native.cudaMemory()).to.deep.equal({ inUse: 0, peak: 0, reserved: 0, allocator: '' });
      }
    });

    it('pos0 past the cache is an Error naming the positions and the cache length', () => {
      throwsErr(() => native.kvWrite(native.zeros([4, 2, 8]), native.zeros([2, 2, 8]), 3), Error, /^kvWrite: positions 3\.\.5 exceed the cache length 4/);
      throwsErr(() => native.kvWrite(native.zeros([4, 2, 8]), native.zeros([5, 2, 8]), 0), Error, /^kvWrite: positions 0\.\.5 exceed the cache length 4/);
      throwsErr(() => native.kvWrite(native.zeros([4, 2, 8]), native.zeros([1, 2, 8]), 2 ** 40), Error, /exceed the cache length 4/);
      throwsErr(() => native.attention(native.zeros([2, 4, 8]), native.zeros([4, 2, 8]), native.zeros([4, 2, 8]), 3), Error, /^attention: positions 3\.\.5 exceed the cache length 4/);
      throwsErr(() => native.attention(native.zeros([1, 4, 8]), native.zeros([4, 2, 8]), native.zeros([4, 2, 8]), 4), Error, /^attention: positions 4\.\.5 exceed the cache length 4/);
    });

    it('rope: bad theta and layout', () => {
      const x = () => native.zeros([1, 1, 4]);
      throwsErr(() => native.rope(x(), 0, 0, 'half'), Error, /^rope: theta must be > 0, got 0/);
      throwsErr(() => native.rope(x(), 0, -10000, 'half'), Error, /^rope: theta must be > 0/);
      throwsErr(() => native.rope(x(), 0, NaN, 'half'), TypeError, /^rope: argument 3 \(theta\) must be a finite number/);
      throwsErr(() => n.rope(x(), 0, 1e4, 'neox'), TypeError, /^rope: argument 4 \(layout\) must be 'interleaved' or 'half'/);
      throwsErr(() => n.rope(x(), 0, 1e4), TypeError, /^rope: argument 4 \(layout\) must be a string/);
      throwsErr(() => n.rope(x(), 0, 1e4, 1), TypeError, /^rope: argument 4 \(layout\) must be a string/);
    });

    it('rmsnorm: bad eps', () => {
      const w = native.zeros([2]);
      throwsErr(() => native.rmsnorm(x22(), w, -1e-5), Error, /^rmsnorm: eps must be >= 0/);
      throwsErr(() => native.rmsnorm(x22(), w, NaN), TypeError, /^rmsnorm: argument 3 \(eps\) must be a finite number/);
      throwsErr(() => n.rmsnorm(x22(), w, '1e-5'), TypeError, /^rmsnorm: argument 3 \(eps\) must be a number/);
    });

    it('setThreads: 0, negative, fractional, NaN, too many and non-numbers are refused; valid counts work', async () => {
      const before = native.capabilities().threads;
      for (const v of [0, -1, 1.5, NaN, Infinity, '2', undefined])
        throwsErr(() => n.setThreads(v), TypeError, /^setThreads: argument 1 \(n\) must be a/);
      throwsErr(() => native.setThreads(2000), Error, /^setThreads: n must be at most 1024, got 2000/);
      expect(native.capabilities().threads).to.equal(before);
      native.setThreads(1);
      expect(native.capabilities().threads).to.equal(1);
      native.setThreads(3);
      expect(native.capabilities().threads).to.equal(3);
      expect(Array.from(await native.matmul(x22(), x22()).read())).to.deep.equal([5, 11, 11, 25]);
      native.setThreads(before);
      expect(native.capabilities().threads).to.equal(before);
    });
  });

  describe('failures inside queued ops', () => {
    it('out-of-vocabulary token ids: read() rejects naming the id, and a later op still works', async () => {
      const table = f32([0, 1, 2, 3, 4, 5, 6, 7], [4, 2]);
      for (const [ids, id, pos] of [
        [[0, 1, 4], 4, 2],
        [[-1], -1, 0],
        [[3, 2 ** 31 - 1], 2147483647, 1],
      ] as Array<[number[], number, number]>) {
        const e = native.embedding(table, i32(ids));
        const err = await rejects(() => e.read(), new RegExp(`token id ${id} at position ${pos} is outside the vocabulary \\[0, 4\\)`));
        expect(err.message).to.match(/^embedding\(f32\[4, 2\], i32\[\d\]\)/); // names the op and shapes
        const ok = native.embedding(table, i32([3, 0]));
        expect(Array.from(await ok.read())).to.deep.equal([6, 7, 0, 1]);
      }
    });

    it('synchronize() rejects with the failure, then resolves again', async () => {
      const table = f32([1, 2], [1, 2]);
      native.embedding(table, i32([5]));
      await rejects(() => native.synchronize(), /token id 5 at position 0/);
      expect(await native.synchronize()).to.equal(undefined);
      expect(Array.from(await native.embedding(table, i32([0])).read())).to.deep.equal([1, 2]);
    });

    it('ops queued behind a failing op are not silently lost: their outputs read correctly or reject', async () => {
      // Queue a failing op, then good ops, before awaiting anything.
      const table = f32([1, 2, 3, 4], [2, 2]);
      const bad = native.embedding(table, i32([7]));
      const a = f32(new Float32Array(64 * 64).fill(1), [64, 64]);
      const y = native.matmul(a, a); // every element 64
      const acc = f32([1, 1], [2]);
      native.addInPlace(acc, f32([1, 1], [2]));
      await rejects(() => bad.read(), /token id 7/);
      for (const [t, want] of [
        [y, 64],
        [acc, 2],
      ] as Array<[Tensor, number]>) {
        let vals: Float32Array | undefined;
        try {
          vals = (await t.read()) as Float32Array;
        } catch (e) {
          expect(String(e)).to.match(/token id 7/); // rejecting with the cause is acceptable
        }
        if (vals) {
          const wrong = vals.findIndex((v) => v !== want);
          expect(wrong, `read resolved with garbage: element ${wrong} is ${vals[wrong]}, expected ${want}`).to.equal(-1);
        }
      }
    });

    it('a read queued before a failing op resolves with its value (the error goes to the failing op)', async () => {
      const table = f32([1, 2, 3, 4], [2, 2]);
      let goodRejected = 0;
      let badResolved = 0;
      for (let i = 0; i < 500; i++) {
        const good = f32([i, i + 1], [2]);
        const pGood = good.read();
        const pBad = native.embedding(table, i32([9])).read();
        const [rg, rb] = await Promise.allSettled([pGood, pBad]);
        if (rg.status === 'rejected') goodRejected++;
        else expect(Array.from(rg.value)).to.deep.equal([i, i + 1]);
        if (rb.status === 'fulfilled') badResolved++;
        await native.synchronize().catch(() => undefined);
      }
      expect({ goodRejected, badResolved }).to.deep.equal({ goodRejected: 0, badResolved: 0 });
    });

    it('setThreads queued behind an unconsumed failure still takes effect', async () => {
      const before = native.capabilities().threads;
      const target = before === 1 ? 2 : 1;
      const bad = native.embedding(f32([1, 2], [1, 2]), i32([3]));
      try {
        native.setThreads(target);
        expect(native.capabilities().threads).to.equal(target);
      } finally {
        await bad.read().catch(() => undefined);
        native.setThreads(before);
      }
    });
  });

  describe('files', () => {
    it('mapFile of a missing file, a directory, or a non-string is a clear error', () => {
      const missing = path.join(tmp, 'no-such-file.bin');
      throwsErr(() => native.mapFile(missing), Error, new RegExp(`^cannot open ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: No such file`));
      throwsErr(() => native.mapFile(tmp), Error, /^cannot map .*: not a regular file/);
      throwsErr(() => n.mapFile(42), TypeError, /^mapFile: argument 1 \(path\) must be a string/);
    });

    it('fromFile: bounds are checked at once and name the tensor, offset and sizes', () => {
      const p = writeFile('sixteen.f32', new Float32Array([1, 2, 3, 4]));
      const map = native.mapFile(p);
      expect(map.size).to.equal(16);
      expect(map.path).to.equal(p);
      throwsErr(() => native.fromFile(map, 4, [4], 'f32', 'f32', 'w'), Error, /is truncated: tensor w, a f32\[4\] tensor at byte 4 needs 16 bytes but the file has 16/);
      throwsErr(() => native.fromFile(map, 0, [5], 'f32', 'f32'), Error, /is truncated: a f32\[5\] tensor at byte 0 needs 20 bytes/);
      throwsErr(() => native.fromFile(map, 17, [1], 'bf16', 'bf16'), Error, /is truncated/);
      throwsErr(() => native.fromFile(map, 2 ** 52, [1], 'f32', 'f32'), Error, /is truncated/);
      throwsErr(() => native.fromFile(map, 0, [2 ** 32, 2 ** 32], 'f32', 'f32'), Error, /too large|truncated/);
      throwsErr(() => native.fromFile(map, -4, [1], 'f32', 'f32'), TypeError, /^fromFile: argument 2 \(byteOffset\) must be a non-negative integer/);
      throwsErr(() => native.fromFile(map, 1.5, [1], 'f32', 'f32'), TypeError, /argument 2 \(byteOffset\)/);
      throwsErr(() => n.fromFile(map, 0, [1], 'f64' as never, 'f32'), TypeError, /^fromFile: argument 4 \(fileDtype\) must be 'f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_k', 'q5_k' or 'q6_k'/);
      throwsErr(() => native.fromFile(map, 0, [1], 'f32', 'i32'), Error, /weights load as f32 or bf16/);
      throwsErr(() => n.fromFile(map, 0, [1], 'f32', 'f32', 7), TypeError, /argument 6 \(name\) must be a string/);
      map.close();
      throwsErr(() => native.fromFile(map, 0, [1], 'f32', 'f32'), Error, /^fromFile: the mapping of .* was closed/);
      const empty = native.mapFile(writeFile('empty.bin', new Uint8Array(0)));
      expect(empty.size).to.equal(0);
      throwsErr(() => native.fromFile(empty, 0, [1], 'f32', 'f32'), Error, /is truncated/);
    });

    it('fromFile loads f32/f16/bf16 correctly (aligned views and unaligned copies) and outlives close()', async () => {
      const buf = new Uint8Array(64);
      const dv = new DataView(buf.buffer);
      [1, -2, 0.5, 3].forEach((v, i) => dv.setFloat32(i * 4, v, true)); // f32 at 0
      [0x3c00, 0xc000, 0x0001, 0x7bff].forEach((h, i) => dv.setUint16(16 + i * 2, h, true)); // f16 at 16
      [0x3f80, 0xc040, 0x4049].forEach((h, i) => dv.setUint16(25 + i * 2, h, true)); // bf16 at odd 25
      const map = native.mapFile(writeFile('mixed.bin', buf));
      const a = native.fromFile(map, 0, [2, 2], 'f32', 'f32', 'a');
      const b = native.fromFile(map, 16, [4], 'f16', 'f32', 'b');
      const c = native.fromFile(map, 25, [3], 'bf16', 'bf16', 'c');
      const c32 = native.fromFile(map, 25, [3], 'bf16', 'f32', 'c32');
      const a16 = native.fromFile(map, 0, [4], 'f32', 'bf16');
      map.close(); // the tensors keep the mapping alive
      expect(Array.from(await a.read())).to.deep.equal([1, -2, 0.5, 3]);
      expect(Array.from(await b.read())).to.deep.equal([1, -2, 2 ** -24, 65504]);
      expect(c.dtype).to.equal('bf16');
      expect(Array.from(await c.read())).to.deep.equal([1, -3, ref.bf16Value(0x4049)]);
      expect(Array.from(await c32.read())).to.deep.equal([1, -3, ref.bf16Value(0x4049)]);
      expect(Array.from(await a16.read())).to.deep.equal([1, -2, 0.5, 3]);
      const y = native.matmul(f32([1, 1], [1, 2]), a);
      expect(Array.from(await y.read())).to.deep.equal([-1, 3.5]);
    });

    it('a NaN or Inf in a weight fails the load at read(), naming the tensor; later ops work', async () => {
      const p = writeFile('nan.f32', new Float32Array([1, NaN, 3, Infinity]));
      const map = native.mapFile(p);
      const t = native.fromFile(map, 0, [4], 'f32', 'f32', 'layers.0.w');
      await rejects(() => t.read(), /layers\.0\.w.*non-finite value \(NaN or Inf\) at element 1/);
      // synchronize() reports the first failure since its previous call: the load of t
      await rejects(() => native.synchronize(), /layers\.0\.w.*non-finite value/);
      expect(await native.synchronize()).to.equal(undefined);
      const u = native.fromFile(map, 12, [1], 'f32', 'bf16', 'inf.w'); // a converting (non-view) load
      expect(u.dtype).to.equal('bf16');
      await rejects(() => u.read(), /inf\.w.*non-finite value \(NaN or Inf\) at element 0/);
      // ops that consume a failed load pass its error on instead of computing on garbage
      const y = native.matmul(f32([1, 1, 1, 1], [1, 4]), native.reshape(t, [1, 4]));
      await rejects(() => y.read(), /layers\.0\.w.*non-finite value/);
      await native.synchronize().catch(() => undefined);
      expect(Array.from(await native.fromFile(map, 0, [1], 'f32', 'f32').read())).to.deep.equal([1]);
      map.close();
    });
  });

  describe('in a child process (the process survives and exits 0)', () => {
    it('a barrage of bad calls', () => {
      const r = child(`
        const bad = [
          () => n.matmul(), () => n.matmul(1, 2), () => n.matmul({}, {}), () => n.matmul(null, undefined),
          () => n.zeros([-1]), () => n.zeros([NaN]), () => n.zeros([1e300]), () => n.zeros([2 ** 30, 2 ** 30]),
          () => n.fromArray(new Float64Array(2), [2]), () => n.fromArray(new Float32Array(3), [2]),
          () => n.matmul(n.zeros([2, 2]), n.zeros([2, 2], 'i32')), () => n.matmul(n.zeros([2, 3]), n.zeros([2, 2])),
          () => n.attention(n.zeros([1, 2, 4]), n.zeros([2, 2, 4]), n.zeros([2, 2, 4]), 5),
          () => n.kvWrite(n.zeros([2, 2, 4]), n.zeros([1, 2, 4]), 2), () => n.rope(n.zeros([1, 1, 4]), -1, 1e4, 'half'),
          () => n.setThreads(0), () => n.mapFile('/definitely/not/here'), () => n.mapFile('/'),
          () => n.matmul(Object.create(n.Tensor.prototype), n.zeros([1, 1])), () => n.Tensor.prototype.read.call(42),
          () => n.Tensor.prototype.dispose.call({}), () => n.FileMapping.prototype.close.call({}),
          () => new n.Tensor().read(),
        ];
        let errors = 0;
        for (const f of bad) { try { f(); } catch (e) { if (!(e instanceof Error)) throw new Error('non-Error thrown'); errors++; } }
        if (errors !== bad.length) throw new Error('only ' + errors + ' of ' + bad.length + ' threw');
        const t = n.embedding(n.zeros([2, 2]), n.fromArray(new Int32Array([0, 99]), [2]));
        try { await t.read(); throw new Error('resolved'); } catch (e) { if (!/token id 99/.test(e.message)) throw e; }
        const y = await n.matmul(n.fromArray(new Float32Array([1, 2]), [1, 2]), n.fromArray(new Float32Array([3, 4]), [1, 2])).read();
        if (y[0] !== 11) throw new Error('matmul after errors gave ' + y[0]);
      `);
      expectSurvived(r);
    });

    it('disposing tensors with ops in flight', () => {
      const r = child(`
        const a = n.fromArray(new Float32Array(256 * 256).fill(1), [256, 256]);
        const outs = [];
        for (let i = 0; i < 20; i++) outs.push(n.matmul(a, a));
        a.dispose(); a.dispose();
        const v = await outs[19].read();
        if (v[0] !== 256) throw new Error('got ' + v[0]);
        for (const o of outs) o.dispose();
        await n.synchronize();
      `);
      expectSurvived(r);
    });

    it('exiting while BLAS-backed ops are still queued does not hang (4 children at once)', async () => {
      // Each child queues ~1 s of sgemm work and lets node exit without awaiting it.
      const body = `
        const A = n.fromArray(new Float32Array(512 * 512).fill(1), [512, 512]);
        for (let i = 0; i < 20; i++) n.matmul(A, A);
      `;
      const results = await Promise.all([0, 1, 2, 3].map(() => childAsync(body)));
      const hung = results.filter((r) => r.timedOut).length;
      expect(hung, `${hung} of 4 children hung at exit`).to.equal(0);
      results.forEach(expectSurvived);
    });

    // A tensor made by fromFile without conversion is a view of a read-only mapping; the in-place
    // ops must refuse it (or copy on write), never write into read-only memory.
    for (const [op, call] of [
      ['addInPlace', 'n.addInPlace(v, n.fromArray(new Float32Array([1, 1, 1, 1]), [1, 1, 4]))'],
      ['kvWrite', 'n.kvWrite(v, n.fromArray(new Float32Array([1, 1, 1, 1]), [1, 1, 4]), 0)'],
      ['rope', "n.rope(v, 1, 10000, 'interleaved')"],
    ])
      it(`${op} into a tensor that views a mapped file is refused or copied, not a crash`, () => {
        const p = writeFile(`view-${op}.f32`, new Float32Array([1, 2, 3, 4]));
        const r = child(`
          const map = n.mapFile(${JSON.stringify(p)});
          const v = n.fromFile(map, 0, [1, 1, 4], 'f32', 'f32', 'w');
          await v.read();
          try { ${call}; await v.read(); } catch (e) { console.log('refused: ' + e.message); }
          await n.synchronize().catch(() => {});
        `);
        expectSurvived(r);
        // and the file itself is never modified
        expect(Array.from(new Float32Array(new Uint8Array(fs.readFileSync(p)).buffer))).to.deep.equal([1, 2, 3, 4]);
      });
  });
});
