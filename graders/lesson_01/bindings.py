"""The typed binding between lesson 01's hidden tests and the student's ``bpe.py``.

Hidden tests call these methods and never import student code: each call goes to the
sandboxed worker, and each reply is checked here (exact types, lengths, id ranges) before a
test sees it. Only plain data crosses: strings, ints, lists of ints or of int pairs, bytes.
The docstrings are the contract.
"""

from __future__ import annotations

from graders.engine.binding import Binding
from graders.engine.expect import shorten

MODULE = "bpe"
Merges = list[tuple[int, int]]


def _ids(value: object, what: str, vocab_size: int | None = None) -> list[int]:
    assert type(value) in (list, tuple), f"{what} must return a list of ints, got {type(value).__name__}"
    for i, x in enumerate(value):
        assert type(x) is int, f"{what}: item {i} is {type(x).__name__} {shorten(x, 80)}, expected int"
        if vocab_size is not None:
            assert 0 <= x < vocab_size, f"{what}: item {i} is {x}, not a token id in range(0, {vocab_size})"
    return list(value)


def _merges(value: object, what: str, vocab_size: int) -> Merges:
    assert type(value) in (list, tuple), f"{what} must return a list of (int, int) pairs, got {type(value).__name__}"
    assert len(value) <= max(vocab_size - 256, 0), (
        f"{what} returned {len(value)} merges for vocab_size={vocab_size}: at most vocab_size - 256 (the 256 bytes count)"
    )
    merges = []
    for k, pair in enumerate(value):
        assert type(pair) in (list, tuple) and len(pair) == 2 and all(type(x) is int for x in pair), (
            f"{what}: merge {k} is {shorten(pair, 80)}, expected a pair of ints"
        )
        a, b = pair
        assert 0 <= a < 256 + k and 0 <= b < 256 + k, (
            f"{what}: merge {k} is ({a}, {b}), but only ids 0..{255 + k} exist before it (merge k creates 256 + k)"
        )
        merges.append((a, b))
    return merges


class Lesson01(Binding):
    MODULE = MODULE

    def merge_pair(self, ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
        """``merge_pair(ids, pair, new_id)`` -> a list of ints."""
        return _ids(self.call("merge_pair", (ids, pair, new_id)), f"merge_pair(..., {pair}, {new_id})")

    def train_bpe(self, text: str, vocab_size: int) -> Merges:
        """``train_bpe(text, vocab_size)`` -> merges, each referring only to ids that exist before it."""
        return _merges(self.call("train_bpe", (text, vocab_size)), "train_bpe", vocab_size)

    def timed_train_bpe(self, text: str, vocab_size: int) -> tuple[Merges, float]:
        """``train_bpe`` timed here around the worker's round trip: (merges, seconds)."""
        (value,), seconds = self.worker.timed_batch(MODULE, "train_bpe", [((text, vocab_size), {})])
        return _merges(value, "train_bpe", vocab_size), seconds

    def build_vocab(self, merges: Merges) -> list[bytes]:
        """``build_vocab(merges)`` -> a list of ``256 + len(merges)`` bytes objects."""
        value = self.call("build_vocab", (merges,))
        assert type(value) in (list, tuple), f"build_vocab must return a list of bytes, got {type(value).__name__}"
        assert len(value) == 256 + len(merges), f"build_vocab returned {len(value)} tokens, expected 256 + {len(merges)}"
        for i, t in enumerate(value):
            assert type(t) is bytes, f"build_vocab: token {i} is {type(t).__name__}, expected bytes"
        return list(value)

    def encode(self, text: str, merges: Merges) -> list[int]:
        """``encode(text, merges)`` -> token ids in ``range(256 + len(merges))``."""
        return _ids(self.call("encode", (text, merges)), "encode", 256 + len(merges))

    def decode(self, ids: list[int], merges: Merges) -> str:
        """``decode(ids, merges)`` -> a str."""
        value = self.call("decode", (ids, merges))
        assert type(value) is str, f"decode must return a str, got {type(value).__name__}"
        return value
