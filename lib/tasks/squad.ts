// Extractive question answering (SQuAD) with zero-init gated prompts in a frozen BERT/RoBERTa
// (SPEC §9): windows of [CLS] question [SEP] context [SEP] (RoBERTa <s> q </s></s> c </s>) over long
// contexts with a stride, K prompts and per-head tanh gates in the top L layers, a span head (start
// and end logits, a linear on the last hidden states; the checkpoint's qa_outputs as the initial
// head when it has one, else zeros), the span decoding and the no-answer rule of §9.
//
// Shapes: N tokens of a batch of windows (packed, one segment per window), C hidden, H heads,
// K prompts, L adapted layers.
import * as fs from 'fs';
import * as nodePath from 'path';
import { native, Tensor } from '../native';
import { Random } from '../generate/random';
import { readSafetensorsHeader, writeSafetensors } from '../model/safetensors';
import { learningRate } from '../train/schedule';
import { AdamW, AdamWOptions, NonFiniteError } from '../train/optimizer';
import { Checkpointable, loadCheckpointWith, LoadedCheckpoint, RunState, saveCheckpoint } from '../train/checkpoint';
import { IndexBatcher } from '../data/alpaca';
import { SquadData, SquadExample } from '../data/squad';
import { squadMetrics } from '../eval/squad';
import { TextBatchIndex, TextEncoderModel, TextEncoderGraph, spanLogits } from '../text/encoder';
import type { TextTokenizer } from '../text/tokenizer';

/** The longest answer decoded, in tokens (SPEC §9). */
export const MAX_ANSWER_TOKENS = 30;

export interface WindowOptions {
  maxSeqLen: number;
  /** tokens shared by consecutive windows of a long context (Hugging Face run_qa's doc_stride) */
  docStride: number;
  /** questions are cut to this many tokens */
  maxQueryLen: number;
}

/** One window of one question: its tokens and where its context tokens come from. */
export interface SquadFeature {
  example: number;
  ids: Int32Array;
  types: Int32Array;
  /** the window's context tokens are [ctxStart, ctxEnd) */
  ctxStart: number;
  ctxEnd: number;
  /** [start, end) in the context of each of those tokens */
  offsets: [number, number][];
  /** training targets: the answer's first/last token in the window, or 0 (CLS) when the window does
   *  not hold it (or the question has no answer) */
  startPos: number;
  endPos: number;
}

/** Splits every question + context into windows (tokenizing each context once). */
export function makeFeatures(examples: SquadExample[], tok: TextTokenizer, o: WindowOptions): SquadFeature[] {
  const features: SquadFeature[] = [];
  const contexts = new Map<string, { ids: number[]; offsets: [number, number][] }>();
  examples.forEach((ex, e) => {
    let c = contexts.get(ex.context);
    if (!c) {
      c = tok.encode(ex.context);
      contexts.set(ex.context, c);
    }
    const q = tok.encode(ex.question).ids.slice(0, o.maxQueryLen);
    const avail = o.maxSeqLen - q.length - tok.pairSpecials;
    if (avail < 1) throw new RangeError(`--max-seq-len ${o.maxSeqLen} leaves no room for the context of question ${ex.id} (${q.length} question tokens)`);
    if (o.docStride >= avail)
      throw new RangeError(`--doc-stride ${o.docStride} must be below the ${avail} context tokens a window of question ${ex.id} holds (--max-seq-len ${o.maxSeqLen})`);
    // the answer's token span in the whole context (the first gold answer; none for no-answer)
    let aStart = -1;
    let aEnd = -1;
    const gold = ex.answers[0];
    if (gold && ex.context.slice(gold.start, gold.start + gold.text.length) === gold.text) {
      const s = gold.start;
      const e2 = gold.start + gold.text.length;
      for (let t = 0; t < c.ids.length; t++) {
        if (aStart < 0 && c.offsets[t][1] > s) aStart = t;
        if (c.offsets[t][0] < e2) aEnd = t;
      }
      if (aEnd < aStart) aStart = aEnd = -1;
    }
    const step = avail - o.docStride;
    for (let s = 0; ; s += step) {
      const e2 = Math.min(s + avail, c.ids.length);
      const p = tok.pair(q, c.ids.slice(s, e2));
      const holds = aStart >= s && aEnd >= 0 && aEnd < e2;
      features.push({
        example: e,
        ids: Int32Array.from(p.ids),
        types: Int32Array.from(p.types),
        ctxStart: p.bStart,
        ctxEnd: p.bStart + (e2 - s),
        offsets: c.offsets.slice(s, e2),
        startPos: holds ? p.bStart + aStart - s : 0,
        endPos: holds ? p.bStart + aEnd - s : 0,
      });
      if (e2 >= c.ids.length) break;
    }
  });
  return features;
}

/** The trainable parameters: prompts and gates of the top L layers (L = 0: head only) and the head. */
export interface SquadParams {
  prompts: Tensor[]; // L x (K, C)
  gates: Tensor[]; // L x (H)
  headW: Tensor; // (2, C)
  headB: Tensor; // (2)
}

export interface SquadAdapterInfo {
  layers: number;
  promptLen: number;
  v2: boolean;
  maxSeqLen: number;
  docStride: number;
  maxQueryLen: number;
}

export function disposeParams(p: SquadParams): void {
  [...p.prompts, ...p.gates, p.headW, p.headB].forEach((t) => t.dispose());
}

/** Fresh parameters: prompts ~ N(0, 1), gates 0 (or N(0, 1) with gateInit 'random'), the
 *  checkpoint's qa_outputs as the head when it has one, else a zero head. */
export async function initParams(enc: TextEncoderModel, L: number, K: number, gateInit: 'zero' | 'random', seed: number): Promise<SquadParams> {
  const c = enc.config;
  const rng = new Random(seed);
  const normal = (n: number) =>
    Float32Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next()));
  const dev = enc.device;
  const prompts = Array.from({ length: L }, () => native.fromArray(normal(K * c.dim), [K, c.dim], 'f32', dev));
  const gates = Array.from({ length: L }, () =>
    gateInit === 'random' ? native.fromArray(normal(c.nHeads), [c.nHeads], 'f32', dev) : native.zeros([c.nHeads], 'f32', dev),
  );
  let headW: Tensor;
  let headB: Tensor;
  if (enc.weights.qa) {
    const [w, b] = (await Promise.all([enc.weights.qa.w.read(), enc.weights.qa.b.read()])) as Float32Array[];
    headW = native.fromArray(w, [2, c.dim], 'f32', dev);
    headB = native.fromArray(b, [2], 'f32', dev);
  } else {
    headW = native.zeros([2, c.dim], 'f32', dev);
    headB = native.zeros([2], 'f32', dev);
  }
  return { prompts, gates, headW, headB };
}

/** The checkpoint's own head, no prompts: the frozen model as downloaded. */
export async function frozenParams(enc: TextEncoderModel): Promise<SquadParams> {
  if (!enc.weights.qa)
    throw new Error(`${enc.dir} has no QA head (qa_outputs; a ${enc.config.architecture}): pass --adapter, or use a *ForQuestionAnswering folder`);
  return initParams(enc, 0, 1, 'zero', 0);
}

export function saveSquadAdapter(path: string, p: SquadParams, enc: TextEncoderModel, info: SquadAdapterInfo, values: Float32Array[]): void {
  const c = enc.config;
  const L = p.prompts.length;
  const tensors = [
    ...p.prompts.map((_, l) => ({ name: `prompts.${l}`, shape: [info.promptLen, c.dim] })),
    ...p.gates.map((_, l) => ({ name: `gates.${l}`, shape: [c.nHeads] })),
    { name: 'qa_outputs.weight', shape: [2, c.dim] },
    { name: 'qa_outputs.bias', shape: [2] },
  ].map((t, i) => ({ ...t, dtype: 'F32' as const, data: values[i] }));
  writeSafetensors(path, tensors, {
    task: 'squad',
    family: c.family,
    hidden_size: String(c.dim),
    num_heads: String(c.nHeads),
    layers: String(L),
    prompt_len: String(info.promptLen),
    v2: String(info.v2),
    max_seq_len: String(info.maxSeqLen),
    doc_stride: String(info.docStride),
    max_query_len: String(info.maxQueryLen),
  });
}

export async function paramValues(p: SquadParams): Promise<Float32Array[]> {
  return (await Promise.all([...p.prompts, ...p.gates, p.headW, p.headB].map((t) => t.read()))) as Float32Array[];
}

/** Loads a SQuAD adapter file for `enc`; errors name the file and what does not match. */
export function loadSquadAdapter(path: string, enc: TextEncoderModel): { params: SquadParams; info: SquadAdapterInfo } {
  const c = enc.config;
  const h = readSafetensorsHeader(path);
  const m = h.metadata;
  if (m.task !== 'squad') throw new Error(`${path}: not a SQuAD adapter (metadata task ${JSON.stringify(m.task ?? null)})`);
  const int = (k: string, min: number, max: number) => {
    const v = Number(m[k]);
    if (!Number.isSafeInteger(v) || v < min || v > max) throw new Error(`${path}: metadata ${k} ${JSON.stringify(m[k] ?? null)} must be an integer in ${min}..${max}`);
    return v;
  };
  if (Number(m.hidden_size) !== c.dim || Number(m.num_heads) !== c.nHeads)
    throw new Error(`${path}: made for hidden size ${m.hidden_size} with ${m.num_heads} heads, ${enc.dir} has ${c.dim} with ${c.nHeads}`);
  const L = int('layers', 0, c.nLayers);
  const K = int('prompt_len', 1, 4096);
  const info: SquadAdapterInfo = {
    layers: L, promptLen: K, v2: m.v2 === 'true',
    maxSeqLen: int('max_seq_len', 4, c.maxTokens), docStride: int('doc_stride', 0, c.maxTokens), maxQueryLen: int('max_query_len', 1, c.maxTokens),
  };
  const buf = fs.readFileSync(path);
  const take = (name: string, shape: number[]) => {
    const e = h.tensors.get(name);
    if (!e) throw new Error(`${path}: missing tensor ${name}`);
    if (e.dtype !== 'F32' || e.shape.join(',') !== shape.join(','))
      throw new Error(`${path}: tensor ${name} is ${e.dtype} [${e.shape.join(', ')}], expected F32 [${shape.join(', ')}]`);
    const n = shape.reduce((a, b) => a * b, 1);
    const v = new Float32Array(n);
    Buffer.from(v.buffer).set(buf.subarray(e.byteOffset, e.byteOffset + 4 * n));
    if (!v.every(Number.isFinite)) throw new Error(`${path}: tensor ${name} holds NaN or Inf`);
    return native.fromArray(v, shape, 'f32', enc.device);
  };
  const params: SquadParams = {
    prompts: Array.from({ length: L }, (_, l) => take(`prompts.${l}`, [K, c.dim])),
    gates: Array.from({ length: L }, (_, l) => take(`gates.${l}`, [c.nHeads])),
    headW: take('qa_outputs.weight', [2, c.dim]),
    headB: take('qa_outputs.bias', [2]),
  };
  return { params, info };
}

/** Packs features [from, to) into one batch. */
export function batchOf(fs2: SquadFeature[]): { ids: Int32Array; types: Int32Array; offsets: number[] } {
  const offsets = [0];
  for (const f of fs2) offsets.push(offsets[offsets.length - 1] + f.ids.length);
  const N = offsets[offsets.length - 1];
  const ids = new Int32Array(N);
  const types = new Int32Array(N);
  fs2.forEach((f, i) => {
    ids.set(f.ids, offsets[i]);
    types.set(f.types, offsets[i]);
  });
  return { ids, types, offsets };
}

/** Start/end logits of every feature: per feature a Float32Array (T, 2). */
export async function scoreFeatures(
  enc: TextEncoderModel, p: SquadParams, features: SquadFeature[], batchSize: number, onProgress?: (done: number, total: number) => void,
): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  const prompts = p.prompts.length ? { prompts: p.prompts, gates: p.gates } : undefined;
  for (let b0 = 0; b0 < features.length; b0 += batchSize) {
    const part = features.slice(b0, b0 + batchSize);
    const batch = batchOf(part);
    const idx = new TextBatchIndex(batch, enc.config);
    const hidden = enc.forward(idx, prompts);
    const logits = spanLogits(hidden, { w: p.headW, b: p.headB });
    hidden.dispose();
    let v: Float32Array;
    try {
      v = (await logits.read()) as Float32Array;
    } finally {
      logits.dispose();
      idx.dispose();
    }
    part.forEach((_, i) => out.push(v.slice(2 * batch.offsets[i], 2 * batch.offsets[i + 1])));
    onProgress?.(Math.min(b0 + batchSize, features.length), features.length);
  }
  return out;
}

/**
 * SPEC §9's decoding of one question from its windows' logits: the best (start, end) over context
 * tokens with start <= end and at most 30 tokens, by start_logit + end_logit over all windows; with
 * `v2`, "" (no answer) when the CLS score (the smallest over the windows) exceeds it.
 */
export function decodeAnswer(ex: SquadExample, feats: SquadFeature[], logits: Float32Array[], v2: boolean): { text: string; score: number; nullScore: number } {
  let best = -Infinity;
  let text = '';
  let nullScore = Infinity;
  feats.forEach((f, i) => {
    const lg = logits[i]; // (T, 2)
    nullScore = Math.min(nullScore, lg[0] + lg[1]);
    for (let s = f.ctxStart; s < f.ctxEnd; s++) {
      const ss = lg[2 * s];
      for (let e = s; e < Math.min(f.ctxEnd, s + MAX_ANSWER_TOKENS); e++) {
        const score = ss + lg[2 * e + 1];
        if (score > best) {
          best = score;
          text = ex.context.slice(f.offsets[s - f.ctxStart][0], f.offsets[e - f.ctxStart][1]);
        }
      }
    }
  });
  if (v2 && nullScore > best) return { text: '', score: best, nullScore };
  return { text, score: best, nullScore };
}

/** Predictions for every question of `data` and the metrics against its gold answers. */
export async function evaluateSquad(
  enc: TextEncoderModel, p: SquadParams, data: SquadData, win: WindowOptions, v2: boolean, batchSize: number,
  onProgress?: (done: number, total: number) => void,
): Promise<{ exact_match: number; f1: number; total: number; predictions: Map<string, string> }> {
  const features = makeFeatures(data.examples, enc.tokenizer!, win);
  const logits = await scoreFeatures(enc, p, features, batchSize, onProgress);
  const byExample = new Map<number, number[]>();
  features.forEach((f, i) => {
    const l = byExample.get(f.example) ?? [];
    l.push(i);
    byExample.set(f.example, l);
  });
  const predictions = new Map<string, string>();
  const golds = new Map<string, string[]>();
  data.examples.forEach((ex, e) => {
    const idx = byExample.get(e)!;
    predictions.set(ex.id, decodeAnswer(ex, idx.map((i) => features[i]), idx.map((i) => logits[i]), v2).text);
    golds.set(ex.id, ex.answers.map((a) => a.text));
  });
  return { ...squadMetrics(predictions, golds), predictions };
}

/** Host side of the loss: mean over windows of (CE(start) + CE(end)) / 2, softmax over each
 *  window's tokens; returns the loss and dLoss/dlogits (N, 2). */
export function spanLoss(logits: Float32Array, offsets: number[], feats: SquadFeature[]): { loss: number; dlogits: Float32Array } {
  const d = new Float32Array(logits.length);
  let loss = 0;
  const W = feats.length;
  feats.forEach((f, w) => {
    const a = offsets[w];
    const T = offsets[w + 1] - a;
    for (const [col, target] of [[0, f.startPos], [1, f.endPos]] as const) {
      let m = -Infinity;
      for (let t = 0; t < T; t++) m = Math.max(m, logits[2 * (a + t) + col]);
      let z = 0;
      for (let t = 0; t < T; t++) z += Math.exp(logits[2 * (a + t) + col] - m);
      const lse = m + Math.log(z);
      loss += (lse - logits[2 * (a + target) + col]) / (2 * W);
      for (let t = 0; t < T; t++) d[2 * (a + t) + col] = (Math.exp(logits[2 * (a + t) + col] - lse) - (t === target ? 1 : 0)) / (2 * W);
    }
  });
  return { loss, dlogits: d };
}

export interface SquadTrainOptions extends WindowOptions {
  layers: number; // 0 = head only
  promptLen: number;
  gateInit: 'zero' | 'random';
  epochs: number;
  maxSteps?: number;
  batchSize: number;
  lr: number;
  weightDecay: number;
  warmupSteps: number;
  seed: number;
}

export interface SquadStep {
  step: number;
  totalSteps: number;
  epoch: number;
  loss: number;
  lr: number;
  grad_norm: number;
  windows: number;
  tokens: number;
  ms: number;
}

/** The trainable tensors in their fixed order (the optimiser's and the checkpoint's). */
export function trainableOf(p: SquadParams): Tensor[] {
  return [...p.prompts, ...p.gates, p.headW, p.headB];
}

/** SQuAD's AdamW: beta2 0.999 (BERT fine-tuning's, not the LLaMA trainer's 0.95), no clipping. */
export const squadAdamW = (weightDecay: number): AdamWOptions => ({ beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay });

/** The optimiser over `p`: fresh moments, or a checkpoint's. */
export function squadOptimizer(p: SquadParams, weightDecay: number, saved?: { moments: { m: Float32Array; v: Float32Array }[]; step: number }): AdamW {
  return new AdamW(trainableOf(p), squadAdamW(weightDecay), saved);
}

/** The parameters as a checkpoint holds them: the adapter file of OUT/adapter.safetensors. */
export class SquadAdapter implements Checkpointable {
  constructor(readonly params: SquadParams, readonly enc: TextEncoderModel, readonly info: SquadAdapterInfo) {}

  static load(file: string, enc: TextEncoderModel): SquadAdapter {
    const { params, info } = loadSquadAdapter(file, enc);
    return new SquadAdapter(params, enc, info);
  }

  async save(file: string): Promise<void> {
    saveSquadAdapter(file, this.params, this.enc, this.info, await paramValues(this.params));
  }

  parameters(): Tensor[] {
    return trainableOf(this.params);
  }

  dispose(): void {
    disposeParams(this.params);
  }
}

/** A checkpoint folder of a SQuAD run (adapter, AdamW moments and step, run state). */
export function loadSquadCheckpoint(dir: string, enc: TextEncoderModel): LoadedCheckpoint<SquadAdapter> {
  return loadCheckpointWith(dir, (file) => SquadAdapter.load(file, enc));
}

/**
 * One optimiser step on the windows `part`: forward (prompts in the top L layers when `graph`),
 * the span loss, the backward to the head, gates and prompts, AdamW (`opt.step` counts the steps
 * taken). A non-finite loss or gradient stops it before the update.
 */
export async function squadStep(
  enc: TextEncoderModel, p: SquadParams, graph: TextEncoderGraph | null, opt: AdamW, part: SquadFeature[], lr: number,
): Promise<{ loss: number; gradNorm: number; tokens: number }> {
  const c = enc.config;
  const step = opt.step + 1;
  const trainable = trainableOf(p);
  const batch = batchOf(part);
  const idx = new TextBatchIndex(batch, c);
  const hidden = graph ? graph.forward(idx, { prompts: p.prompts, gates: p.gates }) : enc.forward(idx);
  const logits = spanLogits(hidden, { w: p.headW, b: p.headB }); // (N, 2)
  const lv = (await logits.read()) as Float32Array;
  logits.dispose();
  const { loss, dlogits } = spanLoss(lv, batch.offsets, part);
  if (!Number.isFinite(loss)) {
    graph?.release();
    [hidden, idx].forEach((t) => t.dispose());
    throw new Error(`step ${step}: the loss is not finite (${loss}); lower --lr`);
  }
  const dl = native.fromArray(dlogits, [batch.ids.length, 2], 'f32', enc.device);
  const grads = trainable.map((t) => native.zeros([...t.shape], 'f32', enc.device));
  const nL = p.prompts.length;
  const gW = native.matmulWeightGrad(dl, hidden); // (2, C)
  const gB = native.biasGrad(dl); // (2)
  native.addInPlace(grads[2 * nL], gW);
  native.addInPlace(grads[2 * nL + 1], gB);
  gW.dispose();
  gB.dispose();
  if (graph) {
    const dH = native.matmulBackward(dl, p.headW); // (N, C)
    graph.backward(dH, { prompts: grads.slice(0, nL), gates: grads.slice(nL, 2 * nL) });
    dH.dispose();
  }
  hidden.dispose();
  dl.dispose();
  idx.dispose();
  let gradNorm: number;
  try {
    gradNorm = await opt.update(grads, lr);
  } catch (e) {
    throw e instanceof NonFiniteError ? new NonFiniteError(`${e.message}; lower --lr`) : e;
  } finally {
    grads.forEach((g) => g.dispose());
  }
  await native.synchronize();
  return { loss, gradNorm, tokens: batch.ids.length };
}

/** Checkpoints of a training run (lib/train/checkpoint.ts): every `saveEvery` steps into
 *  `out`/step-NNNNNN, the last `keepLast` kept; `resumed` continues a saved run. */
export interface SquadCheckpointing {
  out: string;
  /** 0: none */
  saveEvery: number;
  keepLast: number;
  /** the settings a resume must share (compared by the caller before it resumes) */
  fingerprint: Record<string, unknown>;
  resumed?: LoadedCheckpoint<SquadAdapter>;
  onCheckpoint?: (dir: string) => void;
}

/** Steps of a run over `windows` windows: every epoch's windows, or --max-steps when fewer. */
export function squadTotalSteps(windows: number, o: Pick<SquadTrainOptions, 'batchSize' | 'epochs' | 'maxSteps'>): number {
  return Math.min(o.maxSteps ?? Infinity, Math.ceil(windows / o.batchSize) * o.epochs);
}

/**
 * Trains the prompts, gates and head on `data` (its windows, when the caller made them already);
 * calls `onStep` after every optimiser step. Each epoch visits the windows in an order drawn from
 * one seeded Random stream (IndexBatcher), so that a checkpoint's data position resumes it bit for
 * bit. Returns the trained parameters (the caller saves and disposes them).
 */
export async function trainSquad(
  enc: TextEncoderModel, data: SquadData, o: SquadTrainOptions, onStep: (s: SquadStep) => void, windows?: SquadFeature[], run?: SquadCheckpointing,
): Promise<SquadParams> {
  if (!enc.tokenizer) throw new Error('trainSquad: the encoder was loaded without its tokenizer');
  const c = enc.config;
  if (o.maxSeqLen > c.maxTokens) throw new RangeError(`--max-seq-len ${o.maxSeqLen} is above the ${c.maxTokens} positions of ${enc.dir}`);
  const features = windows ?? makeFeatures(data.examples, enc.tokenizer, o);
  if (!features.length) throw new Error(`${data.path}: no training windows`);
  const batcher = new IndexBatcher(features.length, { batchSize: o.batchSize, seed: o.seed, shuffle: true });
  const stepsPerEpoch = batcher.batchesPerEpoch;
  const totalSteps = squadTotalSteps(features.length, o);
  const resumed = run?.resumed;
  let adapter: SquadAdapter;
  if (resumed) {
    adapter = resumed.adapter;
    try {
      const L = adapter.params.prompts.length;
      if (L !== o.layers || (L > 0 && adapter.info.promptLen !== o.promptLen))
        throw new Error(`${resumed.dir}: its adapter has ${L} layers of ${adapter.info.promptLen} prompts, the run ${o.layers} of ${o.promptLen}`);
      batcher.restore(resumed.state.data);
    } catch (e) {
      adapter.dispose();
      throw e;
    }
  } else {
    const info = { layers: o.layers, promptLen: o.promptLen, v2: data.v2, maxSeqLen: o.maxSeqLen, docStride: o.docStride, maxQueryLen: o.maxQueryLen };
    adapter = new SquadAdapter(await initParams(enc, o.layers, o.promptLen, o.gateInit, o.seed), enc, info);
  }
  const p = adapter.params;
  const opt = squadOptimizer(p, o.weightDecay, resumed ? { moments: resumed.moments, step: resumed.optimizerStep } : undefined);
  const graph = o.layers > 0 ? new TextEncoderGraph(enc, o.layers) : null;
  try {
    for (let step = resumed?.state.step ?? 0; step < totalSteps; step++) {
      const t0 = Date.now();
      const epoch = Math.floor(step / stepsPerEpoch);
      const part = Array.from(batcher.nextIndices(), (i) => features[i]);
      const lr = learningRate(step, { peakLr: o.lr, totalSteps, warmupSteps: o.warmupSteps, kind: 'cosine' });
      const { loss, gradNorm, tokens } = await squadStep(enc, p, graph, opt, part, lr);
      onStep({ step: step + 1, totalSteps, epoch, loss, lr, grad_norm: gradNorm, windows: part.length, tokens, ms: Date.now() - t0 });
      if (run && run.saveEvery > 0 && (step + 1) % run.saveEvery === 0) {
        const state: RunState = { step: step + 1, totalSteps, data: batcher.state(), fingerprint: run.fingerprint };
        const dir = await saveCheckpoint(run.out, adapter, opt, state, run.keepLast);
        run.onCheckpoint?.(dir); // (not as its argument: `f?.(x)` skips x when f is undefined)
      }
    }
  } catch (e) {
    graph?.release();
    adapter.dispose();
    throw e;
  } finally {
    opt.dispose();
  }
  return p;
}

/** The folder's default adapter path. */
export const adapterPathIn = (out: string) => nodePath.join(out, 'adapter.safetensors');
