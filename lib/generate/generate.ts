// KV-cached generation (SPEC §5): the prompt runs as one prefill, then one token at a time until
// EOS (or BOS, which llama2.c models emit to start a new document), max tokens or the context end.
import { Llama } from '../model/llama';
import { StreamDecoder, Tokenizer } from '../tokenizer';
import { Sampler, SamplerOptions } from './sampler';

export interface GenerateOptions extends SamplerOptions {
  /** Most new tokens to produce. Default 512 (the paper's), bounded by the context length. */
  maxTokens?: number;
  /** Token ids that end generation (not yielded). Default: the tokenizer's EOS and BOS. */
  stopTokens?: number[];
  /** Aborts between tokens. */
  signal?: AbortSignal;
}

/** Yields the ids of the continuation of `promptIds` (which should start with BOS). */
export async function* generateTokens(model: Llama, promptIds: number[], opts: GenerateOptions = {}): AsyncGenerator<number> {
  const maxTokens = opts.maxTokens ?? 512;
  if (!Number.isInteger(maxTokens) || maxTokens < 0)
    throw new RangeError(`Expected a non-negative integer for maxTokens but received ${opts.maxTokens}`);
  if (promptIds.length < 1) throw new RangeError('generate: the prompt must have at least one token (BOS)');
  const capacity = model.config.maxSeqLen;
  if (promptIds.length >= capacity)
    throw new RangeError(`generate: the prompt has ${promptIds.length} tokens but the context holds ${capacity}`);
  const sampler = new Sampler(opts);
  const stop = new Set(opts.stopTokens ?? [2, 1]);
  const cache = model.newCache(Math.min(capacity, promptIds.length + maxTokens));
  try {
    let logits = model.forward(promptIds, cache);
    for (let produced = 0; produced < maxTokens; produced++) {
      const values = (await logits.read()) as Float32Array;
      logits.dispose();
      opts.signal?.throwIfAborted();
      const next = sampler.sample(values);
      if (stop.has(next)) return;
      yield next;
      if (produced + 1 >= maxTokens || cache.length >= cache.capacity) return;
      logits = model.forward([next], cache);
    }
  } finally {
    cache.dispose();
  }
}

/** Streams the text of the continuation of `prompt` (not the prompt itself). */
export async function* generate(
  model: Llama,
  tokenizer: Tokenizer,
  prompt: string,
  opts: GenerateOptions = {},
): AsyncGenerator<string> {
  if (tokenizer.vocabSize !== model.config.vocabSize)
    throw new Error(
      `generate: the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocabulary is ${model.config.vocabSize}`,
    );
  const ids = tokenizer.encode(prompt, { bos: true });
  // a byte-level BPE vocabulary such as GPT-2's starts sequences without BOS
  if (ids.length === 0) throw new Error('generate: the prompt is empty and this tokenizer adds no BOS; give a prompt');
  const decoder = new StreamDecoder(tokenizer);
  decoder.push(ids[ids.length - 1]); // context for the first piece (e.g. no leading space after BOS)
  const stopTokens = opts.stopTokens ?? [...tokenizer.stopIds];
  for await (const id of generateTokens(model, ids, { ...opts, stopTokens })) {
    const text = decoder.push(id);
    if (text) yield text;
  }
  const rest = decoder.flush();
  if (rest) yield rest;
}
