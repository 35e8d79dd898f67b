// The flags every command that runs a model shares: --model --tokenizer --adapter --dtype --device
// --threads --matmul-precision --no-mmap.
import { native } from '../native';
import { DEVICES, resolveDevice } from '../device';
import { Adapter } from '../model/adapter';
import { Llama } from '../model/llama';
import { Tokenizer } from '../tokenizer';
import { FlagSpec, Flags, numberFlag, requireString, stringFlag, UsageError } from './args';

export const modelFlagSpec: FlagSpec = {
  model: { type: 'string' },
  tokenizer: { type: 'string' },
  adapter: { type: 'string' },
  dtype: { type: 'string' },
  device: { type: 'string' },
  threads: { type: 'string' },
  'matmul-precision': { type: 'string' },
  'no-mmap': { type: 'boolean' },
};

/** The usage lines of --matmul-precision (every command with --dtype), text at column `column`. */
export function matmulPrecisionUsage(column = 23): string {
  const pad = ' '.repeat(column);
  return [
    '  --matmul-precision highest|medium',
    `${pad}CPU products with bf16 weights: highest keeps the activations f32 (exact,`,
    `${pad}default); medium rounds them to bf16 as CUDA does, about 2x faster on CPUs`,
    `${pad}with AVX512-BF16`,
  ].join('\n');
}

/** Applies --matmul-precision (process-wide: native.setMatmulPrecision); `dtype` is the weights'
 *  storage, for the warning that medium changes nothing over f32 weights. */
export function applyMatmulPrecision(values: Flags, dtype: string): void {
  const p = stringFlag(values, 'matmul-precision');
  if (p === undefined) return;
  if (p !== 'highest' && p !== 'medium') throw new UsageError(`--matmul-precision must be highest or medium, got '${p}'`);
  if (p === 'medium' && dtype === 'f32')
    process.stderr.write('warning: --matmul-precision medium applies to bf16 weights only; with --dtype f32 the products stay f32\n');
  native.setMatmulPrecision(p);
}

/** The usage lines of --dtype, --device and --threads (the same in every command). */
export const modelFlagUsage = `  --dtype f32|bf16     storage of the frozen weights (default f32; a GGUF's quantized weights stay quantized)
  --device cuda|cpu    where to compute (default: cuda when a GPU is available, else cpu)
  --threads N          CPU threads (default: all cores)
${matmulPrecisionUsage()}
  --no-mmap            read the model file into memory instead of mapping it (when the file may
                       change while this runs: a mapped file cut short ends the process, SIGBUS)`;

export interface OpenModel {
  model: Llama;
  tokenizer: Tokenizer;
  adapter?: Adapter;
  /** disposes the adapter and the model */
  close(): void;
}

/** Validates the model flags, then loads the model, its tokenizer and the adapter (if any). */
export async function openModel(values: Flags, usage: string): Promise<OpenModel> {
  const modelPath = requireString(values, 'model', usage);
  const dtype = stringFlag(values, 'dtype') ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'bf16') throw new UsageError(`--dtype must be f32 or bf16, got '${dtype}'`);
  const requested = stringFlag(values, 'device');
  if (requested !== undefined && !(DEVICES as string[]).includes(requested))
    throw new UsageError(`--device must be cuda or cpu, got '${requested}'`);
  const device = resolveDevice(requested, '--device');
  const threads = numberFlag(values, 'threads', { integer: true, min: 1 });
  if (threads) native.setThreads(threads);
  applyMatmulPrecision(values, dtype);
  const model = await Llama.load(modelPath, {
    dtype,
    device,
    mmap: values['no-mmap'] !== true,
    onProgress: (m) => process.stderr.write(m + '\n'),
  });
  try {
    const tokenizer = model.loadTokenizer(stringFlag(values, 'tokenizer'));
    const adapterPath = stringFlag(values, 'adapter');
    const adapter = adapterPath ? Adapter.load(adapterPath, model.config, model.device) : undefined;
    return {
      model,
      tokenizer,
      adapter,
      close: () => {
        adapter?.dispose();
        model.dispose();
      },
    };
  } catch (err) {
    model.dispose();
    throw err;
  }
}
