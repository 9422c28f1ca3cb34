"""Lesson 15: preference tuning. Sequence log-probs, the Bradley-Terry reward loss, the DPO loss
family and one DPO step with a frozen reference model (lessons/lesson_15.md).

Batches are laid out as trl's ``DPOTrainer`` lays them out (``dpo_kit.collate``): for B pairs, 2B
rows ``[chosen_1..chosen_B, rejected_1..rejected_B]`` with ``input_ids``, ``attention_mask`` and
``completion_mask`` (1 on completion tokens, 0 on prompt and padding). Use ``torch`` only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def sequence_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """The log-probability of each row's completion under ``model``: a (N,) float32 tensor.

    ``log p(completion | prompt) = sum over completion positions t of log softmax(logits[t - 1])[ids[t]]``:
    the logits at position t - 1 predict token t (the one-token shift), prompt and padding tokens are
    masked out with ``completion_mask``, and the sum (not the mean) is taken over the completion.
    Keep the graph (the DPO step differentiates through it).
    """
    # BEGIN SOLUTION
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(2, input_ids[:, 1:, None]).squeeze(2)
    return (logp * completion_mask[:, 1:].to(logp.dtype)).sum(dim=1)
    # END SOLUTION


def reward_loss(
    rewards_chosen: torch.Tensor,
    rewards_rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """The Bradley-Terry reward-model loss as trl's ``RewardTrainer``: a 0-dim tensor.

    ``-mean(log sigmoid(r_c - r_r - margin))`` (no margin when ``margin`` is None), plus, when
    ``center_rewards_coefficient`` c is given, ``c * mean((r_c + r_r) ** 2)`` (Eisenstein et al.
    2023), which keeps the rewards centred on zero. Inputs are (B,) tensors.
    """
    # BEGIN SOLUTION
    diff = rewards_chosen - rewards_rejected
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)
    return loss
    # END SOLUTION


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """The DPO loss family, as trl 1.16's ``DPOTrainer``: the mean over pairs, a 0-dim tensor.

    With the log-ratios ``c = policy_chosen - ref_chosen`` and ``r = policy_rejected - ref_rejected``
    (sequence log-probs, (B,) tensors) and ``d = c - r``:

    - ``"sigmoid"``: ``-log sigmoid(beta * d)``. DPO, Rafailov et al. 2023, "Direct Preference
      Optimization: Your Language Model is Secretly a Reward Model", eq. 7. It ignores ``label_smoothing``.
    - ``"ipo"``: ``(c / n_c - r / n_r - 1 / (2 beta)) ** 2``, with ``n_c``, ``n_r`` the completion lengths
      (``chosen_lengths``, ``rejected_lengths``: completion-mask token counts). IPO, Azar et al. 2023,
      "A General Theoretical Paradigm to Understand Learning from Human Preferences", eq. 17; trl
      normalises the log-ratios by length.
    - ``"hinge"``: ``relu(1 - beta * d)``. SLiC, Zhao et al. 2023, "SLiC-HF: Sequence Likelihood
      Calibration with Human Feedback", eq. 1 (with margin 1 / beta in log-ratio units).
    - ``"robust"`` (label smoothing eps): ``(-(1 - eps) log sigmoid(beta d) + eps log sigmoid(-beta d)) / (1 - 2 eps)``.
      Robust DPO, Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with Noisy
      Feedback", eq. 7 (the unbiased loss under preference labels flipped with probability eps). The
      conservative DPO of Mitchell 2023 ("A note on DPO with noisy preferences") mixes the two terms
      with weights (1 - eps) and eps without the division; trl's ``sigmoid`` does not apply it.
    """
    # BEGIN SOLUTION
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen - rejected))
    elif loss_type == "ipo":
        h = chosen / chosen_lengths - rejected / rejected_lengths
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * (chosen - rejected))
    elif loss_type == "robust":
        z = beta * (chosen - rejected)
        eps = label_smoothing
        losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}: one of {LOSS_TYPES}")
    return losses.mean()
    # END SOLUTION


def dpo_step(
    policy: torch.nn.Module,
    ref_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> float:
    """One DPO optimisation step; returns the loss before the step as a Python float.

    Zero the gradients, compute the policy's sequence log-probs of all 2B rows (with gradients) and
    the reference model's (frozen: under ``torch.no_grad()``, so it gets no gradient and is never
    updated), split them into chosen (first B rows) and rejected (last B), take ``dpo_loss`` (the
    completion lengths are ``completion_mask[:, 1:].sum(1)``), backpropagate and step the optimizer.
    """
    # BEGIN SOLUTION
    optimizer.zero_grad()
    ids, att, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    logps = sequence_logprobs(policy, ids, att, comp)
    with torch.no_grad():
        ref = sequence_logprobs(ref_model, ids, att, comp)
    lengths = comp[:, 1:].sum(1).float()
    b = ids.shape[0] // 2
    loss = dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], beta=beta, loss_type=loss_type,
                    label_smoothing=label_smoothing, chosen_lengths=lengths[:b], rejected_lengths=lengths[b:])  # fmt: skip
    loss.backward()
    optimizer.step()
    return float(loss.detach())
    # END SOLUTION
