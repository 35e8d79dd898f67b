import * as fs from 'fs';
import { dataPath } from './paths';

export const stories = {
  v0: dataPath('stories260K', 'stories260K.bin'),
  v1: dataPath('stories260K', 'stories260K_v1.bin'),
  hf: dataPath('stories260K-hf'),
  tokenizer: dataPath('stories260K', 'tok512.bin'),
};

/** The documented greedy output of run.c (`-t 0.0`, 256 steps from BOS) in stories260K.md. */
export function expectedGreedyText(): string {
  const md = fs.readFileSync(dataPath('stories260K', 'stories260K.md'), 'utf8');
  const m = md.match(/\$ \.\/run stories260K\/stories260K\.bin -z stories260K\/tok512\.bin -t 0\.0\n([\s\S]*?)\n```/);
  if (!m) throw new Error('greedy sample not found in stories260K.md');
  return m[1];
}
