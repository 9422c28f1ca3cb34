"""Lesson 11 lab: a long-context probe and a few-shot budget (lessons/lesson_11.md, section 9).

Run it from labs/lesson_11/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``; change one config value at a time. One run:

- (a) sweeps needle depth x context length with your ``needle_sweep`` against a model given as a
  ``generate(prompt) -> str`` callable, and logs the grid (``niah.csv``), a heatmap
  (``niah_heatmap.png``) and accuracy against depth per length (``accuracy_by_depth.png``);
- (b) builds few-shot prompts with your ``build_few_shot_prompt`` for a range of token budgets and
  logs how many examples fit (``few_shot.csv``).

The model: ``config["model"]`` "scripted" (default) is ``ProbeModel``, a noisy stand-in whose recall
falls in the middle of long contexts (the "lost in the middle" shape, Liu et al., 2023), so the
harness has something to find; "tiny-llama" is a 2-layer random Llama from a config (no download:
plumbing only, it retrieves nothing); any other value is a labkit backend spec
("transformers:/path/to/model" or "openai:http://127.0.0.1:8000/v1#MODEL", README "Model backends"),
whose calls are logged into the run (``backend_calls.jsonl``). Or pass ``generate=`` to ``main``: any
function from a prompt to its completion (lesson section 9).
"""

from __future__ import annotations

import random

from labkit import exercises, make_backend, new_figure, progress, start_run, write_csv

exercises("11", __file__)
from prompting import build_few_shot_prompt, needle_sweep  # noqa: E402
from promptkit import ScriptedModel, count_tokens, course_tokenizer, make_filler  # noqa: E402

DEFAULT_CONFIG = {
    "model": "scripted",  # "scripted" (ProbeModel), "tiny-llama" (smoke test) or a backend spec; or pass generate= to main
    "depths": [0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0],
    "lengths": [128, 512, 1024, 2048],  # tokens; the shortest is the baseline
    "n_facts": 4,
    "middle_drop": 0.8,  # ProbeModel: how much recall falls at the middle of the longest context
    "budgets": [40, 80, 120, 160, 240, 320, 480],
    "n_examples": 16,
}


def depth_profile(grid: list[list[float]]) -> list[float]:
    """Accuracy per depth, averaged over the lengths: grid (lengths x depths) -> one value per depth."""
    # BEGIN SOLUTION
    return [sum(row[j] for row in grid) / len(grid) for j in range(len(grid[0]))]
    # END SOLUTION


def lost_in_the_middle_gap(grid: list[list[float]], depths: list[float]) -> float:
    """For the longest context (the last row): mean accuracy at the edges (depth <= 0.1 or >= 0.9) minus
    the mean accuracy in the middle (0.25 <= depth <= 0.75). Positive: the middle is harder."""
    # BEGIN SOLUTION
    row = grid[-1]
    edges = [a for a, d in zip(row, depths, strict=True) if d <= 0.1 or d >= 0.9]
    middle = [a for a, d in zip(row, depths, strict=True) if 0.25 <= d <= 0.75]
    return sum(edges) / len(edges) - sum(middle) / len(middle)
    # END SOLUTION


class ProbeModel(ScriptedModel):
    """A noisy ScriptedModel: it finds the needle with probability ``1 - drop * (L / L_max) * bump(depth)``,
    where ``bump`` is 1 at depth 0.5 and 0 at the edges, drawn from its own seeded generator."""

    def __init__(self, tokenizer, facts: list, drop: float, max_tokens: int, seed: int) -> None:
        super().__init__(tokenizer, facts)
        self.drop, self.max_tokens, self.rng = drop, max_tokens, random.Random(seed)

    def misses(self, fact: int, tokens: int, depth: float) -> bool:
        bump = max(0.0, 1.0 - abs(depth - 0.5) / 0.45)
        return self.rng.random() < self.drop * min(1.0, tokens / self.max_tokens) * bump


def tiny_llama_generate(tokenizer, max_new_tokens: int = 8):
    """A 2-layer random Llama (built from a config, nothing downloaded) as ``generate(prompt) -> str``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()

    def generate(prompt: str) -> str:
        ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return tokenizer.decode(out[0, ids.shape[1] :])

    return generate


def make_facts(n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    places = ["blue tower", "old mill", "quiet harbour", "golden bridge", "narrow road", "ancient library", "green valley"]
    facts = []
    for i in range(n):
        place, code = places[i % len(places)], str(rng.randint(1000, 9999))
        facts.append((f" The secret code of the {place} is {code}. ", f"What is the secret code of the {place}?", code))
    return facts


def main(config: dict | None = None, seed: int = 0, generate=None):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("niah-probe-lab", config, seeds=[seed], entrypoint=main)
    rng = random.Random(seed)
    tok = course_tokenizer()
    filler = make_filler(260, seed, ((0.3, 0.35),))
    facts = make_facts(config["n_facts"], rng)
    depths, lengths = config["depths"], config["lengths"]
    if generate is None:
        if config["model"] == "tiny-llama":
            generate = tiny_llama_generate(tok)
        elif config["model"] == "scripted":
            generate = ProbeModel(tok, facts, config["middle_drop"], max(lengths), seed).generate
        else:  # a real model: a raw-prompt completion with greedy settings, every call logged into the run
            generate = make_backend(config["model"], log=run, default_settings={"max_tokens": 16})
    try:
        grid = needle_sweep(generate, tok, filler, facts, depths, lengths)
        profile = depth_profile(grid)
        gap = lost_in_the_middle_gap(grid, depths)
    except NotImplementedError as exc:
        run.log(kind="todo", why=str(exc))
        return run
    rows = [{"length": n, "depth": d, "accuracy": grid[i][j]} for i, n in enumerate(lengths) for j, d in enumerate(depths)]
    write_csv(run.artifact("niah.csv"), rows)
    run.log(kind="sweep", grid=grid, depth_profile=profile)

    fig = new_figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set(xlabel="needle depth", ylabel="context length (tokens)", title="needle-in-a-haystack accuracy")
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.savefig(run.artifact("niah_heatmap.png"), dpi=80)
    fig2 = new_figure(6, 4)
    ax2 = fig2.add_subplot(1, 1, 1)
    for i, n in enumerate(lengths):
        ax2.plot(depths, grid[i], "o-", label=f"{n} tokens")
    ax2.plot(depths, profile, "k--", label="mean over lengths")
    ax2.set(xlabel="needle depth", ylabel="accuracy", ylim=(-0.05, 1.05), title="accuracy by depth")
    ax2.legend()
    fig2.savefig(run.artifact("accuracy_by_depth.png"), dpi=80)

    # (b) few-shot under a budget: the examples in a seeded order, the budget swept
    examples = [(" ".join(rng.sample(["good", "bad", "plot", "actors", "slow", "funny", "long", "music"], 3)),
                 rng.choice(["positive", "negative"])) for _ in range(config["n_examples"])]  # fmt: skip
    few_rows = []
    for budget in progress(config["budgets"], desc="budgets"):
        try:
            prompt, kept = build_few_shot_prompt("Label the sentiment.", examples, "funny music", lambda s: count_tokens(tok, s), budget)
        except ValueError:
            prompt, kept = "", 0
        few_rows.append({"budget": budget, "examples_kept": kept, "prompt_tokens": count_tokens(tok, prompt)})
    write_csv(run.artifact("few_shot.csv"), few_rows)
    summary = {
        "mean_accuracy": sum(profile) / len(profile),
        "baseline_short_context": sum(grid[0]) / len(grid[0]),
        "longest_context_accuracy": sum(grid[-1]) / len(grid[-1]),
        "lost_in_the_middle_gap": gap,
        "examples_at_largest_budget": few_rows[-1]["examples_kept"],
    }
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
