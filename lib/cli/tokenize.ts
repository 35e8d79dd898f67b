// llama-adapter tokenize (--tokenizer PATH | --model M.gguf) TEXT  ->  the ids as a JSON array (no BOS)
import * as fs from 'fs';
import { loadTokenizer } from '../tokenizer';
import { isGguf } from '../model/gguf';
import { parseFlags, stringFlag, UsageError } from './args';

export const usage = `Usage: llama-adapter tokenize (--tokenizer PATH | --model M.gguf) TEXT

Prints the token ids of TEXT as a JSON array (no BOS).

  --tokenizer PATH     tokenizer.model (SentencePiece), tokenizer.bin (llama2.c) or a GGUF file
  --model M.gguf       a GGUF model: the vocabulary in its metadata (only the header is read)`;

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const { values, positionals } = parseFlags(argv, { tokenizer: { type: 'string' }, model: { type: 'string' } }, usage);
  if (values.help) {
    out.write(usage + '\n');
    return;
  }
  const tokenizer = stringFlag(values, 'tokenizer');
  const model = stringFlag(values, 'model');
  if ((tokenizer === undefined) === (model === undefined)) throw new UsageError(`give exactly one of --tokenizer and --model\n\n${usage}`);
  // (a missing or unreadable file is loadTokenizer's error)
  if (model !== undefined && fs.existsSync(model) && fs.statSync(model).isFile() && !isGguf(model))
    throw new UsageError(`--model ${model} is not a GGUF file; tokenize reads only a GGUF's own vocabulary (for other checkpoints pass --tokenizer)`);
  if (positionals.length !== 1) throw new UsageError(`expected exactly one TEXT argument, got ${positionals.length}\n\n${usage}`);
  out.write(JSON.stringify(loadTokenizer((tokenizer ?? model) as string).encode(positionals[0])) + '\n');
}
