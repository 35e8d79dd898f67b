// Image-classification data (SPEC §9): an image-folder tree `root/<class>/<file>` (classes are the
// sub-folders, sorted) or a JSON list / JSONL file of {"image", "label"} records (label a class name
// or a class index; image paths relative to the list's folder, or to `imageRoot`). Only paths and
// labels are read here; the images are decoded when they are embedded (lib/image), and a file that
// is not an image fails there, naming it.
import * as fs from 'fs';
import * as path from 'path';

export interface LabeledImage {
  /** the path as the data names it (the record's "image", or root-relative in a folder tree) */
  image: string;
  /** where the file is */
  file: string;
  /** class index into ClassifyData.labels */
  label: number;
}

export interface ClassifyData {
  /** the folder or list file the examples came from */
  source: string;
  examples: LabeledImage[];
  /** class names in index order */
  labels: string[];
}

export interface ClassifyDataOptions {
  /** the class names of a trained head (eval, or training on from an adapter): record labels must be
   *  among them, and the indices follow them; default: found in the data */
  labels?: readonly string[];
  /** folder the records' relative image paths start from (default: the list file's folder) */
  imageRoot?: string;
}

/** Loads a folder tree or a JSON/JSONL list; every error names the folder, file or record. */
export function loadClassifyData(source: string, opts: ClassifyDataOptions = {}): ClassifyData {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(source);
  } catch {
    throw new Error(`classification data ${source} does not exist`);
  }
  const data = stat.isDirectory() ? loadFolderTree(source, opts) : loadList(source, opts);
  if (data.examples.length === 0) throw new Error(`${source}: no labelled image`);
  return data;
}

const hidden = (name: string) => name.startsWith('.');

/** Files under `dir` (recursively, sorted, hidden entries skipped), relative to `dir`. */
function filesUnder(dir: string, rel = ''): string[] {
  const out: string[] = [];
  const entries = fs.readdirSync(path.join(dir, rel), { withFileTypes: true }).filter((e) => !hidden(e.name));
  for (const e of entries.sort((a, b) => compare(a.name, b.name))) {
    const r = rel ? path.join(rel, e.name) : e.name;
    if (e.isDirectory()) out.push(...filesUnder(dir, r));
    else if (e.isFile() || e.isSymbolicLink()) out.push(r);
  }
  return out;
}

/** Code-unit order (as Python's sorted() and torchvision's ImageFolder, for names in the BMP). */
function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function loadFolderTree(root: string, opts: ClassifyDataOptions): ClassifyData {
  const classes = fs
    .readdirSync(root, { withFileTypes: true })
    .filter((e) => e.isDirectory() && !hidden(e.name))
    .map((e) => e.name)
    .sort(compare);
  if (classes.length === 0) throw new Error(`${root}: no class folder (expected ${root}/<class>/<image file>)`);
  const labels = opts.labels ? [...opts.labels] : classes;
  const examples: LabeledImage[] = [];
  for (const cls of classes) {
    const label = labels.indexOf(cls);
    if (label < 0) throw new Error(`${path.join(root, cls)}: unknown label '${cls}' (the head's labels are ${quoteList(labels)})`);
    const files = filesUnder(path.join(root, cls));
    if (files.length === 0) throw new Error(`${path.join(root, cls)}: the class folder '${cls}' holds no image`);
    for (const f of files) {
      const image = path.join(cls, f);
      examples.push({ image, file: path.join(root, image), label });
    }
  }
  return { source: root, examples, labels };
}

interface RawRecord {
  where: string; // "file line N" or "file record N"
  image: unknown;
  label: unknown;
}

function readRecords(file: string): RawRecord[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${file}: ${(err as Error).message}`);
  }
  const records: RawRecord[] = [];
  const asRecord = (v: unknown, where: string): RawRecord => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${where}: expected an object {"image", "label"}`);
    const o = v as Record<string, unknown>;
    return { where, image: o.image, label: o.label };
  };
  if (text.trimStart().startsWith('[')) {
    let list: unknown;
    try {
      list = JSON.parse(text);
    } catch (err) {
      throw new Error(`${file} is not valid JSON: ${(err as Error).message}`);
    }
    (list as unknown[]).forEach((v, i) => records.push(asRecord(v, `${file} record ${i}`)));
  } else {
    text.split('\n').forEach((line, i) => {
      if (!line.trim()) return;
      const where = `${file} line ${i + 1}`;
      let v: unknown;
      try {
        v = JSON.parse(line);
      } catch (err) {
        throw new Error(`${where} is not valid JSON: ${(err as Error).message}`);
      }
      records.push(asRecord(v, where));
    });
  }
  return records;
}

function loadList(file: string, opts: ClassifyDataOptions): ClassifyData {
  const records = readRecords(file);
  const root = opts.imageRoot ?? path.dirname(file);
  for (const r of records) {
    if (typeof r.image !== 'string' || r.image === '') throw new Error(`${r.where}: "image" must be a non-empty string (a path)`);
    if (!(typeof r.label === 'string' && r.label !== '') && !(Number.isInteger(r.label) && (r.label as number) >= 0))
      throw new Error(`${r.where}: "label" must be a class name or a class index (an integer >= 0), got ${JSON.stringify(r.label)}`);
  }
  const byName = records.filter((r) => typeof r.label === 'string');
  if (byName.length && byName.length !== records.length)
    throw new Error(`${file}: labels must be all class names or all class indices (${records.find((r) => typeof r.label !== 'string')!.where} has an index, ${byName[0].where} a name)`);
  // the classes: the head's, else the names found (sorted, as a folder tree's), else 0 .. max index
  const labels = opts.labels
    ? [...opts.labels]
    : byName.length
      ? [...new Set(byName.map((r) => r.label as string))].sort(compare)
      : Array.from({ length: Math.max(...records.map((r) => r.label as number)) + 1 }, (_, i) => String(i));
  const examples = records.map((r): LabeledImage => {
    const label = typeof r.label === 'string' ? labels.indexOf(r.label) : (r.label as number);
    if (label < 0 || label >= labels.length)
      throw new Error(
        typeof r.label === 'string'
          ? `${r.where}: unknown label '${r.label}' (the head's labels are ${quoteList(labels)})`
          : `${r.where}: label index ${r.label} is outside 0..${labels.length - 1}`,
      );
    const image = r.image as string;
    const resolved = path.resolve(root, image);
    if (!fs.existsSync(resolved))
      throw new Error(`${r.where}: image ${image} not found (looked for ${resolved}${opts.imageRoot ? '' : "; --image-root names the folder the list's paths start from"})`);
    return { image, file: resolved, label };
  });
  return { source: file, examples, labels };
}

function quoteList(names: readonly string[]): string {
  const shown = names.slice(0, 12).map((n) => `'${n}'`);
  return shown.join(', ') + (names.length > 12 ? `, ... (${names.length} in all)` : '');
}
