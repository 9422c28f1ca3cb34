"""Hidden graders for lesson 16. They run in the grader's process; student code only in the worker.

References are trl 1.16's own ``GRPOTrainer`` (built here, offline, ``bf16=False``, on the course's tiny
Llama saved to a temporary folder and loaded with ``from_pretrained``, as the trainer rebuilds its reference
model from the model's path when ``beta != 0``): ``_generate_and_score_completions`` for the advantages and
``compute_loss`` on fixed, hand-built completions for the loss (the policy perturbed away from the model that
"sampled" them, so the ratios differ from 1 and many tokens are clipped). The tiny model and its log-probabilities
come from the provided ``grpo_kit.py``, loaded here from the course's copy.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
import warnings
from functools import cache

import datasets
import pytest
import torch

from graders.engine import lessons
from graders.lesson_16.bindings import Lesson16

pytestmark = pytest.mark.lesson_16

MAX_LEN = 8  # max_completion_length of every trainer here (the fixed completions are 6 wide)
NO_CLIP = 10.0  # epsilon for the KL and aggregation tests: nothing clipped, so they test only their own part
TRAIN_BAR = 0.5  # mean format reward after the short run: the reference reaches 1.0 (0.07 before)


def _provided():
    if "grpo_kit" not in sys.modules:
        spec = importlib.util.spec_from_file_location("grpo_kit", lessons.load("16").provided["grpo_kit"])
        module = importlib.util.module_from_spec(spec)
        sys.modules["grpo_kit"] = module
        spec.loader.exec_module(module)
    return sys.modules["grpo_kit"]


grpo_kit = _provided()


@cache
def model_dir() -> str:
    datasets.disable_progress_bars()
    logging.getLogger("trl").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    path = tempfile.mkdtemp(prefix="llmg-lesson16-")
    grpo_kit.tiny_llama(seed=0).save_pretrained(path)
    return path


def trainer(loss_type: str = "dapo", beta: float = 0.0, scale_rewards: str = "group", epsilon_high=None,
            num_generations: int = 4, reward=None, epsilon: float = 0.2):  # fmt: skip
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    path = model_dir()
    args = GRPOConfig(
        output_dir=f"{path}/out", report_to=[], use_cpu=True, save_strategy="no", bf16=False, seed=0,
        num_generations=num_generations, per_device_train_batch_size=2 * num_generations,
        max_completion_length=MAX_LEN, loss_type=loss_type, beta=beta, scale_rewards=scale_rewards,
        epsilon=epsilon, epsilon_high=epsilon_high, logging_steps=10_000, disable_tqdm=True,
    )  # fmt: skip
    tr = GRPOTrainer(
        model=LlamaForCausalLM.from_pretrained(path), args=args, processing_class=grpo_kit.make_tokenizer(),
        reward_funcs=reward or (lambda completions, **kw: [0.0] * len(completions)),
        train_dataset=Dataset.from_list([{"prompt": "<bos> 3"}] * 8),
    )  # fmt: skip
    tr.current_gradient_accumulation_steps = 1  # normally set inside training_step
    return tr


# ---------------------------------------------------------------------------- fixed completions
def _perturb(model, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@cache
def fixed_batch(seed: int) -> tuple[dict, dict[str, torch.Tensor], float]:
    """Hand-built trl inputs, and the perturbed policy's state_dict -> (inputs, state_dict, clipped share)."""
    g = torch.Generator().manual_seed(seed)
    b, p, c = 8, 3, 6
    prompt_ids = torch.randint(3, 16, (b, p), generator=g)
    prompt_mask = torch.ones(b, p, dtype=torch.long)
    prompt_ids[:2, 0], prompt_mask[:2, 0] = 0, 0  # two left-padded prompts
    completion_ids = torch.randint(3, 16, (b, c), generator=g)
    lengths = torch.tensor([6, 2, 5, 1, 6, 3, 4, 6]).roll(seed)
    completion_mask = (torch.arange(c)[None] < lengths[:, None]).long()
    completion_ids[completion_mask == 0] = 0  # padded with <pad> after the end
    base = grpo_kit.tiny_llama(seed=0)
    args = (prompt_ids, prompt_mask, completion_ids, completion_mask)
    with torch.no_grad():
        _perturb(base, 0.15, 100 + seed)
        old = grpo_kit.per_token_logps(base, *args)
        ref_model = grpo_kit.tiny_llama(seed=0)
        _perturb(ref_model, 0.15, 200 + seed)
        ref = grpo_kit.per_token_logps(ref_model, *args)
        policy = grpo_kit.tiny_llama(seed=0)
        _perturb(policy, 0.15, 300 + seed)
        ratio = torch.exp(grpo_kit.per_token_logps(policy, *args) - old)
    mask = completion_mask.bool()
    clipped = float(((ratio < 0.8) | (ratio > 1.2))[mask].float().mean())
    adv = torch.randn(b, generator=g) * 1.5
    inputs = {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": adv, "old_per_token_logps": old,
        "ref_per_token_logps": ref, "num_items_in_batch": completion_mask.sum() + 7,  # a larger generation batch
    }  # fmt: skip
    state = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    return inputs, state, clipped


def trl_loss(
    inputs: dict, state: dict, loss_type: str, beta: float, epsilon_high, epsilon: float
) -> tuple[float, float]:
    tr = trainer(loss_type, beta, epsilon_high=epsilon_high, epsilon=epsilon)
    tr.model.load_state_dict(state)
    tr.model.zero_grad()
    loss = tr.compute_loss(tr.model, dict(inputs))
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in tr.model.parameters() if p.grad is not None))
    return float(loss.detach()), float(norm)


def check_loss(
    lesson16: Lesson16, seed: int, loss_type: str, beta: float, epsilon_high, what: str, epsilon: float = 0.2
) -> None:
    inputs, state, clipped = fixed_batch(seed)
    assert clipped > 0.2, f"grader setup: only {clipped:.0%} of tokens clipped"
    want, want_norm = trl_loss(inputs, state, loss_type, beta, epsilon_high, epsilon)
    args = {"beta": beta, "epsilon_low": epsilon, "epsilon_high": epsilon_high, "loss_type": loss_type,
            "max_completion_length": MAX_LEN}  # fmt: skip
    got = lesson16.loss(state, inputs, args)
    assert abs(got["loss"] - want) <= 1e-5 * abs(want) + 1e-6, (
        f"{what}: grpo_loss = {got['loss']:.7f}, GRPOTrainer.compute_loss = {want:.7f} "
        f"(loss_type={loss_type!r}, beta={beta}, epsilon={epsilon}, epsilon_high={epsilon_high}; {clipped:.0%} of tokens outside [0.8, 1.2])"
    )
    assert abs(got["grad_norm"] - want_norm) <= 1e-4 * want_norm + 1e-7, (
        f"{what}: the loss matches but its gradient does not (norm {got['grad_norm']:.6g}, trl {want_norm:.6g}): "
        "is something detached that should not be, or the other way round?"
    )


# ---------------------------------------------------------------------------- advantages
@pytest.mark.points(3)
@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_advantages_equal_trl_generate_and_score(lesson16: Lesson16, scale_rewards: str):
    """Advantages: group_advantages equals the advantages of GRPOTrainer._generate_and_score_completions"""
    seen: list[float] = []

    def reward(completions, **kw):  # a reward with ties and a spread: the length and the 7s of each completion
        out = [float(len(c.split()) % 3) + 0.5 * c.count("7") + (0.25 if "1" in c else 0.0) for c in completions]
        seen.extend(out)
        return out

    torch.manual_seed(0)
    g = 4
    tr = trainer("dapo", 0.0, scale_rewards, num_generations=g, reward=reward)
    rows = [{"prompt": "<bos> 3"}] * g + [{"prompt": "<bos> 5 +"}] * g
    with torch.no_grad():
        out = tr._generate_and_score_completions(rows)
    want = [float(a) for a in out["advantages"]]
    got = lesson16.advantages(list(seen), g, scale_rewards)
    worst = max(abs(a - b) for a, b in zip(got, want, strict=True))
    assert worst <= 1e-5, (
        f"scale_rewards={scale_rewards!r}: rewards {[round(r, 2) for r in seen]} (groups of {g}) give advantages "
        f"{[round(a, 4) for a in got]}, trl {[round(a, 4) for a in want]}"
    )


@pytest.mark.points(2)
def test_advantages_groups_of_three_with_ties(lesson16: Lesson16):
    """Advantages: groups of 3, a group with equal rewards (advantage 0), against trl's formula"""
    from trl.trainer.utils import nanstd

    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0, 2.0, 2.0, 0.0, 3.0, 1.0, 0.2, 0.2, 0.9])
    grouped = rewards.view(-1, 3)
    std = nanstd(grouped, dim=1).repeat_interleave(3)
    want = (rewards - grouped.mean(1).repeat_interleave(3)) / (std + 1e-4)
    got = lesson16.advantages(rewards.tolist(), 3, "group")
    assert max(abs(a - float(b)) for a, b in zip(got, want, strict=True)) <= 1e-5, (
        f"advantages {[round(a, 4) for a in got]}, trl's {[round(float(a), 4) for a in want]}"
    )


# ---------------------------------------------------------------------------- surrogate (beta = 0)
@pytest.mark.points(3)
@pytest.mark.parametrize(("seed", "epsilon_high"), [(0, None), (1, 0.28)], ids=["symmetric", "clip-higher"])
def test_surrogate_loss_equals_compute_loss(lesson16: Lesson16, seed: int, epsilon_high):
    """Surrogate: with beta 0, grpo_loss (bnpo) and its gradient equal GRPOTrainer.compute_loss (clipping active)"""
    check_loss(lesson16, seed, "bnpo", 0.0, epsilon_high, "clipped surrogate")


# ---------------------------------------------------------------------------- KL (beta != 0)
@pytest.mark.points(3)
@pytest.mark.parametrize(("seed", "beta"), [(2, 0.04), (3, 0.5)])
def test_kl_loss_equals_compute_loss(lesson16: Lesson16, seed: int, beta: float):
    """KL: with beta != 0, grpo_loss (bnpo) and its gradient equal GRPOTrainer.compute_loss (k3 times the ratio, no clipping)"""
    check_loss(lesson16, seed, "bnpo", beta, None, f"KL term, beta {beta}", epsilon=NO_CLIP)


# ---------------------------------------------------------------------------- aggregation
@pytest.mark.points(3)
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_aggregate_loss_type_equals_compute_loss(lesson16: Lesson16, loss_type: str):
    """Aggregation: grpo_loss for each loss_type equals GRPOTrainer.compute_loss (unequal lengths, beta 0, no clipping)"""
    check_loss(lesson16, 4, loss_type, 0.0, None, f"loss_type {loss_type!r}", epsilon=NO_CLIP)


# ---------------------------------------------------------------------------- training
@pytest.mark.points(4)
def test_training_raises_the_format_reward(lesson16: Lesson16):
    """Training: a short GRPO run with your functions raises the mean format reward of a tiny model above the bar"""
    out = lesson16.train()
    assert out["reward_after"] >= TRAIN_BAR, (
        f"mean reward {out['reward_before']:.3f} before, {out['reward_after']:.3f} after "
        f"{len(out['rewards'])} GRPO steps (bar {TRAIN_BAR}; per-step rewards "
        f"{[round(r, 2) for r in out['rewards']]})"
    )
