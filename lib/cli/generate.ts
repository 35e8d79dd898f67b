// llama-adapter generate --model PATH [--tokenizer PATH] --prompt TEXT [--max-tokens N]
//                        [--temperature T] [--top-p P] [--seed S] [--dtype f32|bf16] [--device cuda|cpu]
//                        [--threads N]
import { generate } from '../generate/generate';
import { promptOf } from '../data/alpaca';
import { numberFlag, parseFlags, stringFlag, UsageError } from './args';
import { modelFlagSpec, modelFlagUsage, openModel } from './model-flags';

export const usage = `Usage: llama-adapter generate --model PATH [--tokenizer PATH] --prompt TEXT [options]
       llama-adapter generate --model PATH --adapter FILE --instruction TEXT [--input TEXT] [options]

Streams the continuation of the prompt (not the prompt) to stdout.

  --model PATH         llama2.c .bin file, Hugging Face folder or GGUF file (llama;
                       F32/F16/BF16/Q8_0/Q4_0/Q4_K/Q5_K/Q6_K, quantized weights kept quantized)
  --tokenizer PATH     tokenizer.model or tokenizer.bin (default: a GGUF's own vocabulary,
                       else found beside the model)
  --adapter FILE       an adapter.safetensors to apply
  --prompt TEXT        the prompt (may be empty: generation starts from BOS)
  --instruction TEXT   instead of --prompt: an instruction in the Alpaca template (SPEC §3)
  --input TEXT         the instruction's input, if any
  --max-tokens N       most new tokens (default 512, bounded by the context length)
  --temperature T      0 = greedy (default 0.1)
  --top-p P            nucleus mass in (0, 1] (default 0.75)
  --seed S             sampling seed; the same seed gives the same text (default: random)
${modelFlagUsage}`;

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const { values } = parseFlags(
    argv,
    {
      ...modelFlagSpec,
      prompt: { type: 'string' },
      instruction: { type: 'string' },
      input: { type: 'string' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string' },
    },
    usage,
  );
  if (values.help) {
    out.write(usage + '\n');
    return;
  }
  const instruction = stringFlag(values, 'instruction');
  if (instruction !== undefined && stringFlag(values, 'prompt') !== undefined)
    throw new UsageError('give either --prompt or --instruction, not both');
  if (instruction === undefined && stringFlag(values, 'input') !== undefined) throw new UsageError('--input needs --instruction');
  const prompt =
    instruction !== undefined ? promptOf({ instruction, input: stringFlag(values, 'input'), output: '' }) : stringFlag(values, 'prompt');
  if (prompt === undefined) throw new UsageError(`--prompt (or --instruction) is required\n\n${usage}`);
  const opts = {
    maxTokens: numberFlag(values, 'max-tokens', { integer: true, min: 0 }),
    temperature: numberFlag(values, 'temperature', { min: 0 }),
    topP: numberFlag(values, 'top-p', { min: 0, max: 1, minExclusive: true }),
    seed: numberFlag(values, 'seed', { integer: true, min: 0, max: 0xffffffff }),
  };
  const { model, tokenizer, adapter, close } = await openModel(values, usage);
  try {
    model.setAdapter(adapter);
    for await (const piece of generate(model, tokenizer, prompt, opts)) out.write(piece);
    out.write('\n');
  } finally {
    close();
  }
}
