#!/usr/bin/env python3
"""Independent reference of the caption metrics: corpus BLEU-1..4 and CIDEr-D as the COCO caption
evaluation (pycocoevalcap) defines them, written from the published definitions (Papineni et al.
2002 for BLEU; Vedantam et al. 2015 for CIDEr, with the CIDEr-D changes: sigma = 6 length penalty,
clipped tf-idf products, x10), in plain Python (float64). It shares no code with lib/eval/caption.ts;
it writes the golden file test/golden/caption-metrics.json that the TypeScript tests compare with.

The tokenisation is the PTB-style one stated in lib/eval/caption.ts and the README (pycocoevalcap
itself runs Stanford's Java PTBTokenizer), re-implemented here from that description.

Usage (from the repository root; standard library only):
    /usr/bin/python3 tools/reference/caption_metrics.py --out test/golden/caption-metrics.json
    /usr/bin/python3 tools/reference/caption_metrics.py --self-check
"""
import argparse
import json
import math
from collections import Counter

# --------------------------------------------------------------------------------- tokenisation

SPLIT_CHARS = set(',;:!?"()[]{}')
CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
PUNCT = {'.', ',', ';', ':', '!', '?', "'", '"', '`', '(', ')', '[', ']', '{', '}', '...'}


def pieces(text):
    """Rules 1-2: lower-case, white space separates, '...' and the split characters stand alone."""
    out, cur = [], []
    s = text.lower()
    i = 0
    while i < len(s):
        ch = s[i]
        if s.startswith('...', i):
            if cur:
                out.append(''.join(cur))
                cur = []
            out.append('...')
            i += 3
            continue
        if ch.isspace() or ch in SPLIT_CHARS:
            if cur:
                out.append(''.join(cur))
                cur = []
            if ch in SPLIT_CHARS:
                out.append(ch)
        else:
            cur.append(ch)
        i += 1
    if cur:
        out.append(''.join(cur))
    return out


def split_piece(p):
    """Rule 3 on one piece."""
    head = []
    while len(p) > 1 and p[0] in "'`":
        head.append(p[0])
        p = p[1:]
    tail = []
    if len(p) > 1 and p.endswith('.') and p.count('.') == 1:
        tail.insert(0, '.')
        p = p[:-1]
    while len(p) > 1 and p.endswith("'"):
        tail.insert(0, "'")
        p = p[:-1]
    body = [p]
    for c in CLITICS:
        if p.endswith(c) and len(p) > len(c):
            body = [p[: -len(c)], c]
            break
    return head + body + tail


def tokenize(text):
    toks = []
    for p in pieces(text):
        toks.extend(split_piece(p))
    # rule 4: drop punctuation tokens and runs of hyphens
    return [t for t in toks if t not in PUNCT and not (t and set(t) == {'-'})]


# --------------------------------------------------------------------------------- n-grams

def ngrams(tokens, k):
    return Counter(tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1))


# --------------------------------------------------------------------------------- BLEU

def corpus_bleu(cases, n=4):
    """cases: [(candidate tokens, [reference tokens])]. pycocoevalcap's Bleu with option 'closest'
    and its smoothing constants (1e-15 on matches, 1e-9 on counts)."""
    tiny, small = 1e-15, 1e-9
    match = [0] * n
    total = [0] * n
    c_len = 0
    r_len = 0
    for cand, refs in cases:
        c_len += len(cand)
        # closest reference length; a tie goes to the shorter one
        r_len += sorted(refs, key=lambda r: (abs(len(r) - len(cand)), len(r)))[0].__len__()
        for k in range(1, n + 1):
            cand_counts = ngrams(cand, k)
            clip = Counter()
            for r in refs:
                for g, c in ngrams(r, k).items():
                    clip[g] = max(clip[g], c)
            match[k - 1] += sum(min(c, clip[g]) for g, c in cand_counts.items())
            total[k - 1] += max(len(cand) - k + 1, 0)
    scores = []
    prod = 1.0
    for k in range(n):
        prod *= (match[k] + tiny) / (total[k] + small)
        scores.append(prod ** (1.0 / (k + 1)))
    ratio = (c_len + tiny) / (r_len + small)
    bp = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    return [s * bp for s in scores], c_len, r_len, match, total


# --------------------------------------------------------------------------------- CIDEr-D

def cider_d(cases, n=4, sigma=6.0):
    """pycocoevalcap's Cider (which is CIDEr-D). Returns (corpus score, per-image scores)."""
    num_images = len(cases)
    df = Counter()
    for _, refs in cases:
        grams = set()
        for r in refs:
            for k in range(1, n + 1):
                grams.update(ngrams(r, k).keys())
        df.update(grams)
    log_n = math.log(num_images)

    def tfidf(tokens):
        vecs, norms = [], []
        for k in range(1, n + 1):
            v = {g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in ngrams(tokens, k).items()}
            vecs.append(v)
            norms.append(math.sqrt(sum(x * x for x in v.values())))
        # pycocoevalcap's "length" sums the bigram counts (n == 1 in its 0-based loop)
        length = max(len(tokens) - 1, 0)
        return vecs, norms, length

    per_image = []
    for cand, refs in cases:
        cv, cn, cl = tfidf(cand)
        acc = [0.0] * n
        for r in refs:
            rv, rn, rl = tfidf(r)
            penalty = math.exp(-((cl - rl) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                dot = sum(min(x, rv[k].get(g, 0.0)) * rv[k].get(g, 0.0) for g, x in cv[k].items())
                if cn[k] != 0 and rn[k] != 0:
                    dot /= cn[k] * rn[k]
                acc[k] += dot * penalty
        per_image.append(10.0 * (sum(acc) / n) / len(refs))
    return sum(per_image) / len(per_image), per_image


# --------------------------------------------------------------------------------- the fixed set

# Made-up captions of made-up images (no dataset text): exact matches, brevity, clipping,
# punctuation, capitals, contractions, no 4-gram overlap, images with 1 to 5 references.
CASES = [
    {"candidate": "A man riding a horse on a beach.",
     "references": ["A man rides a horse along the beach.", "A person riding a brown horse on the sand.",
                    "a man on a horse at the beach", "Man riding horse on beach near the water."]},
    {"candidate": "a plate of food with broccoli and rice",
     "references": ["A plate of food with broccoli and rice.", "Rice and broccoli on a white plate.",
                    "A white plate topped with rice and broccoli."]},
    {"candidate": "the the the the the the",
     "references": ["The cat sat on the mat.", "There is a cat on the mat."]},
    {"candidate": "Two dogs playing in the snow",
     "references": ["Two dogs play in the snow.", "A pair of dogs running through snow.",
                    "Dogs playing together in a snowy field.", "two brown dogs in the snow",
                    "The dogs are playing outside in the snow."]},
    {"candidate": "A kitchen.",
     "references": ["A kitchen with a stove, a sink and wooden cabinets.", "A small kitchen with white appliances."]},
    {"candidate": "A red double-decker bus driving down a city street next to tall buildings in the rain",
     "references": ["A red double-decker bus on a city street.", "A double decker bus drives down the street."]},
    {"candidate": "It's a child's toy train, isn't it?",
     "references": ["A child's toy train on wooden tracks.", "A toy train that's on a track."]},
    {"candidate": "\"Stop\" sign (red) at the corner...",
     "references": ["A red stop sign on a street corner.", "A stop sign at the corner of two streets."]},
    {"candidate": "A laptop computer sitting on a desk",
     "references": ["A laptop computer sitting on a desk."]},
    {"candidate": "zebras grazing",
     "references": ["Three zebras grazing in a field of grass.", "Zebras eating grass on the savanna.",
                    "A group of zebras standing in the grass."]},
    {"candidate": "A woman holding an umbrella in the U.S. city - it's 3.5 degrees",
     "references": ["A woman with an umbrella walks in the city.", "Woman holding a black umbrella on a city sidewalk."]},
    {"candidate": "a bowl of oranges",
     "references": ["A bowl full of oranges on a table.", "Oranges in a glass bowl.", "A bowl of fresh oranges."]},
]

# Tokenisation checks: input -> tokens, worked by hand from the rules.
TOKEN_CASES = [
    ("A man riding a horse.", ["a", "man", "riding", "a", "horse"]),
    ("It's a child's toy, isn't it?", ["it", "'s", "a", "child", "'s", "toy", "is", "n't", "it"]),
    ("\"Stop\" sign (red) at the corner...", ["stop", "sign", "red", "at", "the", "corner"]),
    ("The U.S. flag - 3.5 m wide; 'old' dogs' toys", ["the", "u.s.", "flag", "3.5", "m", "wide", "old", "dogs", "toys"]),
    ("  Two\tdogs\nplay -- outside!  ", ["two", "dogs", "play", "outside"]),
    ("A double-decker bus: red & white", ["a", "double-decker", "bus", "red", "&", "white"]),
]


def self_check():
    for text, want in TOKEN_CASES:
        got = tokenize(text)
        assert got == want, (text, got, want)
    # BLEU: identical sentence -> 1 (up to the smoothing constants)
    b, *_ = corpus_bleu([(tokenize("the cat sat on the mat"), [tokenize("the cat sat on the mat")])])
    assert abs(b[3] - 1) < 1e-9, b
    # hand-worked: 5-word candidate, 6-word reference: p = 1, 3/4, 2/3, 1/2; BP = exp(1 - 6/5)
    b, *_ = corpus_bleu([(tokenize("the cat sat on mat"), [tokenize("the cat sat on the mat")])])
    want = (1 * 0.75 * (2 / 3) * 0.5) ** 0.25 * math.exp(1 - 6 / 5)
    assert abs(b[3] - want) < 1e-9, (b, want)
    # hand-worked CIDEr-D: two images, one reference each; candidate equals the first reference
    c, per = cider_d([(["a", "b"], [["a", "b"]]), (["a", "b"], [["c", "d"]])])
    assert abs(per[0] - 5.0) < 1e-12 and per[1] == 0.0 and abs(c - 2.5) < 1e-12, (c, per)
    print("self-check: all passing")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the golden JSON here")
    ap.add_argument("--self-check", action="store_true")
    args = ap.parse_args()
    if args.self_check:
        self_check()
    if args.out:
        cases = [(tokenize(c["candidate"]), [tokenize(r) for r in c["references"]]) for c in CASES]
        bleu, c_len, r_len, match, total = corpus_bleu(cases)
        cider, per_image = cider_d(cases)
        # a subset of short candidates, where the corpus brevity penalty applies
        short = [4, 9, 11]
        s_bleu, s_c, s_r, _, _ = corpus_bleu([cases[i] for i in short])
        s_cider, _ = cider_d([cases[i] for i in short])
        golden = {
            "cases": CASES,
            "tokens": [{"candidate": c, "references": rs} for c, rs in cases],
            "tokenCases": [{"text": t, "tokens": w} for t, w in TOKEN_CASES],
            "bleu": bleu,
            "testLength": c_len,
            "refLength": r_len,
            "matches": match,
            "totals": total,
            "ciderD": cider,
            "ciderPerImage": per_image,
            "shortSubset": {"indices": short, "bleu": s_bleu, "testLength": s_c, "refLength": s_r, "ciderD": s_cider},
            "meta": {"generator": "tools/reference/caption_metrics.py", "sigma": 6, "n": 4},
        }
        with open(args.out, "w") as f:
            json.dump(golden, f, indent=1)
            f.write("\n")
        print(f"wrote {args.out}: BLEU-4 {bleu[3]!r}, CIDEr-D {cider!r}")


if __name__ == "__main__":
    main()
