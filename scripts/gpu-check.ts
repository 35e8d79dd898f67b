// The GPU check: `npm run gpu:check` prepares everything one call of the device tool needs and prints
// that call; `npm run gpu:check -- --dry-run` also builds and runs here what can run without a GPU.
//
// The device tool (`run`, with `status` and `give_back`) is a tool of the development workplace,
// callable only by the session that holds it — not from a script, and not from CI. So this script
// never calls it: it prepares, and the lead makes the one call it prints:
//
//   run(command: "bash .gpu-check/run.sh --budget 360", carry: [".gpu-check"], kind: "nvidia-h100-x1", timeout_s: 450)
//
// The call names the machine kind (--kind nvidia-h100-x1 | nvidia-h200; default nvidia-h100-x1),
// and whatever GPU comes, every peak and bound in the report (MFU, the decode bound) is looked up by
// the GPU's name as the device reports it (bench/gpu-peaks.ts: H100 SXM/PCIe/NVL, H200 SXM/NVL;
// another GPU gets an estimate from its attributes, marked so, or "unknown"). run.sh keeps to 360 s
// (planned per phase, a failed build going straight to the report), so that a fix and a rerun fit
// in the session's 15 minutes of device time.
//
// What travels: the working tree (tracked and untracked-not-ignored files: the sources, the scripts,
// bench/torch_peft_step.py, test/golden) and the ignored folder .gpu-check/ named in `carry`, made
// here:
//   node.xz          this machine's node binary, xz-compressed (the device machine has no node)
//   node_modules/    only what runs there: node-gyp-build, yaml, mocha, chai and their dependencies,
//                    node-addon-api and node-api-headers (the N-API headers the addon builds against)
//   dist/            the compiled JavaScript (npm run build:ts), without source maps and .d.ts
//   data/            stories260K (model, tok512, its card) from ../shared/data, which does not travel
//                    otherwise, and batches-7b.json: Alpaca micro-batches of 4, 8 and 16 examples
//                    tokenised here with the LLaMA tokenizer (up to 512 tokens), the same for ours and
//                    PyTorch's side
//   run.sh           a copy of scripts/gpu-check-run.sh: the phases, their time budgets, the report
//   manifest.json    what was prepared, when, from which commit, the sizes
// There, run.sh unpacks node, builds the addon with nvcc (CMake, sm_90) in a temp dir, finds
// cuBLASLt and NCCL in python3's nvidia wheels (LLAMA_ADAPTER_CUBLASLT, LLAMA_ADAPTER_NCCL), runs the
// GPU op tests, the cpu-vs-cuda parity check, NCCL with one rank, the 7B benchmark (bench/gpu-7b.ts),
// the CLIP ViT-L/14 encoder and the 7B image-conditioned step (bench/gpu-mm.ts), the 7B adapter step
// on a Q4_K base (bench/gpu-q4k.ts: B = 4, 4 x 512 with checkpointing, B = 16), and PyTorch on the
// same batches (bench/torch_peft_step.py: the plain PyTorch baseline of bench/torch_plain_adapter.py,
// then PEFT's AdaptionPrompt when transformers and PEFT work), and prints two tables (the comparison;
// the phases with their device time and GEMM engine), also written to $OUT/gpu-check.md and
// $OUT/gpu-check.json.
//
//   node dist/scripts/gpu-check.js [--dry-run] [--keep] [--steps N] [--kind nvidia-h100-x1|nvidia-h200]
//   node dist/scripts/gpu-check.js report --results DIR --out DIR [--prepared DIR] [--no-gpu]
//                                                               (run.sh's last phase)
//
// --dry-run: after preparing, runs `bash .gpu-check/run.sh --no-gpu` here with a temp OUT and work
// dir: node unpacked from node.xz, the addon compiled with nvcc and CMake exactly as on the device
// (into the temp dir; build/Release is never touched), its capabilities read, the report written
// with every GPU figure "not run (no GPU)"; and the PyTorch scripts byte-compiled. Then it
// prints the sizes and the call. --keep keeps the temp dir.
//
// This file imports nothing that loads the native addon: the report must work when the build failed.
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Batch, Batcher, loadAlpaca, promptOf, tokenizeRecords } from '../lib/data/alpaca';
import { loadTokenizer } from '../lib/tokenizer';
import { ADAPTER_STEP_FLOPS_FORMULA, decodeWeightBytes, LLAMA_7B } from '../bench/flops';
import { DEVICE_KINDS, DeviceKind, gpuPeaks } from '../bench/gpu-peaks';
import type { CudaDeviceAttributes } from '../lib/native';

const repoRoot = path.resolve(__dirname, '..', '..');
const PREP = '.gpu-check';
const MIB = 1 << 20;
/** the device tool's limit on what travels (working tree + carried paths) */
const TRAVEL_LIMIT = 64 * MIB;
const TRAVEL_WARN = 55 * MIB;
/** run.sh's budget: the whole run, planned to leave a rerun's worth of the session's device time */
export const RUN_BUDGET_S = 360;
/** The device call: the budget plus room for the report and the kill of a stuck phase, well under
 *  the tool's 600 s; `kind` names the machine, so that the GPU is the one the plan expects. */
export function runCall(kind: DeviceKind): { command: string; carry: string[]; kind: DeviceKind; timeout_s: number } {
  return { command: `bash ${PREP}/run.sh --budget ${RUN_BUDGET_S}`, carry: [PREP], kind, timeout_s: RUN_BUDGET_S + 90 };
}
export const DEFAULT_KIND: DeviceKind = 'nvidia-h100-x1';

/** The call as printed for the lead to make. */
export function formatCall(kind: DeviceKind): string {
  const c = runCall(kind);
  return `run(command: ${JSON.stringify(c.command)}, carry: ${JSON.stringify(c.carry)}, kind: ${JSON.stringify(c.kind)}, timeout_s: ${c.timeout_s})`;
}
/** micro-batch sizes of the benchmark and the timed steps of each */
const MICRO = [4, 8, 16];

const log = (s: string) => process.stderr.write(s + '\n');
const now = () => Number(process.hrtime.bigint()) / 1e9;

// ---- sizes --------------------------------------------------------------------------------------

function duBytes(p: string): number {
  const st = fs.lstatSync(p);
  if (!st.isDirectory()) return st.isFile() ? st.size : 0;
  return fs.readdirSync(p).reduce((n, e) => n + duBytes(path.join(p, e)), 0);
}

/** Bytes of the working tree that travels: tracked and untracked-not-ignored files. */
function treeBytes(): { bytes: number; files: number } {
  const out = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: repoRoot, maxBuffer: 64 * MIB });
  let bytes = 0;
  let files = 0;
  for (const f of out.toString('utf8').split('\0').filter(Boolean)) {
    try {
      const st = fs.lstatSync(path.join(repoRoot, f));
      if (st.isFile()) {
        bytes += st.size;
        files++;
      }
    } catch {
      /* deleted in the work tree */
    }
  }
  return { bytes, files };
}

const mib = (b: number) => `${(b / MIB).toFixed(1)} MiB`;

// ---- preparation ----------------------------------------------------------------------------------

/** node.xz, reused while the binary it was made from is unchanged. */
function packNode(dir: string): { seconds: number; reused: boolean; source: string } {
  const src = fs.realpathSync(process.execPath);
  const st = fs.statSync(src);
  const stamp = JSON.stringify({ path: src, size: st.size, mtimeMs: st.mtimeMs, version: process.version });
  const xzFile = path.join(dir, 'node.xz');
  const stampFile = path.join(dir, 'node.source.json');
  if (fs.existsSync(xzFile) && fs.existsSync(stampFile) && fs.readFileSync(stampFile, 'utf8') === stamp)
    return { seconds: 0, reused: true, source: src };
  const t0 = now();
  log(`gpu-check: compressing ${src} (${mib(st.size)}, node ${process.version}) with xz -T2 -6 ...`);
  const tmp = xzFile + '.tmp';
  const fd = fs.openSync(tmp, 'w');
  try {
    const r = spawnSync('xz', ['-T2', '-6', '-c', src], { stdio: ['ignore', fd, 'inherit'] });
    if (r.error) throw new Error(`xz could not run: ${r.error.message} (apt-get install xz-utils)`);
    if (r.status !== 0) throw new Error(`xz failed (status ${r.status})`);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, xzFile);
  fs.writeFileSync(stampFile, stamp);
  return { seconds: now() - t0, reused: false, source: src };
}

/** The packages a name needs at run time, resolved as Node would from the root node_modules. */
export function packageClosure(nodeModules: string, roots: string[]): string[] {
  const seen = new Set<string>();
  const visit = (name: string, from: string) => {
    // nested node_modules first, then the top level (npm's layout)
    const candidates = [path.join(from, 'node_modules', name), path.join(nodeModules, name)];
    const dir = candidates.find((c) => fs.existsSync(path.join(c, 'package.json')));
    if (!dir) throw new Error(`gpu-check: package ${name} (needed by ${path.relative(nodeModules, from) || 'the check'}) is not installed: npm ci`);
    const rel = path.relative(nodeModules, dir);
    if (seen.has(rel)) return;
    seen.add(rel);
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
    for (const dep of Object.keys(pkg.dependencies ?? {})) visit(dep, dir);
    for (const dep of Object.keys(pkg.optionalDependencies ?? {})) {
      try {
        visit(dep, dir);
      } catch {
        /* optional and absent */
      }
    }
  };
  for (const r of roots) visit(r, nodeModules);
  // a package nested inside another one travels with its parent's folder
  return [...seen].filter((p) => !/\/node_modules\//.test(p.replace(/^@[^/]+\//, ''))).sort();
}

/** The packages the device run needs: loading the addon, the train config, the op tests, the build. */
export const RUNTIME_PACKAGES = ['node-gyp-build', 'yaml', 'mocha', 'chai', 'node-addon-api', 'node-api-headers'];

function copyTree(src: string, dst: string, skip: (rel: string) => boolean, rel = ''): number {
  const st = fs.lstatSync(src);
  if (st.isSymbolicLink()) {
    fs.symlinkSync(fs.readlinkSync(src), dst);
    return 0;
  }
  if (!st.isDirectory()) {
    fs.copyFileSync(src, dst);
    return st.size;
  }
  fs.mkdirSync(dst, { recursive: true });
  let n = 0;
  for (const e of fs.readdirSync(src)) {
    const r = rel ? `${rel}/${e}` : e;
    if (!skip(r)) n += copyTree(path.join(src, e), path.join(dst, e), skip, r);
  }
  return n;
}

/** dist/ must be newer than every TypeScript source it is compiled from. */
function staleDist(): string[] {
  const stale: string[] = [];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(path.join(repoRoot, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory()) walk(rel);
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) {
        const js = path.join(repoRoot, 'dist', rel.replace(/\.ts$/, '.js'));
        if (!fs.existsSync(js) || fs.statSync(js).mtimeMs + 1 < fs.statSync(path.join(repoRoot, rel)).mtimeMs) stale.push(rel);
      }
    }
  };
  for (const d of ['lib', 'bench', 'scripts', 'test']) walk(d);
  return stale;
}

function dataDir(): string {
  return process.env.LLAMA_ADAPTER_DATA ?? path.resolve(repoRoot, '..', 'shared', 'data');
}

interface JsonBatch {
  ids: number[][];
  labels: number[][];
}

function toJson(b: Batch): JsonBatch {
  const S = b.segments.length - 1;
  const r: JsonBatch = { ids: [], labels: [] };
  for (let s = 0; s < S; s++) {
    r.ids.push(Array.from(b.tokens.subarray(b.segments[s], b.segments[s + 1])));
    r.labels.push(Array.from(b.labels.subarray(b.segments[s], b.segments[s + 1])));
  }
  return r;
}

/** The benchmark's micro-batches: the Alpaca sample, the LLaMA tokenizer, up to 512 tokens. */
function writeBatches(file: string, steps: number, seed = 1234): { tokensPerExample: number; longest: number; source: string } {
  const data = dataDir();
  const tokPath = path.join(data, 'llama-tokenizer', 'tokenizer.model');
  const alpaca = path.join(data, 'alpaca', 'alpaca_small.json');
  const tok = loadTokenizer(tokPath);
  const records = loadAlpaca(alpaca);
  const maxSeqLen = 512;
  const { examples } = tokenizeRecords(tok, records, { maxSeqLen, warn: () => {} });
  const micro = MICRO.map((B) => {
    const batcher = new Batcher(examples, { batchSize: B, seed, shuffle: true });
    const timed = Array.from({ length: steps }, () => batcher.next());
    // warm-up on the longest timed batch: allocation pools then hold what every timed step needs
    const warm = timed.reduce((a, b) => (b.tokens.length > a.tokens.length ? b : a));
    return { B, warmup: toJson(warm), steps: timed.map(toJson) };
  });
  const source =
    `${path.basename(alpaca)} (${records.length} records), LLaMA tokenizer, truncated to ${maxSeqLen} tokens, ` +
    `Batcher seed ${seed}: ${steps} timed micro-batches per size`;
  const decodePrompt = tok.encode(promptOf(records[0]), { bos: true });
  fs.writeFileSync(file, JSON.stringify({ source, maxSeqLen, micro, decodePrompt }));
  const lens = examples.map((e) => e.ids.length);
  return { tokensPerExample: lens.reduce((a, b) => a + b, 0) / lens.length, longest: Math.max(...lens), source };
}

interface Prepared {
  dir: string;
  sizes: Record<string, number>;
  total: number;
  tree: { bytes: number; files: number };
  seconds: Record<string, number>;
}

function prepare(opts: { steps: number; kind: DeviceKind }): Prepared {
  const dir = path.join(repoRoot, PREP);
  fs.mkdirSync(dir, { recursive: true });
  const seconds: Record<string, number> = {};
  const stale = staleDist();
  if (stale.length) throw new Error(`dist/ is older than ${stale.slice(0, 5).join(', ')}${stale.length > 5 ? ', ...' : ''}: run npm run build:ts first`);

  const node = packNode(dir);
  seconds['node.xz'] = node.seconds;
  log(`gpu-check: node.xz ${node.reused ? 'reused (same binary)' : `made in ${node.seconds.toFixed(1)} s`}`);

  let t0 = now();
  const nm = path.join(dir, 'node_modules');
  fs.rmSync(nm, { recursive: true, force: true });
  fs.mkdirSync(nm, { recursive: true });
  const pkgs = packageClosure(path.join(repoRoot, 'node_modules'), RUNTIME_PACKAGES);
  // documentation (licences kept), type declarations and source maps are not needed to run; the
  // check calls node_modules/mocha/bin/mocha.js directly (no node_modules/.bin)
  const skip = (rel: string) => !/(^|\/)LICEN[CS]E/i.test(rel) && /\.(md|markdown|map|d\.ts|d\.mts|d\.cts)$/i.test(rel);
  for (const p of pkgs) copyTree(path.join(repoRoot, 'node_modules', p), path.join(nm, p), skip);
  seconds.node_modules = now() - t0;

  t0 = now();
  const dist = path.join(dir, 'dist');
  fs.rmSync(dist, { recursive: true, force: true });
  copyTree(path.join(repoRoot, 'dist'), dist, (r) => /\.(map|d\.ts)$/.test(r));
  seconds.dist = now() - t0;

  t0 = now();
  const data = path.join(dir, 'data');
  fs.rmSync(data, { recursive: true, force: true });
  fs.mkdirSync(path.join(data, 'stories260K'), { recursive: true });
  for (const f of ['stories260K.bin', 'tok512.bin', 'stories260K.md'])
    fs.copyFileSync(path.join(dataDir(), 'stories260K', f), path.join(data, 'stories260K', f));
  const batches = writeBatches(path.join(data, 'batches-7b.json'), opts.steps);
  seconds.data = now() - t0;
  log(`gpu-check: ${batches.source}; ${batches.tokensPerExample.toFixed(0)} tokens per example on average, the longest ${batches.longest}`);

  fs.copyFileSync(path.join(repoRoot, 'scripts', 'gpu-check-run.sh'), path.join(dir, 'run.sh'));
  fs.chmodSync(path.join(dir, 'run.sh'), 0o755);

  const sizes: Record<string, number> = {
    'node.xz': duBytes(path.join(dir, 'node.xz')),
    node_modules: duBytes(nm),
    dist: duBytes(dist),
    data: duBytes(data),
    'run.sh': duBytes(path.join(dir, 'run.sh')),
  };
  let git = 'unknown';
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: repoRoot }).toString().trim();
    const dirty = execFileSync('git', ['status', '--porcelain'], { cwd: repoRoot }).toString().split('\n').filter(Boolean).length;
    git = `${head}${dirty ? ` + ${dirty} changed/untracked files` : ''}`;
  } catch {
    /* not a git checkout */
  }
  fs.writeFileSync(
    path.join(dir, 'manifest.json'),
    JSON.stringify({
      prepared: new Date().toISOString(), git, node: process.version, packages: pkgs, sizes, batches,
      kind: opts.kind, budgetSeconds: RUN_BUDGET_S, call: runCall(opts.kind),
    }, null, 1) + '\n',
  );
  // out/ holds a local --no-gpu run's results when run.sh is run by hand without OUT: not carried
  fs.rmSync(path.join(dir, 'out'), { recursive: true, force: true });
  const total = duBytes(dir);
  return { dir, sizes, total, tree: treeBytes(), seconds };
}

// ---- the report ---------------------------------------------------------------------------------

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function readJson(file: string): Json | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
}

function readText(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
}

export interface ReportTable {
  columns: string[];
  rows: string[][];
  notes: string[];
}

export function formatMarkdown(t: ReportTable, title: string): string {
  const widths = t.columns.map((c, i) => Math.max(c.length, ...t.rows.map((r) => (r[i] ?? '').length), 3));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|')}|`;
  return [`### ${title}`, '', line(t.columns), rule, ...t.rows.map(line), '', ...t.notes.map((n) => `- ${n}`), ''].join('\n');
}

/** run.sh's phases in the order they run */
export const PHASES = ['env', 'node', 'build', 'info', 'tests', 'parity', 'nccl', 'nccl-gpu', 'gemm-lt', 'gemm-own', 'ours7b', 'clip', 'mm7b', 'q4k7b', 'torch'];
const phaseRank = (p: string) => (PHASES.indexOf(p) + PHASES.length + 1) % (PHASES.length + 1);

const GIB = 2 ** 30;
const f0 = (x: number) => x.toFixed(0);
const f1 = (x: number) => x.toFixed(1);
const exp = (x: number) => (Number.isFinite(x) ? x.toExponential(1) : String(x));

/** The GPU the check ran on: nvidia-smi's name (env.json), else the addon's device 0 (info.json). */
export function deviceOf(env: Json, info: Json | undefined): { name: string; attrs?: Partial<CudaDeviceAttributes> } {
  const attrs = info?.capabilities?.cuda?.deviceList?.[0] as Partial<CudaDeviceAttributes> | undefined;
  const smi = typeof env.gpu === 'string' ? env.gpu.split('\n')[0].split(',')[0].trim() : '';
  return { name: smi || attrs?.name || '', attrs };
}

export interface Report {
  /** the comparison */
  table: ReportTable;
  /** per phase: status, seconds, elapsed device time at its end, the GEMM engine at its end */
  phaseTable: ReportTable;
  json: Json;
  title: string;
  phaseTitle: string;
}

/** The tables and the JSON from run.sh's results folder (`noGpu`: the --no-gpu run of --dry-run). */
export function buildReport(resDir: string, outDir: string, noGpu: boolean, preparedDir?: string): Report {
  const manifest = preparedDir ? readJson(path.join(preparedDir, 'manifest.json')) : undefined;
  const batchesSource: string | undefined = manifest?.batches?.source;
  const phases: Record<string, { status: string; seconds?: number; elapsed?: number }> = {};
  for (const f of fs.existsSync(resDir) ? fs.readdirSync(resDir) : [])
    if (f.endsWith('.status')) {
      const name = f.slice(0, -'.status'.length);
      const secs = readText(path.join(resDir, `${name}.seconds`));
      const el = readText(path.join(resDir, `${name}.elapsed`));
      phases[name] = { status: readText(path.join(resDir, f)) ?? '?', ...(secs ? { seconds: Number(secs) } : {}), ...(el ? { elapsed: Number(el) } : {}) };
    }
  const r = (name: string) => readJson(path.join(resDir, `${name}.json`));
  const env = r('env') ?? {};
  const info = r('info');
  const parity = r('parity');
  const nccl = r('nccl');
  const ncclGpu = r('nccl-gpu');
  const gemmLt = r('gemm-lt');
  const gemmOwn = r('gemm-own');
  const ours = r('ours7b');
  const clip = r('clip');
  const mm = r('mm7b');
  const q4k = r('q4k7b');
  const torch = r('torch');
  const plain = torch?.plain as Json | undefined;
  const peft = torch?.peft as Json | undefined;

  // the GPU and its peaks (bench/gpu-peaks.ts): every MFU and bound below divides by these
  const device = deviceOf(env, info);
  const gpuName = device.name || (noGpu ? 'no GPU' : 'unknown GPU');
  const peaks = gpuPeaks(device.name, device.attrs);
  const kind: string | undefined = manifest?.kind;
  const expected = kind ? DEVICE_KINDS[kind as DeviceKind] : undefined;
  const kindMismatch = !!(device.name && expected && !device.name.includes(expected));

  /** what a cell says when its phase gave no figure */
  const why = (phase: string, errors?: string[], skipped?: string[], match?: string): string => {
    const e = errors?.find((x) => !match || x.includes(match));
    if (e) return `failed: ${e.slice(0, 90)}`;
    const s = skipped?.find((x) => !match || x.includes(match));
    if (s) return `skipped: ${s.replace(/^[^:]*: /, '')}`;
    const st = phases[phase]?.status;
    if (noGpu && (!st || st.startsWith('not run'))) return 'not run (no GPU)';
    if (!st) return 'not run';
    return st === 'ok' ? 'not measured' : st;
  };
  /** PyTorch's two sides: PEFT that did not run says why in every cell */
  const torchWhy = (side: Json | undefined, match: string) => {
    if (side?.notRun) return `not run: ${String(side.notRun).slice(0, 80)}`;
    return why('torch', [...(side?.errors ?? []), ...(torch?.errors ?? [])], [...(side?.skipped ?? []), ...(torch?.skipped ?? [])], match);
  };
  const mfuOf = (x: Json) => (peaks.bf16Flops ? (x.tflops * 1e12) / peaks.bf16Flops : undefined);
  const mfuCell = (x: Json) => {
    const m = mfuOf(x);
    return m !== undefined ? `${f1(100 * m)}% (${f0(x.tflops)})` : `unknown peak (${f0(x.tflops)})`;
  };
  const ONLY_OURS = ['–', '–', '–', '–'];

  const rows: string[][] = [];
  const trainRow = (json: Json | undefined, B: number) =>
    (json?.train as Json[] | undefined)?.find((t) => t.B === B && !t.checkpointing);
  for (const B of MICRO) {
    const o = trainRow(ours, B);
    const tp = trainRow(plain, B);
    const te = trainRow(peft, B);
    const cell = (x: Json | undefined, f: (x: Json) => string, missing: () => string) => (x ? f(x) : missing());
    const oursMissing = () => why('ours7b', ours?.errors, ours?.skipped, `B=${B}`);
    const ratio = (t: Json | undefined, f: (x: Json) => number | undefined, better: 'higher' | 'lower') => {
      const a = o && f(o);
      const b = t && f(t);
      return a !== undefined && b !== undefined && a && b ? `${(better === 'higher' ? a / b : b / a).toFixed(2)}x` : '–';
    };
    const tokens = o ?? tp ?? te;
    const row = (label: string, f: (x: Json) => string, num: (x: Json) => number | undefined, better: 'higher' | 'lower') => [
      label,
      cell(o, f, oursMissing),
      cell(tp, f, () => torchWhy(plain, `B=${B}`)),
      cell(te, f, () => torchWhy(peft, `B=${B}`)),
      ratio(tp, num, better),
      ratio(te, num, better),
    ];
    rows.push(row(`B=${B}: trained tok/s (ms/step)${tokens ? `, ${f0(tokens.tokens / tokens.steps)} tokens/step` : ''}`,
      (x) => `${f0(x.tokPerS)} (${f1(x.msPerStep)} ms)`, (x) => x.tokPerS, 'higher'));
    rows.push(row(`B=${B}: MFU (model TFLOP/s)`, mfuCell, mfuOf, 'higher'));
    rows.push(row(`B=${B}: peak GPU memory`, (x) => `${f1(x.peakBytes / GIB)} GiB`, (x) => x.peakBytes, 'lower'));
  }
  // ours with activation checkpointing at the smallest micro-batch (PyTorch: as above)
  const ck = (ours?.train as Json[] | undefined)?.find((t) => t.checkpointing);
  rows.push([
    `B=${ck?.B ?? MICRO[0]} with checkpointing: tok/s, MFU, peak GPU memory`,
    ck ? `${f0(ck.tokPerS)} tok/s, ${mfuOf(ck) !== undefined ? `${f1(100 * mfuOf(ck)!)}%` : 'MFU unknown'}, ${f1(ck.peakBytes / GIB)} GiB` : why('ours7b', ours?.errors, ours?.skipped, 'checkpointing'),
    ...ONLY_OURS,
  ]);
  const decodeBytes = decodeWeightBytes(LLAMA_7B, 2);
  const bound = peaks.bandwidth ? peaks.bandwidth / decodeBytes : undefined;
  const dec = (x: Json | undefined, missing: () => string) =>
    x ? `${f1(x.tokPerS)} tok/s${bound ? `, ${f0((100 * x.tokPerS) / bound)}% of bound` : ''}` : missing();
  const decRatio = (t: Json | undefined) => (ours?.decode && t ? `${(ours.decode.tokPerS / t.tokPerS).toFixed(2)}x` : '–');
  rows.push([
    bound ? `decode, batch 1 (bound ${f0(bound)} tok/s at ${(peaks.bandwidth! / 1e12).toFixed(2)} TB/s)` : 'decode, batch 1 (no bound: the GPU\'s bandwidth is unknown)',
    dec(ours?.decode, () => why('ours7b', ours?.errors, ours?.skipped, 'decode')),
    dec(plain?.decode, () => torchWhy(plain, 'decode')),
    dec(peft?.decode, () => torchWhy(peft, 'decode')),
    decRatio(plain?.decode),
    decRatio(peft?.decode),
  ]);

  // the image phases (bench/gpu-mm.ts): ours only, on the same GPU
  const enc = clip?.encode as Json | undefined;
  rows.push([
    `CLIP ViT-L/14 image encoder, bf16, 224x224, batch ${enc?.batch ?? 32}: images/s (TFLOP/s), peak GPU memory`,
    enc ? `${f1(enc.imagesPerS)} images/s (${f0(enc.tflops)}), ${f1(enc.peakBytes / GIB)} GiB` : why('clip', clip?.errors, clip?.skipped, 'encode'),
    ...ONLY_OURS,
  ]);
  for (const B of [4, 16]) {
    const m = (mm?.train as Json[] | undefined)?.find((t) => t.B === B);
    rows.push([
      `B=${B}: 7B + CLIP ViT-L/14 features, image-conditioned step: tok/s (ms/step), peak GPU memory`,
      m ? `${f0(m.tokPerS)} (${f1(m.msPerStep)} ms), ${f1(m.peakBytes / GIB)} GiB` : why('mm7b', mm?.errors, mm?.skipped, `B=${B}`),
      ...ONLY_OURS,
    ]);
  }

  // the Q4_K base (bench/gpu-q4k.ts): ours only; the row names the GPU it ran on
  const onGpu = device.name ? ` on ${device.name}` : '';
  const q4kRuns: [string, (t: Json) => boolean, string][] = [
    ['B=4', (t) => t.batch === 'alpaca' && t.B === 4, 'B=4:'],
    ['B=4 x 512, checkpointing', (t) => t.batch === 'full', 'B=4 x'],
    ['B=16', (t) => t.batch === 'alpaca' && t.B === 16, 'B=16:'],
  ];
  for (const [label, pick, match] of q4kRuns) {
    const q = (q4k?.train as Json[] | undefined)?.find(pick);
    const full = label.includes('512');
    const gb = (b: number) => `${(b / 1e9).toFixed(2)} GB`;
    rows.push([
      `${label}: 7B Q4_K base, adapter step${onGpu}: tok/s (ms/step), peak GPU memory${full ? ' (target ≤ 8 GB)' : ''}`,
      q
        ? `${f0(q.tokPerS)} (${f1(q.msPerStep)} ms), ${gb(q.peakBytes)}` +
          (full ? ` (target ≤ ${gb(q4k!.targetBytes ?? 8e9)}: ${q.peakBytes <= (q4k!.targetBytes ?? 8e9) ? 'met' : 'NOT met'})` : '')
        : why('q4k7b', q4k?.errors, q4k?.skipped, match),
      ...ONLY_OURS,
    ]);
  }

  // GEMM: per shape, M = 4096 forward / backward TFLOP/s and M = 1 weight-read TB/s; PyTorch's
  // torch.matmul is plain PyTorch (its column)
  const g = (json: Json | undefined, name: string, M: number, op: string) =>
    (json?.gemm as Json[] | undefined)?.find((x) => x.name === name && x.M === M && x.op === op);
  const gemmCell = (json: Json | undefined, name: string) => {
    const fw = g(json, name, 4096, 'forward');
    const bw = g(json, name, 4096, 'backward');
    const m1 = g(json, name, 1, 'forward');
    if (!fw && !bw && !m1) return undefined;
    return `${fw ? f0(fw.tflops) : '–'}/${bw ? f0(bw.tflops) : '–'} TF, M=1 ${m1 ? (m1.weightGBs / 1e3).toFixed(2) : '–'} TB/s`;
  };
  // the engine that ran the phase: the one at its end (a cuBLASLt failure switches it midway)
  const engine = (json: Json | undefined, fallback: string) => {
    const e = json?.gpu?.gemmAtEnd ?? json?.gpu?.gemm;
    return e ? String(e).split(' ')[0] : fallback;
  };
  for (const [name, N, K] of [['wq/wk/wv/wo', 4096, 4096], ['w1/w3', 11008, 4096], ['w2', 4096, 11008], ['LM head', 32000, 4096]] as const) {
    const lt = gemmCell(gemmLt, name);
    const own = gemmCell(gemmOwn, name);
    const ourCell =
      lt || own
        ? [lt && `${engine(gemmLt, 'default')} ${lt}`, own && `${engine(gemmOwn, 'own')} ${own}`].filter(Boolean).join('; ')
        : why('gemm-lt', gemmLt?.errors, gemmLt?.skipped);
    rows.push([`GEMM ${name} (${N}x${K}) bf16, M=4096 fwd/bwd`, ourCell, gemmCell(torch, name) ?? why('torch', torch?.errors, torch?.skipped, 'gemm'), '–', '–', '–']);
  }
  rows.push([
    'NCCL all-reduce, 1,229,760 fp32 (7B adapter), 1 rank',
    ncclGpu || nccl
      ? [ncclGpu && `${ncclGpu.allreduceMs.toFixed(3)} ms GPU tensors`, nccl?.allreduceMs !== undefined && `${nccl.allreduceMs.toFixed(3)} ms host-staged`]
          .filter(Boolean)
          .join('; ')
      : why('nccl-gpu'),
    ...ONLY_OURS,
  ]);
  rows.push([
    'one stories260K training step through NCCL',
    nccl?.trainStepLoss !== undefined ? `loss ${Number(nccl.trainStepLoss).toFixed(4)} (${phases.nccl?.status ?? '?'})` : why('nccl'),
    ...ONLY_OURS,
  ]);
  const testsLog = readText(path.join(outDir, 'tests.log'));
  const count = (w: string) => testsLog?.match(new RegExp(`^\\s+(\\d+) ${w}`, 'm'))?.[1] ?? '0';
  rows.push([
    'GPU op tests (mocha, backend-parametrised)',
    testsLog && phases.tests && !phases.tests.status.startsWith('not run')
      ? `${count('passing')} passing, ${count('failing')} failing, ${count('pending')} pending (${phases.tests.status})` +
        (/\(skipped: /.test(testsLog) ? ', some suites SKIPPED (see Errors)' : '')
      : why('tests'),
    ...ONLY_OURS,
  ]);
  const par = (d: string) => {
    const p = parity?.[d];
    if (!p) return undefined;
    return `${d} ${p.pass ? 'PASS' : 'FAIL'} (loss ${exp(p.losses.maxRel)}, grads ${exp(Math.max(p.promptGradRel, p.gateGradRel))}, logits ${exp(p.logitsRel)})`;
  };
  rows.push([
    'parity cpu vs cuda, stories260K, 3 steps (max rel. diff.)',
    parity ? [par('f32'), par('bf16')].filter(Boolean).join('; ') : why('parity'),
    ...ONLY_OURS,
  ]);

  // per phase: the GEMM engine at its end, as the phase's program read it
  const engineAtEnd: Record<string, string | undefined> = {
    parity: parity?.gemmAtEnd,
    'nccl-gpu': ncclGpu?.gemmAtEnd,
    'gemm-lt': gemmLt?.gpu?.gemmAtEnd,
    'gemm-own': gemmOwn?.gpu?.gemmAtEnd,
    ours7b: ours?.gpu?.gemmAtEnd,
    clip: clip?.gpu?.gemmAtEnd,
    mm7b: mm?.gpu?.gemmAtEnd,
    q4k7b: q4k?.gpu?.gemmAtEnd,
  };
  if (info?.capabilities?.cuda?.gemm) engineAtEnd.info = info.capabilities.cuda.gemm;

  // the last error line a failed phase printed (its output is in RES/<phase>.out; PyTorch's in torch.log)
  const errors: string[] = [];
  const ordered = Object.entries(phases).sort(([a], [b]) => phaseRank(a) - phaseRank(b));
  for (const [name, ph] of ordered) {
    if (!/^(failed|timed out)/.test(ph.status)) continue;
    const text = readText(name === 'torch' ? path.join(outDir, 'torch.log') : name === 'build' ? path.join(outDir, 'build.log') : path.join(resDir, `${name}.out`)) ?? '';
    const lines = text.split('\n').filter((l) => /FAILED|Error\b|error:|failed|Error:/.test(l) && !/^\s+at /.test(l));
    // a build's first error is the cause (what follows it is the fallout); a program's last is its verdict
    const line = name === 'build' ? (lines.find((l) => /error|Error/.test(l)) ?? lines[0]) : lines.pop();
    errors.push(`${name} ${ph.status}${line ? `: ${line.trim().replace(/^[\w-]+: FAILED: (Error: )?/, '').slice(0, 200)}` : ''}`);
  }
  // a cuBLASLt that failed on the way: the phase's later matmuls ran on our kernel
  for (const [name, json] of [['gemm-lt', gemmLt], ['ours7b', ours], ['clip', clip], ['mm7b', mm], ['q4k7b', q4k]] as const) {
    const g0 = json?.gpu?.gemm;
    const g1 = json?.gpu?.gemmAtEnd;
    if (g0 && g1 && g0 !== g1) errors.push(`${name}: the GEMM engine changed from ${String(g0).split(' (')[0]} to ${g1}`);
  }
  if (peft?.notRun) errors.push(`PEFT not run: ${String(peft.notRun).slice(0, 300)}`);
  if (testsLog && /\(skipped: /.test(testsLog))
    errors.push(`tests: suites skipped: ${[...new Set(testsLog.match(/\(skipped: [^)]*\)/g) ?? [])].join(', ').slice(0, 300)}`);

  const v = torch?.versions as Json | undefined;
  const versions = v
    ? `torch ${v.torch} (CUDA ${v.cuda}), transformers ${v.transformers ?? 'not importable'}, peft ${v.peft ?? 'not importable'}`
    : 'not run';
  const allocator = info?.allocator ? `; device memory: ${info.allocator}` : '';
  const notes = [
    `${noGpu ? 'DRY RUN without a GPU: nothing was measured on a GPU; ' : ''}GPU: ${gpuName}${env.gpu ? ` (${env.gpu})` : ''}; ` +
      `device call kind: ${kind ?? 'not named'}${kindMismatch ? ` — NOTE: the call named ${kind} but the GPU is ${device.name}; every peak below is this GPU's` : ''}; ` +
      `${env.nvcc || 'nvcc ?'}; node ${info?.node ?? '?'}, addon ${info?.capabilities?.version ?? '?'}, cuda ${info?.capabilities?.cuda ? `available ${info.capabilities.cuda.available} (${info.capabilities.cuda.reason})` : '?'}${allocator}; ` +
      `cuBLASLt ${env.cublasLt || 'not found'}; NCCL ${env.nccl || 'not found'}; PyTorch side: ${versions}` +
      (peft?.model?.attn_implementation ? `, PEFT's attention ${peft.model.attn_implementation}` : '') +
      (plain?.model?.attention ? `, the plain baseline's attention ${plain.model.attention}` : '') + '.',
    `Peaks: ${noGpu && !device.name ? 'none (no GPU)' : peaks.note}.`,
    'Model: LLaMA-7B shape (dim 4096, 32 layers, 32 heads, FFN 11008, vocab 32000), random bf16 weights (uniform, std 0.02) made on the GPU; ' +
      'adapter L = 30 layers x K = 10 prompts. Ours: per-head tanh gates, f32 adapter and activations, packed batches (no padding), ' +
      'the LM head at the target rows only. PyTorch plain (bench/torch_plain_adapter.py, torch alone): the same math (per-head tanh gates, ' +
      'f32 prompts and gates, the LM head at the target rows), bf16 weights and activations, padded (B, longest) batches, ' +
      'F.scaled_dot_product_attention for the word branch. PyTorch + PEFT: LlamaForCausalLM + PEFT AdaptionPrompt (adapter_len 10, ' +
      'adapter_layers 30; a scalar gate per layer, bf16 adapter), padded batches, logits at every position; PEFT also recomputes the queries ' +
      'and runs the adapter output through o_proj. All: AdamW on the adapter only, the gradient norm read back each step.',
    `Batches: the same pre-tokenised micro-batches on every side (.gpu-check/data/batches-7b.json: ${batchesSource ?? 'Alpaca, LLaMA tokenizer, up to 512 tokens'}); ` +
      'one warm-up step on the longest, then the timed steps, each on its own batch; tok/s counts real (unpadded) tokens.',
    `MFU = model FLOPs per step / step time / ${peaks.bf16Flops ? `${(peaks.bf16Flops / 1e12).toFixed(1)} TFLOP/s (${gpuName} dense bf16, ${peaks.source})` : `the GPU's dense bf16 peak (unknown for ${gpuName}: MFU not given)`}, ` +
      `the same count for every side: ${ADAPTER_STEP_FLOPS_FORMULA}.`,
    `Peak memory: native.cudaMemory().peak (ours) and torch.cuda.max_memory_allocated() (PyTorch) over the warm-up and timed steps, the weights included.`,
    'Image phases (bench/gpu-mm.ts, ours only): the CLIP ViT-L/14 vision tower (24 layers of 1024, 257 tokens, projection 768) with random weights ' +
      'made on the GPU (matrices bf16), random normalised pixels, best of its runs after a warm-up batch, pixels uploaded to features read back; ' +
      'the image-conditioned step (SPEC §8) on the same Alpaca micro-batches with one image per example: random CLIP ViT-L/14-size features ' +
      '(1024), projection R = 128, per-segment prompts, L = 30, K = 10, AdamW on prompts, gates and projection, one warm-up step then 3 timed.',
    'Q4_K base (bench/gpu-q4k.ts, ours only): the LLaMA-7B shape with every matrix (embedding, attention, FFN, LM head) in Q4_K, ' +
      'random blocks made directly (fp16 d near 7.8e-5, dmin = 8d, sub-block scales 48..63 with centring mins, random nibbles: values of std 0.02), ' +
      'one host copy per matrix shape uploaded once per layer (each layer its own device copy, the same values); the adapter step as above ' +
      '(L = 30, K = 10, AdamW) on the Alpaca micro-batches, and on 4 sequences of 512 random tokens, every position a target, with activation ' +
      `checkpointing, for the ≤ 8 GB target; one warm-up step then 3 timed. GB = 10⁹ bytes.${q4k?.weights ? ` Q4_K weights on the GPU: ${(q4k.weights.bytes / 1e9).toFixed(2)} GB.` : ''}`,
    `Decode: greedy, batch 1, with the adapter, timed from the first generated token; ` +
      (bound ? `bound = ${(peaks.bandwidth! / 1e12).toFixed(2)} TB/s (${gpuName}, ${peaks.source}) / ` : 'no bound (the bandwidth is unknown); weights read per token: ') +
      `${(decodeBytes / 1e9).toFixed(2)} GB of weights per token (KV cache not counted).`,
    'GEMM: TF = TFLOP/s (2·M·N·K / time) at M = 4096 rows, forward y = x·wᵀ / backward dx = dy·w; M=1 = weight bytes read per second. ' +
      'Ours: x f32, w bf16 (the engine at the end of each run: the default engine, then LLAMA_ADAPTER_GEMM=own); PyTorch: torch.matmul with bf16 x.',
  ];
  if (errors.length) notes.push(`Errors: ${errors.join(' | ')}.`);
  const title = `GPU check: LLaMA-Adapter at the LLaMA-7B shape, ours vs PyTorch (plain and PEFT) — ${gpuName}`;
  const table = {
    columns: ['', `ours (llama-adapter, CUDA)`, 'PyTorch plain (same math)', 'PyTorch + PEFT AdaptionPrompt', 'ours / plain', 'ours / PEFT'],
    rows,
    notes,
  };

  // the phases: status, their own seconds, the device time elapsed at their end, the engine
  const budget = readText(path.join(resDir, 'budget')) ?? manifest?.budgetSeconds;
  const phaseTable: ReportTable = {
    columns: ['phase', 'status', 'seconds', 'elapsed at its end (s)', 'GEMM engine at its end'],
    rows: ordered.map(([name, ph]) => [
      name,
      ph.status,
      ph.seconds !== undefined ? String(ph.seconds) : '–',
      ph.elapsed !== undefined ? String(ph.elapsed) : '–',
      engineAtEnd[name] ?? '–',
    ]),
    notes: [
      `Elapsed: the device time since run.sh started${budget ? ` (its budget: ${budget} s)` : ''}; torch's seconds run from its start in the background (imports during the build, everything else after ours). ` +
        'A failed build stops every later phase and PyTorch\'s side; phases that did not fit the time left after the build are skipped, saying so.',
    ],
  };
  const phaseTitle = `Phases on ${gpuName} (elapsed device time per phase)`;
  const json = {
    date: new Date().toISOString(), dryRun: noGpu, prepared: manifest, kind: kind ?? null, gpu: { name: device.name, attributes: device.attrs ?? null, peaks },
    phases, env, info, parity, nccl, ncclGpu, gemm: { lt: gemmLt, own: gemmOwn }, ours, clip, mm7b: mm, q4k7b: q4k, torch, table, phaseTable,
  };
  return { table, phaseTable, json, title, phaseTitle };
}

/** Both tables as markdown. */
export function reportMarkdown(rep: Report): string {
  return formatMarkdown(rep.table, rep.title) + '\n' + formatMarkdown(rep.phaseTable, rep.phaseTitle);
}

function report(argv: string[]): void {
  const get = (k: string) => {
    const i = argv.indexOf(k);
    if (i < 0 || !argv[i + 1]) throw new Error(`report: ${k} DIR is required`);
    return argv[i + 1];
  };
  const res = get('--results');
  const out = get('--out');
  const pi = argv.indexOf('--prepared');
  const rep = buildReport(res, out, argv.includes('--no-gpu'), pi >= 0 ? argv[pi + 1] : undefined);
  const json = rep.json;
  const md = reportMarkdown(rep);
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'gpu-check.md'), md);
  fs.writeFileSync(path.join(out, 'gpu-check.json'), JSON.stringify(json, null, 1) + '\n');
  console.log(md);
}

// ---- main ---------------------------------------------------------------------------------------

function printCall(p: Prepared, kind: DeviceKind): void {
  const travel = p.total + p.tree.bytes;
  console.log('\nWhat travels:');
  const line = (label: string, bytes: number, note = '') => console.log(`  ${label.padEnd(24)} ${mib(bytes).padStart(9)}${note}`);
  for (const [k, v] of Object.entries(p.sizes)) line(`${PREP}/${k}`, v);
  line(`${PREP}/ in all`, p.total, '  (carried)');
  line('working tree', p.tree.bytes, `  (${p.tree.files} tracked or untracked-not-ignored files)`);
  line('total', travel, `  of the ${mib(TRAVEL_LIMIT)} the device tool takes`);
  if (travel > TRAVEL_LIMIT) throw new Error(`what travels (${mib(travel)}) is over the device tool's limit of ${mib(TRAVEL_LIMIT)}`);
  if (travel > TRAVEL_WARN) console.log(`  warning: over ${mib(TRAVEL_WARN)}; leave some room under the limit`);
  console.log('\nThe device call (the lead makes it; scripts cannot reach the device tool):');
  console.log(`  ${formatCall(kind)}`);
  console.log(`  (run.sh keeps to ${RUN_BUDGET_S} s of device time: a fix and a rerun fit in the session's 15 minutes; a failed build`);
  console.log('  returns in about the build\'s time; peaks and bounds are looked up by the GPU\'s name, whatever the machine)');
  console.log('  then read $OUT/gpu-check.md (the tables), gpu-check.json, gpu-check.log, build.log, tests.log, torch.log;');
  console.log('  give_back() unless running it again at once.');
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === 'report') return report(argv.slice(1));
  const dry = argv.includes('--dry-run');
  const keep = argv.includes('--keep');
  const si = argv.indexOf('--steps');
  const steps = si >= 0 ? Number(argv[si + 1]) : 4;
  if (!(Number.isInteger(steps) && steps >= 1 && steps <= 20)) throw new Error(`--steps expects an integer 1..20, got ${argv[si + 1]}`);
  const ki = argv.indexOf('--kind');
  const kind = (ki >= 0 ? argv[ki + 1] : DEFAULT_KIND) as DeviceKind;
  if (!(kind in DEVICE_KINDS)) throw new Error(`--kind expects ${Object.keys(DEVICE_KINDS).join(' or ')}, got ${argv[ki + 1]}`);
  for (const a of argv)
    if (a.startsWith('--') && !['--dry-run', '--keep', '--steps', '--kind'].includes(a)) throw new Error(`unknown option ${a} (--dry-run, --keep, --steps N, --kind ${Object.keys(DEVICE_KINDS).join('|')})`);

  const t0 = now();
  const p = prepare({ steps, kind });
  const tPrep = now() - t0;
  log(`gpu-check: prepared ${PREP}/ in ${tPrep.toFixed(1)} s (${Object.entries(p.seconds).map(([k, v]) => `${k} ${v.toFixed(1)} s`).join(', ')})`);

  if (dry) {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gpu-check-dry-'));
    try {
      const t1 = now();
      log(`gpu-check: dry run: bash ${PREP}/run.sh --no-gpu (OUT=${tmp}/out, work ${tmp}/work) ...`);
      // no device time to fit here: a budget long enough for this machine's build
      const r = spawnSync('bash', [path.join(p.dir, 'run.sh'), '--no-gpu', '--budget', '3600'], {
        cwd: repoRoot,
        stdio: 'inherit',
        env: { ...process.env, OUT: path.join(tmp, 'out'), GPU_CHECK_WORK: path.join(tmp, 'work'), GPU_CHECK_BUILD: path.join(tmp, 'work', 'build') },
      });
      const tRun = now() - t1;
      const statusOf = (n: string) => readText(path.join(tmp, 'work', 'results', `${n}.status`)) ?? 'missing';
      const py = spawnSync('python3', ['-c', 'import py_compile, sys\nfor f in sys.argv[2:]: py_compile.compile(f, cfile=sys.argv[1] + "/" + f.rsplit("/", 1)[1] + "c", doraise=True)',
        tmp, path.join(repoRoot, 'bench', 'torch_peft_step.py'), path.join(repoRoot, 'bench', 'torch_plain_adapter.py')], { encoding: 'utf8' });
      const buildSecs = readText(path.join(tmp, 'work', 'results', 'build.seconds'));
      console.log('\nDry run:');
      console.log(`  prepare            ${tPrep.toFixed(1)} s`);
      console.log(`  run.sh --no-gpu    ${tRun.toFixed(1)} s (exit ${r.status}); phases: env ${statusOf('env')}, node ${statusOf('node')}, ` +
        `build ${statusOf('build')}${buildSecs ? ` (${buildSecs} s)` : ''}, info ${statusOf('info')}`);
      console.log(`  torch_peft_step.py, torch_plain_adapter.py ${py.status === 0 ? 'byte-compile' : `do not compile: ${py.stderr.trim()}`}`);
      printCall(p, kind);
      if (r.status !== 0 || statusOf('build') !== 'ok' || statusOf('info') !== 'ok' || py.status !== 0) {
        console.error(`gpu-check: the dry run failed (see above${keep ? `; ${tmp} kept` : ''})`);
        process.exitCode = 1;
      }
    } finally {
      if (keep) log(`gpu-check: kept ${tmp}`);
      else fs.rmSync(tmp, { recursive: true, force: true });
    }
    return;
  }
  printCall(p, kind);
}

if (require.main === module) {
  main().catch((e) => {
    console.error(`gpu-check: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  });
}
