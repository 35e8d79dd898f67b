// Caption metrics as the COCO caption evaluation (pycocoevalcap) computes them: corpus BLEU-4 and
// CIDEr-D, each candidate against all reference captions of its image. Checked against an
// independent Python implementation (tools/reference/caption_metrics.py, golden file in
// test/golden/caption-metrics.json) and hand-worked cases (test/metrics.test.ts).
//
// Tokenisation (pycocoevalcap runs Stanford's PTBTokenizer, Java, then drops punctuation; this is a
// PTB-style rendering of it in a few rules, the same in the Python reference):
//   1. lower-case; any run of white space separates;
//   2. "..." and each of , ; : ! ? " ( ) [ ] { } become tokens of their own;
//   3. in each remaining piece: leading ' and ` characters are split off one by one; a trailing "."
//      is split off when the piece holds no other "." (so "u.s." and "3.5" stay whole); trailing '
//      characters are split off; then one clitic n't 's 're 've 'll 'd 'm is split off the end
//      ("don't" -> "do n't", "dog's" -> "dog 's");
//   4. punctuation tokens are dropped: . , ; : ! ? ' " ` ( ) [ ] { } "...", and runs of - (PTB keeps
//      [ and ] as -LSB- -RSB-; captions hardly ever hold them).

/** The caption tokens (rules above). */
export function tokenizeCaption(text: string): string[] {
  const spaced = text
    .toLowerCase()
    .replace(/\.\.\./g, ' ... ')
    .replace(/[,;:!?"()[\]{}]/g, (c) => ` ${c} `);
  const out: string[] = [];
  for (let piece of spaced.split(/\s+/)) {
    if (piece === '') continue;
    while (piece.length > 1 && (piece[0] === "'" || piece[0] === '`')) {
      out.push(piece[0]);
      piece = piece.slice(1);
    }
    const tail: string[] = [];
    if (piece.length > 1 && piece.endsWith('.') && piece.indexOf('.') === piece.length - 1) {
      tail.unshift('.');
      piece = piece.slice(0, -1);
    }
    while (piece.length > 1 && piece.endsWith("'")) {
      tail.unshift("'");
      piece = piece.slice(0, -1);
    }
    const clitic = /^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$/.exec(piece);
    if (clitic) out.push(clitic[1], clitic[2]);
    else out.push(piece);
    out.push(...tail);
  }
  return out.filter((t) => !DROPPED.has(t) && !/^-+$/.test(t));
}

const DROPPED = new Set(['.', ',', ';', ':', '!', '?', "'", '"', '`', '(', ')', '[', ']', '{', '}', '...']);

/** n-gram counts of orders 1..n, keyed by the tokens joined with a space. */
function ngramCounts(tokens: string[], n: number): Map<string, number>[] {
  const counts: Map<string, number>[] = [];
  for (let k = 1; k <= n; k++) {
    const m = new Map<string, number>();
    for (let i = 0; i + k <= tokens.length; i++) {
      const g = tokens.slice(i, i + k).join(' ');
      m.set(g, (m.get(g) ?? 0) + 1);
    }
    counts.push(m);
  }
  return counts;
}

/** One image: the candidate caption and all its reference captions, as token lists. */
export interface CaptionCase {
  candidate: string[];
  references: string[][];
}

export interface BleuResult {
  /** BLEU-1 .. BLEU-4 (cumulative, with the corpus brevity penalty) */
  bleu: number[];
  /** candidate tokens and the effective reference length (closest reference per candidate) */
  testLength: number;
  refLength: number;
}

/**
 * Corpus BLEU as pycocoevalcap's Bleu(4): clipped n-gram matches and candidate n-gram counts summed
 * over the corpus; precision_k = (matches + 1e-15) / (candidate n-grams + 1e-9); BLEU-k = geometric
 * mean of precisions 1..k times exp(1 - r / c) when c < r, with c the candidate tokens and r the sum
 * of each candidate's closest reference length (ties: the shorter).
 */
export function bleu(cases: CaptionCase[], n = 4): BleuResult {
  const TINY = 1e-15;
  const SMALL = 1e-9;
  const matches = new Array<number>(n).fill(0);
  const guesses = new Array<number>(n).fill(0);
  let testLength = 0;
  let refLength = 0;
  for (const { candidate, references } of cases) {
    if (references.length === 0) throw new Error('bleu: an image has no reference caption');
    const maxRef = Array.from({ length: n }, () => new Map<string, number>());
    for (const ref of references)
      ngramCounts(ref, n).forEach((m, k) => m.forEach((c, g) => maxRef[k].set(g, Math.max(maxRef[k].get(g) ?? 0, c))));
    const c = candidate.length;
    testLength += c;
    let best = references[0].length;
    for (const ref of references) {
      const l = ref.length;
      if (Math.abs(l - c) < Math.abs(best - c) || (Math.abs(l - c) === Math.abs(best - c) && l < best)) best = l;
    }
    refLength += best;
    ngramCounts(candidate, n).forEach((m, k) => {
      guesses[k] += Math.max(c - k, 0);
      m.forEach((cnt, g) => (matches[k] += Math.min(cnt, maxRef[k].get(g) ?? 0)));
    });
  }
  const out: number[] = [];
  let product = 1;
  for (let k = 0; k < n; k++) {
    product *= (matches[k] + TINY) / (guesses[k] + SMALL);
    out.push(product ** (1 / (k + 1)));
  }
  const ratio = (testLength + TINY) / (refLength + SMALL);
  if (ratio < 1) for (let k = 0; k < n; k++) out[k] *= Math.exp(1 - 1 / ratio);
  return { bleu: out, testLength, refLength };
}

export interface CiderResult {
  /** the corpus CIDEr-D: the mean over images */
  cider: number;
  /** per image, in the order given */
  perImage: number[];
}

/**
 * CIDEr-D as pycocoevalcap's Cider: n = 1..4; tf-idf vectors with tf the raw n-gram count and
 * idf = log(images) - log(max(1, df)), df = the number of images whose references hold the n-gram;
 * per n, the clipped similarity sum_g min(c_g, r_g) · r_g / (|c| |r|) (0 when a norm is 0) times
 * exp(-delta² / (2 sigma²)), sigma = 6, delta = difference in "length" (pycocoevalcap counts the
 * bigrams: tokens - 1); averaged over n and over the references, times 10; the corpus score is the
 * mean over images.
 */
export function ciderD(cases: CaptionCase[], sigma = 6): CiderResult {
  const n = 4;
  const df = new Map<string, number>();
  for (const { references } of cases) {
    if (references.length === 0) throw new Error('ciderD: an image has no reference caption');
    const seen = new Set<string>();
    for (const ref of references) for (const m of ngramCounts(ref, n)) for (const g of m.keys()) seen.add(g);
    for (const g of seen) df.set(g, (df.get(g) ?? 0) + 1);
  }
  const logImages = Math.log(cases.length);
  const vec = (tokens: string[]) => {
    const counts = ngramCounts(tokens, n);
    const v = counts.map((m) => {
      const w = new Map<string, number>();
      m.forEach((tf, g) => w.set(g, tf * (logImages - Math.log(Math.max(1, df.get(g) ?? 0)))));
      return w;
    });
    const norm = v.map((w) => Math.sqrt([...w.values()].reduce((a, x) => a + x * x, 0)));
    let length = 0;
    counts[1].forEach((tf) => (length += tf));
    return { v, norm, length };
  };
  const perImage = cases.map(({ candidate, references }) => {
    const c = vec(candidate);
    const score = new Array<number>(n).fill(0);
    for (const ref of references) {
      const r = vec(ref);
      const delta = c.length - r.length;
      for (let k = 0; k < n; k++) {
        let val = 0;
        c.v[k].forEach((x, g) => {
          const y = r.v[k].get(g) ?? 0;
          val += Math.min(x, y) * y;
        });
        if (c.norm[k] !== 0 && r.norm[k] !== 0) val /= c.norm[k] * r.norm[k];
        score[k] += val * Math.exp(-(delta * delta) / (2 * sigma * sigma));
      }
    }
    return ((score.reduce((a, b) => a + b, 0) / n) / references.length) * 10;
  });
  return { cider: perImage.reduce((a, b) => a + b, 0) / perImage.length, perImage };
}

/** BLEU-4 and CIDEr-D of candidate captions (text) against their references (text), tokenised as above. */
export function captionScores(items: { candidate: string; references: string[] }[]): { bleu4: number; ciderD: number; bleu: number[] } {
  if (items.length === 0) throw new Error('caption metrics: no images');
  const cases = items.map((it) => ({ candidate: tokenizeCaption(it.candidate), references: it.references.map(tokenizeCaption) }));
  const b = bleu(cases);
  return { bleu4: b.bleu[3], ciderD: ciderD(cases).cider, bleu: b.bleu };
}
