"""Lesson 17's provided helpers: the shipped data, and the calls the graders make (complete; do not edit).

``load_corpus()`` and ``load_queries()`` read ``data/corpus.jsonl`` and ``data/queries.jsonl`` beside this
file. The ``grade_*`` functions wrap your ``rag.py`` so its numpy results travel to the graders as
tensors and Python ints; they add nothing to what your functions compute.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent / "data"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_corpus(path: str | Path | None = None) -> list[dict]:
    """The passages: dicts with ``id`` (e.g. "L07-010"), ``lesson``, ``section`` and ``text``, in index order."""
    return _jsonl(Path(path) if path else DATA / "corpus.jsonl")


def load_queries(path: str | Path | None = None) -> list[dict]:
    """The public queries: dicts with ``id``, ``query`` and ``relevant`` (a list of passage ids)."""
    return _jsonl(Path(path) if path else DATA / "queries.jsonl")


def relevant_indices(queries: list[dict], corpus: list[dict]) -> list[set[int]]:
    """Each query's relevant passage ids as a set of indices into ``corpus``."""
    index = {p["id"]: i for i, p in enumerate(corpus)}
    return [{index[r] for r in q["relevant"]} for q in queries]


def _array(value: object, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(value).__name__}")
    return torch.from_numpy(np.ascontiguousarray(value))


def _ints(ranking: object, what: str) -> list[int]:
    out = []
    for x in ranking:  # type: ignore[attr-defined]
        if isinstance(x, bool) or not isinstance(x, int | np.integer):
            raise TypeError(f"{what} must hold integer passage indices, got {type(x).__name__}")
        out.append(int(x))
    return out


def grade_bm25_scores(bm25, queries: list[list[str]]) -> torch.Tensor:
    """``bm25.get_scores(q)`` for each query, stacked: (Q, N) as returned (dtype kept)."""
    return torch.stack([_array(bm25.get_scores(list(q)), "BM25.get_scores") for q in queries])


def grade_bm25_idf(bm25) -> dict:
    """``{"idf": {token: float}, "average_idf": float}`` of a BM25 object."""
    return {"idf": {str(k): float(v) for k, v in bm25.idf.items()}, "average_idf": float(bm25.average_idf)}


def grade_bm25_time(bm25, queries: list[list[str]], repeats: int) -> int:
    """Score every query ``repeats`` times (the speed test's timed call); returns the number of scores."""
    n = 0
    for _ in range(repeats):
        for q in queries:
            n += len(bm25.get_scores(q))
    return n


def grade_encode(dense, texts: list[str]) -> torch.Tensor:
    """``dense.encode(texts)`` as a tensor."""
    return _array(dense.encode(list(texts)), "DenseRetriever.encode")


def grade_scores(dense, query: str, embeddings: torch.Tensor) -> torch.Tensor:
    """``dense.scores(query, embeddings.numpy())`` as a tensor."""
    return _array(dense.scores(query, embeddings.numpy()), "DenseRetriever.scores")


def grade_rrf(rankings: list[list[int]], k: int) -> list[int]:
    from rag import rrf

    return _ints(rrf([list(r) for r in rankings], k), "rrf(...)")


def grade_search(retriever, queries: list[str], k: int, mode: str) -> list[list[int]]:
    """``retriever.search(q, k, mode)`` for each query."""
    return [_ints(retriever.search(q, k, mode), f"search(..., mode={mode!r})") for q in queries]


def grade_metrics(rankings: list[list[int]], relevant: list[list[int]], k: int) -> list[list[float]]:
    """``[hit_at_k, mrr, ndcg]`` of each query (relevant sent as lists, turned into sets here)."""
    from rag import hit_at_k, mrr, ndcg

    return [
        [float(f(list(r), set(rel), k)) for f in (hit_at_k, mrr, ndcg)]
        for r, rel in zip(rankings, relevant, strict=True)
    ]
