"""Provided (given complete, not graded): lesson 15's tokenizer, tiny models, batches and run helpers.

- ``make_tokenizer()``: a word-level tokenizer over the shipped preference set's words (plus
  ``<pad>`` and ``<eos>``), wrapped as a Hugging Face ``PreTrainedTokenizerFast`` (nothing downloaded).
- ``tiny_llama(config, seed)``: a ``LlamaForCausalLM`` built from a config; ``tiny_reward_model``:
  the same body as ``LlamaForSequenceClassification`` with one output (a scalar reward).
- ``collate(rows)``: a batch laid out as trl's ``DPOTrainer`` lays it out: for B pairs, 2B rows
  ``[chosen_1..chosen_B, rejected_1..rejected_B]``, each ``prompt ids + completion ids + <eos>``,
  right-padded; keys ``input_ids``, ``attention_mask`` and ``completion_mask`` (1 on completion tokens).
- ``run_*``: what the graders call in the sandbox (and the lab and the visible tests use): they
  build the models the same way every time and call your functions in ``dpo.py``.
"""

from __future__ import annotations

import importlib
import random
from functools import lru_cache

import torch

PAD, EOS = "<pad>", "<eos>"


def _module(name: str):
    """A sibling module: ``exercises.lesson_15.<name>`` from the repository, ``<name>`` in the sandbox."""
    if __package__:
        return importlib.import_module(f"{__package__}.{name}")
    return importlib.import_module(name)


def vocabulary() -> list[str]:
    data = _module("dpo_data")
    words = sorted({w for triple in data.PAIRS for text in triple for w in text.split()})
    extra = sorted({"describe", "the", ":", ".", *data.NOUNS, *data.GOOD, *data.BAD} - set(words))
    return [PAD, EOS, *words, *extra]


@lru_cache(maxsize=1)
def make_tokenizer():
    """The course's word-level tokenizer: ``pad_token`` ``<pad>`` (id 0), ``eos_token`` ``<eos>`` (id 1).
    Cached: do not modify the returned tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation apart: "fish :" and "fish:" tokenise alike
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=PAD, eos_token=EOS)


MODEL_DEFAULT = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
)  # fmt: skip


def _config(config: dict | None, **extra):
    from transformers import LlamaConfig

    cfg = LlamaConfig(**{**MODEL_DEFAULT, **(config or {})}, bos_token_id=None, eos_token_id=1, pad_token_id=0, **extra)
    cfg._attn_implementation = "sdpa"
    return cfg


def tiny_llama(config: dict | None = None, seed: int | None = None):
    """``LlamaForCausalLM`` from ``MODEL_DEFAULT | config`` (sdpa attention), in training mode.
    ``seed``: when given, ``torch.manual_seed(seed)`` right before the weights are made."""
    from transformers import LlamaForCausalLM

    cfg = _config(config)
    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).train()


def tiny_reward_model(config: dict | None = None, seed: int | None = None):
    """``LlamaForSequenceClassification`` with ``num_labels=1`` (pad id 0: the reward is read at the last non-pad token)."""
    from transformers import LlamaForSequenceClassification

    cfg = _config(config, num_labels=1)
    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForSequenceClassification(cfg).train()


def encode(rows: list[dict[str, str]]) -> list[dict[str, list[int]]]:
    """Each row's prompt ids and chosen / rejected ids (each completion ends with ``<eos>``), as trl tokenises."""
    tok = make_tokenizer()
    out = []
    for r in rows:
        ids = {k: tok(r[k], add_special_tokens=False)["input_ids"] for k in ("prompt", "chosen", "rejected")}
        out.append(
            {"prompt_ids": ids["prompt"], "chosen_ids": ids["chosen"] + [1], "rejected_ids": ids["rejected"] + [1]}
        )
    return out


def collate(rows: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """A DPO batch in trl's layout (see the module docstring): (2B, T) int64 tensors."""
    seqs = []
    for kind in ("chosen_ids", "rejected_ids"):
        for e in encode(rows):
            seqs.append((e["prompt_ids"], e[kind]))
    t = max(len(p) + len(c) for p, c in seqs)
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    att, comp = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        att[i, :n] = 1
        comp[i, len(p) : n] = 1
    return {"input_ids": ids, "attention_mask": att, "completion_mask": comp}


# ---------------------------------------------------------------------------- run helpers (graders, lab, tests)
def _dpo():
    return _module("dpo")


def _load(model, state_dict):
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


def run_logprobs(config: dict | None, state_dict: dict[str, torch.Tensor] | None, batch: dict) -> torch.Tensor:
    """Your ``sequence_logprobs`` on a tiny Llama with the given weights, in eval mode -> (N,) float32."""
    model = _load(tiny_llama(config), state_dict).eval()
    with torch.no_grad():
        out = _dpo().sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    assert isinstance(out, torch.Tensor), "sequence_logprobs must return a tensor"
    return out.detach().float()


def run_reward_loss(config: dict | None, state_dict: dict, batch: dict, margin: torch.Tensor | None,
                    center_rewards_coefficient: float | None) -> float:  # fmt: skip
    """The rewards of chosen and rejected rows under a tiny reward model (eval mode), then your ``reward_loss``."""
    model = _load(tiny_reward_model(config), state_dict).eval()
    with torch.no_grad():
        r = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    b = r.shape[0] // 2
    loss = _dpo().reward_loss(r[:b], r[b:], margin=margin, center_rewards_coefficient=center_rewards_coefficient)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0, "reward_loss must return a 0-dim tensor"
    return float(loss)


def run_dpo_loss(logps: dict[str, torch.Tensor], beta: float, loss_type: str, label_smoothing: float) -> float:
    """Your ``dpo_loss`` on given per-sequence log-probs and completion lengths, as a float."""
    loss = _dpo().dpo_loss(
        logps["policy_chosen"], logps["policy_rejected"], logps["ref_chosen"], logps["ref_rejected"],
        beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
        chosen_lengths=logps["chosen_lengths"], rejected_lengths=logps["rejected_lengths"],
    )  # fmt: skip
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0, "dpo_loss must return a 0-dim tensor"
    return float(loss)


def run_dpo_step(config: dict | None, state_dict: dict, batches: list[dict], lr: float, beta: float,
                 loss_type: str, label_smoothing: float) -> dict:  # fmt: skip
    """``dpo_step(policy, ref, SGD(policy, lr), batch, ...)`` for each batch, policy and ref from the same
    weights -> {"losses", "policy": state after, "ref": state after, "ref_grads": names of ref parameters with a gradient}."""
    policy, ref = _load(tiny_llama(config), state_dict), _load(tiny_llama(config), state_dict)
    opt = torch.optim.SGD(policy.parameters(), lr=lr)
    losses = [_dpo().dpo_step(policy, ref, opt, b, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
              for b in batches]  # fmt: skip
    return {
        "losses": losses,
        "policy": {k: v.detach().clone() for k, v in policy.state_dict().items()},
        "ref": {k: v.detach().clone() for k, v in ref.state_dict().items()},
        "ref_grads": sorted(n for n, p in ref.named_parameters() if p.grad is not None),
    }


TRAIN_DEFAULTS = {"seed": 0, "pretrain_steps": 30, "steps": 30, "lr": 1e-2, "sft_lr": 1e-2, "batch_pairs": 8,
                  "beta": 0.1, "loss_type": "sigmoid", "label_smoothing": 0.0}  # fmt: skip


def pretrain(model, rows: list[dict[str, str]], steps: int, lr: float, seed: int):
    """A short SFT warm-up on chosen *and* rejected completions alike (so the start prefers neither): the
    reference model of the DPO run. Plain next-token loss on completion tokens, AdamW."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        batch = collate(rng.sample(rows, min(8, len(rows))))
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def implicit_accuracy(policy, ref, rows: list[dict[str, str]], beta: float = 0.1) -> float:
    """Preference accuracy: the share of pairs whose implicit reward beta * log(pi / pi_ref) is higher for
    the chosen completion (the course's own log-probs, not yours)."""
    batch = collate(rows)
    policy, ref = policy.eval(), ref.eval()
    with torch.no_grad():
        lp = [_course_logprobs(m, batch) for m in (policy, ref)]
    d = lp[0] - lp[1]
    b = len(rows)
    return float((beta * (d[:b] - d[b:]) > 0).float().mean())


def _course_logprobs(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(2, batch["input_ids"][:, 1:, None]).squeeze(2)
    return (lp * batch["completion_mask"][:, 1:]).sum(1)


def run_training(train: dict | None = None, rows: list[dict] | None = None, config: dict | None = None) -> dict:
    """A short DPO run built from your ``dpo_step`` -> {"policy", "ref": state dicts, "losses"}.

    ``tiny_llama(config, seed)`` -> ``pretrain`` (``pretrain_steps``) -> a frozen copy as the reference ->
    ``steps`` calls of your ``dpo_step`` with ``torch.optim.Adam(lr)`` on ``batch_pairs`` random pairs of
    ``rows`` (the shipped ``TRAIN`` by default)."""
    t = {**TRAIN_DEFAULTS, **(train or {})}
    rows = _module("dpo_data").rows() if rows is None else rows
    policy = pretrain(tiny_llama(config, t["seed"]), rows, t["pretrain_steps"], t["sft_lr"], t["seed"])
    ref = tiny_llama(config)
    ref.load_state_dict(policy.state_dict())
    ref.eval().requires_grad_(False)
    opt = torch.optim.Adam(policy.parameters(), lr=t["lr"])
    rng = random.Random(t["seed"] + 1)
    losses = []
    for _ in range(t["steps"]):
        batch = collate(rng.sample(rows, t["batch_pairs"]))
        loss = _dpo().dpo_step(policy, ref, opt, batch, beta=t["beta"], loss_type=t["loss_type"],
                               label_smoothing=t["label_smoothing"])  # fmt: skip
        losses.append(float(loss))
    return {
        "policy": {k: v.detach().clone() for k, v in policy.state_dict().items()},
        "ref": {k: v.detach().clone() for k, v in ref.state_dict().items()},
        "losses": losses,
    }
