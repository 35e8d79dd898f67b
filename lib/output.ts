// Output locations: every command that writes checks its folder before doing any work, and
// creates it one level at a time. (Node's recursive mkdir loops forever where mkdir fails with
// ENOENT under an existing parent, as under /proc, and reports EROFS as ENOENT.) Errors name the
// flag, the folder and the real cause (EROFS, EACCES, ENOTDIR, ...).
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';

/** Why creating an entry in the existing folder `parent` failed, in words, with the code. */
function cause(parent: string, e: NodeJS.ErrnoException): string {
  const code = e.code ?? 'error';
  switch (code) {
    case 'EROFS':
      return `${parent} is on a read-only file system (EROFS)`;
    case 'EACCES':
    case 'EPERM':
      return `permission denied: cannot create files in ${parent} (${code})`;
    case 'ENOENT':
      return `${parent} does not allow creating files (ENOENT although it exists: a virtual file system such as /proc?)`;
    case 'ENOSPC':
      return `no space left on the device of ${parent} (ENOSPC)`;
    case 'EDQUOT':
      return `disk quota exceeded in ${parent} (EDQUOT)`;
    default:
      return `${e.message}`;
  }
}

/** The nearest existing ancestor of the absolute path `p` (or `p` itself) and its stats. */
function nearestExisting(flag: string, dir: string, p: string): { at: string; st: fs.Stats } {
  for (let at = p; ; at = path.dirname(at)) {
    try {
      return { at, st: fs.statSync(at) };
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code === 'ENOTDIR') continue; // an ancestor is a file: found below, as not a folder
      if (err.code !== 'ENOENT') throw new Error(`cannot use ${flag} ${dir}: cannot look at ${at}: ${err.message}`);
      if (path.dirname(at) === at) throw new Error(`cannot use ${flag} ${dir}: no part of it exists`);
    }
  }
}

/**
 * Checks, without creating anything that stays, that `dir` is a folder this process can write to,
 * or can be created: the nearest existing part of the path must be a folder in which an entry can
 * be created (probed with a temporary file). `flag` names the option in errors (e.g. '--out').
 */
export function checkOutputDir(dir: string, flag: string): void {
  const p = path.resolve(dir);
  const { at, st } = nearestExisting(flag, dir, p);
  if (!st.isDirectory())
    throw new Error(
      at === p ? `cannot use ${flag} ${dir}: it exists and is not a folder (ENOTDIR)` : `cannot create ${flag} ${dir}: ${at} is not a folder (ENOTDIR)`,
    );
  const probe = path.join(at, `.llama-adapter-probe-${process.pid}-${crypto.randomBytes(4).toString('hex')}`);
  try {
    fs.closeSync(fs.openSync(probe, 'wx'));
  } catch (e) {
    throw new Error(`cannot ${at === p ? 'write to' : 'create'} ${flag} ${dir}: ${cause(at, e as NodeJS.ErrnoException)}`);
  }
  fs.rmSync(probe, { force: true });
}

/**
 * Creates `dir` and its missing parents one level at a time, so that a failure names its real
 * cause. Returns the folders it created, outermost first (see removeEmptyDirs).
 */
export function makeOutputDir(dir: string, flag: string): string[] {
  const p = path.resolve(dir);
  const { at, st } = nearestExisting(flag, dir, p);
  if (!st.isDirectory()) throw new Error(`cannot create ${flag} ${dir}: ${at} is not a folder (ENOTDIR)`);
  const missing: string[] = [];
  for (let q = p; q !== at; q = path.dirname(q)) missing.unshift(q);
  const made: string[] = [];
  for (const q of missing) {
    try {
      fs.mkdirSync(q);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code === 'EEXIST' && fs.statSync(q).isDirectory()) continue; // made meanwhile
      removeEmptyDirs(made);
      throw new Error(`cannot create ${flag} ${dir}: ${cause(path.dirname(q), err)}`);
    }
    made.push(q);
  }
  return made;
}

/** Removes the folders `made` (as returned by makeOutputDir) that are still empty, innermost first. */
export function removeEmptyDirs(made: string[]): void {
  for (const q of [...made].reverse()) {
    try {
      fs.rmdirSync(q);
    } catch {
      return; // not empty (or gone): leave it and its parents
    }
  }
}

/** Writes all of `buf` at the current position of `fd` (fs.writeSync may write less). */
export function writeAll(fd: number, buf: Buffer): void {
  let done = 0;
  while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done);
}

/**
 * Writes `file` atomically: `write` fills a new temporary file `.NAME.PID.HEX.tmp` beside it (the
 * name run-folder.ts knows as a leftover), which is synced and then renamed over `file`. If
 * anything fails, the temporary file is removed and `file` is left as it was.
 */
export function writeFileAtomic(file: string, write: (fd: number) => void): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`);
  const fd = fs.openSync(tmp, 'wx');
  let ok = false;
  try {
    write(fd);
    fs.fsyncSync(fd);
    ok = true;
  } finally {
    fs.closeSync(fd);
    if (!ok) fs.rmSync(tmp, { force: true });
  }
  try {
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}
