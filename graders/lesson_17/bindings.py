"""The typed binding between lesson 17's hidden tests and the student's ``rag.py``.

Hidden tests call these methods and never import student code: each call goes to the sandboxed
worker, and each reply is checked here for type and shape before a test sees it. numpy results come
back through the provided ``ragkit.py`` (the course's copy), which turns arrays into tensors and
indices into Python ints. The docstrings are the contract.
"""

from __future__ import annotations

import math

import torch

from graders.engine import expect
from graders.engine.binding import Binding
from graders.engine.remote import Remote

MODULE = "rag"
PROVIDED = "ragkit"


def _rankings(value: object, what: str, n: int, k: int) -> list[list[int]]:
    assert type(value) is list and len(value) == n, f"{what}: expected {n} rankings"
    for r in value:
        assert type(r) is list and all(type(i) is int for i in r), f"{what}: each ranking must be a list of ints"
        assert len(set(r)) == len(r), f"{what}: a ranking repeats a passage: {r}"
        assert len(r) <= k, f"{what}: a ranking has more than k={k} passages"
    return value


class Lesson17(Binding):
    MODULE = MODULE
    threads = 1  # the encoder and the speed test run on one thread

    # ------------------------------------------------------------------ chunking
    def chunk(self, text: str, size: int, overlap: int) -> list[str]:
        """``chunk(text, size, overlap)`` -> list of str."""
        out = self.call("chunk", (text, size, overlap))
        assert type(out) is list and all(type(c) is str for c in out), "chunk must return a list of str"
        return out

    def tokenize(self, text: str) -> list[str]:
        """``tokenize(text)`` -> list of str."""
        out = self.call("tokenize", (text,))
        assert type(out) is list and all(type(c) is str for c in out), "tokenize must return a list of str"
        return out

    # ------------------------------------------------------------------ BM25
    def bm25(self, corpus: list[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25) -> Remote:
        """``BM25(corpus, k1=k1, b=b, epsilon=epsilon)`` in the worker."""
        return self.new("BM25", [list(d) for d in corpus], k1=k1, b=b, epsilon=epsilon)

    def bm25_scores(self, bm25: Remote, queries: list[list[str]], n_docs: int) -> torch.Tensor:
        """``get_scores(q)`` of each query -> (Q, N) float64."""
        out = self.call("grade_bm25_scores", (bm25.ref(), [list(q) for q in queries]), module=PROVIDED)
        return expect.tensor(out, "BM25.get_scores", shape=(len(queries), n_docs), dtype=torch.float64)

    def bm25_idf(self, bm25: Remote) -> tuple[dict[str, float], float]:
        """``(bm25.idf, bm25.average_idf)``."""
        out = self.call("grade_bm25_idf", (bm25.ref(),), module=PROVIDED)
        assert type(out) is dict, "BM25.idf malformed"
        return out["idf"], out["average_idf"]

    def bm25_time(self, bm25: Remote, queries: list[list[str]], repeats: int) -> int:
        """Scores every query ``repeats`` times (timed)."""
        return self.call("grade_bm25_time", (bm25.ref(), queries, repeats), module=PROVIDED)

    # ------------------------------------------------------------------ dense
    def dense(self) -> Remote:
        """``DenseRetriever()`` (the shipped MiniLM)."""
        return self.new("DenseRetriever")

    def encode(self, dense: Remote, texts: list[str]) -> torch.Tensor:
        """``dense.encode(texts)`` -> (len(texts), 384) float32."""
        out = self.call("grade_encode", (dense.ref(), list(texts)), module=PROVIDED, timeout=300)
        return expect.tensor(out, "DenseRetriever.encode", shape=(len(texts), 384), dtype=torch.float32)

    def dense_scores(self, dense: Remote, query: str, embeddings: torch.Tensor) -> torch.Tensor:
        """``dense.scores(query, embeddings)`` -> (N,) float32."""
        out = self.call("grade_scores", (dense.ref(), query, embeddings), module=PROVIDED)
        return expect.tensor(out, "DenseRetriever.scores", shape=(embeddings.shape[0],), dtype=torch.float32)

    # ------------------------------------------------------------------ fusion, pipeline, metrics
    def rrf(self, rankings: list[list[int]], k: int = 60) -> list[int]:
        """``rrf(rankings, k)`` -> list of int."""
        out = self.call("grade_rrf", ([list(r) for r in rankings], k), module=PROVIDED)
        assert type(out) is list and all(type(i) is int for i in out), "rrf must return a list of ints"
        return out

    def hybrid(self, passages: list[str]) -> Remote:
        """``HybridRetriever(passages)`` (encodes the corpus: the slow call)."""
        req = {
            "op": "new",
            "module": MODULE,
            "function": "HybridRetriever",
            "args": [list(passages)],
            "kwargs": {},
            "device": "cpu",
        }
        handle, _ = self.worker.request(req, timeout=600)
        assert type(handle) is int, "building HybridRetriever gave no handle"
        return Remote(self.worker, handle, self.worker.starts, "rag.HybridRetriever")

    def search(self, retriever: Remote, queries: list[str], k: int, mode: str) -> list[list[int]]:
        """``retriever.search(q, k, mode)`` for each query -> list of rankings."""
        out = self.call("grade_search", (retriever.ref(), list(queries), k, mode), module=PROVIDED, timeout=300)
        return _rankings(out, f"search(mode={mode!r})", len(queries), k)

    def metrics(self, rankings: list[list[int]], relevant: list[list[int]], k: int) -> list[list[float]]:
        """``[hit_at_k, mrr, ndcg]`` per query."""
        out = self.call("grade_metrics", (rankings, relevant, k), module=PROVIDED)
        assert type(out) is list and all(type(r) is list and len(r) == 3 for r in out), "metrics reply malformed"
        for row in out:
            assert all(type(v) is float and math.isfinite(v) for v in row), f"metrics must be finite floats, got {row}"
        return out
