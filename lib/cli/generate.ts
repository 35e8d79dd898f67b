// llama-adapter generate --model PATH [--tokenizer PATH] --prompt TEXT [--max-tokens N]
//                        [--temperature T] [--top-p P] [--seed S] [--dtype f32|bf16] [--threads N]
import { native } from '../native';
import { generate } from '../generate/generate';
import { promptOf } from '../data/alpaca';
import { Adapter } from '../model/adapter';
import { Llama } from '../model/llama';
import { loadTokenizer } from '../tokenizer';
import { numberFlag, parseFlags, requireString, stringFlag, UsageError } from './args';

export const usage = `Usage: llama-adapter generate --model PATH [--tokenizer PATH] --prompt TEXT [options]
       llama-adapter generate --model PATH --adapter FILE --instruction TEXT [--input TEXT] [options]

Streams the continuation of the prompt (not the prompt) to stdout.

  --model PATH         llama2.c .bin file or Hugging Face folder
  --tokenizer PATH     tokenizer.model or tokenizer.bin (default: found beside the model)
  --adapter FILE       an adapter.safetensors to apply
  --prompt TEXT        the prompt (may be empty: generation starts from BOS)
  --instruction TEXT   instead of --prompt: an instruction in the Alpaca template (SPEC §3)
  --input TEXT         the instruction's input, if any
  --max-tokens N       most new tokens (default 512, bounded by the context length)
  --temperature T      0 = greedy (default 0.1)
  --top-p P            nucleus mass in (0, 1] (default 0.75)
  --seed S             sampling seed; the same seed gives the same text (default: random)
  --dtype f32|bf16     storage of the frozen weights (default f32)
  --threads N          CPU threads (default: all cores)`;

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const { values } = parseFlags(
    argv,
    {
      model: { type: 'string' },
      tokenizer: { type: 'string' },
      adapter: { type: 'string' },
      prompt: { type: 'string' },
      instruction: { type: 'string' },
      input: { type: 'string' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string' },
      dtype: { type: 'string' },
      threads: { type: 'string' },
    },
    usage,
  );
  if (values.help) {
    out.write(usage + '\n');
    return;
  }
  const modelPath = requireString(values, 'model', usage);
  const instruction = stringFlag(values, 'instruction');
  if (instruction !== undefined && stringFlag(values, 'prompt') !== undefined)
    throw new UsageError('give either --prompt or --instruction, not both');
  if (instruction === undefined && stringFlag(values, 'input') !== undefined) throw new UsageError('--input needs --instruction');
  const prompt =
    instruction !== undefined ? promptOf({ instruction, input: stringFlag(values, 'input'), output: '' }) : stringFlag(values, 'prompt');
  if (prompt === undefined) throw new UsageError(`--prompt (or --instruction) is required\n\n${usage}`);
  const dtype = stringFlag(values, 'dtype') ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'bf16') throw new UsageError(`--dtype must be f32 or bf16, got '${dtype}'`);
  const threads = numberFlag(values, 'threads', { integer: true, min: 1 });
  const opts = {
    maxTokens: numberFlag(values, 'max-tokens', { integer: true, min: 0 }),
    temperature: numberFlag(values, 'temperature', { min: 0 }),
    topP: numberFlag(values, 'top-p', { min: 0, max: 1, minExclusive: true }),
    seed: numberFlag(values, 'seed', { integer: true, min: 0, max: 0xffffffff }),
  };
  if (threads) native.setThreads(threads);

  const model = await Llama.load(modelPath, { dtype });
  try {
    const tokPath = stringFlag(values, 'tokenizer') ?? model.checkpoint.tokenizerPath;
    if (!tokPath)
      throw new UsageError(`no tokenizer found beside ${modelPath}; pass --tokenizer PATH (tokenizer.model or tokenizer.bin)`);
    const tokenizer = loadTokenizer(tokPath);
    const adapterPath = stringFlag(values, 'adapter');
    if (adapterPath) model.setAdapter(Adapter.load(adapterPath, model.config));
    for await (const piece of generate(model, tokenizer, prompt, opts)) out.write(piece);
    out.write('\n');
  } finally {
    model.attachedAdapter?.dispose();
    model.dispose();
  }
}
