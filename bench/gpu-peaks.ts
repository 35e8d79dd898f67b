// The peaks the GPU check divides by (MFU: dense bf16 tensor-core FLOP/s; the decode bound: memory
// bandwidth), keyed by the GPU's name as the device reports it (nvidia-smi, cudaGetDeviceProperties).
// Datasheet figures, leads rather than measurements. A GPU not in the table gets an estimate from
// its own attributes where the per-SM rate of its architecture is known (marked as an estimate),
// else "unknown": no MFU, no bound. No native addon here: the report runs when the build failed.
import type { CudaDeviceAttributes } from '../lib/native';

export interface GpuPeakEntry {
  /** the model, as printed */
  model: string;
  /** does a device name belong to this model */
  matches: (name: string) => boolean;
  /** dense bf16 tensor-core rate, FLOP/s (the datasheet's sparse figure / 2) */
  bf16Flops: number;
  /** memory bandwidth, bytes/s */
  bandwidth: number;
}

const has = (name: string, ...words: string[]) => words.every((w) => new RegExp(`\\b${w}\\b`, 'i').test(name));

/** NVIDIA's datasheets: H100 (SXM5, PCIe, NVL) and H200 (SXM, NVL). The NVL and PCIe names are
 *  tested first; an H100 named only "H100 80GB HBM3" is the SXM5 part. */
export const GPU_PEAKS: readonly GpuPeakEntry[] = [
  { model: 'H200 NVL', matches: (n) => has(n, 'H200', 'NVL'), bf16Flops: 835.5e12, bandwidth: 4.8e12 },
  { model: 'H200 SXM', matches: (n) => has(n, 'H200'), bf16Flops: 989.4e12, bandwidth: 4.8e12 },
  { model: 'H100 NVL', matches: (n) => has(n, 'H100', 'NVL'), bf16Flops: 835.5e12, bandwidth: 3.9e12 },
  { model: 'H100 PCIe', matches: (n) => has(n, 'H100', 'PCIe'), bf16Flops: 756.5e12, bandwidth: 2.0e12 },
  { model: 'H100 SXM', matches: (n) => has(n, 'H100') && (has(n, 'SXM5') || has(n, 'SXM') || has(n, 'HBM3')), bf16Flops: 989.4e12, bandwidth: 3.35e12 },
];

/** Dense bf16 FLOP per clock per SM of the architectures whose rate is one number: A100 (sm_80)
 *  and Hopper (sm_90). Others (sm_86, sm_89: the rate depends on the product) get no estimate. */
export const BF16_FLOP_PER_CLOCK_PER_SM: Readonly<Record<number, number>> = { 80: 2048, 90: 4096 };

export interface GpuPeaks {
  /** the device's name as read on the device ('' when none was read) */
  gpu: string;
  /** the table's model, when the name matched one */
  model?: string;
  bf16Flops?: number;
  bandwidth?: number;
  source: 'datasheet' | 'estimate' | 'unknown';
  /** how the figures were found, printed beside them */
  note: string;
}

/**
 * The peaks for a GPU by its name; when the name is not in GPU_PEAKS, an estimate from its
 * attributes: bandwidth = 2 (double data rate) x memory clock x bus width / 8, bf16 = SMs x SM
 * clock x the architecture's rate per SM (each only when the attributes give it).
 */
export function gpuPeaks(name: string, attrs?: Partial<CudaDeviceAttributes>): GpuPeaks {
  const gpu = name.trim();
  if (/\bMIG\b/i.test(gpu))
    return { gpu, source: 'unknown', note: `${gpu} is a MIG slice: the whole GPU's peaks do not apply (no MFU, no bound)` };
  const e = gpu ? GPU_PEAKS.find((p) => p.matches(gpu)) : undefined;
  if (e)
    return {
      gpu,
      model: e.model,
      bf16Flops: e.bf16Flops,
      bandwidth: e.bandwidth,
      source: 'datasheet',
      note: `${e.model} datasheet: ${(e.bf16Flops / 1e12).toFixed(1)} TFLOP/s dense bf16, ${(e.bandwidth / 1e12).toFixed(2)} TB/s`,
    };
  const a = attrs ?? {};
  const perSm = a.sm ? BF16_FLOP_PER_CLOCK_PER_SM[a.sm] : undefined;
  const bf16Flops = perSm && a.multiprocessors && a.clockKHz ? a.multiprocessors * a.clockKHz * 1e3 * perSm : undefined;
  const bandwidth = a.memoryClockKHz && a.memoryBusBits ? (2 * a.memoryClockKHz * 1e3 * a.memoryBusBits) / 8 : undefined;
  const label = gpu || 'an unnamed GPU';
  if (bf16Flops === undefined && bandwidth === undefined)
    return { gpu, source: 'unknown', note: `${label} is not in the peak table and its attributes give no estimate: peaks unknown (no MFU, no bound)` };
  const parts = [
    bf16Flops !== undefined
      ? `${(bf16Flops / 1e12).toFixed(1)} TFLOP/s dense bf16 = ${a.multiprocessors} SMs x ${(a.clockKHz! / 1e3).toFixed(0)} MHz x ${perSm} (sm_${a.sm})`
      : `bf16 unknown (no per-SM rate for sm_${a.sm ?? '?'})`,
    bandwidth !== undefined
      ? `${(bandwidth / 1e12).toFixed(2)} TB/s = 2 x ${(a.memoryClockKHz! / 1e3).toFixed(0)} MHz x ${a.memoryBusBits} bits`
      : 'bandwidth unknown',
  ];
  return { gpu, bf16Flops, bandwidth, source: 'estimate', note: `ESTIMATE from ${label}'s attributes (not in the peak table): ${parts.join('; ')}` };
}

/** The machine kinds a device call may name, and the GPU each should give. */
export const DEVICE_KINDS = { 'nvidia-h100-x1': 'H100', 'nvidia-h200': 'H200' } as const;
export type DeviceKind = keyof typeof DEVICE_KINDS;
