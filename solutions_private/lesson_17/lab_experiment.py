"""Lesson 17 lab: BM25, dense and hybrid retrieval on the public queries, and answers with citations
(lessons/lesson_17.md, section 8).

Run it from labs/lesson_17/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``; change one config value at a time. One run:

- (a) builds your ``HybridRetriever`` over the shipped corpus, ranks the public queries with each mode
  (BM25 is the baseline), computes hit@1, hit@5, MRR@10 and nDCG@10 per query with your metrics, and
  bootstraps 95 % intervals over the queries (``bootstrap_ci``, seeded by the run): ``compare.csv``,
  ``compare.png``;
- (b) answers a few queries from the top passages with citations (``build_prompt``): ``answers.csv``,
  ``answers.jsonl``. ``config["model"]`` "extractive" (default) is a stand-in that copies the first
  sentence of the passage it cites; any other value is a labkit backend spec ("transformers:/path" or
  "openai:http://127.0.0.1:8000/v1#MODEL"), whose calls are logged into the run.
"""

from __future__ import annotations

import json
import re

import numpy as np

from labkit import exercises, make_backend, new_figure, progress, start_run, write_csv

exercises("17", __file__)
from rag import HybridRetriever, hit_at_k, mrr, ndcg  # noqa: E402
from ragkit import load_corpus, load_queries, relevant_indices  # noqa: E402

DEFAULT_CONFIG = {
    "model": "extractive",  # or a labkit backend spec
    "depth": 100,  # passages of each retriever that enter the fusion
    "rrf_k": 60,
    "n_boot": 2000,
    "n_answers": 5,
    "passages_in_prompt": 3,
    "threads": 1,
}
MODES = ("bm25", "dense", "hybrid")


def bootstrap_ci(values, n_boot: int, rng: np.random.Generator, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one number per query): draw ``n_boot``
    resamples of the queries with replacement with ``rng.integers(0, n, (n_boot, n))``, take each mean,
    and return the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (``np.quantile``, linear)."""
    # BEGIN SOLUTION
    x = np.asarray(values, dtype=np.float64)
    idx = rng.integers(0, len(x), (n_boot, len(x)))
    means = x[idx].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
    # END SOLUTION


def build_prompt(question: str, passages: list[str]) -> str:
    """A prompt that numbers the passages ``[1] ...``, ``[2] ...`` (one per line, in the order given), asks
    for an answer from them only, citing them as ``[n]``, and for "I don't know" when they do not say."""
    # BEGIN SOLUTION
    numbered = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
    return (
        "Answer the question using only the numbered passages below. Cite every passage you use as [n]. "
        'If the passages do not contain the answer, say "I don\'t know".\n\n'
        f"Passages:\n{numbered}\n\nQuestion: {question}\nAnswer:"
    )
    # END SOLUTION


def extractive_answer(prompt: str) -> str:
    """The stand-in model: the first sentence of passage [1] of the prompt, cited as [1]."""
    m = re.search(r"^\[1\] (.+)$", prompt, re.M)
    if not m:
        return "I don't know."
    first = re.split(r"(?<=[.!?])\s", m.group(1), maxsplit=1)[0]
    return f"{first} [1]"


def citations(answer: str) -> list[int]:
    """The numbers cited as ``[n]`` in an answer, in order, without repeats."""
    return list(dict.fromkeys(int(n) for n in re.findall(r"\[(\d+)\]", answer)))


def main(config: dict | None = None, seed: int = 0, generate=None):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("rag-lab", config, seeds=[seed], entrypoint=main)
    import torch

    torch.set_num_threads(config["threads"])
    rng = np.random.default_rng(seed)
    corpus, queries = load_corpus(), load_queries()
    relevant = relevant_indices(queries, corpus)
    try:
        retriever = HybridRetriever([p["text"] for p in corpus], depth=config["depth"], rrf_k=config["rrf_k"])
        per_query = {}
        for mode in MODES:
            rows = []
            for q, rel in zip(progress(queries, desc=mode), relevant, strict=True):
                r = retriever.search(q["query"], 10, mode)
                rows.append([hit_at_k(r, rel, 1), hit_at_k(r, rel, 5), mrr(r, rel, 10), ndcg(r, rel, 10)])
            per_query[mode] = np.array(rows)
        ci = {mode: [bootstrap_ci(per_query[mode][:, j], config["n_boot"], rng) for j in range(4)] for mode in MODES}
        diff = per_query["hybrid"][:, 2] - per_query["bm25"][:, 2]
        diff_ci = bootstrap_ci(diff, config["n_boot"], rng)
        prompt = build_prompt("probe", ["a"])
    except NotImplementedError as exc:
        run.log(kind="todo", why=str(exc))
        return run

    table = []
    for mode in MODES:
        m = per_query[mode].mean(axis=0)
        table.append({
            "method": mode, "hit_at_1": m[0], "hit_at_5": m[1], "hit_at_5_low": ci[mode][1][0], "hit_at_5_high": ci[mode][1][1],
            "mrr_at_10": m[2], "mrr_at_10_low": ci[mode][2][0], "mrr_at_10_high": ci[mode][2][1], "ndcg_at_10": m[3],
        })  # fmt: skip
    write_csv(run.artifact("compare.csv"), table)
    misses = {
        "bm25_misses_dense_finds": [
            q["id"] for q, b, d in zip(queries, per_query["bm25"], per_query["dense"], strict=True) if b[1] < d[1]
        ],
        "dense_misses_bm25_finds": [
            q["id"] for q, b, d in zip(queries, per_query["bm25"], per_query["dense"], strict=True) if d[1] < b[1]
        ],
    }
    run.log(kind="misses", **misses)

    fig = new_figure(7, 4)
    for j, (col, name) in enumerate((("hit_at_5", "hit@5"), ("mrr_at_10", "MRR@10"))):
        ax = fig.add_subplot(1, 2, j + 1)
        vals = [t[col] for t in table]
        err = [[t[col] - t[f"{col}_low"] for t in table], [t[f"{col}_high"] - t[col] for t in table]]
        ax.bar(MODES, vals, yerr=err, capsize=6, color=["tab:blue", "tab:orange", "tab:green"])
        ax.set(ylim=(0, 1.05), title=f"{name}, 95 % bootstrap", ylabel=name)
    fig.savefig(run.artifact("compare.png"), dpi=80)

    # (b) answers with citations
    if generate is None:
        if config["model"] == "extractive":
            generate = extractive_answer
        else:
            generate = make_backend(config["model"], log=run, default_settings={"max_tokens": 128})
    answers, prompts = [], []
    for q in queries[: config["n_answers"]]:
        top = retriever.search(q["query"], config["passages_in_prompt"], "hybrid")
        prompt = build_prompt(q["query"], [corpus[i]["text"] for i in top])
        out = generate(prompt)
        answer = out if isinstance(out, str) else getattr(out, "text", str(out))
        cited = citations(answer)
        valid = [c for c in cited if 1 <= c <= len(top)]
        answers.append({"query": q["id"], "cited": " ".join(corpus[top[c - 1]]["id"] for c in valid), "n_citations": len(cited),
                        "valid_citations": len(valid), "answer": answer.replace("\n", " ")})  # fmt: skip
        prompts.append({"query": q["id"], "prompt": prompt, "answer": answer})
    write_csv(run.artifact("answers.csv"), answers)
    run.artifact("answers.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts), encoding="utf-8")

    by = {t["method"]: t for t in table}
    summary = {
        "hit_at_5_bm25_baseline": by["bm25"]["hit_at_5"],
        "hit_at_5_bm25_low": by["bm25"]["hit_at_5_low"],
        "hit_at_5_dense": by["dense"]["hit_at_5"],
        "hit_at_5_hybrid": by["hybrid"]["hit_at_5"],
        "mrr_at_10_bm25_baseline": by["bm25"]["mrr_at_10"],
        "mrr_at_10_dense": by["dense"]["mrr_at_10"],
        "mrr_at_10_hybrid": by["hybrid"]["mrr_at_10"],
        "hybrid_minus_bm25_mrr": float(diff.mean()),
        "hybrid_minus_bm25_mrr_low": diff_ci[0],
        "hybrid_minus_bm25_mrr_high": diff_ci[1],
        "valid_citation_share": sum(a["valid_citations"] for a in answers)
        / max(1, sum(a["n_citations"] for a in answers)),
    }
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1, 2):
        print(main(seed=s).dir)
