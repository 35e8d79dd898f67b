// A random-initialised RoBERTa or BERT folder in Hugging Face layout, for tests, the SQuAD
// measurement and benchmarks: config.json, model.safetensors (weights ~ N(0, 0.02) as BERT's
// initializer_range, or scaled by fan-in; LayerNorms 1/0, biases 0) and the tokenizer files copied from `tokenizerDir`.
import * as fs from 'fs';
import * as nodePath from 'path';
import { Random } from '../generate/random';
import { writeSafetensors, SafetensorsTensor } from '../model/safetensors';
import { loadTextTokenizer } from './tokenizer';

export interface RandomTextFolderOptions {
  family: 'roberta' | 'bert';
  /** a folder with the family's tokenizer files (vocab.json + merges.txt, vocab.txt, tokenizer.json) */
  tokenizerDir: string;
  hidden: number;
  layers: number;
  heads: number;
  ffn: number;
  /** tokens per window at most */
  maxTokens: number;
  /** write qa_outputs (a *ForQuestionAnswering folder) */
  qaHead: boolean;
  seed: number;
  /** 'bert': every matrix ~ N(0, 0.02) (BERT's initializer_range; the attention and feed-forward
   *  branches are then ~50x smaller than the residual: a nearly transparent encoder); 'fan-in':
   *  matrices ~ N(0, 1 / fan_in), embeddings ~ N(0, 1), so that every branch matters. Default 'bert'. */
  init?: 'bert' | 'fan-in';
}

export function writeRandomTextFolder(dir: string, o: RandomTextFolderOptions): void {
  const tok = loadTextTokenizer(o.tokenizerDir, o.family);
  const roberta = o.family === 'roberta';
  const V = tok.vocabSize;
  const pad = tok.padId;
  const P = o.maxTokens + (roberta ? pad + 1 : 0);
  const Y = roberta ? 1 : 2;
  const C = o.hidden;
  const rng = new Random(o.seed);
  const normal = (n: number, s: number) =>
    () => Float32Array.from({ length: n }, () => s * Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next()));
  const tensors: SafetensorsTensor[] = [];
  const add = (name: string, shape: number[], data: () => Float32Array) => tensors.push({ name, dtype: 'F32', shape, data });
  const fanIn = o.init === 'fan-in';
  const n = (shape: number[]) => normal(shape.reduce((a, b) => a * b, 1), !fanIn ? 0.02 : shape.length === 2 && shape[0] !== V && shape[0] !== P && shape[0] !== Y && shape[0] !== 2 ? 1 / Math.sqrt(shape[1]) : 1);
  const fill = (len: number, v: number) => () => new Float32Array(len).fill(v);
  const p = o.qaHead ? `${o.family}.` : '';
  add(`${p}embeddings.word_embeddings.weight`, [V, C], n([V, C]));
  add(`${p}embeddings.position_embeddings.weight`, [P, C], n([P, C]));
  add(`${p}embeddings.token_type_embeddings.weight`, [Y, C], n([Y, C]));
  add(`${p}embeddings.LayerNorm.weight`, [C], fill(C, 1));
  add(`${p}embeddings.LayerNorm.bias`, [C], fill(C, 0));
  for (let i = 0; i < o.layers; i++) {
    const l = `${p}encoder.layer.${i}.`;
    for (const m of ['attention.self.query', 'attention.self.key', 'attention.self.value', 'attention.output.dense']) {
      add(l + m + '.weight', [C, C], n([C, C]));
      add(l + m + '.bias', [C], fill(C, 0));
    }
    add(l + 'attention.output.LayerNorm.weight', [C], fill(C, 1));
    add(l + 'attention.output.LayerNorm.bias', [C], fill(C, 0));
    add(l + 'intermediate.dense.weight', [o.ffn, C], n([o.ffn, C]));
    add(l + 'intermediate.dense.bias', [o.ffn], fill(o.ffn, 0));
    add(l + 'output.dense.weight', [C, o.ffn], n([C, o.ffn]));
    add(l + 'output.dense.bias', [C], fill(C, 0));
    add(l + 'output.LayerNorm.weight', [C], fill(C, 1));
    add(l + 'output.LayerNorm.bias', [C], fill(C, 0));
  }
  if (o.qaHead) {
    add('qa_outputs.weight', [2, C], n([2, C]));
    add('qa_outputs.bias', [2], fill(2, 0));
  }
  fs.mkdirSync(dir, { recursive: true });
  const arch = `${roberta ? 'Roberta' : 'Bert'}${o.qaHead ? 'ForQuestionAnswering' : 'Model'}`;
  fs.writeFileSync(
    nodePath.join(dir, 'config.json'),
    JSON.stringify({
      architectures: [arch], model_type: o.family, hidden_size: C, num_hidden_layers: o.layers, num_attention_heads: o.heads,
      intermediate_size: o.ffn, vocab_size: V, max_position_embeddings: P, type_vocab_size: Y, pad_token_id: pad,
      layer_norm_eps: roberta ? 1e-5 : 1e-12, hidden_act: 'gelu', initializer_range: 0.02,
    }, null, 2),
  );
  writeSafetensors(nodePath.join(dir, 'model.safetensors'), tensors);
  for (const f of ['vocab.json', 'merges.txt', 'vocab.txt', 'tokenizer.json', 'tokenizer_config.json'])
    if (fs.existsSync(nodePath.join(o.tokenizerDir, f))) fs.copyFileSync(nodePath.join(o.tokenizerDir, f), nodePath.join(dir, f));
}
