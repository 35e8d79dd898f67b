import * as fs from 'fs';
import * as path from 'path';

/** The repository root: the nearest folder above this file holding package.json. */
export const repoRoot: string = (() => {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('repository root not found above ' + __dirname);
    dir = up;
  }
  return dir;
})();

/** The shared assets (../shared/data beside the checkout, or $LLAMA_ADAPTER_DATA). */
export const dataDir: string = process.env.LLAMA_ADAPTER_DATA ?? path.resolve(repoRoot, '..', 'shared', 'data');

export function dataPath(...parts: string[]): string {
  return path.join(dataDir, ...parts);
}
