"""Lesson 05 lab experiment: a micro overfit of GPTMini on lighthouse.txt, logged with labkit.

Run it from this folder: ``python lab_experiment.py`` (or from the notebooks). Each call of
:func:`main` is one logged run under ``runs/``; change one config value at a time. The rubric
re-executes a run from its config.json, so keep ``main(config)`` the only entry point and log
every number you interpret.

One run: encode the text one character per token, build your ``GPTMini`` (its initialisation
drawn from the run's seed), measure the loss on the whole text at initialisation next to two
baselines (the uniform model, ``ln V``, and the bigram table of the text), train with AdamW on
random windows from your ``get_batch`` (the same loop as ``train_micro``, with a progress bar
and a loss on the whole text every ``eval_every`` steps), then continue a prompt greedily and
by sampling. ``steps = 0`` measures the untrained model only (the forward notebook does that).

The text is read from ``data/lighthouse.txt`` next to this file and copied into the config, so
config.json holds it and a rerun needs no data file (the grader's sandbox has only your .py files).
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import torch
from gpt import GPTConfig, GPTMini, get_batch

from labkit import progress, start_run

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = {
    "data": "data/lighthouse.txt",  # relative to this file; read only when "text" is None
    "text": None,  # filled in from "data": config.json then holds the text itself
    "block_size": 32,  # the graded micro-overfit model: one block, width 64, 4 heads
    "n_layer": 1,
    "n_head": 4,
    "n_embd": 64,
    "dropout": 0.0,
    "steps": 300,  # the graded training settings; 0 = measure the model at initialisation only
    "batch_size": 16,
    "lr": 2e-3,
    "eval_every": 50,  # steps between losses on the whole text
    "prompt": "The wind was",
    "gen_tokens": 200,  # continued greedily and by sampling (0: no generation)
    "temperature": 1.0,
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


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    if config["text"] is None:
        config["text"] = (HERE / config["data"]).read_text(encoding="utf-8")
    torch.set_num_threads(config["torch_threads"])  # for this whole process: recorded in config.json
    name = "gptmini-overfit" if config["steps"] else "gptmini-init"
    run = start_run(name, config, seeds=[seed], entrypoint=main)
    text = config["text"]
    stoi, itos = char_vocab(text)
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    V = len(itos)
    model = GPTMini(GPTConfig(block_size=config["block_size"], vocab_size=V, n_layer=config["n_layer"],
                              n_head=config["n_head"], n_embd=config["n_embd"], dropout=config["dropout"]))  # fmt: skip
    summary = {
        "vocab_size": V,
        "n_params": model.num_params(),
        "uniform_baseline_loss": math.log(V),  # a model that knows nothing: all-zero logits
        "bigram_baseline_loss": bigram_loss(ids, V),  # a count table of the text, scored on the text
    }
    run.log(kind="data", text_chars=len(text), text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), **summary)
    init_loss, init_std = text_loss(model, ids)
    run.log(kind="eval", step=0, text_loss=init_loss, logit_std=init_std)
    summary |= {"init_text_loss": init_loss, "init_logit_std": init_std}

    # The loop of train_micro, one step at a time: one seeded generator for every batch, AdamW.
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    model.train()
    train_s = 0.0
    steps = range(1, config["steps"] + 1)
    for step in progress(steps, desc=f"overfit seed {seed}") if steps else steps:
        t0 = time.perf_counter()
        x, y = get_batch(ids, config["block_size"], config["batch_size"], generator)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_s += time.perf_counter() - t0
        row = {"kind": "train", "step": step, "loss": loss.item()}
        if step % config["eval_every"] == 0 or step == config["steps"]:
            row["text_loss"] = text_loss(model, ids)[0]
        run.log(**row)
    if config["steps"]:
        summary |= {"final_loss": row["loss"], "final_text_loss": row["text_loss"], "train_s": train_s}

    if config["gen_tokens"]:
        prompt = torch.tensor([[stoi[c] for c in config["prompt"]]], dtype=torch.long)
        decode = lambda out: "".join(itos[i] for i in out[0, prompt.size(1) :].tolist())  # noqa: E731
        greedy = decode(model.generate(prompt, config["gen_tokens"]))
        sampled = decode(model.generate(prompt, config["gen_tokens"], temperature=config["temperature"],
                                        do_sample=True, seed=seed))  # fmt: skip
        run.artifact("samples.txt").write_text(
            f"prompt: {config['prompt']!r}\n\n--- greedy ---\n{greedy}\n\n"
            f"--- sampled, temperature {config['temperature']}, seed {seed} ---\n{sampled}\n",
            encoding="utf-8",
        )
        summary |= {"greedy_copied_8gram_fraction": copied_fraction(greedy, text),
                    "sampled_copied_8gram_fraction": copied_fraction(sampled, text)}  # fmt: skip
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
