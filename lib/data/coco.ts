// COCO Captions as instruction records (SPEC §8). The dataset's layout:
//
//   annotations/captions_{set}.json   {images: [{id, file_name, ...}], annotations: [{id, image_id, caption}], ...}
//   {set}/{file_name}                 the images (e.g. val2014/COCO_val2014_000000000042.jpg)
//
// One record per caption, in the file's annotation order:
//   instruction "Generate caption of this image", no input, output the caption (surrounding white
//   space trimmed: COCO captions often end in a space or newline), image = the image's file_name,
//   a path relative to the image folder (the default image root).
import * as fs from 'fs';
import * as path from 'path';
import type { AlpacaRecord } from './alpaca';

export const COCO_INSTRUCTION = 'Generate caption of this image';

export interface CocoData {
  records: AlpacaRecord[];
  /** parallel to records: the COCO image id and annotation id of each caption */
  ids: { imageId: number; annotationId: number }[];
  /**
   * The image folder, when found: {set}/ beside the captions file or beside its folder (the
   * official annotations/ layout), {set} taken from the name captions_{set}.json. Undefined when
   * neither exists (then an image root must be given).
   */
  imageRoot?: string;
  source: string;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export function loadCoco(file: string): CocoData {
  let parsed: unknown;
  try {
    parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`COCO: cannot read captions file "${file}": ${(e as Error).message}`);
  }
  const fail = (why: string): Error => new Error(`COCO: captions file "${file}": ${why}`);
  if (!isObject(parsed) || !Array.isArray(parsed.images) || !Array.isArray(parsed.annotations))
    throw fail('expected a JSON object with "images" and "annotations" lists (a captions_*.json)');
  const fileNames = new Map<number, string>();
  parsed.images.forEach((im: unknown, i: number) => {
    if (!isObject(im) || !Number.isInteger(im.id)) throw fail(`images[${i}] has no integer "id"`);
    if (typeof im.file_name !== 'string' || im.file_name === '') throw fail(`image ${im.id} (images[${i}]) has no "file_name"`);
    if (fileNames.has(im.id as number)) throw fail(`image id ${im.id} is listed twice`);
    fileNames.set(im.id as number, im.file_name);
  });
  const out: CocoData = { records: [], ids: [], source: file };
  parsed.annotations.forEach((a: unknown, i: number) => {
    if (!isObject(a) || !Number.isInteger(a.image_id)) throw fail(`annotations[${i}] has no integer "image_id"`);
    const annotationId = Number.isInteger(a.id) ? (a.id as number) : i;
    if (typeof a.caption !== 'string') throw fail(`annotation ${annotationId} (annotations[${i}]) has no "caption" string`);
    const fileName = fileNames.get(a.image_id as number);
    if (fileName === undefined) throw fail(`annotation ${annotationId} (annotations[${i}]) names image ${a.image_id}, which is not in "images"`);
    const caption = a.caption.trim();
    if (caption === '') throw fail(`annotation ${annotationId} (annotations[${i}]) has an empty caption`);
    out.records.push({ instruction: COCO_INSTRUCTION, output: caption, image: fileName });
    out.ids.push({ imageId: a.image_id as number, annotationId });
  });
  if (out.records.length === 0) throw fail('no annotations');

  out.imageRoot = cocoImageRoot(file);
  return out;
}

/**
 * The image folder of a captions_{set}.json: {set}/ beside it or beside its folder (the official
 * annotations/ layout); undefined when neither exists or the name does not say the set.
 */
export function cocoImageRoot(file: string): string | undefined {
  const m = /^captions_(.+)\.json$/.exec(path.basename(file));
  if (!m) return undefined;
  const dir = path.dirname(path.resolve(file));
  for (const cand of [path.join(dir, m[1]), path.join(path.dirname(dir), m[1])])
    if (fs.existsSync(cand) && fs.statSync(cand).isDirectory()) return cand;
  return undefined;
}
