"""Lesson 08 lab: the same prompts under a grid of decoding settings, diversity against quality (lessons/lesson_08.md, section 6).

Run it from labs/lesson_08/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``; change one config value at a time. One run:

- trains the provided tiny Llama (``tiny_lm.tiny_llama``) for ``train_steps`` steps on the provided
  tokenizer's three sentences, so that it has something to say;
- decodes every prompt ``samples`` times with your ``generate`` under greedy decoding (``top_k = 1``,
  the baseline) and every (temperature, top_p) pair of the grid;
- measures diversity (``distinct_n``, n = 2, pooled over prompts and samples) and quality (the mean
  log-probability per generated token under the unprocessed model, ``sequence_logprob``):
  ``grid.csv``, ``samples.csv``, ``tradeoff.png``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from labkit import exercises, new_figure, progress, start_run, write_csv

exercises("08", __file__)
from decoding import SamplingConfig, generate  # noqa: E402
from tiny_lm import tiny_llama  # noqa: E402
from tiny_tok import SENTENCES, make_tokenizer  # noqa: E402

DEFAULT_CONFIG = {
    "prompts": ["The quick", "A tiny model", "Stop here."],
    "temperatures": [0.5, 1.0, 1.5],
    "top_ps": [1.0, 0.5],
    "samples": 4,  # per prompt and setting
    "max_new_tokens": 16,
    "train_steps": 150,
    "lr": 3e-3,
    "threads": 1,
}


def distinct_n(sequences: list[list[int]], n: int) -> float:
    """Distinct-n (Li et al., 2016): distinct n-grams / all n-grams, pooled over ``sequences``; 0.0 if there are none."""
    # BEGIN SOLUTION
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
    # END SOLUTION


@torch.no_grad()
def sequence_logprob(model, full: torch.Tensor, prompt_len: int) -> float:
    """Mean log-probability per generated token under ``model`` (no processor): full (B, T) ids, the first ``prompt_len`` the prompt."""
    # BEGIN SOLUTION
    logp = F.log_softmax(model(full).logits[:, :-1].float(), dim=-1)  # (B, T-1, V): position t predicts t+1
    picked = logp.gather(-1, full[:, 1:, None])[..., 0]  # (B, T-1)
    return float(picked[:, prompt_len - 1 :].mean())
    # END SOLUTION


def train(model, tok, config: dict, seed: int) -> list[float]:
    """A few hundred steps of next-token training on the three sentences (full batch)."""
    ids = [tok.encode(s, add_special_tokens=False) for s in SENTENCES]
    t = min(len(i) for i in ids)
    batch = torch.tensor([i[:t] for i in ids])  # (3, T)
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    model.train()
    losses = []
    for _ in range(config["train_steps"]):
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def settings_grid(config: dict) -> list[tuple[str, dict]]:
    grid = [("greedy (baseline)", {"top_k": 1})]
    for t in config["temperatures"]:
        for p in config["top_ps"]:
            grid.append((f"t={t:g} p={p:g}", {"temperature": t, "top_p": p}))
    return grid


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("decoding-grid-lab", config, seeds=[seed], entrypoint=main)
    torch.set_num_threads(config["threads"])
    tok = make_tokenizer()
    model = tiny_llama(seed=seed)
    losses = train(model, tok, config, seed)
    run.log(kind="train", loss=losses)
    rows, samples, summary = [], [], {"final_train_loss": losses[-1]}
    for i, (name, settings) in enumerate(progress(settings_grid(config), desc="decoding settings")):
        seqs, scores = [], []
        for j, prompt in enumerate(config["prompts"]):
            ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)]).repeat(config["samples"], 1)
            out = generate(model, ids, config["max_new_tokens"], SamplingConfig(**settings), seed=seed * 1000 + 10 * i + j)
            try:
                scores.append(sequence_logprob(model, out, ids.shape[1]))
            except NotImplementedError as exc:
                run.log(kind="todo", missing="sequence_logprob", why=str(exc))
                return run
            for row in out.tolist():
                seqs.append(row[ids.shape[1] :])
                samples.append({"setting": name, "seed": seed, "text": tok.decode(row, skip_special_tokens=False)})
        try:
            d2 = distinct_n(seqs, 2)
        except NotImplementedError as exc:
            run.log(kind="todo", missing="distinct_n", why=str(exc))
            return run
        lp = sum(scores) / len(scores)
        t, p = settings.get("temperature", 0.0), settings.get("top_p", 1.0)
        rows.append({"setting": name, "temperature": t, "top_p": p, "distinct_2": d2, "logprob_per_token": lp})
        run.log(kind="setting", setting=name, distinct_2=d2, logprob_per_token=lp)
        key = "baseline_greedy" if i == 0 else f"t{t:g}_p{p:g}"
        summary[f"distinct_2_{key}"] = d2
        summary[f"logprob_{key}"] = lp
    write_csv(run.artifact("grid.csv"), rows)
    write_csv(run.artifact("samples.csv"), samples)
    fig = new_figure(6, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for r in rows:
        greedy = r["setting"].startswith("greedy")
        ax.scatter(r["logprob_per_token"], r["distinct_2"], marker="*" if greedy else "o", s=120 if greedy else 40,
                   color="k" if greedy else ("tab:blue" if r["top_p"] == 1.0 else "tab:orange"))  # fmt: skip
        ax.annotate(r["setting"], (r["logprob_per_token"], r["distinct_2"]), fontsize=7)
    ax.set(xlabel="log-prob per generated token (quality)", ylabel="distinct-2 (diversity)",
           title="decoding settings: diversity vs quality")  # fmt: skip
    fig.savefig(run.artifact("tradeoff.png"), dpi=80)
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1, 2):
        print(main(seed=s).dir)
