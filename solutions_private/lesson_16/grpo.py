"""Lesson 16: reasoning RL with GRPO: group-normalised advantages, the clipped surrogate, the k3 KL, the loss normalisations.

GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300) samples a group of ``G`` completions per
prompt, scores them with a verifiable reward, and uses each completion's reward relative to its group
as the advantage of all its tokens: no value network. Everything here follows trl 1.16's
``GRPOTrainer.compute_loss`` (``importance_sampling_level="token"``, one process, no gradient
accumulation), so your loss can be compared with trl's on the same inputs.

Notation: ``B`` completions in the batch (``B / G`` prompts, each prompt's group contiguous), ``T``
completion tokens (padded on the right; ``mask`` is 1 on real tokens), ``A`` advantages (B,).
"""

from __future__ import annotations

import torch

EPS_STD = 1e-4  # added to the std before dividing, as trl does


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group") -> torch.Tensor:
    """Advantages (B,) from rewards (B,): the reward minus its group's mean, divided by a std (DeepSeekMath eq. 3 / sec. 4.1.2).

    The groups are contiguous: rows ``g*G .. g*G + G - 1`` (``G = num_generations``) answer the same prompt.
    ``scale_rewards``: "group" divides by the group's std + 1e-4; "batch" by the std of all ``B`` rewards
    + 1e-4 (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783, argue against the group std); "none" does not
    divide (Dr. GRPO eq. 2). The std is the sample std (Bessel-corrected, ``torch.std``'s default), as trl's.
    """
    # BEGIN SOLUTION
    grouped = rewards.view(-1, num_generations)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if scale_rewards == "none":
        return centred
    if scale_rewards == "group":
        std = grouped.std(dim=1).repeat_interleave(num_generations)
    elif scale_rewards == "batch":
        std = rewards.std().expand_as(rewards)
    else:
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    return centred / (std + EPS_STD)
    # END SOLUTION


def clipped_surrogate(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
) -> torch.Tensor:  # fmt: skip
    """The per-token loss (B, T) of PPO's clipped surrogate (Schulman et al. 2017, arXiv:1707.06347, eq. 7), negated.

    ``ratio = exp(logps - old_logps)``; the loss is ``-min(ratio * A, clip(ratio, 1 - epsilon_low,
    1 + epsilon_high) * A)`` with ``A`` broadcast over the tokens of its row. ``epsilon_high=None`` means
    ``epsilon_low`` (DAPO's "clip higher", Yu et al. 2025, arXiv:2503.14476, eq. 10, sets it larger).
    """
    # BEGIN SOLUTION
    high = epsilon_low if epsilon_high is None else epsilon_high
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    return -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon_low, 1 + high) * adv)
    # END SOLUTION


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """The per-token k3 estimate of KL(policy || reference) (DeepSeekMath eq. 4; Schulman 2020, "Approximating KL").

    ``exp(ref - logp) - (ref - logp) - 1``: never negative, unbiased for tokens sampled from the policy.
    """
    # BEGIN SOLUTION
    d = ref_logps - logps
    return torch.exp(d) - d - 1
    # END SOLUTION


def aggregate(
    per_token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, max_completion_length: int | None = None,
    num_items_in_batch: int | float | torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """The scalar loss from the per-token loss (B, T) and the mask (B, T), by ``loss_type``:

    - "grpo" (DeepSeekMath eq. 3): the masked mean of each sequence, then the mean over sequences;
    - "bnpo": the masked sum over the batch divided by the number of real tokens (a per-token mean);
    - "dr_grpo" (Dr. GRPO eq. 2): the masked sum divided by the constant ``B * max_completion_length``;
    - "dapo" (DAPO eq. 8, token-level): the masked sum divided by ``num_items_in_batch``, the number of
      real tokens in the whole generation batch (which can be larger than this batch).
    Sequence lengths and counts are clamped to at least 1, as trl does.
    """
    # BEGIN SOLUTION
    mask = mask.to(per_token_loss.dtype)
    masked = per_token_loss * mask
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return masked.sum() / (per_token_loss.size(0) * max_completion_length)
    if loss_type == "dapo":
        return masked.sum() / torch.as_tensor(num_items_in_batch, dtype=per_token_loss.dtype).clamp(min=1.0)
    raise ValueError(f"unknown loss_type {loss_type!r}")
    # END SOLUTION


def grpo_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
    ref_logps: torch.Tensor | None = None, beta: float = 0.0, epsilon_low: float = 0.2,
    epsilon_high: float | None = None, loss_type: str = "dapo", max_completion_length: int | None = None,
    num_items_in_batch: int | float | torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """The GRPO loss of ``GRPOTrainer.compute_loss``: ``clipped_surrogate`` + ``beta`` * KL per token, aggregated.

    When ``beta != 0`` the per-token KL is ``k3_kl(logps, ref_logps)`` multiplied by the ratio
    ``exp(logps - old_logps)`` (trl's ``use_bias_correction_kl``, the default: the tokens were sampled from
    the old policy, so the ratio reweights the estimate to the current one). Then ``aggregate`` by
    ``loss_type``. Gradients flow through ``logps`` only.
    """
    # BEGIN SOLUTION
    per_token = clipped_surrogate(logps, old_logps, advantages, epsilon_low, epsilon_high)
    if beta != 0.0:
        per_token = per_token + beta * k3_kl(logps, ref_logps) * torch.exp(logps - old_logps)
    return aggregate(per_token, mask, loss_type, max_completion_length, num_items_in_batch)
    # END SOLUTION
