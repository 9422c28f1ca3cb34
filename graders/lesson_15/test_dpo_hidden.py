"""Hidden graders for lesson 15. They run in the grader's process; student code only in the worker.

References are trl 1.16 and transformers themselves, never a copy of the course's reference:
``LlamaForCausalLM(..., labels=...).loss`` on each row alone for the sequence log-probs,
``RewardTrainer.compute_loss`` for the Bradley-Terry loss, ``DPOTrainer.compute_loss`` (``bf16=False``)
for every DPO variant and for the optimisation step (its gradient, by autograd, through trl's loss).
The tokenizer, the tiny models and the preference set are the provided ``dpo_kit.py`` /
``dpo_data.py``, loaded here from the course's copy.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import warnings
from functools import cache

import datasets
import pytest
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

from graders.engine import lessons
from graders.lesson_15.bindings import Lesson15

pytestmark = pytest.mark.lesson_15

TRAIN_STEPS = 20  # the step budget of the training test
TRAIN_BAR = 0.8  # held-out preference accuracy: the reference reaches 1.0 (the start is 0: policy = reference)


def _provided():
    """The course's dpo_data and dpo_kit (dpo_kit imports dpo_data by name, as in the sandbox)."""
    mods = {}
    for stem in ("dpo_data", "dpo_kit"):
        if stem not in sys.modules:
            spec = importlib.util.spec_from_file_location(stem, lessons.load("15").provided[stem])
            module = importlib.util.module_from_spec(spec)
            sys.modules[stem] = module
            spec.loader.exec_module(module)
        mods[stem] = sys.modules[stem]
    return mods["dpo_data"], mods["dpo_kit"]


dpo_data, dpo_kit = _provided()


@cache
def _quiet_trl():
    datasets.disable_progress_bars()
    logging.getLogger("trl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="trl")
    warnings.filterwarnings("ignore", category=FutureWarning)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def dpo_trainer(policy, ref, rows, beta: float, loss_type: str, label_smoothing: float = 0.0) -> DPOTrainer:
    _quiet_trl()
    args = DPOConfig(
        output_dir="/tmp/llmg-lesson15-trl", report_to=[], use_cpu=True, save_strategy="no", bf16=False,
        beta=beta, loss_type=[loss_type], label_smoothing=label_smoothing, max_length=64,
    )  # fmt: skip
    return DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=dpo_kit.make_tokenizer())  # fmt: skip


def trl_batch(trainer, n: int) -> dict[str, torch.Tensor]:
    return dict(trainer.data_collator([trainer.train_dataset[i] for i in range(n)]))


def rows_at(start: int, n: int) -> list[dict[str, str]]:
    return dpo_data.rows(dpo_data.PAIRS[start : start + n])


# ---------------------------------------------------------------------------- sequence log-probs
def forward_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each row ALONE (no padding) through transformers' own loss: -loss * (completion tokens)."""
    out = []
    with torch.no_grad():
        for ids, att, comp in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"], strict=True):
            n = int(att.sum())
            ids, comp = ids[:n][None], comp[:n][None]
            labels = ids.masked_fill(comp == 0, -100)
            k = int(comp[0, 1:].sum())
            out.append(-float(model(input_ids=ids, labels=labels, use_cache=False).loss.double()) * k)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.points(3)
@pytest.mark.parametrize(("seed", "start", "n"), [(1, 0, 4), (2, 30, 6)], ids=["4-pairs", "6-pairs"])
def test_logprobs_equal_model_forward(lesson15: Lesson15, seed: int, start: int, n: int):
    """Logprobs: sequence_logprobs of padded rows equals each row's completion log-prob from the model's own loss"""
    model = dpo_kit.tiny_llama(seed=seed).eval()
    batch = dpo_kit.collate(rows_at(start, n))
    got, want = lesson15.logprobs(None, _state(model), batch).double(), forward_logprobs(model, batch)
    worst = (got - want).abs().max().item()
    assert worst <= 1e-4 * want.abs().max().item() + 1e-5, (
        f"sequence_logprobs differs from the model's own per-row completion log-prob by up to {worst:.4g} "
        f"(yours {got[:3].tolist()}, want {want[:3].tolist()}): sum log p over completion tokens only, "
        "the logits at t - 1 predict token t"
    )


# ---------------------------------------------------------------------------- reward model loss
REWARD_CASES = {"plain": (None, False), "centred": (0.1, False), "margin": (None, True), "margin-centred": (0.05, True)}


@pytest.mark.points(2)
@pytest.mark.parametrize("case", list(REWARD_CASES))
def test_reward_loss_equals_reward_trainer(lesson15: Lesson15, case: str):
    """Reward: reward_loss on a tiny reward model's rewards equals RewardTrainer.compute_loss (margin, centring)"""
    _quiet_trl()
    coef, with_margin = REWARD_CASES[case]
    rows = rows_at(10, 6)
    if with_margin:
        rows = [{**r, "margin": 0.4 * i - 1.0} for i, r in enumerate(rows)]
    model = dpo_kit.tiny_reward_model(seed=7).eval()
    args = RewardConfig(output_dir="/tmp/llmg-lesson15-rm", report_to=[], use_cpu=True, save_strategy="no",
                        bf16=False, center_rewards_coefficient=coef)  # fmt: skip
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                            processing_class=dpo_kit.make_tokenizer())  # fmt: skip
    batch = trl_batch(trainer, len(rows))
    with torch.no_grad():
        want = float(trainer.compute_loss(model, dict(batch)))
    margin = batch.get("margin")
    got = lesson15.reward_loss(None, _state(model), batch, margin, coef)
    assert abs(got - want) <= 1e-5 * abs(want) + 1e-6, f"reward_loss = {got:.6f}, RewardTrainer's loss = {want:.6f}"


# ---------------------------------------------------------------------------- DPO losses
def course_logps(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(2, batch["input_ids"][:, 1:, None]).squeeze(2)
    return (lp * batch["completion_mask"][:, 1:]).sum(1)


def check_dpo_loss(lesson15: Lesson15, loss_type: str, beta: float, eps: float) -> None:
    """The student's dpo_loss on the batch's log-probs against DPOTrainer.compute_loss on the same batch."""
    policy, ref = dpo_kit.tiny_llama(seed=11).eval(), dpo_kit.tiny_llama(seed=12).eval()
    trainer = dpo_trainer(policy, ref, rows_at(40, 6), beta, loss_type, eps)
    batch = trl_batch(trainer, 6)
    with torch.no_grad():
        want = float(trainer.compute_loss(trainer.model, batch))
        p, r = course_logps(policy, batch), course_logps(ref, batch)
    lengths = batch["completion_mask"][:, 1:].sum(1).float()
    logps = {"policy_chosen": p[:6], "policy_rejected": p[6:], "ref_chosen": r[:6], "ref_rejected": r[6:],
             "chosen_lengths": lengths[:6], "rejected_lengths": lengths[6:]}  # fmt: skip
    got = lesson15.dpo_loss(logps, beta, loss_type, eps)
    assert abs(got - want) <= 1e-5 * abs(want) + 1e-6, (
        f"dpo_loss({loss_type!r}, beta={beta}, label_smoothing={eps}) = {got:.6f}, DPOTrainer's loss = {want:.6f}"
    )


@pytest.mark.points(2)
@pytest.mark.parametrize(
    ("beta", "eps"), [(0.1, 0.0), (0.5, 0.0), (0.5, 0.2)], ids=["b0.1", "b0.5", "b0.5-smoothing0.2"]
)
def test_dpo_loss_sigmoid_equals_dpo_trainer(lesson15: Lesson15, beta: float, eps: float):
    """DPO loss, sigmoid: equals DPOTrainer.compute_loss (trl 1.16, bf16=False; sigmoid ignores label_smoothing)"""
    check_dpo_loss(lesson15, "sigmoid", beta, eps)


@pytest.mark.points(2)
@pytest.mark.parametrize(("beta", "eps"), [(0.1, 0.2), (0.3, 0.1)], ids=["b0.1-smoothing0.2", "b0.3-smoothing0.1"])
def test_dpo_loss_robust_equals_dpo_trainer(lesson15: Lesson15, beta: float, eps: float):
    """DPO loss, robust: the label-smoothed (conservative) form equals DPOTrainer.compute_loss"""
    check_dpo_loss(lesson15, "robust", beta, eps)


@pytest.mark.points(2)
@pytest.mark.parametrize("beta", [0.3, 2.0], ids=["b0.3", "b2.0"])
def test_dpo_loss_hinge_equals_dpo_trainer(lesson15: Lesson15, beta: float):
    """DPO loss, hinge: equals DPOTrainer.compute_loss"""
    check_dpo_loss(lesson15, "hinge", beta, 0.0)


@pytest.mark.points(2)
@pytest.mark.parametrize("beta", [0.1, 0.5], ids=["b0.1", "b0.5"])
def test_dpo_loss_ipo_equals_dpo_trainer(lesson15: Lesson15, beta: float):
    """DPO loss, ipo: the length-normalised IPO loss equals DPOTrainer.compute_loss"""
    check_dpo_loss(lesson15, "ipo", beta, 0.0)


# ---------------------------------------------------------------------------- the DPO step
@pytest.mark.points(4)
@pytest.mark.parametrize(
    ("loss_type", "beta", "eps"), [("sigmoid", 0.5, 0.0), ("ipo", 0.1, 0.0)], ids=["sigmoid", "ipo"]
)
def test_step_two_sgd_steps_equal_trl_loss(lesson15: Lesson15, loss_type: str, beta: float, eps: float):
    """Step: two dpo_step calls with SGD give the weights of two SGD steps on DPOTrainer's loss; the reference stays frozen"""
    policy, ref = dpo_kit.tiny_llama(seed=21), dpo_kit.tiny_llama()
    state = _state(policy)
    ref.load_state_dict(state)
    ref.requires_grad_(False)
    trainer = dpo_trainer(policy, ref, rows_at(50, 8), beta, loss_type, eps)
    batches = [
        dict(trainer.data_collator([trainer.train_dataset[i] for i in idx])) for idx in ([0, 1, 2, 3], [4, 5, 6, 7])
    ]
    lr = 0.5
    opt = torch.optim.SGD(policy.parameters(), lr=lr)
    want_losses = []
    for batch in batches:
        opt.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        opt.step()
        want_losses.append(float(loss))
    out = lesson15.steps(None, state, batches, lr, beta, loss_type, eps)
    assert not out["ref_grads"], (
        f"after dpo_step the reference model holds gradients ({out['ref_grads'][:3]}...): compute its log-probs "
        "under torch.no_grad(), it is frozen"
    )
    moved = max((out["ref"][k] - v).abs().max().item() for k, v in state.items())
    assert moved == 0, f"dpo_step changed the reference model's weights (by up to {moved:.3g}): it must stay frozen"
    for i, (g, w) in enumerate(zip(out["losses"], want_losses, strict=True)):
        assert abs(g - w) <= 1e-4 * abs(w) + 1e-6, (
            f"step {i + 1}: dpo_step returned {g:.6f}, trl's loss before it is {w:.6f}"
        )
    worst = max((out["policy"][k] - v).abs().max().item() for k, v in policy.state_dict().items())
    assert worst <= 2e-5, (
        f"after two dpo_step calls the policy differs from two SGD steps on trl's DPO loss by up to {worst:.3g}: "
        "zero the gradients, one backward and one optimizer step per call, the reference model frozen"
    )


# ---------------------------------------------------------------------------- training
@pytest.mark.points(5)
def test_training_heldout_preference_accuracy_above_bar(lesson15: Lesson15):
    """Training: 20 DPO steps (Adam 1e-2, beta 0.1) raise held-out preference accuracy above 0.8"""
    out = lesson15.train({"steps": TRAIN_STEPS})
    policy, ref = dpo_kit.tiny_llama(), dpo_kit.tiny_llama()
    policy.load_state_dict(out["policy"])
    ref.load_state_dict(out["ref"])
    batch = dpo_kit.collate(dpo_data.rows(dpo_data.HELD_OUT))
    with torch.no_grad():
        d = course_logps(policy.eval(), batch) - course_logps(ref.eval(), batch)
    n = len(dpo_data.HELD_OUT)
    acc = float((d[:n] - d[n:] > 0).float().mean())
    assert acc > TRAIN_BAR, (
        f"after {TRAIN_STEPS} DPO steps the implicit reward prefers the chosen completion on {acc:.0%} of the "
        f"{n} held-out pairs; the bar is {TRAIN_BAR:.0%} (the course's reference reaches 100%). Your dpo_step's "
        f"losses: {[round(x, 3) for x in out['losses'][::5]]}"
    )
