"""Lesson 13 lab: SFT a tiny model on the shipped instruction set; overfitting and leakage (lessons/lesson_13.md, section 9).

Run it from labs/lesson_13/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``; change one config value at a time. One run:

- (a) splits the shipped pairs (``sft_data.conversations()``) into train and validation with the
  run's seed and checks the split for leakage: for each validation row, the share of its word
  n-grams that also occur in the training rows (``word_ngrams``, ``ngram_overlap``): ``leakage.csv``;
- (b) fine-tunes ``sft_kit.tiny_llama`` on the training rows with your ``prepare_rows``,
  ``pack_bfd``, ``collate_packed`` and ``sft_step`` (AdamW), and logs the completion loss on the
  training and the validation rows every ``eval_every`` steps: ``curve.csv``, ``loss_curve.png``.
  The baseline is the untrained model (step 0).
"""

from __future__ import annotations

import random
import re

import torch

from labkit import exercises, new_figure, progress, start_run, write_csv

exercises("13", __file__)
from sft import collate_packed, pack_bfd, prepare_rows, sft_loss, sft_step  # noqa: E402
from sft_data import conversations  # noqa: E402
from sft_kit import batches, make_tokenizer, tiny_llama  # noqa: E402

DEFAULT_CONFIG = {
    "val_fraction": 0.2,
    "steps": 150,
    "eval_every": 15,
    "lr": 3e-3,
    "seq_length": 256,
    "rows_per_batch": 2,
    "ngram": 4,  # word n-grams for the leakage check
    "leak_threshold": 0.5,  # a validation row is flagged when at least this share of its n-grams is in train
    "hidden_size": 64,
    "threads": 1,
}


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of word n-grams of ``text``: lowercased, words are runs of letters and digits (``[a-z0-9]+``)."""
    # BEGIN SOLUTION
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
    # END SOLUTION


def ngram_overlap(train_texts: list[str], val_texts: list[str], n: int) -> list[float]:
    """For each validation text, the share of its word n-grams found in any training text (0.0 if it has none)."""
    # BEGIN SOLUTION
    seen = set().union(*(word_ngrams(t, n) for t in train_texts)) if train_texts else set()
    shares = []
    for text in val_texts:
        grams = word_ngrams(text, n)
        shares.append(len(grams & seen) / len(grams) if grams else 0.0)
    return shares
    # END SOLUTION


def row_text(row: dict) -> str:
    """The words of a row: its prompt and completion contents."""
    return " ".join(m["content"] for m in row["prompt"] + row["completion"])


def split(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = round(val_fraction * len(rows))
    return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]]


def eval_loss(model, examples: list[dict], seq_length: int) -> float:
    """Token-mean completion loss over ``examples``, packed (your sft_loss on packed batches, weighted by tokens)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in pack_bfd(examples, seq_length):
            batch = collate_packed([row])
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(sft_loss(model, batch)) * n
            count += n
    model.train()
    return total / count


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("sft-overfit-lab", config, seeds=[seed], entrypoint=main)
    torch.set_num_threads(config["threads"])
    rows = conversations()
    train_rows, val_rows = split(rows, config["val_fraction"], seed)
    try:
        shares = ngram_overlap([row_text(r) for r in train_rows], [row_text(r) for r in val_rows], config["ngram"])
    except NotImplementedError as exc:
        run.log(kind="todo", missing="ngram_overlap", why=str(exc))
        return run
    flagged = [s >= config["leak_threshold"] for s in shares]
    leak_rows = [
        {"val_index": i, "question": r["prompt"][-1]["content"], "overlap": round(s, 4), "flagged": int(f)}
        for i, (r, s, f) in enumerate(zip(val_rows, shares, flagged, strict=True))
    ]
    write_csv(run.artifact("leakage.csv"), leak_rows)

    tok = make_tokenizer()
    train_ex, val_ex = prepare_rows(tok, train_rows), prepare_rows(tok, val_rows)
    leaked_ex = [e for e, f in zip(val_ex, flagged, strict=True) if f]
    clean_ex = [e for e, f in zip(val_ex, flagged, strict=True) if not f]
    packed = pack_bfd(train_ex, config["seq_length"])
    model = tiny_llama({"hidden_size": config["hidden_size"]}, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    stream = batches(packed, config["rows_per_batch"], seed)
    curve = []

    def evaluate(step: int) -> None:
        point = {"step": step, "train_loss": eval_loss(model, train_ex, config["seq_length"]),
                 "val_loss": eval_loss(model, val_ex, config["seq_length"])}  # fmt: skip
        curve.append(point)
        run.log(kind="eval", **point)

    evaluate(0)
    for step in progress(range(1, config["steps"] + 1), desc="SFT steps"):
        loss = sft_step(model, opt, collate_packed(next(stream)))
        if step % config["eval_every"] == 0 or step == config["steps"]:
            run.log(kind="train", step=step, loss=loss)
            evaluate(step)
    write_csv(run.artifact("curve.csv"), curve)

    best = min(curve, key=lambda p: p["val_loss"])
    summary = {
        "baseline_val_loss": curve[0]["val_loss"],  # the untrained model
        "final_train_loss": curve[-1]["train_loss"],
        "final_val_loss": curve[-1]["val_loss"],
        "best_val_loss": best["val_loss"],
        "best_val_step": best["step"],
        "generalisation_gap": curve[-1]["val_loss"] - curve[-1]["train_loss"],
        "val_rows": len(val_rows),
        "leaked_val_rows": sum(flagged),
        "leaked_share": sum(flagged) / len(val_rows),
    }
    if leaked_ex:  # a split may leak nothing: then there is no leaked loss to report
        summary["val_loss_leaked"] = eval_loss(model, leaked_ex, config["seq_length"])
    if clean_ex:
        summary["val_loss_clean"] = eval_loss(model, clean_ex, config["seq_length"])
    fig = new_figure(10, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    steps = [p["step"] for p in curve]
    ax1.plot(steps, [p["train_loss"] for p in curve], "o-", label="train")
    ax1.plot(steps, [p["val_loss"] for p in curve], "s-", label="validation")
    ax1.axvline(best["step"], color="k", ls=":", label=f"best validation (step {best['step']})")
    ax1.set(xlabel="step", ylabel="completion loss (nats/token)", title="SFT: train vs validation", yscale="log")
    ax1.legend()
    ax2.hist([s for s, f in zip(shares, flagged, strict=True) if not f], bins=10, range=(0, 1), label="clean")
    ax2.hist([s for s, f in zip(shares, flagged, strict=True) if f], bins=10, range=(0, 1), label="flagged")
    ax2.axvline(config["leak_threshold"], color="k", ls=":")
    ax2.set(
        xlabel=f"share of word {config['ngram']}-grams seen in train", ylabel="validation rows", title="leakage check"
    )
    ax2.legend()
    fig.savefig(run.artifact("loss_curve.png"), dpi=80)
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
