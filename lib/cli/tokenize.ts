// llama-adapter tokenize --tokenizer PATH TEXT  ->  the ids as a JSON array (no BOS)
import { loadTokenizer } from '../tokenizer';
import { parseFlags, requireString, UsageError } from './args';

export const usage = `Usage: llama-adapter tokenize --tokenizer PATH TEXT

Prints the token ids of TEXT as a JSON array (no BOS).

  --tokenizer PATH     tokenizer.model (SentencePiece) or tokenizer.bin (llama2.c)`;

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const { values, positionals } = parseFlags(argv, { tokenizer: { type: 'string' } }, usage);
  if (values.help) {
    out.write(usage + '\n');
    return;
  }
  const path = requireString(values, 'tokenizer', usage);
  if (positionals.length !== 1) throw new UsageError(`expected exactly one TEXT argument, got ${positionals.length}\n\n${usage}`);
  out.write(JSON.stringify(loadTokenizer(path).encode(positionals[0])) + '\n');
}
