// Small helpers shared by the op tests: making tensors, reading them, and asserting errors.
import { expect } from 'chai';
import { native, Tensor } from '../../lib/native';

export function f32(data: ArrayLike<number>, shape: number[]): Tensor {
  return native.fromArray(Float32Array.from(data), shape);
}

export function i32(data: ArrayLike<number>, shape?: number[]): Tensor {
  return native.fromArray(Int32Array.from(data), shape ?? [data.length]);
}

export async function readF(t: Tensor): Promise<Float32Array> {
  const v = await t.read();
  expect(v).to.be.instanceOf(Float32Array);
  return v as Float32Array;
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** The bit patterns of a Float32Array, for bit-exact comparisons. */
export function bits(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

export function throwsErr(fn: () => unknown, ctor: typeof Error | typeof TypeError, re: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${ctor.name} matching ${re}`).to.be.instanceOf(ctor);
  expect((err as Error).message).to.match(re);
}

export async function rejects(p: () => Promise<unknown>, re: RegExp): Promise<Error> {
  let err: unknown;
  try {
    await p();
  } catch (e) {
    err = e;
  }
  expect(err, `expected a rejection matching ${re}`).to.be.instanceOf(Error);
  expect((err as Error).message).to.match(re);
  return err as Error;
}
