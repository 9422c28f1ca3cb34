"""Lesson 05 lab: a micro overfit of GPTMini on lighthouse.txt (lessons/lesson_05.md, section 8).

Run it from labs/lesson_05/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebooks. Every call is one labkit run under ``runs/``; change one config value at a time. The
rubric re-executes your newest run from its config.json, so keep ``main(config, seed)`` the only
entry point and log every number you interpret. One run:

1. encodes the text one character per token and logs two baselines: the uniform model
   (``uniform_baseline_loss`` = ln V) and the bigram table counted on the text
   (``bigram_baseline_loss``);
2. for every entry of ``ablations`` (``"none"`` first: your ``GPTMini`` as it is; ``"no_wpe"``:
   without position embeddings; ``"untied"``: the head untied from ``wte``; the last two are yours
   to write in ``ablate``), builds the model from the run's seed, logs the loss on the whole text and
   the spread of the logits at initialisation, then trains it with ``train_micro``'s loop (your
   ``get_batch``, AdamW), logging every step's batch loss and the whole-text loss every
   ``eval_every`` steps (``ablation.csv``; ``loss_curve.png`` draws every curve with both baselines);
3. continues ``prompt`` from the trained ``"none"`` model for ``gen_tokens`` tokens: greedily and by
   sampling at every temperature in ``temperatures`` (seeded by the run's seed), and logs for each the
   share of generated 8-character strings found verbatim in the text (memorisation) and the share of
   distinct 4-grams (diversity) (``samples.txt``, ``generation.csv``).

``steps = 0`` measures the models at initialisation only (no curve; samples from the untrained model). The seed changes
the initialisation, the windows and the samples, not the text. Until you write ``ablate``, the run
logs ``kind="todo"`` and trains only ``"none"`` (no ablation.csv). The text is read from
exercises/lesson_05/data/lighthouse.txt and copied into the config, so config.json holds it and a
rerun needs no data file.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
from matplotlib.figure import Figure

from labkit import exercises, progress, start_run, write_csv

EXERCISES = exercises("05", __file__)  # exercises/lesson_05; None in the grader's sandbox (modules beside this file)
from gpt import GPTConfig, GPTMini, get_batch  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = {
    "data": "data/lighthouse.txt",  # relative to exercises/lesson_05; read only when "text" is None
    "text": None,  # filled in from "data": config.json then holds the text itself
    "block_size": 32,  # the graded micro-overfit model: one block, width 64, 4 heads
    "n_layer": 1,
    "n_head": 4,
    "n_embd": 64,
    "dropout": 0.0,
    "steps": 300,  # the graded training settings; 0 = measure the models at initialisation only
    "batch_size": 16,
    "lr": 2e-3,
    "eval_every": 50,  # steps between losses on the whole text
    "ablations": ["none", "no_wpe", "untied"],  # (c): each trained from the same seed; "none" first
    "prompt": "The wind was",
    "gen_tokens": 200,  # (d) continued greedily and by sampling (0: no generation)
    "temperatures": [0.5, 1.0, 1.5],  # (d) one sample each, seeded by the run's seed
    "torch_threads": 1,  # tiny models: one thread is fastest and makes the losses reproducible
}


def char_vocab(text: str) -> tuple[dict[str, int], list[str]]:
    """(char -> id, id -> char): the sorted distinct characters of ``text``."""
    itos = sorted(set(text))
    return {c: i for i, c in enumerate(itos)}, itos


def bigram_loss(ids: torch.Tensor, vocab_size: int) -> float:
    """Mean next-token loss (nats) of the bigram table counted on ``ids`` itself (maximum likelihood)."""
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1, dtype=torch.float64), accumulate=True)
    probs = counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)  # (V, V): row a = P(next | a)
    return float(-probs[ids[:-1], ids[1:]].log().mean())


@torch.no_grad()
def text_loss(model: GPTMini, ids: torch.Tensor) -> tuple[float, float]:
    """(loss on the whole text, RMS over positions of the std of the logits over the vocabulary).

    The text is cut into consecutive windows of block_size; every token after the first is a
    target once, predicted from the earlier tokens of its window. The last window is padded:
    its padding targets are -100, which the loss ignores.
    """
    block = model.config.block_size
    n = math.ceil((len(ids) - 1) / block)
    x = torch.zeros(n * block, dtype=torch.long)
    y = torch.full((n * block,), -100, dtype=torch.long)
    x[: len(ids) - 1], y[: len(ids) - 1] = ids[:-1], ids[1:]
    was_training = model.training
    model.eval()
    logits, loss = model(x.view(n, block), y.view(n, block))  # (n, block, V), scalar
    model.train(was_training)
    valid = y.view(n, block) != -100
    logit_std = logits[valid].std(dim=-1).pow(2).mean().sqrt()
    return float(loss), float(logit_std)


def copied_fraction(generated: str, text: str, n: int = 8) -> float:
    """Share of the n-character strings of ``generated`` found verbatim in ``text`` (memorisation)."""
    grams = [generated[i : i + n] for i in range(len(generated) - n + 1)]
    return sum(g in text for g in grams) / len(grams) if grams else 0.0


def distinct_fraction(generated: str, n: int = 4) -> float:
    """Distinct n-character strings of ``generated`` over all of them (diversity: 1 = no repeats)."""
    grams = [generated[i : i + n] for i in range(len(generated) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def ablate(model: GPTMini, ablation: str) -> GPTMini:
    """(c) Change this copy of your model in place and return it; ``"none"`` leaves it as it is.

    ``"no_wpe"``: no position information (the model sees only the causal mask);
    ``"untied"``: ``lm_head`` gets its own weight, starting from a copy of ``wte``'s.
    Never edit exercises/lesson_05/gpt.py for an ablation.
    """
    if ablation == "none":
        return model
    # BEGIN SOLUTION
    if ablation == "no_wpe":
        wpe = model.transformer.wpe.weight
        with torch.no_grad():
            wpe.zero_()  # the added position vector is 0 for every position ...
        wpe.requires_grad_(False)  # ... and stays 0: AdamW skips a parameter without a gradient
        return model
    if ablation == "untied":
        model.lm_head.weight = nn.Parameter(model.transformer.wte.weight.detach().clone())  # (V, C), its own tensor
        return model
    raise ValueError(f"unknown ablation {ablation!r}: use 'none', 'no_wpe' or 'untied'")
    # END SOLUTION


def train(run, model: GPTMini, ids: torch.Tensor, config: dict, seed: int, ablation: str) -> dict:
    """The loop of ``train_micro``, one step at a time: one seeded generator for every batch, AdamW.

    The ``"none"`` model logs ``kind="train"`` rows (``loss``, ``text_loss``), the ablations
    ``kind="ablation"`` rows (``batch_loss``, ``eval_loss``), so the notebooks read the first alone.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    model.train()
    train_s, curve, evals = 0.0, [], []
    for step in progress(range(1, config["steps"] + 1), desc=f"{ablation}, seed {seed}"):
        t0 = time.perf_counter()
        x, y = get_batch(ids, config["block_size"], config["batch_size"], generator)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_s += time.perf_counter() - t0
        curve.append(loss.item())
        evaluate = step % config["eval_every"] == 0 or step == config["steps"]
        if evaluate:
            evals.append((step, text_loss(model, ids)[0]))
        if ablation == "none":
            run.log(kind="train", step=step, loss=curve[-1], **({"text_loss": evals[-1][1]} if evaluate else {}))
        else:
            extra = {"eval_loss": evals[-1][1]} if evaluate else {}
            run.log(kind="ablation", ablation=ablation, step=step, batch_loss=curve[-1], **extra)
    return {"curve": curve, "evals": evals, "train_s": train_s}


def build(config: dict, vocab_size: int) -> GPTMini:
    return GPTMini(GPTConfig(block_size=config["block_size"], vocab_size=vocab_size, n_layer=config["n_layer"],
                             n_head=config["n_head"], n_embd=config["n_embd"], dropout=config["dropout"]))  # fmt: skip


def loss_figure(path: Path, results: dict, summary: dict, seed: int) -> None:
    """loss_curve.png: the batch loss and the whole-text loss of every trained model, both baselines."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for i, (ablation, r) in enumerate(results.items()):
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], color=f"C{i}", alpha=0.35, lw=0.8)
        ax.plot(*zip(*r["evals"], strict=True), "o-", color=f"C{i}", ms=4, label=f"{ablation}: whole text")
    ax.axhline(summary["uniform_baseline_loss"], ls="--", color="gray", label="uniform baseline ln V")
    ax.axhline(summary["bigram_baseline_loss"], ls=":", color="black", label="bigram baseline")
    ax.set(xlabel="step", ylabel="loss (nats)", title=f"batch loss (faint) and whole-text loss, seed {seed}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def generation(run, model: GPTMini, stoi: dict, itos: list, config: dict, seed: int) -> dict:
    """(d) Greedy and sampled continuations of the prompt: samples.txt, generation.csv, the summary keys."""
    text = config["text"]
    prompt = torch.tensor([[stoi[c] for c in config["prompt"]]], dtype=torch.long)
    decode = lambda out: "".join(itos[i] for i in out[0, prompt.size(1) :].tolist())  # noqa: E731
    samples = [("greedy", 0.0, decode(model.generate(prompt, config["gen_tokens"])))]
    for t in config["temperatures"]:
        out = model.generate(prompt, config["gen_tokens"], temperature=t, do_sample=True, seed=seed)
        samples.append((f"t{t:g}", t, decode(out)))
    rows, summary, parts = [], {}, [f"prompt: {config['prompt']!r}"]
    for name, t, sample in samples:
        row = {"decoding": "greedy" if name == "greedy" else "sampled", "temperature": t, "seed": seed,
               "copied_8gram_fraction": copied_fraction(sample, text), "distinct_4gram_fraction": distinct_fraction(sample)}  # fmt: skip
        run.log(kind="sample", name=name, text=sample, **row)
        rows.append(row)
        summary[f"{name}_copied_8gram_fraction"] = row["copied_8gram_fraction"]
        summary[f"{name}_distinct_4gram_fraction"] = row["distinct_4gram_fraction"]
        head = "greedy" if name == "greedy" else f"sampled, temperature {t:g}, seed {seed}"
        parts.append(f"--- {head} ---\n{sample}")
    if "t1_copied_8gram_fraction" in summary:  # the name the overfit notebook prints
        summary["sampled_copied_8gram_fraction"] = summary["t1_copied_8gram_fraction"]
    run.artifact("samples.txt").write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    write_csv(run.artifact("generation.csv"), rows)
    return summary


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    if config["text"] is None:
        config["text"] = ((EXERCISES or HERE) / config["data"]).read_text(encoding="utf-8")
    if not config["ablations"] or config["ablations"][0] != "none":
        raise ValueError(f"ablations must start with 'none' (the model as it is), got {config['ablations']}")
    torch.set_num_threads(config["torch_threads"])  # for this whole process: recorded in env.json
    name = "gptmini-overfit" if config["steps"] else "gptmini-init"
    run = start_run(name, config, seeds=[seed], entrypoint=main)
    text = config["text"]
    stoi, itos = char_vocab(text)
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    V = len(itos)
    model = build(config, V)  # right after start_run's seeding: the same init as torch.manual_seed(seed)
    summary = {
        "vocab_size": V,
        "n_params": model.num_params(),
        "uniform_baseline_loss": math.log(V),  # a model that knows nothing: all-zero logits
        "bigram_baseline_loss": bigram_loss(ids, V),  # a count table of the text, scored on the text
    }
    run.log(kind="data", text_chars=len(text), text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), **summary)

    results, table, train_s = {}, [], 0.0
    for ablation in config["ablations"]:
        if ablation != "none":
            torch.manual_seed(seed)  # the same initialisation as "none", then the one change
            try:
                model_a = ablate(build(config, V), ablation)
            except NotImplementedError as exc:
                run.log(kind="todo", missing="ablate", ablation=ablation, why=str(exc))
                table = []  # no ablation.csv until every ablation runs
                break
        else:
            model_a = model
        init_loss, init_std = text_loss(model_a, ids)
        n_trainable = sum(p.numel() for p in model_a.parameters() if p.requires_grad)
        if ablation == "none":
            run.log(kind="eval", step=0, text_loss=init_loss, logit_std=init_std)
            summary |= {"init_text_loss": init_loss, "init_logit_std": init_std}
        else:
            run.log(kind="ablation", ablation=ablation, step=0, eval_loss=init_loss, logit_std=init_std)
            summary |= {f"{ablation}_init_text_loss": init_loss}
        row = {
            "ablation": ablation,
            "n_trainable": n_trainable,
            "init_text_loss": init_loss,
            "init_logit_std": init_std,
        }
        if config["steps"]:
            r = train(run, model_a, ids, config, seed, ablation)
            r["evals"].insert(0, (0, init_loss))
            results[ablation] = r
            train_s += r["train_s"]
            row |= {"final_loss": r["curve"][-1], "final_text_loss": r["evals"][-1][1]}
            if ablation == "none":
                summary |= {"final_loss": r["curve"][-1], "final_text_loss": r["evals"][-1][1]}
            else:
                summary[f"{ablation}_final_text_loss"] = r["evals"][-1][1]
        table.append(row)
    if len(table) == len(config["ablations"]) > 1:
        write_csv(run.artifact("ablation.csv"), table)
    if config["steps"]:
        summary["train_s"] = train_s
        loss_figure(run.artifact("loss_curve.png"), results, summary, seed)

    if config["gen_tokens"]:
        t0 = time.perf_counter()
        summary |= generation(run, model, stoi, itos, config, seed)
        summary["generate_s"] = time.perf_counter() - t0
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
