"""The typed binding between lesson 11's hidden tests and the student's ``prompting.py``.

Hidden tests call these methods and never import student code. Renderers and the scorer take plain
data and are called directly; the few-shot builder, the haystack and the sweep need a token counter,
a tokenizer and a model, which cannot cross the boundary, so they go through the run helpers of the
provided ``promptkit.py`` (graded with the course's copy, never the student's): it builds the course
tokenizer and the ``ScriptedModel`` in the sandboxed worker and calls the student's functions there.
Every reply is checked here for exact type and shape before a test sees it.
"""

from __future__ import annotations

from graders.engine import expect
from graders.engine.binding import Binding

MODULE = "prompting"
HARNESS = "promptkit"
RENDER_KWARGS = {"add_generation_prompt", "enable_thinking", "truncate_history_thinking"}


def _str(value: object, what: str) -> str:
    assert type(value) is str, f"{what} must return a str, got {type(value).__name__} {expect.shorten(value, 80)}"
    return value


class Lesson11(Binding):
    MODULE = MODULE
    threads = 1  # no tensors: one thread is plenty

    def chatml(self, messages: list[dict], **kwargs: bool) -> str:
        """``render_chatml(messages, **kwargs)`` (add_generation_prompt, enable_thinking) -> the string."""
        assert set(kwargs) <= RENDER_KWARGS - {"truncate_history_thinking"}
        return _str(self.call("render_chatml", (messages,), kwargs), "render_chatml")

    def nemotron(self, messages: list[dict], tools: list[dict] | None = None, **kwargs: bool) -> str:
        """``render_nemotron(messages, tools, **kwargs)`` -> the string; only the keyword arguments given are passed."""
        assert set(kwargs) <= RENDER_KWARGS
        return _str(self.call("render_nemotron", (messages, tools), kwargs), "render_nemotron")

    def few_shot(
        self, instruction: str, examples: list[tuple[str, str]], query: str, budget: int, *, separator: str | None = None,
        counter: str = "bpe",
    ) -> tuple[str, int]:  # fmt: skip
        """``build_few_shot_prompt`` with the counter ``counter`` ("bpe", "words", "chars") -> (prompt, k)."""
        out = self.call("run_few_shot", (instruction, [list(e) for e in examples], query, budget, separator, counter),
                        module=HARNESS)  # fmt: skip
        prompt, k = expect.pair(out, "build_few_shot_prompt")
        prompt = _str(prompt, "build_few_shot_prompt's prompt")
        assert type(k) is int, f"build_few_shot_prompt must return (prompt, number of examples kept as an int), got {type(k).__name__}"
        assert 0 <= k <= len(examples), f"build_few_shot_prompt says it kept {k} of {len(examples)} examples"
        return prompt, k

    def few_shot_error(self, instruction: str, examples: list[tuple[str, str]], query: str, budget: int) -> str | None:
        """The exception type name ``build_few_shot_prompt`` raised, or None if it returned."""
        from graders.engine.sandbox import StudentError

        try:
            self.call("run_few_shot", (instruction, [list(e) for e in examples], query, budget, None, "bpe"), module=HARNESS)
        except StudentError as exc:
            return str(exc)
        return None

    def haystack(self, filler: str, needle: str, context_tokens: int, depth: float) -> str:
        """``build_haystack(course_tokenizer(), filler, needle, context_tokens, depth)`` -> the context."""
        out = self.call("run_haystack", (filler, needle, context_tokens, depth), module=HARNESS)
        return _str(out, "build_haystack")

    def score(self, answer: str, expected: str) -> bool:
        """``score_answer(answer, expected)`` -> a bool."""
        out = self.call("score_answer", (answer, expected))
        assert type(out) is bool, f"score_answer must return a bool, got {type(out).__name__} {expect.shorten(out, 80)}"
        return out

    def sweep(
        self, filler: str, facts: list[tuple[str, str, str]], depths: list[float], lengths: list[int], blind_spots: list,
    ) -> tuple[list[list[float]], list[dict]]:  # fmt: skip
        """``needle_sweep`` against ``promptkit.ScriptedModel(facts, blind_spots)`` -> (grid, the model's call log)."""
        out = self.call("run_sweep", (filler, [list(f) for f in facts], depths, lengths, [list(b) for b in blind_spots]),
                        module=HARNESS, timeout=120)  # fmt: skip
        assert type(out) is dict and set(out) == {"grid", "calls"}, "run_sweep reply malformed"
        grid = out["grid"]
        shape = f"{len(lengths)} rows (lengths) of {len(depths)} columns (depths)"
        assert type(grid) is list and len(grid) == len(lengths), f"needle_sweep must return {shape}, got {expect.shorten(grid, 120)}"
        for row in grid:
            assert type(row) is list and len(row) == len(depths), f"needle_sweep must return {shape}, got {expect.shorten(grid, 120)}"
            for v in row:
                assert type(v) in (float, int) and not isinstance(v, bool), f"grid values must be floats, got {type(v).__name__}"
        return [[float(v) for v in row] for row in grid], out["calls"]
