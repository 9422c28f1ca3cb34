"""Lesson 02 lab experiment: train your BigramLM on characters, logged with labkit.

Run it from this folder: ``python lab_experiment.py`` (or from the notebook). Each call of
:func:`main` is one logged run under ``runs/``: it trains your ``BigramLM`` with AdamW on
random ``(batch, block)`` windows of a character-level text, logs the train and validation
loss and perplexity every ``eval_every`` steps (on the whole of each split, so the curve is
exact), then samples text at several temperatures with your ``sample``.

Baselines logged next to the model: the uniform model (perplexity = vocabulary size V, the
model that knows nothing) and the unigram model (character frequencies of the training split,
add-one smoothed). The count-based bigram, the best any bigram can do, is yours to compute in
the notebook.

The text is made here (:func:`make_text`), not read from a file, so that the rubric can
re-execute a run from its config.json alone. The corpus is fixed by ``corpus_seed``; the seed
of a run changes only the initialisation, the training windows and the samples. Keep
``main(config)`` the only entry point; change one config value at a time.
"""

from __future__ import annotations

import json
import math
import random
import time

import torch
from language_model import BigramLM, cross_entropy

from labkit import progress, start_run

DEFAULT_CONFIG = {
    "n_chars": 30000,  # corpus size in characters
    "corpus_seed": 0,  # fixes the text; the run's seed does not change it
    "val_fraction": 0.1,  # the last 10% of the text
    "steps": 500,
    "batch": 32,
    "block": 64,
    "lr": 0.1,  # the one variable to sweep first
    "eval_every": 25,
    "temperatures": [0.0, 0.5, 1.0, 1.5, 2.0],
    "sample_len": 200,
    "torch_threads": 1,  # tiny tensors: one thread is faster than a pool, and steadier to time
}

NOUNS = "cat dog bird fish fox owl hen cow king queen child farmer river hill tree house boat moon".split()
VERBS = "sees finds likes chases follows watches hears meets helps carries".split()
ADJECTIVES = "big small old young red green quiet happy sleepy clever".split()
PLACES = "by the river|on the hill|in the house|under the tree|near the boat|at night".split("|")


def make_text(n_chars: int, seed: int = 0) -> str:
    """About ``n_chars`` characters of simple English sentences, the same for the same seed."""
    rng = random.Random(f"bigram-corpus-{seed}")

    def noun_phrase() -> str:
        adjective = rng.choice(ADJECTIVES) + " " if rng.random() < 0.4 else ""
        return f"{rng.choice(['the', 'the', 'a', 'my'])} {adjective}{rng.choice(NOUNS)}"

    out, length = [], 0
    while length < n_chars:
        sentence = f"{noun_phrase()} {rng.choice(VERBS)} {noun_phrase()}"
        if rng.random() < 0.5:
            sentence += " " + rng.choice(PLACES)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "!", "?"])
        sentence += "\n" if rng.random() < 0.15 else " "
        out.append(sentence)
        length += len(sentence)
    return "".join(out)[:n_chars]


def load_data(config: dict) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(train ids, validation ids, the characters): character-level tokens, split 90/10."""
    text = make_text(config["n_chars"], config["corpus_seed"])
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n_val = int(len(ids) * config["val_fraction"])
    return ids[:-n_val], ids[-n_val:], chars


@torch.no_grad()
def split_loss(model: BigramLM, ids: torch.Tensor) -> float:
    """Mean next-token loss over every position of a split (exact, no sampling of windows)."""
    _, loss = model(ids[:-1].unsqueeze(0), ids[1:].unsqueeze(0))
    return float(loss)


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    torch.set_num_threads(config["torch_threads"])  # for this whole process: recorded in config.json
    run = start_run("bigram-lab", config, seeds=[seed], entrypoint=main)
    train, val, chars = load_data(config)
    V = len(chars)
    # Baselines: uniform (knows nothing) and unigram (character frequencies, add-one).
    counts = torch.bincount(train, minlength=V).double() + 1.0
    unigram_nll = float(-(counts / counts.sum()).log()[val].mean())
    run.log(kind="baseline", vocab_size=V, train_tokens=len(train), val_tokens=len(val),
            uniform_baseline_loss=math.log(V), uniform_baseline_ppl=float(V),
            unigram_baseline_loss=unigram_nll, unigram_baseline_ppl=math.exp(unigram_nll))  # fmt: skip

    g = torch.Generator().manual_seed(seed)  # windows and samples; start_run seeded the init
    model = BigramLM(V)
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    B, T = config["batch"], config["block"]
    t0 = time.perf_counter()
    for step in progress(range(config["steps"] + 1), desc="training"):
        if step % config["eval_every"] == 0 or step == config["steps"]:
            model.eval()
            tr, va = split_loss(model, train), split_loss(model, val)
            run.log(kind="eval", step=step, train_loss=tr, val_loss=va, train_ppl=math.exp(tr), val_ppl=math.exp(va))
            model.train()
        if step == config["steps"]:
            break
        starts = torch.randint(0, len(train) - T - 1, (B,), generator=g)
        x = torch.stack([train[s : s + T] for s in starts])  # (B, T)
        y = torch.stack([train[s + 1 : s + T + 1] for s in starts])  # (B, T): the next characters
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    final = run._metrics[-1]

    # Samples at each temperature, from the same start character; scored under the model at T = 1.
    samples = {}
    start = torch.tensor([[chars.index("T")]])
    for temperature in config["temperatures"]:
        out = model.generate(start, config["sample_len"], temperature=temperature, generator=g)[0]
        with torch.no_grad():
            nll = float(cross_entropy(model(out[:-1].unsqueeze(0))[0], out[1:].unsqueeze(0)))
        samples[str(temperature)] = out.tolist()
        run.log(kind="sample", temperature=temperature, sample_nll=nll,
                distinct_chars=len(set(out.tolist())))  # fmt: skip
    run.artifact("samples.json").write_text(json.dumps({"chars": chars, "samples": samples}), encoding="utf-8")
    text = "\n\n".join(f"T={t}: " + "".join(chars[i] for i in ids) for t, ids in samples.items())
    run.artifact("samples.txt").write_text(text + "\n", encoding="utf-8")
    torch.save(model.state_dict(), run.artifact("bigram.pt"))

    summary = {
        "train_loss": final["train_loss"], "val_loss": final["val_loss"], "val_ppl": final["val_ppl"],
        "uniform_baseline_ppl": float(V), "unigram_baseline_ppl": math.exp(unigram_nll), "train_s": train_s,
    }  # fmt: skip
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
