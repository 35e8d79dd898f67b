// llama-adapter generate --model PATH [--tokenizer PATH] --prompt TEXT [--max-tokens N]
//                        [--temperature T] [--top-p P] [--seed S] [--dtype f32|bf16] [--device cuda|cpu]
//                        [--threads N]
import { generate } from '../generate/generate';
import { promptOf } from '../data/alpaca';
import { numberFlag, parseFlags, stringFlag, UsageError } from './args';
import { modelFlagSpec, modelFlagUsage, openModel } from './model-flags';
import { imageFlagSpec, imageFlagUsage, openAdapterImages } from './image-flags';

export const usage = `Usage: llama-adapter generate --model PATH [--tokenizer PATH] --prompt TEXT [options]
       llama-adapter generate --model PATH --adapter FILE --instruction TEXT [--input TEXT] [options]

Streams the continuation of the prompt (not the prompt) to stdout.

  --model PATH         llama2.c .bin file, Hugging Face folder, Meta .pth folder (params.json) or
                       GGUF file (llama; F32/F16/BF16/Q8_0/Q4_0/Q4_K/Q5_K/Q6_K, quantized weights
                       kept quantized)
  --tokenizer PATH     tokenizer.model or tokenizer.bin (default: a GGUF's own vocabulary,
                       else found beside the model)
  --adapter FILE       an adapter.safetensors, or an official LLaMA-Adapter .pth, to apply
  --prompt TEXT        the prompt (may be empty: generation starts from BOS)
  --instruction TEXT   instead of --prompt: an instruction in the Alpaca template (SPEC §3)
  --input TEXT         the instruction's input, if any
  --max-tokens N       most new tokens (default 512, bounded by the context length)
  --temperature T      0 = greedy (default 0.1)
  --top-p P            nucleus mass in (0, 1] (default 0.75)
  --seed S             sampling seed; the same seed gives the same text (default: random)
  --image KEY-or-PATH  with an image-conditioned adapter: the image (a key of --image-features, or a
                       path under --image-root for --encoder); its prompts are computed once
${imageFlagUsage}
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
      image: { type: 'string' },
      ...imageFlagSpec,
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
  const image = stringFlag(values, 'image');
  if (image !== undefined && stringFlag(values, 'image-features') === undefined && stringFlag(values, 'encoder') === undefined)
    throw new UsageError('--image needs --image-features FILE or --encoder DIR (and an image-conditioned --adapter)');
  const { model, tokenizer, adapter, close } = await openModel(values, usage);
  try {
    const source = await openAdapterImages(values, adapter, stringFlag(values, 'adapter'), undefined, model.device);
    try {
      if (source && image !== undefined) {
        const why = source.check(image);
        if (why) throw new UsageError(`--image: ${why}`);
      }
      model.setAdapter(adapter, source && image !== undefined ? { imageFeatures: await source.get(image) } : {});
    } finally {
      source?.close();
    }
    for await (const piece of generate(model, tokenizer, prompt, opts)) out.write(piece);
    out.write('\n');
  } finally {
    close();
  }
}
