// Byte-level BPE vocabularies built from js-tiktoken's ranks (an independent implementation of
// GPT-2's and cl100k_base's tokenizers), written as Hugging Face tokenizer.json folders that
// tools/to-gguf turns into GGUF "gpt2" metadata, and js-tiktoken encoders to compare against.
//
// A token's id is its rank; its text is its bytes as byte characters. The merges are derived from
// the ranks as Hugging Face's tiktoken converter does: each multi-byte token, in rank order, is
// merged by tiktoken's own rule (lowest-ranked adjacent pair first) using only lower ranks, which
// leaves exactly two parts: the token's merge.
import * as fs from 'fs';
import * as path from 'path';
import { BYTE_CHARS } from '../../lib/tokenizer/byte-level-bpe';
import { LLAMA3_HF_PATTERN } from '../../tools/bpe-vocab';

export type TiktokenName = 'gpt2' | 'cl100k_base';

interface TiktokenBpe {
  pat_str: string;
  special_tokens: Record<string, number>;
  bpe_ranks: string;
}
interface TiktokenEncoder {
  encode(text: string, allowedSpecial?: string[] | 'all', disallowedSpecial?: string[] | 'all'): number[];
  decode(ids: number[]): string;
}

// js-tiktoken's subpath exports are not visible to this project's "node" module resolution
// eslint-disable-next-line @typescript-eslint/no-var-requires
const lite = require('js-tiktoken/lite') as { Tiktoken: new (r: TiktokenBpe) => TiktokenEncoder };

export function tiktokenData(name: TiktokenName): TiktokenBpe {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const m = require(`js-tiktoken/ranks/${name}`) as { default?: TiktokenBpe } & TiktokenBpe;
  return m.default ?? m;
}

/** The ranked tokens (as byte characters, index = rank) of js-tiktoken's data, the first `limit` only if given. */
export function rankedTokens(data: TiktokenBpe, limit = Infinity): string[] {
  const tokens: string[] = [];
  for (const line of data.bpe_ranks.split('\n')) {
    if (!line) continue;
    const [, offset, ...b64] = line.split(' ');
    b64.forEach((t, i) => {
      const rank = Number(offset) + i;
      if (rank < limit) tokens[rank] = Array.from(Buffer.from(t, 'base64'), (b) => BYTE_CHARS[b]).join('');
    });
  }
  for (let r = 0; r < tokens.length; r++) if (tokens[r] === undefined) throw new Error(`rank ${r} is missing`);
  return tokens;
}

/** Each multi-byte token's two parts, in rank order (see the file comment). */
export function mergesFromRanks(tokens: string[]): string[] {
  const rank = new Map(tokens.map((t, r) => [t, r]));
  const merges: string[] = [];
  tokens.forEach((token, r) => {
    if (token.length < 2) return;
    let parts = Array.from(token);
    for (;;) {
      let best = -1;
      let bestRank = r;
      for (let i = 0; i + 1 < parts.length; i++) {
        const k = rank.get(parts[i] + parts[i + 1]);
        if (k !== undefined && k < bestRank) [best, bestRank] = [i, k];
      }
      if (best < 0) break;
      parts.splice(best, 2, parts[best] + parts[best + 1]);
    }
    if (parts.length !== 2) throw new Error(`token ${r} ${JSON.stringify(token)} does not merge from two lower-ranked tokens`);
    merges.push(parts.join(' '));
  });
  return merges;
}

/**
 * Writes `dir`/tokenizer.json and tokenizer_config.json: the first `limit` ranks of `name` (all by
 * default) and its special tokens (renumbered after the ranks when `limit` cuts them off), with
 * the pre-tokenizer of GPT-2 (gpt2) or of LLaMA 3 (cl100k_base). BOS = EOS = <|endoftext|>.
 * Returns the encoder js-tiktoken makes of the same ranks and special tokens.
 */
export function writeTiktokenFolder(dir: string, name: TiktokenName, limit = Infinity): TiktokenEncoder {
  const data = tiktokenData(name);
  const tokens = rankedTokens(data, limit);
  const special: Record<string, number> = {};
  for (const [text, id] of Object.entries(data.special_tokens)) special[text] = limit === Infinity ? id : tokens.length + Object.keys(special).length;
  const vocab: Record<string, number> = {};
  tokens.forEach((t, r) => (vocab[t] = r));
  const preTokenizer =
    name === 'gpt2'
      ? { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true }
      : {
          type: 'Sequence',
          pretokenizers: [
            { type: 'Split', pattern: { Regex: LLAMA3_HF_PATTERN }, behavior: 'Isolated', invert: false },
            { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
          ],
        };
  const json = {
    version: '1.0',
    added_tokens: Object.entries(special).map(([content, id]) => ({ id, content, special: true })),
    pre_tokenizer: preTokenizer,
    model: { type: 'BPE', vocab, merges: mergesFromRanks(tokens) },
  };
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(json));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<|endoftext|>', eos_token: '<|endoftext|>' }));
  // js-tiktoken reads "<ignored> <first rank> <base64 token> ..." lines
  const byteOf = new Map(BYTE_CHARS.map((c, b) => [c, b]));
  const b64 = tokens.map((t) => Buffer.from(Array.from(t, (c) => byteOf.get(c) as number)).toString('base64'));
  return new lite.Tiktoken({ pat_str: data.pat_str, special_tokens: special, bpe_ranks: `! 0 ${b64.join(' ')}` });
}
