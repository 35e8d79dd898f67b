// The all-reduce time of a LLaMA-7B adapter's gradients (30 prompts (10, 4096) and 30 per-head
// gates (32)), as nccl-check and the GPU check report it: 25 collectives, the first 5 as warm-up,
// the median of the rest, inside the communicator (its own clock) and as the caller waits.
import { native, Tensor } from '../lib/native';

export interface AllreduceTiming {
  floats: number;
  allreduceMs: number;
  allreduceWallMs: number;
}

/** Times native.allreduceSum on `grads` (not disposed here). */
export async function timeAllreduce(grads: Tensor[]): Promise<AllreduceTiming> {
  const floats = grads.reduce((s, g) => s + g.shape.reduce((a, b) => a * b, 1), 0);
  const wall: number[] = [];
  const inside: number[] = [];
  for (let i = 0; i < 25; i++) {
    const s0 = native.commInfo().stats.seconds;
    const t0 = process.hrtime.bigint();
    await native.allreduceSum(grads);
    wall.push(Number(process.hrtime.bigint() - t0) / 1e6);
    inside.push((native.commInfo().stats.seconds - s0) * 1e3);
  }
  const median = (a: number[]) => a.slice(5).sort((x, y) => x - y)[(a.length - 5) >> 1];
  return { floats, allreduceMs: median(inside), allreduceWallMs: median(wall) };
}
