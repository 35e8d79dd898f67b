// Command-line flags: strict (an unknown flag is an error), typed, validated with messages that
// name the flag and the value.
import { parseArgs } from 'util';

export class UsageError extends Error {}

export type FlagSpec = Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }>;

export type Flags = Record<string, string | boolean | undefined>;

/** `--name -1` as `--name=-1` for a string flag followed by a negative number, so that the value
 *  reaches its range check (parseArgs calls it ambiguous: it looks like a flag). */
function joinNegativeValues(argv: string[], spec: FlagSpec): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') return out.concat(argv.slice(i));
    const next = argv[i + 1];
    if (a.startsWith('--') && spec[a.slice(2)]?.type === 'string' && next !== undefined && /^-(\d|\.\d|Infinity)/.test(next)) {
      out.push(`${a}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

export function parseFlags(argv: string[], spec: FlagSpec, usage: string): { values: Flags; positionals: string[] } {
  try {
    const parsed = parseArgs({ args: joinNegativeValues(argv, spec), options: { ...spec, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: true });
    return { values: parsed.values as Flags, positionals: parsed.positionals };
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n\n${usage}`);
  }
}

/** A string flag's value, if given. */
export function stringFlag(values: Flags, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

export function requireString(values: Flags, name: string, usage: string): string {
  const v = values[name];
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} is required\n\n${usage}`);
  return v;
}

export function numberFlag(
  values: Flags,
  name: string,
  check: { integer?: boolean; min?: number; max?: number; minExclusive?: boolean } = {},
): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const v = Number(raw);
  const bad =
    typeof raw !== 'string' ||
    raw.trim() === '' ||
    !Number.isFinite(v) ||
    (check.integer && !Number.isInteger(v)) ||
    (check.min !== undefined && (check.minExclusive ? v <= check.min : v < check.min)) ||
    (check.max !== undefined && v > check.max);
  if (bad) {
    const range = [
      check.integer ? 'an integer' : 'a number',
      check.min !== undefined ? `${check.minExclusive ? '>' : '>='} ${check.min}` : '',
      check.max !== undefined ? `<= ${check.max}` : '',
    ]
      .filter(Boolean)
      .join(' ');
    throw new UsageError(`--${name} must be ${range}, got '${String(raw)}'`);
  }
  return v;
}
