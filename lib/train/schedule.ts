// The learning-rate schedule of the paper's recipe (SPEC §4), per optimiser step: linear warmup
// to the peak, then half a cosine cycle down to 0 at the last step.
import type { TrainConfig } from './config';

export interface ScheduleOptions {
  peakLr: number;
  totalSteps: number;
  warmupSteps: number;
  kind: 'cosine' | 'constant';
}

/** The learning rate of step `step` (0-based). Warmup reaches the peak at step warmupSteps - 1. */
export function learningRate(step: number, o: ScheduleOptions): number {
  if (o.kind === 'constant') return o.peakLr;
  if (step < o.warmupSteps) return (o.peakLr * (step + 1)) / o.warmupSteps;
  const decay = Math.max(1, o.totalSteps - o.warmupSteps);
  const progress = Math.min(1, (step - o.warmupSteps) / decay);
  return o.peakLr * 0.5 * (1 + Math.cos(Math.PI * progress));
}

/** Peak lr from the base lr: blr * effective batch / 256 (the paper's scaling rule). */
export function peakFromBase(blr: number, effectiveBatch: number): number {
  return (blr * effectiveBatch) / 256;
}

/**
 * A run's schedule from its settings: --max-steps, or --epochs of `batchesPerEpoch` batches at
 * --grad-accum batches a step; the peak --lr, or --blr scaled by the effective batch; the warmup
 * --warmup-steps, or --warmup-epochs in steps.
 */
export function runSchedule(
  c: Pick<TrainConfig, 'grad-accum' | 'max-steps' | 'epochs' | 'lr' | 'blr' | 'batch-size' | 'warmup-steps' | 'warmup-epochs' | 'schedule'>,
  batchesPerEpoch: number,
): ScheduleOptions {
  const A = c['grad-accum'];
  const stepsPerEpoch = batchesPerEpoch / A;
  const totalSteps = c['max-steps'] ?? Math.ceil((c.epochs * batchesPerEpoch) / A);
  return {
    peakLr: c.lr ?? peakFromBase(c.blr, c['batch-size'] * A),
    totalSteps,
    warmupSteps: c['warmup-steps'] ?? Math.round(c['warmup-epochs'] * stepsPerEpoch),
    kind: c.schedule,
  };
}
