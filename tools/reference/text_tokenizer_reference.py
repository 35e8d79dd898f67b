#!/usr/bin/env python3
"""Reference tokenizers for RoBERTa (byte-level BPE) and BERT (WordPiece), with character offsets.

No Hugging Face tokenizers library can be installed here, so this is an independent Python
implementation written from the published algorithms:
  * byte-level BPE: OpenAI's GPT-2 encoder.py (bytes_to_unicode, the pre-tokenization regex, the
    lowest-rank-first merge loop), as RoBERTa uses it; offsets of a token = the characters its bytes
    come from, with the leading space trimmed (tokenizers' trim_offsets = true of RoBERTa);
  * WordPiece: google-research/bert tokenization.py (BasicTokenizer: clean text, spaces around CJK
    characters, lower-case then NFD accent stripping, whitespace and punctuation splitting;
    WordpieceTokenizer: greedy longest match first with "##", [UNK] for a word that cannot be split
    or has more than 100 characters); offsets = the source characters of the first and last piece.

The vocabularies are made here from real text, the GNU GPL v3 as Debian ships it
(/usr/share/common-licenses/GPL-3, package base-files): a BPE of 400 merges on the GPT-2
pre-tokens, and a WordPiece vocabulary of the corpus' frequent words plus every character alone and
as "##c", and frequent word suffixes. Writes test/golden/text-tokenizers/{roberta,roberta-json,
bert-uncased,bert-cased,bert-json}/ and golden.json: for each folder and test string, the ids and the offsets
(in Unicode code points, as Python counts them).

Usage (from the repository root; < 5 s, byte-identical between runs):
    python3 tools/reference/text_tokenizer_reference.py   (needs the `regex` module, as GPT-2 did) --outdir test/golden/text-tokenizers
"""
import argparse
import collections
import json
import os
import unicodedata

import regex

CORPUS = '/usr/share/common-licenses/GPL-3'
PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

STRINGS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and   multiple spaces\tand a tab\nnew line  ",
    "Don't you think it's the GPL's copyleft? We'll see; I'd say they're free.",
    "Numbers: 12345, 3.14159 and 2026-12-07!",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c9cole \u00fcber",
    "\u4e2d\u6587\u5b57\u7b26 mixed with English",
    "emoji \U0001F600 and \U0001F680 rocket",
    "control\u0000char\u0007and \ufffd replacement",
    "(parentheses) [brackets] {braces} \"quotes\" \u201csmart\u201d",
    "supercalifragilisticexpialidocious" * 4,
    "Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>",
    "",
    "e\u0301 combining accent and \u0130stanbul",
    "software, freedom; distribute - modify: license.",
]


# ------------------------------------------------------------------------------ byte-level BPE --

def bytes_to_unicode():
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('\u00a1'), ord('\u00ac') + 1)) + list(range(ord('\u00ae'), ord('\u00ff') + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


B2U = bytes_to_unicode()


def train_bpe(text, n_merges):
    words = collections.Counter(''.join(B2U[b] for b in m.encode('utf-8')) for m in PAT.findall(text))
    splits = {w: list(w) for w in words}
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, f in words.items():
            s = splits[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += f
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        for w in words:
            s = splits[w]
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out
    return merges


def bpe(token, ranks):
    """GPT-2 encoder.py's bpe(): merge the lowest-ranked pair, every occurrence, until none is left"""
    word = tuple(token)
    while len(word) > 1:
        pairs = set(zip(word, word[1:]))
        bigram = min(pairs, key=lambda p: ranks.get(p, float('inf')))
        if bigram not in ranks:
            break
        first, second = bigram
        new, i = [], 0
        while i < len(word):
            try:
                j = word.index(first, i)
            except ValueError:
                new.extend(word[i:])
                break
            new.extend(word[i:j])
            i = j
            if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                new.append(first + second)
                i += 2
            else:
                new.append(word[i])
                i += 1
        word = tuple(new)
    return list(word)


def bpe_encode(text, vocab, ranks):
    ids, offsets = [], []
    for m in PAT.finditer(text):
        piece, base = m.group(0), m.start()
        src = []  # source character index of each byte
        chars = ''
        for ci, ch in enumerate(piece):
            for b in ch.encode('utf-8'):
                chars += B2U[b]
                src.append(base + ci)
        k = 0
        for tok in bpe(chars, ranks):
            n = len(tok)
            s, e = src[k], src[k + n - 1] + 1
            if piece.strip() != '':
                while s < e and text[s].isspace():
                    s += 1
            ids.append(vocab[tok])
            offsets.append([s, e])
            k += n
    return ids, offsets


# ---------------------------------------------------------------------------------- WordPiece --

def is_whitespace(c):
    return c in ' \t\n\r' or unicodedata.category(c) == 'Zs'


def is_control(c):
    if c in '\t\n\r':
        return False
    return unicodedata.category(c) in ('Cc', 'Cf')


def is_punct(c):
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith('P')


def is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_words(text, lower):
    """words as lists of (char, source index)"""
    # clean text: drop NUL, U+FFFD and controls; white space -> space
    chars = [(c, i) for i, c in enumerate(text) if not (ord(c) == 0 or ord(c) == 0xFFFD or is_control(c))]
    chars = [(' ' if is_whitespace(c) else c, i) for c, i in chars]
    # spaces around CJK characters
    spaced = []
    for c, i in chars:
        if is_cjk(ord(c)):
            spaced += [(' ', i), (c, i), (' ', i)]
        else:
            spaced.append((c, i))
    # whitespace split
    words, cur = [], []
    for c, i in spaced:
        if c == ' ':
            if cur:
                words.append(cur)
            cur = []
        else:
            cur.append((c, i))
    if cur:
        words.append(cur)
    out = []
    for w in words:
        if lower:
            norm = []
            for c, i in w:
                for d in unicodedata.normalize('NFD', c.lower()):
                    if unicodedata.category(d) != 'Mn':
                        norm.append((d, i))
            w = norm
        # punctuation split
        cur = []
        for c, i in w:
            if is_punct(c):
                if cur:
                    out.append(cur)
                out.append([(c, i)])
                cur = []
            else:
                cur.append((c, i))
        if cur:
            out.append(cur)
    return out


def wordpiece_encode(text, vocab, lower):
    ids, offsets = [], []
    for w in basic_words(text, lower):
        chars = ''.join(c for c, _ in w)
        span = [w[0][1], w[-1][1] + 1]
        if len(chars) > 100:
            ids.append(vocab['[UNK]'])
            offsets.append(span)
            continue
        start, pieces, bad = 0, [], False
        while start < len(chars):
            end, cur = len(chars), None
            while start < end:
                sub = chars[start:end]
                if start > 0:
                    sub = '##' + sub
                if sub in vocab:
                    cur = sub
                    break
                end -= 1
            if cur is None:
                bad = True
                break
            pieces.append((vocab[cur], start, end))
            start = end
        if bad:
            ids.append(vocab['[UNK]'])
            offsets.append(span)
        else:
            for i, s, e in pieces:
                ids.append(i)
                offsets.append([w[s][1], w[e - 1][1] + 1])
    return ids, offsets


def wordpiece_vocab(text, lower):
    words = collections.Counter()
    for w in basic_words(text, lower):
        words[''.join(c for c, _ in w)] += 1
    vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
    chars = sorted({c for w in words for c in w} | set('abcdefghijklmnopqrstuvwxyz0123456789.,;:!?()[]{}<>"\'-/'))
    vocab += chars + ['##' + c for c in chars]
    vocab += [w for w, f in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if f >= 3 and w not in vocab][:300]
    suffixes = collections.Counter(w[-k:] for w in words for k in (2, 3, 4) if len(w) > k + 1)
    vocab += ['##' + s for s, f in sorted(suffixes.items(), key=lambda kv: (-kv[1], kv[0]))[:80] if '##' + s not in vocab]
    if lower:
        vocab += ['caf', '##e', 'istanbul'] if '##e' not in vocab else ['caf', 'istanbul']
    else:
        vocab += ['Caf', 'Hello', 'The']
    seen, out = set(), []
    for t in vocab:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--outdir', required=True)
    args = ap.parse_args()
    with open(CORPUS, encoding='utf-8') as f:
        text = f.read()
    golden = {'generator': 'tools/reference/text_tokenizer_reference.py', 'corpus': CORPUS + ' (Debian base-files)',
              'strings': STRINGS, 'folders': {}}

    # RoBERTa: specials first (as fairseq's dictionary puts them), then the bytes, then the merges
    merges = train_bpe(text, 400)
    tokens = ['<s>', '<pad>', '</s>', '<unk>'] + [B2U[b] for b in range(256)] + [a + b for a, b in merges]
    vocab, seen = {}, set()
    for t in tokens:
        if t not in vocab:
            vocab[t] = len(vocab)
    vocab['<mask>'] = len(vocab)
    ranks = {m: i for i, m in enumerate(merges)}
    for name, as_json in (('roberta', False), ('roberta-json', True)):
        d = os.path.join(args.outdir, name)
        os.makedirs(d, exist_ok=True)
        if as_json:
            # a complete tokenizer.json as Hugging Face's tokenizers saves RoBERTa's
            added = [{'id': vocab[t], 'content': t, 'single_word': False, 'lstrip': t == '<mask>', 'rstrip': False,
                      'normalized': False, 'special': True} for t in ('<s>', '<pad>', '</s>', '<unk>', '<mask>')]
            tj = {'version': '1.0', 'truncation': None, 'padding': None, 'added_tokens': added, 'normalizer': None,
                  'pre_tokenizer': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': True},
                  'post_processor': {'type': 'RobertaProcessing', 'sep': ['</s>', 2], 'cls': ['<s>', 0],
                                     'trim_offsets': True, 'add_prefix_space': False},
                  'decoder': {'type': 'ByteLevel', 'add_prefix_space': True, 'trim_offsets': True, 'use_regex': True},
                  'model': {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': '',
                            'end_of_word_suffix': '', 'fuse_unk': False, 'byte_fallback': False, 'vocab': vocab,
                            'merges': [f'{a} {b}' for a, b in merges]}}
            with open(os.path.join(d, 'tokenizer.json'), 'w', encoding='utf-8') as f:
                json.dump(tj, f, ensure_ascii=False)
            with open(os.path.join(d, 'tokenizer_config.json'), 'w') as f:
                json.dump({'tokenizer_class': 'RobertaTokenizer', 'bos_token': '<s>', 'eos_token': '</s>', 'sep_token': '</s>',
                           'cls_token': '<s>', 'unk_token': '<unk>', 'pad_token': '<pad>', 'mask_token': '<mask>',
                           'add_prefix_space': False, 'model_max_length': 512}, f)
        else:
            with open(os.path.join(d, 'vocab.json'), 'w', encoding='utf-8') as f:
                json.dump(vocab, f, ensure_ascii=False)
            with open(os.path.join(d, 'merges.txt'), 'w', encoding='utf-8') as f:
                f.write('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in merges))
        golden['folders'][name] = {'kind': 'bpe', 'vocabSize': len(vocab),
                                   'cases': [dict(zip(('ids', 'offsets'), bpe_encode(s, vocab, ranks))) for s in STRINGS]}

    for name, lower in (('bert-uncased', True), ('bert-cased', False)):
        d = os.path.join(args.outdir, name)
        os.makedirs(d, exist_ok=True)
        vlist = wordpiece_vocab(text, lower)
        with open(os.path.join(d, 'vocab.txt'), 'w', encoding='utf-8') as f:
            f.write(''.join(t + '\n' for t in vlist))
        with open(os.path.join(d, 'tokenizer_config.json'), 'w') as f:
            json.dump({'do_lower_case': lower, 'tokenizer_class': 'BertTokenizer'}, f)
        v = {t: i for i, t in enumerate(vlist)}
        if lower:
            # the same vocabulary as a complete tokenizer.json (as Hugging Face saves bert-base-uncased's)
            dj = os.path.join(args.outdir, 'bert-json')
            os.makedirs(dj, exist_ok=True)
            sp = lambda t: {'id': t, 'ids': [v[t]], 'tokens': [t]}
            seq = lambda name, ty: {'Sequence': {'id': name, 'type_id': ty}}
            spt = lambda t, ty: {'SpecialToken': {'id': t, 'type_id': ty}}
            tj = {'version': '1.0', 'truncation': None, 'padding': None,
                  'added_tokens': [{'id': v[t], 'content': t, 'single_word': False, 'lstrip': False, 'rstrip': False,
                                    'normalized': False, 'special': True} for t in ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')],
                  'normalizer': {'type': 'BertNormalizer', 'clean_text': True, 'handle_chinese_chars': True,
                                 'strip_accents': None, 'lowercase': True},
                  'pre_tokenizer': {'type': 'BertPreTokenizer'},
                  'post_processor': {'type': 'TemplateProcessing',
                                     'single': [spt('[CLS]', 0), seq('A', 0), spt('[SEP]', 0)],
                                     'pair': [spt('[CLS]', 0), seq('A', 0), spt('[SEP]', 0), seq('B', 1), spt('[SEP]', 1)],
                                     'special_tokens': {'[CLS]': sp('[CLS]'), '[SEP]': sp('[SEP]')}},
                  'decoder': {'type': 'WordPiece', 'prefix': '##', 'cleanup': True},
                  'model': {'type': 'WordPiece', 'unk_token': '[UNK]', 'continuing_subword_prefix': '##',
                            'max_input_chars_per_word': 100, 'vocab': v}}
            with open(os.path.join(dj, 'tokenizer.json'), 'w', encoding='utf-8') as f:
                json.dump(tj, f, ensure_ascii=False)
            with open(os.path.join(dj, 'tokenizer_config.json'), 'w') as f:
                json.dump({'do_lower_case': True, 'tokenizer_class': 'BertTokenizer', 'cls_token': '[CLS]', 'sep_token': '[SEP]',
                           'pad_token': '[PAD]', 'unk_token': '[UNK]', 'mask_token': '[MASK]', 'model_max_length': 512}, f)
            golden['folders']['bert-json'] = {'kind': 'wordpiece', 'vocabSize': len(vlist),
                                              'cases': [dict(zip(('ids', 'offsets'), wordpiece_encode(s, v, True))) for s in STRINGS]}
        golden['folders'][name] = {'kind': 'wordpiece', 'vocabSize': len(vlist),
                                   'cases': [dict(zip(('ids', 'offsets'), wordpiece_encode(s, v, lower))) for s in STRINGS]}
    with open(os.path.join(args.outdir, 'golden.json'), 'w', encoding='utf-8') as f:
        json.dump(golden, f, ensure_ascii=False)


if __name__ == '__main__':
    main()
