// Writes the demo instruction dataset (lib/data/demo.ts) as train.jsonl / val.jsonl / test.jsonl.
// The three splits have disjoint character names; the output is the same for the same seed.
//
//   node dist/tools/make-demo-data.js <outDir> [--seed N] [--train N] [--val N] [--test N]
//                                     [--tokenizer tok512.bin] [--force]
//
// With --tokenizer it also prints each split's longest example in tokens (SPEC §3 prompt + story).
import * as fs from 'fs';
import * as nodePath from 'path';
import { makeDemoSplits } from '../lib/data/demo';
import { AlpacaRecord, promptOf } from '../lib/data/alpaca';
import { loadTokenizer } from '../lib/tokenizer';

export const DEMO_FILES = ['train.jsonl', 'val.jsonl', 'test.jsonl'] as const;

export interface MakeDemoOptions {
  seed?: number;
  train?: number;
  val?: number;
  test?: number;
  /** replace existing files */
  overwrite?: boolean;
}

function toJsonl(records: AlpacaRecord[]): string {
  return records.map((r) => JSON.stringify(r) + '\n').join('');
}

/** Writes the three files into outDir (created if missing); returns their paths and records. */
export function writeDemoData(outDir: string, opts: MakeDemoOptions = {}): { files: string[]; splits: Record<string, AlpacaRecord[]> } {
  const { seed = 0, train = 2000, val = 200, test = 200, overwrite = false } = opts;
  const splits = makeDemoSplits({ seed, train, val, test });
  fs.mkdirSync(outDir, { recursive: true });
  const files = DEMO_FILES.map((f) => nodePath.join(outDir, f));
  if (!overwrite) {
    const existing = files.filter((f) => fs.existsSync(f));
    if (existing.length > 0) throw new Error(`${existing.join(', ')} already exist(s); pass --force to replace`);
  }
  const parts: Record<string, AlpacaRecord[]> = { train: splits.train, val: splits.val, test: splits.test };
  DEMO_FILES.forEach((f, i) => fs.writeFileSync(files[i], toJsonl(parts[f.replace('.jsonl', '')])));
  return { files, splits: parts };
}

function main(argv: string[]): number {
  const usage =
    'usage: make-demo-data <outDir> [--seed N] [--train N] [--val N] [--test N] [--tokenizer tok512.bin] [--force]';
  const pos: string[] = [];
  const opts: MakeDemoOptions = {};
  let tokenizer: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--seed' || a === '--train' || a === '--val' || a === '--test') {
      const v = argv[++i];
      if (v === undefined || !/^\d+$/.test(v) || (a === '--seed' && Number(v) > 0xffffffff)) {
        console.error(`${a} needs a non-negative integer${a === '--seed' ? ' below 2^32' : ''}\n${usage}`);
        return 2;
      }
      opts[a.slice(2) as 'seed' | 'train' | 'val' | 'test'] = Number(v);
    } else if (a === '--tokenizer') {
      tokenizer = argv[++i];
      if (tokenizer === undefined) {
        console.error(`--tokenizer needs a path\n${usage}`);
        return 2;
      }
    } else if (a === '--force') opts.overwrite = true;
    else if (a === '-h' || a === '--help') {
      console.log(usage);
      return 0;
    } else if (a.startsWith('-')) {
      console.error(`unknown option ${a}\n${usage}`);
      return 2;
    } else pos.push(a);
  }
  if (pos.length !== 1) {
    console.error(usage);
    return 2;
  }
  try {
    const { files, splits } = writeDemoData(pos[0], opts);
    const tok = tokenizer === undefined ? undefined : loadTokenizer(tokenizer);
    DEMO_FILES.forEach((f, i) => {
      const recs = splits[f.replace('.jsonl', '')];
      let line = `wrote ${files[i]}: ${recs.length} records`;
      if (tok && recs.length > 0) {
        const lens = recs.map((r) => tok.encode(promptOf(r) + r.output, { bos: true, eos: true }).length);
        line += `, longest ${Math.max(...lens)} tokens`;
      }
      console.log(line);
    });
    return 0;
  } catch (e) {
    console.error(`make-demo-data: ${(e as Error).message}`);
    return 1;
  }
}

if (require.main === module) process.exitCode = main(process.argv.slice(2));
