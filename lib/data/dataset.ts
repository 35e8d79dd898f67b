// One entry point for the data formats the CLI reads (`--format alpaca|scienceqa|coco`), and the
// check that every record's image can be found (on disk under an image root, or in a features
// file) before any work starts.
import * as fs from 'fs';
import * as path from 'path';
import { AlpacaRecord, loadAlpaca } from './alpaca';
import { cocoImageRoot, loadCoco } from './coco';
import { loadScienceQA, scienceqaImageRoot, ScienceQAProblem } from './scienceqa';

export const DATA_FORMATS = ['alpaca', 'scienceqa', 'coco'] as const;
export type DataFormat = (typeof DATA_FORMATS)[number];

export interface Dataset {
  format: DataFormat;
  records: AlpacaRecord[];
  /** parallel to records: how messages name each record ("record 3", "problem 12", "annotation 7 (image 42)") */
  names: string[];
  /**
   * Where record images are looked for unless an image root is given: the data file's folder
   * (alpaca), problems.json's folder or its images/ subfolder (scienceqa), the image folder found
   * beside the captions file (coco; undefined when none is found).
   */
  imageRoot?: string;
  /** the file read */
  source: string;
  /** scienceqa only, parallel to records: what the ScienceQA table groups by */
  problems?: ScienceQAProblem[];
}

export interface LoadDatasetOptions {
  /** default 'alpaca' */
  format?: DataFormat;
  /** scienceqa only (required there): a key of pid_splits.json, e.g. train, val, test */
  split?: string;
}

/** Loads `dataPath` in the given format as instruction records (SPEC §3, §8). */
export function loadDataset(dataPath: string, opts: LoadDatasetOptions = {}): Dataset {
  const format = opts.format ?? 'alpaca';
  if (!(DATA_FORMATS as readonly string[]).includes(format))
    throw new RangeError(`Expected a data format ${DATA_FORMATS.join(', ')} but received ${JSON.stringify(format)}`);
  if (opts.split !== undefined && format !== 'scienceqa') throw new RangeError(`a split is only for --format scienceqa (the format is ${format})`);
  if (format === 'scienceqa') {
    if (opts.split === undefined) throw new RangeError('--format scienceqa needs a split (train, val or test)');
    const d = loadScienceQA(dataPath, opts.split);
    return {
      format,
      records: d.records,
      names: d.problems.map((p) => `problem ${p.pid}`),
      imageRoot: d.imageRoot,
      source: d.source,
      problems: d.problems,
    };
  }
  if (format === 'coco') {
    const d = loadCoco(dataPath);
    return {
      format,
      records: d.records,
      names: d.ids.map((i) => `annotation ${i.annotationId} (image ${i.imageId})`),
      imageRoot: d.imageRoot,
      source: d.source,
    };
  }
  const records = loadAlpaca(dataPath);
  return { format, records, names: records.map((_, i) => `record ${i}`), imageRoot: defaultImageRoot(dataPath, 'alpaca'), source: dataPath };
}

/**
 * The folder records' image paths are relative to unless an image root is given (the same as
 * loadDataset's `imageRoot`, without reading the data): the data file's folder (alpaca), the folder
 * of problems.json or its images/ subfolder (scienceqa), the {set}/ folder beside the captions file
 * or its folder (coco; undefined when not found).
 */
export function defaultImageRoot(dataPath: string, format: DataFormat = 'alpaca'): string | undefined {
  if (format === 'scienceqa') return scienceqaImageRoot(dataPath);
  if (format === 'coco') return cocoImageRoot(dataPath);
  return path.dirname(path.resolve(dataPath));
}

/** Where images come from: files under `root`, or the keys of a features file (which wins). */
export interface ImageSource {
  root?: string;
  features?: { path: string; has(key: string): boolean };
}

export interface CheckImagesOptions {
  /** leave records whose image is missing out (counted through `warn`) instead of failing */
  skipMissing?: boolean;
  warn?: (message: string) => void;
}

/**
 * Checks that the image of every record exists: a key of `src.features` when given, else a file
 * at root/key. A missing one is an error naming the record and the path (or key), unless
 * `skipMissing`: then those records are left out, with one summary line through `warn`. Returns
 * the dataset with the kept records (the same object when none is left out). Text-only records
 * always pass.
 */
export function checkImages(ds: Dataset, src: ImageSource, opts: CheckImagesOptions = {}): Dataset {
  const { skipMissing = false, warn = (m: string) => console.warn(m) } = opts;
  const root = src.root ?? ds.imageRoot;
  const missing: number[] = [];
  const where: string[] = [];
  const problems = new Map<string, string | undefined>(); // per image key (COCO has 5 records per image)
  const problemOf = (key: string): string | undefined => {
    if (src.features) return src.features.has(key) ? undefined : `image "${key}" is not in features file "${src.features.path}"`;
    const file = path.resolve(root!, key);
    try {
      if (fs.statSync(file).isFile()) return undefined;
    } catch {
      /* missing or unreadable: reported below */
    }
    return `image "${key}" not found: no file ${file}`;
  };
  ds.records.forEach((r, i) => {
    if (r.image === undefined) return;
    if (!src.features && root === undefined)
      throw new Error(`${ds.names[i]} of "${ds.source}" has image "${r.image}" but no image folder was found: give an image root (--image-root)`);
    if (!problems.has(r.image)) problems.set(r.image, problemOf(r.image));
    const problem = problems.get(r.image);
    if (problem === undefined) return;
    if (!skipMissing) throw new Error(`${ds.names[i]} of "${ds.source}": ${problem} (--skip-missing-images leaves such records out)`);
    missing.push(i);
    where.push(`${ds.names[i]}: ${r.image}`);
  });
  if (missing.length === 0) return ds;
  if (missing.length === ds.records.length) throw new Error(`no record of "${ds.source}" has its image (all ${missing.length} missing, e.g. ${where[0]})`);
  warn(
    `${missing.length} of ${ds.records.length} records of "${ds.source}" have a missing image; skipped (` +
      where.slice(0, 5).join(', ') +
      (where.length > 5 ? ', ...' : '') +
      ')',
  );
  const drop = new Set(missing);
  const keep = <T>(xs: T[]): T[] => xs.filter((_, i) => !drop.has(i));
  return { ...ds, records: keep(ds.records), names: keep(ds.names), problems: ds.problems && keep(ds.problems) };
}
