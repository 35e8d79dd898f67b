// Generation on the real stories260K model: the documented greedy text, byte for byte, from the
// llama2.c v0 and v1 files and the Hugging Face folder; seeded sampling is reproducible.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { convertLlama2cToHf } from '../tools/llama2c-to-hf';
import { generate, generateTokens } from '../lib/generate/generate';
import { Llama } from '../lib/model/llama';
import { loadTokenizer } from '../lib/tokenizer';
import { repoRoot } from './util/paths';
import { expectedGreedyText, stories } from './util/stories';

async function collect(it: AsyncIterable<string>): Promise<string> {
  let s = '';
  for await (const piece of it) s += piece;
  return s;
}

describe('generation (stories260K)', function () {
  const tokenizer = loadTokenizer(stories.tokenizer);
  const expected = expectedGreedyText();

  for (const [name, file] of Object.entries({ v0: stories.v0, v1: stories.v1, hf: stories.hf })) {
    it(`greedy output of the ${name} checkpoint equals stories260K.md`, async () => {
      const model = await Llama.load(file);
      try {
        // run.c runs 256 positions from BOS: 256 new tokens (a token sampled at each of positions 0..255)
        const text = await collect(generate(model, tokenizer, '', { temperature: 0, maxTokens: 256 }));
        expect(text).to.equal(expected);
      } finally {
        model.dispose();
      }
    });
  }

  it('both RoPE layouts give the same logits: llama2.c (pairs) vs Hugging Face (halves, permuted rows)', async () => {
    const ids = tokenizer.encode('Once upon a time, there was a little girl named Lily.', { bos: true });
    const logitsOf = async (file: string) => {
      const model = await Llama.load(file);
      const cache = model.newCache(64);
      try {
        const t = model.forward(ids, cache, { allLogits: true });
        const v = (await t.read()) as Float32Array;
        t.dispose();
        return v;
      } finally {
        cache.dispose();
        model.dispose();
      }
    };
    const a = await logitsOf(stories.v0);
    const b = await logitsOf(stories.hf);
    expect(a.length).to.equal(ids.length * 512);
    let worst = 0;
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
    expect(worst).to.be.below(1e-4); // float32: the two layouts round differently
    const v1 = await logitsOf(stories.v1);
    expect(Array.from(v1)).to.deep.equal(Array.from(a)); // the same layout and values: bit for bit
    // the same model converted to a sharded Hugging Face folder
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-shards-'));
    try {
      convertLlama2cToHf(stories.v0, dir, { shards: 3 });
      expect(fs.existsSync(path.join(dir, 'model.safetensors.index.json'))).to.equal(true);
      expect(Array.from(await logitsOf(dir))).to.deep.equal(Array.from(b));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('bf16 storage halves the weights\' memory', async () => {
    const f32 = await Llama.load(stories.v0);
    const bf16 = await Llama.load(stories.v0, { dtype: 'bf16' });
    try {
      const bytes = (m: Llama) => m.checkpoint.weights.layers.reduce((s, l) => s + l.wq.bytes + l.w1.bytes + l.w2.bytes, 0);
      expect(bytes(bf16) * 2).to.equal(bytes(f32));
      expect(bf16.checkpoint.weights.layers[0].wq.dtype).to.equal('bf16');
      expect(bf16.checkpoint.weights.finalNorm.dtype).to.equal('f32');
    } finally {
      f32.dispose();
      bf16.dispose();
    }
  });

  it('bf16 weights give nearly the same greedy text', async () => {
    const model = await Llama.load(stories.v0, { dtype: 'bf16' });
    try {
      const text = await collect(generate(model, tokenizer, '', { temperature: 0, maxTokens: 40 }));
      // bf16 rounding may flip a late argmax, but the opening is the model's own
      expect(text.startsWith('Once upon a time')).to.equal(true, text);
    } finally {
      model.dispose();
    }
  });

  it('the same seed gives the same text, another seed another', async () => {
    const model = await Llama.load(stories.v0);
    try {
      const opts = { temperature: 1, topP: 0.9, maxTokens: 60 };
      const a = await collect(generate(model, tokenizer, 'Once upon a time', { ...opts, seed: 7 }));
      const b = await collect(generate(model, tokenizer, 'Once upon a time', { ...opts, seed: 7 }));
      const c = await collect(generate(model, tokenizer, 'Once upon a time', { ...opts, seed: 8 }));
      expect(a).to.equal(b);
      expect(a).to.not.equal(c);
      expect(a.length).to.be.greaterThan(20);
    } finally {
      model.dispose();
    }
  });

  it('continues a prompt without repeating it, and prefill equals token-by-token decoding', async () => {
    const model = await Llama.load(stories.v0);
    try {
      const prompt = tokenizer.encode('Once upon a time', { bos: true });
      const ids: number[] = [];
      for await (const id of generateTokens(model, prompt, { temperature: 0, maxTokens: 20 })) ids.push(id);
      // the greedy continuation from BOS starts with the prompt's own tokens
      const fromBos: number[] = [];
      for await (const id of generateTokens(model, [1], { temperature: 0, maxTokens: 24 })) fromBos.push(id);
      expect(fromBos.slice(0, 4)).to.deep.equal(prompt.slice(1));
      expect(ids).to.deep.equal(fromBos.slice(4, 24));
    } finally {
      model.dispose();
    }
  });

  it('stops at max tokens and honours maxTokens 0', async () => {
    const model = await Llama.load(stories.v0);
    try {
      const ids: number[] = [];
      for await (const id of generateTokens(model, [1], { temperature: 0, maxTokens: 5 })) ids.push(id);
      expect(ids.slice(0, 4)).to.deep.equal([403, 407, 261, 378]); // "Once upon a time"
      expect(ids).to.have.length(5);
      const none: number[] = [];
      for await (const id of generateTokens(model, [1], { temperature: 0, maxTokens: 0 })) none.push(id);
      expect(none).to.deep.equal([]);
    } finally {
      model.dispose();
    }
  });
});

describe('CLI generate / tokenize', function () {
  const cli = path.join(repoRoot, 'dist', 'lib', 'cli', 'main.js');
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

  it('generate streams the greedy continuation to stdout', () => {
    const r = run('generate', '--model', stories.v0, '--tokenizer', stories.tokenizer, '--prompt', '', '--temperature', '0', '--max-tokens', '256');
    expect(r.status, r.stderr).to.equal(0);
    expect(r.stdout).to.equal(expectedGreedyText() + '\n');
  });

  it('generate with a seed is reproducible from the command line', () => {
    const args = ['generate', '--model', stories.v0, '--tokenizer', stories.tokenizer, '--prompt', 'Lily', '--temperature', '0.8', '--top-p', '0.9', '--seed', '42', '--max-tokens', '30'];
    const a = run(...args);
    const b = run(...args);
    expect(a.status, a.stderr).to.equal(0);
    expect(a.stdout).to.equal(b.stdout);
    expect(a.stdout.startsWith('Lily')).to.equal(false); // the prompt is not echoed
  });

  it('generate --dtype bf16 --matmul-precision medium runs the prompt through the bf16 products', () => {
    // a prompt of more than 8 tokens: its prefill is a matrix product, where the precision applies
    const prompt = 'Once upon a time, there was a little girl named Lily. She liked to play';
    const args = ['generate', '--model', stories.v0, '--tokenizer', stories.tokenizer, '--dtype', 'bf16', '--prompt', prompt, '--temperature', '0', '--max-tokens', '20'];
    const medium = run(...args, '--matmul-precision', 'medium');
    expect(medium.status, medium.stderr).to.equal(0);
    expect(medium.stdout.trim().length).to.be.above(0);
    expect(medium.stderr).to.not.match(/warning/);
    // over f32 weights the flag changes nothing, and says so
    const f32 = run(...args.map((a) => (a === 'bf16' ? 'f32' : a)), '--matmul-precision', 'medium');
    expect(f32.status, f32.stderr).to.equal(0);
    expect(f32.stderr).to.match(/warning: --matmul-precision medium applies to bf16 weights only/);
  });

  it('tokenize prints the ids as JSON without BOS', () => {
    const r = run('tokenize', '--tokenizer', stories.tokenizer, 'Once upon a time');
    expect(r.status, r.stderr).to.equal(0);
    expect(JSON.parse(r.stdout)).to.deep.equal([403, 407, 261, 378]);
  });

  it('bad flags give a clear error and exit code 2', () => {
    const unknown = run('generate', '--model', stories.v0, '--prompt', 'x', '--bogus', '1');
    expect(unknown.status).to.equal(2);
    expect(unknown.stderr).to.match(/Unknown option '--bogus'/);
    const badTemp = run('generate', '--model', stories.v0, '--prompt', 'x', '--temperature=-1');
    expect(badTemp.status).to.equal(2);
    expect(badTemp.stderr).to.match(/--temperature must be a number >= 0, got '-1'/);
    const noModel = run('generate', '--prompt', 'x');
    expect(noModel.status).to.equal(2);
    expect(noModel.stderr).to.match(/--model is required/);
    const missing = run('generate', '--model', '/nonexistent/model.bin', '--prompt', 'x');
    expect(missing.status).to.equal(1);
    expect(missing.stderr).to.match(/nonexistent/);
    const badPrecision = run('generate', '--model', stories.v0, '--prompt', 'x', '--matmul-precision', 'fast');
    expect(badPrecision.status).to.equal(2);
    expect(badPrecision.stderr).to.match(/--matmul-precision must be highest or medium, got 'fast'/);
    const cmd = run('frobnicate');
    expect(cmd.status).to.equal(2);
    expect(cmd.stderr).to.match(/unknown command 'frobnicate'/);
  });
});
