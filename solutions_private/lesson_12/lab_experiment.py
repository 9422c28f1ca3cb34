"""Lesson 12 lab: two decoding settings on a small QA task, with confidence intervals and an error analysis (lessons/lesson_12.md, section 9).

Run it from labs/lesson_12/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``; change one config value at a time. One run:

- builds the shipped toy task (``make_task``: 36 short questions in three categories, capitals,
  opposites and sums, each with its gold answers) and splits it by the seed: ``train_per_category``
  facts of each category go into the training corpus, and *every* question is a test item, so part
  of the test set is contaminated on purpose;
- trains a tiny character-level language model (``CharMLP``, a few seconds) on the training corpus;
- decodes every test question with greedy decoding (the baseline) and with temperature + top-p
  sampling (lesson 08's settings), ``samples`` times;
- scores each answer with your ``exact_match`` / ``f1_score``, puts a percentile bootstrap CI on each
  setting's accuracy, compares the two settings on the same items (``paired_bootstrap_ci``,
  ``paired_permutation_test``), computes pass@k of the sampler over its samples, flags contaminated
  items (``contamination``) and breaks the errors down by category (``error_type``, ``by_category``):
  ``items.csv``, ``metrics.csv``, ``errors.csv``, ``passk.csv``, ``accuracy.png``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labkit import exercises, new_figure, progress, start_run, write_csv

exercises("12", __file__)
from evaluation import (  # noqa: E402
    bootstrap_ci,
    contamination,
    exact_match,
    f1_score,
    normalize_answer,
    paired_bootstrap_ci,
    paired_permutation_test,
    pass_at_k,
)

DEFAULT_CONFIG = {
    "train_per_category": 8,  # of the 12 facts per category; the other 4 are clean (unseen) test items
    "context": 12,  # characters the model sees
    "hidden": 256,
    "steps": 150,
    "lr": 1e-2,
    "temperature": 1.0,  # the sampled setting; greedy is the baseline
    "top_p": 0.9,
    "samples": 10,  # per item, for pass@k
    "max_chars": 16,
    "ngram": 4,  # word n-grams for the contamination check
    "n_resamples": 2000,
    "confidence_level": 0.95,
    "threads": 1,
}

CAPITALS = [("france", ["paris"]), ("japan", ["tokyo"]), ("india", ["new delhi", "delhi"]), ("argentina", ["buenos aires"]),
            ("mexico", ["mexico city", "mexico"]), ("italy", ["rome"]), ("egypt", ["cairo"]), ("kenya", ["nairobi"]),
            ("peru", ["lima"]), ("spain", ["madrid"]), ("chile", ["santiago", "santiago de chile"]), ("canada", ["ottawa"])]  # fmt: skip
OPPOSITES = [("hot", ["cold"]), ("up", ["down"]), ("big", ["small", "little"]), ("fast", ["slow"]), ("early", ["late"]),
             ("light", ["dark", "heavy"]), ("open", ["closed", "shut"]), ("full", ["empty"]), ("wet", ["dry"]),
             ("old", ["new", "young"]), ("rich", ["poor"]), ("left", ["right"])]  # fmt: skip
SUMS = [(1, 2), (2, 3), (3, 4), (4, 1), (5, 2), (6, 3), (2, 2), (7, 1), (3, 3), (5, 4), (1, 1), (4, 4)]
NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()
CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789 ?:\n"))


def make_task() -> list[dict]:
    """The 36 items: {"id", "category", "question", "golds"}; ``golds[0]`` is the answer the corpus uses."""
    items = [{"category": "capital", "question": f"q: capital of {c}? a:", "golds": g} for c, g in CAPITALS]
    items += [{"category": "opposite", "question": f"q: opposite of {w}? a:", "golds": g} for w, g in OPPOSITES]
    items += [
        {"category": "sum", "question": f"q: {x} plus {y}? a:", "golds": [str(x + y), NUMBER_WORDS[x + y]]}
        for x, y in SUMS
    ]
    return [{"id": i, **item} for i, item in enumerate(items)]


def split(items: list[dict], per_category: int, seed: int) -> list[dict]:
    """The training items: ``per_category`` of each category, chosen by the seed."""
    g = torch.Generator().manual_seed(seed)
    train = []
    for cat in dict.fromkeys(item["category"] for item in items):
        pool = [item for item in items if item["category"] == cat]
        train += [pool[int(i)] for i in torch.randperm(len(pool), generator=g)[:per_category]]
    return train


def error_type(prediction: str, golds: list[str]) -> str:
    """One label per answer: "correct" (EM 1), "partial" (EM 0, F1 > 0), "empty" (normalises to ""), else "wrong"."""
    # BEGIN SOLUTION
    if exact_match(prediction, golds) == 1.0:
        return "correct"
    if f1_score(prediction, golds) > 0.0:
        return "partial"
    if normalize_answer(prediction) == "":
        return "empty"
    return "wrong"
    # END SOLUTION


def by_category(records: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Group ``records`` (each with "exact_match", "f1", "error" and the ``keys``) by the values of ``keys``.

    One row per group, in order of first appearance: the key values, then ``n``, the mean
    ``exact_match`` and ``f1``, and the count of each error type (``correct``, ``partial``, ``wrong``, ``empty``).
    """
    # BEGIN SOLUTION
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    rows = []
    for values, rs in groups.items():
        row = dict(zip(keys, values, strict=True))
        row.update(
            n=len(rs), exact_match=sum(r["exact_match"] for r in rs) / len(rs), f1=sum(r["f1"] for r in rs) / len(rs)
        )
        row.update({e: sum(r["error"] == e for r in rs) for e in ("correct", "partial", "wrong", "empty")})
        rows.append(row)
    return rows
    # END SOLUTION


class CharMLP(nn.Module):
    """A tiny character language model: the last ``context`` characters -> the next one (Bengio et al., 2003)."""

    def __init__(self, vocab: int, context: int, hidden: int, emb: int = 16) -> None:
        super().__init__()
        self.context = context
        self.emb = nn.Embedding(vocab + 1, emb)  # id ``vocab`` pads the start
        self.fc = nn.Linear(context * emb, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, context) -> (B, V)
        return self.out(torch.tanh(self.fc(self.emb(x).flatten(1))))


def encode(text: str) -> list[int]:
    return [CHARS.index(ch) for ch in text]


def train_model(corpus: list[str], config: dict, seed: int) -> tuple[CharMLP, list[float]]:
    v, c = len(CHARS), config["context"]
    xs, ys = [], []
    for line in corpus:
        ids = [v] * c + encode(line)
        xs += [ids[i - c : i] for i in range(c, len(ids))]
        ys += ids[c:]
    x, y = torch.tensor(xs), torch.tensor(ys)
    torch.manual_seed(seed)
    model = CharMLP(v, c, config["hidden"])
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    losses = []
    for _ in range(config["steps"]):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses


@torch.no_grad()
def decode(
    model: CharMLP, question: str, config: dict, count: int, temperature: float, top_p: float, g: torch.Generator
) -> list[str]:
    """``count`` answers to ``question``, all at once: greedy when temperature is 0, else temperature + top-p sampling."""
    v, c = len(CHARS), model.context
    ids = torch.tensor([[v] * c + encode(question)]).repeat(count, 1)  # (count, L)
    done = torch.zeros(count, dtype=torch.bool)
    out = [[] for _ in range(count)]
    for _ in range(config["max_chars"]):
        logits = model(ids[:, -c:])  # (count, V)
        if temperature == 0.0:
            nxt = logits.argmax(-1)
        else:
            probs = F.softmax(logits / temperature, dim=-1)
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # top-p: drop a token when the mass before it reaches p
            sorted_p[drop] = 0.0
            nxt = order.gather(1, torch.multinomial(sorted_p, 1, generator=g))[:, 0]
        done |= nxt == CHARS.index("\n")
        for i in range(count):
            if not done[i]:
                out[i].append(CHARS[int(nxt[i])])
        if done.all():
            break
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return ["".join(chars).strip() for chars in out]


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("evaluation-lab", config, seeds=[seed], entrypoint=main)
    torch.set_num_threads(config["threads"])
    items = make_task()
    train = split(items, config["train_per_category"], seed)
    corpus = [f"{item['question']} {item['golds'][0]}\n" for item in train]
    model, losses = train_model(corpus, config, seed)
    run.log(kind="train", loss=losses)
    flags = contamination([f"{item['question']} {item['golds'][0]}" for item in items], corpus, config["ngram"])
    g = torch.Generator().manual_seed(seed)
    records, scores, passk = [], {"baseline_greedy": [], "sampled": []}, []
    for item, dirty in zip(progress(items, desc="test items"), flags["contaminated"], strict=True):
        greedy = decode(model, item["question"], config, 1, 0.0, 1.0, g)
        sampled = decode(model, item["question"], config, config["samples"], config["temperature"], config["top_p"], g)
        correct = sum(exact_match(s, item["golds"]) for s in sampled)
        passk.append(int(correct))
        for setting, pred in (("baseline_greedy", greedy[0]), ("sampled", sampled[0])):
            em, f1 = exact_match(pred, item["golds"]), f1_score(pred, item["golds"])
            try:
                error = error_type(pred, item["golds"])
            except NotImplementedError as exc:
                run.log(kind="todo", missing="error_type", why=str(exc))
                return run
            scores[setting].append(em)
            records.append({"id": item["id"], "category": item["category"], "contaminated": int(dirty), "setting": setting,
                            "prediction": pred, "exact_match": em, "f1": f1, "error": error})  # fmt: skip
    level, b = config["confidence_level"], config["n_resamples"]
    summary = {"final_train_loss": losses[-1], "contaminated_fraction": flags["contaminated_fraction"]}
    metric_rows = []
    for setting, em in scores.items():
        low, high = bootstrap_ci(em, "mean", b, level, seed)
        f1 = [r["f1"] for r in records if r["setting"] == setting]
        summary.update({f"em_{setting}": sum(em) / len(em), f"em_{setting}_ci_low": low, f"em_{setting}_ci_high": high,
                        f"f1_{setting}": sum(f1) / len(f1)})  # fmt: skip
        metric_rows.append(
            {"setting": setting, "metric": "exact_match", "value": sum(em) / len(em), "ci_low": low, "ci_high": high}
        )
        f_low, f_high = bootstrap_ci(f1, "mean", b, level, seed)
        metric_rows.append(
            {"setting": setting, "metric": "f1", "value": sum(f1) / len(f1), "ci_low": f_low, "ci_high": f_high}
        )
    d_low, d_high = paired_bootstrap_ci(scores["sampled"], scores["baseline_greedy"], b, level, seed)
    p = paired_permutation_test(scores["sampled"], scores["baseline_greedy"], 9999, seed)
    diff = summary["em_sampled"] - summary["em_baseline_greedy"]
    metric_rows.append({"setting": "sampled - baseline_greedy", "metric": "exact_match_difference", "value": diff,
                        "ci_low": d_low, "ci_high": d_high})  # fmt: skip
    summary.update(em_difference=diff, em_difference_ci_low=d_low, em_difference_ci_high=d_high, paired_p_value=p)
    n = config["samples"]
    pass_rows = [{"k": k, "pass_at_k": sum(pass_at_k(n, c, k) for c in passk) / len(passk)} for k in range(1, n + 1)]
    summary.update(pass_at_1=pass_rows[0]["pass_at_k"], **{f"pass_at_{n}": pass_rows[-1]["pass_at_k"]})
    try:
        errors = by_category(records, ("setting", "category", "contaminated"))
    except NotImplementedError as exc:
        run.log(kind="todo", missing="by_category", why=str(exc))
        return run
    for row in by_category(records, ("setting", "contaminated")):
        tag = "contaminated" if row["contaminated"] else "clean"
        summary[f"em_{row['setting']}_{tag}"] = row["exact_match"]
    write_csv(run.artifact("items.csv"), records)
    write_csv(run.artifact("metrics.csv"), metric_rows)
    write_csv(run.artifact("errors.csv"), errors)
    write_csv(run.artifact("passk.csv"), pass_rows)
    fig = new_figure(10, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    em_rows = [r for r in metric_rows if r["metric"] == "exact_match"]
    for i, r in enumerate(em_rows):
        ax1.errorbar(i, r["value"], yerr=[[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]], fmt="o", capsize=6,
                     color=("k", "tab:orange")[i], label=f"{r['setting']} ({level:.0%} CI)")  # fmt: skip
    groups = by_category(records, ("setting", "contaminated"))
    for j, row in enumerate(groups):
        ax1.bar(4 + j, row["exact_match"], color="tab:red" if row["contaminated"] else "tab:blue", alpha=0.6)
        ax1.text(4 + j, row["exact_match"] + 0.02, f"{row['exact_match']:.2f}", ha="center", fontsize=7)
    ax1.set_xticks(range(len(em_rows) + 2 + len(groups)))
    ax1.set_xticklabels([r["setting"][:8] for r in em_rows] + ["", ""] +
                        [f"{r['setting'][:8]}\n{'contam.' if r['contaminated'] else 'clean'}" for r in groups], fontsize=7)  # fmt: skip
    ax1.set(ylabel="exact match", title="accuracy with bootstrap CIs; contaminated vs clean")
    ax1.legend(fontsize=7)
    ax2.plot([r["k"] for r in pass_rows], [r["pass_at_k"] for r in pass_rows], "o-", color="tab:orange")
    ax2.axhline(summary["em_baseline_greedy"], color="k", ls=":", label="greedy exact match")
    ax2.set(xlabel="k", ylabel="pass@k (unbiased estimator)", title=f"sampled setting, n = {n} samples per item")
    ax2.legend()
    fig.savefig(run.artifact("accuracy.png"), dpi=80)
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1, 2):
        print(main(seed=s).dir)
