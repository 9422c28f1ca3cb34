"""Grader-side tools for lesson 01: Hugging Face BPE tokenizers built in this process, and a
replay of a merge list that says whether each merge was a most frequent pair.

Nothing here runs student code. ``pretokenize`` is the given GPT-2 split (the same function the
students receive); it is imported from the reference module, the only thing taken from it here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import pairwise

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from solutions_private.lesson_01.bpe import pretokenize


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte (what HF's ByteLevel uses)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


BYTE_CHAR = _bytes_to_unicode()


def _byte_level(tok: Tokenizer) -> Tokenizer:
    # The same split as `pretokenize`: GPT-2's regex, no space added in front of the text.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def hf_train(text: str, vocab_size: int) -> Tokenizer:
    """HF ``BpeTrainer`` on ``text``: 256 byte tokens (all of them) + ``vocab_size - 256`` merges."""
    tok = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=0, show_progress=False, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator([text], trainer=trainer)
    assert tok.get_vocab_size() == vocab_size, f"HF trainer made {tok.get_vocab_size()} tokens, not {vocab_size}"
    return tok


def token_bytes(merges: list[tuple[int, int]]) -> list[bytes]:
    vocab = [bytes([i]) for i in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return vocab


def hf_from_merges(merges: list[tuple[int, int]]) -> Tokenizer:
    """HF's BPE model with exactly these merges and our ids (id i <-> the i-th token's bytes)."""
    strings = ["".join(BYTE_CHAR[b] for b in t) for t in token_bytes(merges)]
    assert len(set(strings)) == len(strings), "two merges make the same bytes: HF cannot hold this vocabulary"
    model = models.BPE(vocab={s: i for i, s in enumerate(strings)}, merges=[(strings[a], strings[b]) for a, b in merges])
    return _byte_level(Tokenizer(model))


def show(token_id: int, vocab: list[bytes]) -> str:
    """``123 (b'ab')``: an id with its bytes, for messages."""
    return f"{token_id} ({vocab[token_id]!r})" if 0 <= token_id < len(vocab) else str(token_id)


class Replay:
    """Pair counts of a text, kept up to date while merges are applied (the training rule)."""

    def __init__(self, text: str) -> None:
        word_counts = Counter(pretokenize(text))
        self.words = [list(w.encode("utf-8")) for w in word_counts]
        self.freqs = list(word_counts.values())
        self.counts: dict[tuple[int, int], int] = defaultdict(int)
        self.where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for i, ids in enumerate(self.words):
            self._add(i, ids, +1)
        self.next_id = 256

    def _add(self, i: int, ids: list[int], sign: int) -> None:
        for pair in pairwise(ids):
            self.counts[pair] += sign * self.freqs[i]
            if sign > 0:
                self.where[pair].add(i)
            elif self.counts[pair] == 0:
                del self.counts[pair]

    def apply(self, pair: tuple[int, int]) -> None:
        for i in self.where.pop(pair, ()):
            old = self.words[i]
            new = []
            j = 0
            while j < len(old):
                if j + 1 < len(old) and (old[j], old[j + 1]) == pair:
                    new.append(self.next_id)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            self._add(i, old, -1)
            self._add(i, new, +1)
            self.words[i] = new
        self.next_id += 1

    def best_count(self) -> int:
        return max(self.counts.values(), default=0)


def counts_at(text: str, merges: list[tuple[int, int]], step: int) -> Replay:
    """The replay after the first ``step`` merges."""
    replay = Replay(text)
    for pair in merges[:step]:
        replay.apply(pair)
    return replay


def greedy_violation(text: str, merges: list[tuple[int, int]], vocab_size: int) -> str | None:
    """None if every merge is a most frequent pair at its step (any tie-break) and the list is
    as long as the rule says; otherwise what is wrong, for the student."""
    replay = Replay(text)
    vocab = token_bytes(merges)
    for k, pair in enumerate(merges):
        best = replay.best_count()
        if best == 0:
            return f"merge {k}: no pair is left to merge, yet the list goes on ({len(merges)} merges)"
        got = replay.counts.get(pair, 0)
        if got != best:
            a, b = pair
            return (
                f"merge {k} is ({show(a, vocab)}, {show(b, vocab)}) with count {got}, but the most frequent "
                f"pair at that step has count {best}: check how pairs are counted and updated"
            )
        replay.apply(pair)
    if len(merges) < vocab_size - 256 and replay.best_count() > 0:
        return f"stopped after {len(merges)} merges, but {vocab_size - 256} were asked for and pairs remain"
    return None
