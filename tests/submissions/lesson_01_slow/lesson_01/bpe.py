"""A correct but slow lesson 01 submission: the trainer recounts every pair after each merge.

It counts over distinct words (weighted by frequency), which is already the faster of the two
naive versions; recounting over every occurrence in the text is slower still. It must keep
every correctness point and lose the training-speed test.
"""

from collections import Counter
from itertools import pairwise

import regex

GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_SPLIT = regex.compile(GPT2_SPLIT_PATTERN)


def pretokenize(text):
    return _SPLIT.findall(text)


def merge_pair(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(text, vocab_size):
    word_counts = Counter(pretokenize(text))
    words = {w: list(w.encode("utf-8")) for w in word_counts}
    merges = []
    for new_id in range(256, vocab_size):
        counts = Counter()  # from scratch, every merge
        for w, freq in word_counts.items():
            ids = words[w]
            for pair in pairwise(ids):
                counts[pair] += freq
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges.append(best)
        for w in words:
            words[w] = merge_pair(words[w], best, new_id)
    return merges


def build_vocab(merges):
    vocab = [bytes([i]) for i in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return vocab


def encode(text, merges):
    ranks = {tuple(p): i for i, p in enumerate(merges)}
    out = []
    for word in pretokenize(text):
        ids = list(word.encode("utf-8"))
        while len(ids) > 1:
            pair = min(pairwise(ids), key=lambda p: ranks.get(p, float("inf")))
            if pair not in ranks:
                break
            ids = merge_pair(ids, pair, 256 + ranks[pair])
        out += ids
    return out


def decode(ids, merges):
    vocab = build_vocab(merges)
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
