#!/usr/bin/env node
// llama-adapter <command> [flags]: one file per command in this folder.
import { UsageError } from './args';

interface Command {
  run(argv: string[]): Promise<void>;
  usage: string;
}

const commands: Record<string, () => Command> = {
  train: () => require('./train'),
  generate: () => require('./generate'),
  eval: () => require('./eval'),
  classify: () => require('./classify'),
  export: () => require('./export'),
  tokenize: () => require('./tokenize'),
  'embed-images': () => require('./embed-images'),
  answer: () => require('./squad'),
};

const usage = `Usage: llama-adapter <command> [flags]

Commands:
  train      fine-tune a LLaMA-Adapter on instruction data (--task classify: prompts and a
             head in a frozen image encoder; --task squad: in a RoBERTa/BERT encoder)
  generate   stream a continuation of a prompt (optionally with an adapter)
  eval       loss or accuracy (exact, choice, ScienceQA, caption metrics) of a data file
             (--task classify: accuracy and loss of labelled images; --task squad: EM and F1)
  classify   the top classes of images under an image encoder's classifier or adapter
  export     write an adapter in PEFT's format or the official .pth layout
  tokenize   print the token ids of a text
  embed-images  global features of images from a CLIP/ViT encoder (a features file)
  answer     the answer span of a context for a question (RoBERTa/BERT extractive QA, SQuAD)

Run 'llama-adapter <command> --help' for a command's flags.`;

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage + '\n');
    return name ? 0 : 2;
  }
  const load = commands[name];
  if (!load) {
    process.stderr.write(`llama-adapter: unknown command '${name}'\n\n${usage}\n`);
    return 2;
  }
  try {
    await load().run(rest);
    return 0;
  } catch (err) {
    const usageError = err instanceof UsageError;
    const msg = err instanceof Error ? err.message : String(err);
    process.stderr.write(`llama-adapter ${name}: error: ${msg}\n`);
    return usageError ? 2 : 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
