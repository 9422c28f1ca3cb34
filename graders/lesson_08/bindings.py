"""The typed binding between lesson 08's hidden tests and the student's ``decoding.py``.

Hidden tests call these methods and never import student code: each call goes to the sandboxed
worker, and each reply is checked here for type, shape and dtype before a test sees it. The tiny
model and tokenizer are built in the worker by the provided ``tiny_lm.py`` / ``tiny_tok.py``
(the course's copies, never the student's); the model gets the grader's weights. The docstrings
are the contract.
"""

from __future__ import annotations

import torch

from graders.engine import expect
from graders.engine.binding import Binding
from graders.engine.remote import Remote

MODULE = "decoding"
PROCESSORS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "no_repeat_ngram")
CONFIG_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "no_repeat_ngram_size")


class Lesson08(Binding):
    MODULE = MODULE
    threads = 1  # tiny tensors and a tiny model: one thread is fastest on a busy machine

    def process(self, name: str, input_ids: torch.Tensor | None, scores: torch.Tensor, value: float) -> torch.Tensor:
        """``name(input_ids, scores, value)`` for one of the six processors -> (B, V) in scores' dtype."""
        assert name in PROCESSORS, name
        return self.tensor(name, (input_ids, scores, value), what=f"{name}(...)", shape=scores.shape, dtype=scores.dtype)

    def seed_worker(self, seed: int) -> None:
        """Put the worker's global torch RNG in the state ``torch.manual_seed(seed)`` gives."""
        self.call("set_rng_state", (torch.Generator().manual_seed(seed).get_state(),), module="torch")

    def config(self, settings: dict) -> Remote:
        """``SamplingConfig(**settings)`` in the worker."""
        assert set(settings) <= set(CONFIG_FIELDS), f"unknown settings {set(settings) - set(CONFIG_FIELDS)}"
        return self.new("SamplingConfig", **settings)

    def sample_next(self, input_ids: torch.Tensor, scores: torch.Tensor, settings: dict, seed: int) -> torch.Tensor:
        """The worker's RNG seeded with ``seed``, then ``sample_next(input_ids, scores, config)`` -> (B, 1) int64."""
        cfg = self.config(settings)
        self.seed_worker(seed)
        return self.tensor("sample_next", (input_ids, scores, cfg.ref()), what="sample_next(...)",
                           shape=(scores.shape[0], 1), dtype=torch.long)  # fmt: skip

    def model(self, config: dict, state_dict: dict[str, torch.Tensor]) -> Remote:
        """``tiny_lm.tiny_llama(config)`` in the worker with the grader's weights loaded strictly."""
        model = self.new("tiny_llama", config, module="tiny_lm")
        model.load_state_dict(state_dict)
        return model

    def tokenizer(self) -> Remote:
        """``tiny_tok.make_tokenizer()`` in the worker."""
        return self.new("make_tokenizer", module="tiny_tok")

    def generate(
        self, model: Remote, input_ids: torch.Tensor, max_new_tokens: int, settings: dict | None, *, seed: int,
        stop_strings: list[str] | None = None, tokenizer: Remote | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """``generate(model, input_ids, max_new_tokens, config, seed=seed, ...)`` -> (B, T + n) int64, n <= max_new_tokens."""
        cfg = self.config(settings).ref() if settings is not None else None
        kwargs = {"seed": seed, "stop_strings": stop_strings, "tokenizer": tokenizer.ref() if tokenizer else None}
        out = self.call("generate", (model.ref(), input_ids, max_new_tokens, cfg), kwargs, timeout=120)
        out = expect.tensor(out, "generate(...)", dtype=torch.long)
        b, t = input_ids.shape
        assert out.dim() == 2 and out.shape[0] == b and t <= out.shape[1] <= t + max_new_tokens, (
            f"generate(...) has shape {tuple(out.shape)}, expected ({b}, {t} .. {t + max_new_tokens})"
        )
        return out

    def hits(self, cases: list[tuple[str, int, list[str]]]) -> list[bool]:
        """``hits_stop_string(text, last_start, stop_strings)`` for each case -> bools."""
        out = []
        for text, start, stops in cases:
            value = self.call("hits_stop_string", (text, start, stops))
            assert type(value) is bool, f"hits_stop_string must return a bool, got {type(value).__name__}"
            out.append(value)
        return out
