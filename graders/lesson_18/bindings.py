"""The typed binding between lesson 18's hidden tests and the student's ``agents.py``.

Hidden tests call these methods and never import student code. Validation, parsing and the judge's
bookkeeping take plain data and are called directly; schemas, the loop, memory and the judge need
functions and models, which cannot cross the boundary, so they go through the run helpers of the
provided ``agentkit.py`` (graded with the course's copy, never the student's): it builds the tools,
the scripted model and the scripted judge in the sandboxed worker and calls the student's code there.
Every reply is checked here for exact type before a test sees it.
"""

from __future__ import annotations

from graders.engine import expect
from graders.engine.binding import Binding

MODULE = "agents"
HARNESS = "agentkit"


def _dict(value: object, what: str) -> dict:
    assert type(value) is dict, f"{what} must return a dict, got {type(value).__name__} {expect.shorten(value, 80)}"
    return value


class Lesson18(Binding):
    MODULE = MODULE
    threads = 1  # no tensors

    def schema(self, source: str, name: str) -> dict:
        """``tool_schema`` of the function ``name`` that ``source`` defines -> the schema dict."""
        return _dict(self.call("run_schema", (source, name), module=HARNESS), "tool_schema")

    def validate(self, arguments: object, parameters: dict) -> list[str]:
        """``validate_arguments(arguments, parameters)`` -> a list of str (empty: valid)."""
        out = self.call("validate_arguments", (arguments, parameters))
        assert type(out) is list and all(type(e) is str for e in out), (
            f"validate_arguments must return a list of str, got {expect.shorten(out, 80)}"
        )
        return out

    def parse(self, text: str, fmt: str, tools: list[dict] | None) -> dict:
        """``parse_tool_calls(text, fmt, tools)`` -> {"content": str, "tool_calls": [{"name", "arguments"}]}."""
        out = _dict(self.call("parse_tool_calls", (text, fmt, tools)), "parse_tool_calls")
        assert set(out) == {"content", "tool_calls"}, (
            f"parse_tool_calls must return the keys content and tool_calls, got {sorted(out)}"
        )
        assert type(out["content"]) is str, "parse_tool_calls: content must be a str"
        assert type(out["tool_calls"]) is list, "parse_tool_calls: tool_calls must be a list"
        for call in out["tool_calls"]:
            assert type(call) is dict and type(call.get("name")) is str and type(call.get("arguments")) is dict, (
                f"each tool call must be {{'name': str, 'arguments': dict}}, got {expect.shorten(call, 80)}"
            )
        return out

    def parse_error(self, text: str, fmt: str, tools: list[dict] | None) -> str | None:
        """The exception ``parse_tool_calls`` raised (its type name first), or None if it returned."""
        from graders.engine.sandbox import StudentError

        try:
            self.call("parse_tool_calls", (text, fmt, tools))
        except StudentError as exc:
            return str(exc)
        return None

    def task(self, task: dict) -> dict:
        """``agentkit.run_task(task)``: the loop on one scripted task."""
        out = _dict(self.call("run_task", (task,), module=HARNESS, timeout=60), "run_task")
        assert out["answer"] is None or type(out["answer"]) is str, "run_agent's answer must be a str or None"
        assert type(out["steps"]) is int, "run_agent's steps must be an int"
        return out

    def memory(self, task: dict) -> dict:
        """``agentkit.run_memory(task)``: two conversations sharing one Memory."""
        out = _dict(self.call("run_memory", (task,), module=HARNESS, timeout=60), "run_memory")
        assert type(out["recall"]) is str, "Memory.recall must return a str"
        return out

    def judge(self, items: list[list[str]], scores: dict[str, float], margin: float) -> dict:
        """``agentkit.run_judge``: ``judge_report`` with the scripted biased judge."""
        out = _dict(self.call("run_judge", (items, scores, margin), module=HARNESS), "judge_report")
        assert type(out.get("results")) is list and len(out["results"]) == len(items), (
            "judge_report: one result per item"
        )
        for r in out["results"]:
            assert type(r) is dict and r.get("winner") in ("A", "B", "tie") and type(r.get("agree")) is bool, (
                f"judge_pair must return {{'winner': 'A'|'B'|'tie', 'agree': bool, ...}}, got {expect.shorten(r, 80)}"
            )
        assert type(out.get("agreement")) is float, "judge_report's agreement must be a float"
        return out
