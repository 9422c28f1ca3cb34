"""Provided (given complete, not graded): lesson 16's tokenizer, tiny model, sampler, reward and run helpers.

- ``make_tokenizer()``: a word-level tokenizer over 16 tokens (``<pad>``, ``<eos>``, ``<bos>``, the
  digits ``0``-``9``, ``+``, ``=`` and ``x``), a Hugging Face ``PreTrainedTokenizerFast`` padded on the left
  as trl's ``GRPOTrainer`` wants. Built in code: nothing is downloaded.
- ``tiny_llama(config, seed)``: a ``LlamaForCausalLM`` built from a config.
- ``per_token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask)``: the log-probability
  of every completion token under ``model``, computed as trl's ``GRPOTrainer`` computes it.
- ``sample(model, prompt_ids, n, length, generator)``: ``n`` completions of ``length`` tokens per prompt.
- ``format_reward(completion_ids)``: the toy verifiable reward: the share of completion tokens that are ``7``.
- ``run_*``: what the graders call in the sandbox (and the lab and the visible tests use): they build
  the model the same way every time and call your functions in ``grpo.py``.
"""

from __future__ import annotations

import copy
import importlib
from functools import lru_cache

import torch

TOKENS = ["<pad>", "<eos>", "<bos>", *"0123456789", "+", "=", "x"]
VOCAB_SIZE = len(TOKENS)  # 16
TARGET = TOKENS.index("7")

MODEL_DEFAULT = dict(
    vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
)  # fmt: skip


def _module(name: str):
    """A sibling module: ``exercises.lesson_16.<name>`` from the repository, ``<name>`` in the sandbox."""
    if __package__:
        return importlib.import_module(f"{__package__}.{name}")
    return importlib.import_module(name)


@lru_cache(maxsize=1)
def make_tokenizer():
    """The course's 16-token tokenizer (``pad_token`` ``<pad>``, ``eos_token`` ``<eos>``), padding on the left."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TOKENS)}, unk_token="x"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    tok.padding_side = "left"
    return tok


def tiny_llama(config: dict | None = None, seed: int | None = None):
    """``LlamaForCausalLM(LlamaConfig(**MODEL_DEFAULT | config))`` in eval mode (no dropout anyway).

    ``seed``: when given, ``torch.manual_seed(seed)`` right before the weights are made."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**MODEL_DEFAULT, **(config or {})}, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def per_token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """(B, C) log-probabilities of the completion tokens, as ``GRPOTrainer._get_per_token_logps_and_entropies``.

    The prompt (left-padded) and the completion are concatenated; the logits at position ``i`` predict
    token ``i + 1``; temperature 1."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    c = completion_ids.size(1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=c + 1).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def sample(model, prompt_ids: torch.Tensor, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` completions of exactly ``length`` tokens for each prompt row (repeated in place: the group of
    prompt ``i`` is rows ``i*n .. i*n + n - 1``), sampled at temperature 1 -> (P*n, length) int64."""
    ids = prompt_ids.repeat_interleave(n, dim=0)
    out = []
    for _ in range(length):
        logits = model(input_ids=torch.cat([ids, *out], dim=1) if out else ids).logits[:, -1].float()
        out.append(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
    return torch.cat(out, dim=1)


def format_reward(completion_ids: torch.Tensor) -> torch.Tensor:
    """The toy verifiable reward, one per row: the share of the completion's tokens that are ``7`` (0 .. 1)."""
    return (completion_ids == TARGET).float().mean(dim=1)


# ---------------------------------------------------------------------------- run helpers (graders, lab, tests)
def _grpo():
    return _module("grpo")


def run_advantages(rewards: list[float], num_generations: int, scale_rewards: str) -> list[float]:
    """Your ``group_advantages(torch.tensor(rewards), num_generations, scale_rewards)`` as a list of floats."""
    adv = _grpo().group_advantages(torch.tensor(rewards, dtype=torch.float32), num_generations, scale_rewards)
    assert isinstance(adv, torch.Tensor), "group_advantages must return a tensor"
    return [float(a) for a in adv.reshape(-1)]


def run_loss(config: dict | None, state_dict: dict, inputs: dict, args: dict) -> dict:
    """Your ``grpo_loss`` on trl-style inputs with the model's own log-probabilities -> {"loss", "grad_norm"}.

    ``args``: beta, epsilon_low, epsilon_high, loss_type, max_completion_length."""
    model = tiny_llama(config)
    model.load_state_dict(state_dict)
    logps = per_token_logps(
        model, inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"], inputs["completion_mask"]
    )
    loss = _grpo().grpo_loss(
        logps, inputs["old_per_token_logps"], inputs["advantages"], inputs["completion_mask"],
        ref_logps=inputs.get("ref_per_token_logps"), num_items_in_batch=inputs.get("num_items_in_batch"), **args,
    )  # fmt: skip
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0, "grpo_loss must return a 0-dim tensor"
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
    return {"loss": float(loss.detach()), "grad_norm": float(norm)}


TRAIN_DEFAULTS = {
    "seed": 0, "steps": 12, "lr": 3e-2, "prompts": 4, "num_generations": 8, "length": 4, "beta": 0.0,
    "epsilon_low": 0.2, "epsilon_high": 0.2, "loss_type": "dapo", "scale_rewards": "group", "iterations": 2,
}  # fmt: skip


@torch.no_grad()
def mean_reward(model, n: int = 128, length: int = 4, seed: int = 1234) -> float:
    """The mean ``format_reward`` of ``n`` sampled completions of the prompt ``<bos>`` (fixed sampling seed)."""
    g = torch.Generator().manual_seed(seed)
    return float(format_reward(sample(model, torch.tensor([[2]]), n, length, g)).mean())


def run_training(train: dict | None = None, config: dict | None = None) -> dict:
    """A short GRPO run built from your functions -> {"reward_before", "reward_after", "rewards", "kl"}.

    Each step samples ``num_generations`` completions of ``length`` tokens for each of ``prompts`` prompts
    (``<bos> d`` for a digit d), scores them with ``format_reward``, turns the rewards into advantages
    with your ``group_advantages`` and takes ``iterations`` Adam steps on your ``grpo_loss`` (the first
    on-policy, the next ones with ratio != 1 against the sampling policy's log-probabilities). The
    reference for the KL term is the starting model. ``rewards``: the mean reward of each step's samples;
    ``kl``: the mean k3 KL to the starting model at each step (logged, whatever ``beta``)."""
    grpo = _grpo()
    t = {**TRAIN_DEFAULTS, **(train or {})}
    model = tiny_llama(config, t["seed"])
    ref = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=t["lr"])
    g = torch.Generator().manual_seed(t["seed"])
    before = mean_reward(model, length=t["length"])
    prompt_ids = torch.tensor([[2, 3 + (i % 10)] for i in range(t["prompts"])])
    rewards_log, kl_log = [], []
    for _ in range(t["steps"]):
        completion_ids = sample(model, prompt_ids, t["num_generations"], t["length"], g)
        p_ids = prompt_ids.repeat_interleave(t["num_generations"], dim=0)
        p_mask, c_mask = torch.ones_like(p_ids), torch.ones_like(completion_ids)
        rewards = format_reward(completion_ids)
        adv = grpo.group_advantages(rewards, t["num_generations"], t["scale_rewards"])
        with torch.no_grad():
            old = per_token_logps(model, p_ids, p_mask, completion_ids, c_mask)
            ref_lp = per_token_logps(ref, p_ids, p_mask, completion_ids, c_mask)
        for _ in range(t["iterations"]):
            lp = per_token_logps(model, p_ids, p_mask, completion_ids, c_mask)
            loss = grpo.grpo_loss(
                lp, old, adv, c_mask, ref_logps=ref_lp, beta=t["beta"], epsilon_low=t["epsilon_low"],
                epsilon_high=t["epsilon_high"], loss_type=t["loss_type"], max_completion_length=t["length"],
                num_items_in_batch=c_mask.sum(),
            )  # fmt: skip
            opt.zero_grad()
            loss.backward()
            opt.step()
        d = (ref_lp - old).double()
        kl_log.append(float((torch.exp(d) - d - 1).mean()))
        rewards_log.append(float(rewards.mean()))
    return {"reward_before": before, "reward_after": mean_reward(model, length=t["length"]),
            "rewards": rewards_log, "kl": kl_log}  # fmt: skip
