"""Provided (given complete, not graded): lesson 13's tokenizer, chat templates, tiny model and run helpers.

- ``make_tokenizer(template)``: a byte-level BPE (vocabulary 512) trained in milliseconds on the
  shipped instruction set (``sft_data.py``), wrapped as a Hugging Face ``PreTrainedTokenizerFast``
  with the ChatML special tokens and a chat template, so ``tok.apply_chat_template`` works offline.
  The training is deterministic: the graders build the same tokenizer with this file.
- ``CHATML_TEMPLATE``: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message; the generation
  prompt is ``<|im_start|>assistant\\n``.
- ``THINK_TEMPLATE``: the same, except that the generation prompt ends with an empty reasoning block
  (``<think>\\n\\n</think>\\n\\n``, as Qwen3's non-thinking mode) which an assistant message in the
  conversation does *not* carry: the prompt rendered alone is then not a prefix of the conversation.
- ``tiny_llama(config, seed)``: a ``LlamaForCausalLM`` built from a config (nothing downloaded).
- ``run_*``: what the graders call in the sandbox (and the lab and the visible tests use): they
  build the tokenizer and the model the same way every time and call your functions in ``sft.py``.
"""

from __future__ import annotations

import importlib
import random
from functools import lru_cache

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
VOCAB_SIZE = 512

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
THINK_TEMPLATE = CHATML_TEMPLATE.replace(
    "'<|im_start|>assistant\\n' }}", "'<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}"
)
TEMPLATES = {"chatml": CHATML_TEMPLATE, "think": THINK_TEMPLATE}


def _module(name: str):
    """A sibling module: ``exercises.lesson_13.<name>`` from the repository, ``<name>`` in the sandbox."""
    if __package__:
        return importlib.import_module(f"{__package__}.{name}")
    return importlib.import_module(name)


def corpus() -> list[str]:
    """The texts the tokenizer is trained on: every question and answer, the system prompt and the role names."""
    data = _module("sft_data")
    texts = [text for pair in data.PAIRS + data.NEAR_DUPLICATES for text in pair]
    return [*texts, data.SYSTEM, "system\nuser\nassistant\n"]


@lru_cache(maxsize=2)
def make_tokenizer(template: str = "chatml"):
    """The course's tiny chat tokenizer: ``eos_token`` ``<|im_end|>``, ``pad_token`` ``<|endoftext|>``.

    ``template``: "chatml" (the default) or "think" (see the module docstring). Cached: do not
    modify the returned tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tk.train_from_iterator(corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[SPECIAL_TOKENS[1], *SPECIAL_TOKENS[3:]],
    )  # fmt: skip
    tok.chat_template = TEMPLATES[template]
    return tok


MODEL_DEFAULT = dict(
    vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
)  # fmt: skip


def tiny_llama(config: dict | None = None, seed: int | None = None):
    """``LlamaForCausalLM(LlamaConfig(**MODEL_DEFAULT | config))`` with sdpa attention, in training mode.

    ``seed``: when given, ``torch.manual_seed(seed)`` right before the weights are made. Its config
    keeps transformers' default ``use_cache=True``: a forward that does not pass ``use_cache=False``
    builds a cache, and then transformers does not read packed ``position_ids`` (lessons/lesson_13.md).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**MODEL_DEFAULT, **(config or {})}, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg._attn_implementation = "sdpa"
    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).train()


# ---------------------------------------------------------------------------- run helpers (graders, lab, tests)
def _sft():
    return _module("sft")


def run_prepare(rows: list[dict], max_length: int | None = None, template: str = "chatml") -> list[dict]:
    """Your ``prepare_rows(tokenizer, rows, max_length)`` with the course's tokenizer."""
    return _sft().prepare_rows(make_tokenizer(template), rows, max_length)


def _model(config: dict | None, state_dict: dict[str, torch.Tensor] | None, seed: int | None = None):
    model = tiny_llama(config, seed)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


def run_loss(config: dict | None, state_dict: dict[str, torch.Tensor], batch: dict) -> float:
    """Your ``sft_loss(model, batch)`` on a tiny model with the given weights, as a float (no step)."""
    loss = _sft().sft_loss(_model(config, state_dict), batch)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0, "sft_loss must return a 0-dim tensor"
    return float(loss.detach())


def run_step(config: dict | None, state_dict: dict[str, torch.Tensor], batches: list[dict], lr: float) -> dict:
    """``sft_step(model, SGD(lr), batch)`` for each batch in turn -> {"losses": the returned values, "state_dict": the weights after}."""
    model = _model(config, state_dict)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = [_sft().sft_step(model, opt, batch) for batch in batches]
    return {"losses": losses, "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}


TRAIN_DEFAULTS = {"seed": 0, "steps": 40, "lr": 3e-3, "seq_length": 256, "rows_per_batch": 2, "max_length": 128}


def batches(packed: list[dict], rows_per_batch: int, seed: int):
    """An endless stream of groups of ``rows_per_batch`` packed rows: reshuffled every epoch with ``random.Random(seed)``."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(packed)))
        rng.shuffle(order)
        for i in range(0, len(order) - rows_per_batch + 1, rows_per_batch):
            yield [packed[j] for j in order[i : i + rows_per_batch]]


def run_training(rows: list[dict] | None = None, train: dict | None = None, config: dict | None = None) -> dict:
    """A short SFT run built from your functions -> {"state_dict", "losses"}.

    ``prepare_rows`` (course tokenizer, ``max_length``) -> ``pack_bfd`` (``seq_length``) -> groups of
    ``rows_per_batch`` packed rows -> ``collate_packed`` -> ``sft_step`` with ``torch.optim.AdamW(lr)``
    for ``steps`` steps, from ``tiny_llama(config, seed)``. ``rows`` defaults to every shipped pair.
    """
    sft = _sft()
    t = {**TRAIN_DEFAULTS, **(train or {})}
    rows = _module("sft_data").conversations() if rows is None else rows
    examples = sft.prepare_rows(make_tokenizer(), rows, t["max_length"])
    packed = sft.pack_bfd(examples, t["seq_length"])
    model = tiny_llama(config, t["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"])
    stream = batches(packed, t["rows_per_batch"], t["seed"])
    losses = [float(sft.sft_step(model, opt, sft.collate_packed(next(stream)))) for _ in range(t["steps"])]
    return {"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}, "losses": losses}
