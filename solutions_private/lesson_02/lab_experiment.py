"""Lesson 02 lab experiment: a bigram model, trained and sampled, logged with labkit.

Run it from labs/lesson_02/: ``python lab_experiment.py`` runs seeds 0, 1 and 2 (or call
``main(config, seed)`` from the notebook). Each call of :func:`main` is one logged run under
``runs/``; change one config value at a time. The rubric re-executes your newest run from its
config.json, with its seed and with another, so keep ``main(config, seed)`` the only entry point.

What one run does, as lessons/lesson_02.md section 7 asks:

(a) Builds your ``BigramLM`` (``init = "zeros"`` zeroes its table instead of ``N(0, 1)``) and logs
    its loss at step 0 next to ``ln V``.
(b) Baselines on the validation split: uniform (perplexity V) and unigram (add-one character
    frequencies of the training split); the count bigram from :func:`count_bigram_probs`, with its
    ``k`` chosen on a held-out slice of the training split (never on the validation set). Trains
    with AdamW on random ``(batch, block)`` windows and logs train and validation loss and
    perplexity on the whole of each split every ``eval_every`` steps; compares the learnt table
    with the counts. losses.csv, baselines.csv, count_bigram.csv, loss_curve.png, bigram.pt.
(c) Samples ``sample_len`` characters at each temperature with your ``sample`` and logs their
    negative log-likelihood under the model (at T = 1), the fraction of distinct bigrams and the
    number of distinct characters (temperature.csv, temperature.png, samples.json, samples.txt);
    checks ``sample`` on one row of the table with :func:`chi_square` (chi_square.csv).

Until you write :func:`count_bigram_probs` and :func:`chi_square`, the run logs a ``kind="todo"``
row for each and leaves out what depends on them.

The text is made here (:func:`make_text`, fixed by ``corpus_seed``) so that a run repeats from
its config alone; the seed changes the initialisation, the windows and the samples, not the text.
For a real corpus set ``text_file`` (a path relative to this file): its text and SHA-256 are
copied into the config.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

import torch

from labkit import exercises, new_figure, progress, start_run, write_csv

exercises("02", __file__)
from language_model import BigramLM, cross_entropy, sample  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = {
    "n_chars": 30000,  # corpus size in characters
    "corpus_seed": 0,  # fixes the text; the run's seed does not change it
    "text_file": None,  # a real corpus instead (relative to this file); copied into "text"
    "text": None,
    "val_fraction": 0.1,  # the last 10% of the text
    "dev_fraction": 0.1,  # the last 10% of the training split: where k of the count bigram is chosen
    "init": "normal",  # "normal" (nn.Embedding's N(0, 1)) or "zeros" (part a)
    "steps": 500,
    "batch": 32,
    "block": 64,
    "lr": 0.1,  # the one variable to sweep first
    "eval_every": 25,
    "count_ks": [0.01, 0.1, 0.5, 1.0, 2.0],  # add-k smoothing values tried for the count bigram
    "temperatures": [0.0, 0.5, 0.8, 1.0, 1.5, 2.0],
    "sample_len": 1000,
    "chi2_draws": 20000,  # draws per temperature for the chi-square check of sample
    "chi2_temperatures": [0.5, 1.0, 2.0],
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


def fill_text(config: dict) -> dict:
    """The config with ``text_file``'s text and SHA-256 copied in, so a rerun needs no file."""
    if config["text"] is None and config["text_file"]:
        text = (HERE / config["text_file"]).read_text(encoding="utf-8")
        config = {**config, "text": text, "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    return config


def load_data(config: dict) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(train ids, validation ids, the characters): character-level tokens, the last 10% held out."""
    text = config["text"] if config.get("text") is not None else make_text(config["n_chars"], config["corpus_seed"])
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n_val = int(len(ids) * config["val_fraction"])
    return ids[:-n_val], ids[-n_val:], chars


def count_bigram_probs(ids: torch.Tensor, vocab_size: int, k: float) -> torch.Tensor:
    """The add-k smoothed count bigram of ``ids``: a ``(V, V)`` float64 table, row ``a`` = p(. | a).

    Count every adjacent pair ``(ids[t], ids[t + 1])``, add ``k`` to every cell, and normalise
    each row to sum to 1 (a row never seen becomes uniform). Vectorised: no Python loop over
    the text.
    """
    # BEGIN SOLUTION
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1, dtype=torch.float64), accumulate=True)
    counts += k
    return counts / counts.sum(dim=1, keepdim=True)
    # END SOLUTION


def chi_square(observed: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square statistic of ``observed`` counts (V,) against probabilities ``probs`` (V,).

    ``sum over cells of (observed - expected)^2 / expected`` with ``expected = n * probs`` and
    ``n = observed.sum()``; leave out cells whose expected count is 0. For a correct sampler it
    is about the number of cells minus 1, give or take ``sqrt(2 (cells - 1))``.
    """
    # BEGIN SOLUTION
    observed, probs = observed.double(), probs.double()
    expected = observed.sum() * probs
    keep = expected > 0
    return float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    # END SOLUTION


def nll(probs: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean negative log-likelihood of the transitions of ``ids`` under a (V, V) probability table."""
    return float(-probs[ids[:-1], ids[1:]].log().mean())


@torch.no_grad()
def split_loss(model: BigramLM, ids: torch.Tensor) -> float:
    """Mean next-token loss over every position of a split (exact, no sampling of windows)."""
    _, loss = model(ids[:-1].unsqueeze(0), ids[1:].unsqueeze(0))
    return float(loss)


def count_baseline(config: dict, run, train: torch.Tensor, val: torch.Tensor, V: int) -> dict | None:
    """Part (b): choose k on the dev slice of the training split, then score the validation split."""
    n_dev = int(len(train) * config["dev_fraction"])
    fit, dev = train[:-n_dev], train[-n_dev:]
    rows = []
    try:
        for k in config["count_ks"]:
            rows.append({"k": k, "dev_loss": nll(count_bigram_probs(fit, V, k), dev)})
    except NotImplementedError:
        run.log(kind="todo", missing="count_bigram_probs", skipped="count_bigram.csv and the count baseline")
        return None
    best = min(rows, key=lambda r: r["dev_loss"])
    probs = count_bigram_probs(train, V, best["k"])  # refit on the whole training split
    for r in rows:
        r["chosen"] = int(r is best)
        run.log(kind="count_bigram", **r)
    write_csv(run.artifact("count_bigram.csv"), rows)
    loss = nll(probs, val)
    return {"k": best["k"], "loss": loss, "probs": probs}


def chi_square_check(config: dict, run, model: BigramLM, row: int, g: torch.Generator) -> dict:
    """Part (c): ``sample`` on one row of the learnt table against softmax(row / T), by chi-square."""
    logits = model.table.weight.detach()[row]
    out = []
    for t in config["chi2_temperatures"]:
        draws = sample(logits, t, config["chi2_draws"], generator=g)
        observed = torch.bincount(draws, minlength=len(logits))
        try:
            stat = chi_square(observed, torch.softmax(logits.double() / t, dim=-1))
        except NotImplementedError:
            run.log(kind="todo", missing="chi_square", skipped="chi_square.csv")
            return {}
        dof = len(logits) - 1
        r = {
            "temperature": t,
            "row": row,
            "draws": config["chi2_draws"],
            "chi2": stat,
            "dof": dof,
            "z": (stat - dof) / math.sqrt(2 * dof),
        }
        run.log(kind="chi_square", **r)
        out.append(r)
    write_csv(run.artifact("chi_square.csv"), out)
    return {"chi2_z_max": max(abs(r["z"]) for r in out)}


def main(config: dict | None = None, seed: int = 0):
    config = fill_text({**DEFAULT_CONFIG, **(config or {})})
    torch.set_num_threads(config["torch_threads"])  # for this whole process: recorded in config.json
    run = start_run("bigram-lab", config, seeds=[seed], entrypoint=main)
    train, val, chars = load_data(config)
    V = len(chars)
    counts = torch.bincount(train, minlength=V).double() + 1.0  # unigram, add-one
    unigram_nll = float(-(counts / counts.sum()).log()[val[1:]].mean())
    baselines = [{"model": "uniform_baseline", "loss": math.log(V), "ppl": float(V)},
                 {"model": "unigram_baseline", "loss": unigram_nll, "ppl": math.exp(unigram_nll)}]  # fmt: skip
    run.log(kind="baseline", vocab_size=V, train_tokens=len(train), val_tokens=len(val),
            uniform_baseline_loss=math.log(V), uniform_baseline_ppl=float(V),
            unigram_baseline_loss=unigram_nll, unigram_baseline_ppl=math.exp(unigram_nll))  # fmt: skip
    count = count_baseline(config, run, train, val, V)
    if count:
        baselines.append(
            {"model": f"count_bigram_baseline_k{count['k']:g}", "loss": count["loss"], "ppl": math.exp(count["loss"])}
        )
        run.log(kind="baseline", count_bigram_baseline_k=count["k"], count_bigram_baseline_loss=count["loss"],
                count_bigram_baseline_ppl=math.exp(count["loss"]))  # fmt: skip

    g = torch.Generator().manual_seed(seed)  # windows and samples; start_run seeded the init
    model = BigramLM(V)
    if config["init"] == "zeros":
        torch.nn.init.zeros_(model.table.weight)
    elif config["init"] != "normal":
        raise ValueError(f"init must be 'normal' or 'zeros', got {config['init']!r}")
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    B, T = config["batch"], config["block"]
    evals = []
    start = time.perf_counter()
    for step in progress(range(config["steps"] + 1), desc="training"):
        if step % config["eval_every"] == 0 or step == config["steps"]:
            model.eval()
            tr, va = split_loss(model, train), split_loss(model, val)
            evals.append(
                {"step": step, "train_loss": tr, "val_loss": va, "train_ppl": math.exp(tr), "val_ppl": math.exp(va)}
            )
            run.log(kind="eval", **evals[-1])
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
    train_s = time.perf_counter() - start
    final = evals[-1]
    write_csv(run.artifact("losses.csv"), evals)
    torch.save(model.state_dict(), run.artifact("bigram.pt"))
    baselines += [{"model": "bigram_lm_init", "loss": evals[0]["val_loss"], "ppl": evals[0]["val_ppl"]},
                  {"model": "bigram_lm_trained", "loss": final["val_loss"], "ppl": final["val_ppl"]}]  # fmt: skip
    write_csv(run.artifact("baselines.csv"), baselines)

    summary = {"init_loss": evals[0]["val_loss"], "ln_v": math.log(V), "train_loss": final["train_loss"],
               "val_loss": final["val_loss"], "val_ppl": final["val_ppl"],
               "uniform_baseline_ppl": float(V), "unigram_baseline_ppl": math.exp(unigram_nll)}  # fmt: skip
    if count:
        learnt = torch.log_softmax(model.table.weight.detach().double(), dim=-1)
        weights = torch.bincount(train, minlength=V).double() / len(train)  # rows weighted by how often they occur
        kl = float((weights * (count["probs"] * (count["probs"].log() - learnt)).sum(-1)).sum())
        run.log(kind="table_vs_counts", kl_counts_to_model=kl)
        summary |= {"count_bigram_baseline_ppl": math.exp(count["loss"]), "kl_counts_to_model": kl}

    # Part (c): samples at each temperature from the same start character, scored at T = 1.
    samples, temps = {}, []
    first = chars.index("T") if "T" in chars else int(train[0])
    for temperature in config["temperatures"]:
        out = model.generate(torch.tensor([[first]]), config["sample_len"], temperature=temperature, generator=g)[0]
        with torch.no_grad():
            sample_nll = float(cross_entropy(model(out[:-1].unsqueeze(0))[0], out[1:].unsqueeze(0)))
        pairs = list(zip(out[:-1].tolist(), out[1:].tolist(), strict=True))
        row = {"temperature": temperature, "sample_nll": sample_nll, "distinct_bigram_frac": len(set(pairs)) / len(pairs),
               "distinct_chars": len(set(out.tolist()))}  # fmt: skip
        run.log(kind="sample", **row)
        temps.append(row)
        samples[str(temperature)] = out.tolist()
    write_csv(run.artifact("temperature.csv"), temps)
    run.artifact("samples.json").write_text(json.dumps({"chars": chars, "samples": samples}), encoding="utf-8")
    text = "\n\n".join(f"T={t}: " + "".join(chars[i] for i in ids) for t, ids in samples.items())
    run.artifact("samples.txt").write_text(text + "\n", encoding="utf-8")
    summary |= {f"sample_nll_t{r['temperature']:g}": r["sample_nll"] for r in temps if r["temperature"] in (0.0, 1.0)}
    summary |= chi_square_check(config, run, model, int(torch.bincount(train).argmax()), g)

    fig = new_figure(7, 4.5)
    ax = fig.subplots()
    steps = [e["step"] for e in evals]
    ax.plot(steps, [e["train_loss"] for e in evals], "-", label="train")
    ax.plot(steps, [e["val_loss"] for e in evals], "--", label="validation")
    for b, style in zip(baselines[:-2], (":", "-.", "--"), strict=False):
        ax.axhline(b["loss"], ls=style, color="grey", label=f"{b['model']} (ppl {b['ppl']:.2f})")
    ax.set(xlabel="step", ylabel="loss (nats per character)", title=f"Loss curve (seed {seed}, lr {config['lr']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run.artifact("loss_curve.png"), dpi=100)
    ts = [r["temperature"] for r in temps]
    fig = new_figure(6, 4.2)
    ax = fig.subplots()
    ax.plot(ts, [r["sample_nll"] for r in temps], "o-", label="sample NLL (T = 1 model), nats")
    ax.plot(ts, [r["distinct_bigram_frac"] for r in temps], "s--", label="distinct bigrams / bigrams")
    ax.plot(ts, [r["distinct_chars"] / V for r in temps], "^:", label="distinct characters / V")
    ax.set(xlabel="temperature", title=f"{config['sample_len']} sampled characters per temperature")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run.artifact("temperature.png"), dpi=100)

    summary["train_s"] = train_s
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1, 2):
        print(main(seed=s).dir)
