"""Lesson 18, provided: a scripted environment for agents, a scripted judge, run helpers.

Nothing to implement here. This file is given to you complete (it is graded with the course's copy,
never yours), so that lesson 18 is about the agent: your schemas, validator, parser, loop, memory and
judge wrapper in ``agents.py`` run against these pieces.

- ``Environment``: a few tools (``add``, ``lookup``, ``convert``) that record every call they receive,
  so a test can check that no tool was ever called with invalid arguments.
- ``ScriptedModel``: a stand-in model that plays a script of completions (tool calls in the Nemotron
  or the JSON format, malformed calls, final answers). It *reacts* to the conversation: after a tool
  message that starts with ``error`` it plays the step's ``recover`` completion; a final answer's
  ``{last}`` is filled with the last tool message's content; it raises when its script runs out.
- ``RecallModel``: answers a question from the memory it finds in a system message, or "unknown".
- ``BiasedJudge``: a judge with a known position bias (it prefers the first answer unless the second
  is clearly better).
- ``run_*``: what the graders call in the sandbox (the visible tests and the lab use them too).
"""

from __future__ import annotations

import functools
import importlib
import json

CITIES = {
    "oslo": {"population": "709000", "country": "Norway"},
    "lyon": {"population": "522000", "country": "France"},
    "kyoto": {"population": "1460000", "country": "Japan"},
}


def _agents():
    """The student's agents.py: beside this file (the sandbox, a lab) or in the same package (the visible tests)."""
    if __package__:
        return importlib.import_module(f"{__package__}.agents")
    return importlib.import_module("agents")


# ---------------------------------------------------------------------------- the environment's tools
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


def lookup(city: str, field: str = "population") -> str:
    """Look up a fact about a city.

    Args:
        city: The city's name, lower case.
        field: Which fact (choices: ["population", "country"])
    """
    return CITIES[city][field]


def convert(value: float, unit: str) -> float:
    """Convert a temperature.

    Args:
        value: The temperature.
        unit: The conversion (choices: ["c_to_f", "f_to_c"])
    """
    return round(value * 9 / 5 + 32, 2) if unit == "c_to_f" else round((value - 32) * 5 / 9, 2)


TOOLS = {"add": add, "lookup": lookup, "convert": convert}


class Environment:
    """The tools, each wrapped so that every call (name, arguments) is recorded in ``calls``."""

    def __init__(self, names: list[str] | None = None, extra: dict | None = None) -> None:
        self.calls: list[list] = []
        self.tools = {
            n: self._wrap(n, fn) for n, fn in {**{k: TOOLS[k] for k in names or TOOLS}, **(extra or {})}.items()
        }

    def _wrap(self, name: str, fn):
        @functools.wraps(fn)
        def tool(*args, **kwargs):
            self.calls.append([name, dict(kwargs) if not args else {"__positional__": list(args), **kwargs}])
            return fn(*args, **kwargs)

        return tool


# ---------------------------------------------------------------------------- scripted models
def render_call(name: str, arguments: dict, fmt: str) -> str:
    """One tool call as the model writes it, in ``fmt`` ("nemotron" or "json")."""
    if fmt == "json":
        return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"
    params = "".join(f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v)}\n</parameter>\n"
                     for k, v in arguments.items())  # fmt: skip
    return f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"


class ScriptedModel:
    """Plays ``script``: a list of steps, each ``{"say": text, "call": [name, arguments]}`` (a tool call,
    with optional text before it), ``{"raw": text}`` (written as is: a malformed call), or
    ``{"answer": text}`` (a final answer; ``{last}`` becomes the last tool message's content). A step may
    carry ``"recover": <step>``: played once if the next model call sees a tool message starting with
    ``error``. Each completion ends with ``<|im_end|>``. ``seen`` records the last message of each call."""

    def __init__(self, script: list[dict], fmt: str = "json") -> None:
        self.script, self.fmt, self.pointer, self.seen, self.pending = script, fmt, 0, [], None

    def render(self, step: dict, messages: list[dict]) -> str:
        if "raw" in step:
            return step["raw"] + "<|im_end|>"
        if "answer" in step:
            last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "tool"), "")
            return step["answer"].replace("{last}", str(last)) + "<|im_end|>"
        say = step.get("say", "")
        return (say + "\n" if say else "") + render_call(step["call"][0], step["call"][1], self.fmt) + "<|im_end|>"

    def __call__(self, messages: list[dict]) -> str:
        last = messages[-1] if messages else {}
        self.seen.append({"role": last.get("role"), "content": str(last.get("content", ""))})
        errored = last.get("role") == "tool" and str(last.get("content", "")).startswith("error")
        if self.pending is not None and errored:
            step, self.pending = self.pending, None
            return self.render(step, messages)
        self.pending = None
        if self.pointer >= len(self.script):
            raise RuntimeError(f"ScriptedModel: the script has only {len(self.script)} steps (the loop went on)")
        step = self.script[self.pointer]
        self.pointer += 1
        self.pending = step.get("recover")
        return self.render(step, messages)


class RecallModel:
    """Answers "what is my <key>?" with the value found as ``- key: value`` in a system message, else "unknown"."""

    def __init__(self, key: str) -> None:
        self.key, self.system = key, []

    def __call__(self, messages: list[dict]) -> str:
        system = "\n".join(m["content"] for m in messages if m.get("role") == "system")
        self.system.append(system)
        for line in system.splitlines():
            if line.startswith(f"- {self.key}: "):
                return f"Your {self.key} is {line[len(self.key) + 4 :].strip()}.<|im_end|>"
        return "unknown<|im_end|>"


class BiasedJudge:
    """Knows each answer's quality (``scores``); prefers the answer shown first unless the second is better by
    at least ``margin`` (then "2"); "tie" when both are equal. Records every call in ``calls``."""

    def __init__(self, scores: dict[str, float], margin: float) -> None:
        self.scores, self.margin, self.calls = scores, margin, []

    def __call__(self, question: str, first: str, second: str) -> str:
        self.calls.append([question, first, second])
        s1, s2 = self.scores[first], self.scores[second]
        if s1 == s2:
            return "tie"
        return "2" if s2 - s1 >= self.margin else "1"


# ---------------------------------------------------------------------------- run helpers
def run_schema(source: str, name: str) -> dict:
    """``agents.tool_schema`` of the function ``name`` defined by ``source``."""
    namespace: dict = {}
    exec(compile(source, f"<tool {name}>", "exec"), namespace)
    return _agents().tool_schema(namespace[name])


def run_task(task: dict) -> dict:
    """``agents.run_agent`` on one scripted task: ``{"script", "fmt", "max_steps", "question", "tools"?}``.

    Returns the answer, the steps, the model calls made, the tool calls the environment received, the
    last message the model saw at each call, and the roles of the final messages."""
    env = Environment(task.get("tools"))
    model = ScriptedModel(task["script"], task["fmt"])
    out = _agents().run_agent(model, env.tools, [{"role": "user", "content": task["question"]}],
                              fmt=task["fmt"], max_steps=task["max_steps"])  # fmt: skip
    return {"answer": out["answer"], "steps": out["steps"], "model_calls": len(model.seen), "calls": env.calls,
            "seen": model.seen, "roles": [m["role"] for m in out["messages"]]}  # fmt: skip


def run_memory(task: dict) -> dict:
    """Two conversations sharing one ``agents.Memory``: the first stores a preference through the ``remember``
    tool (a scripted model, ``task["script"]``), the second asks ``task["question2"]`` of a ``RecallModel``.
    Returns both answers, what the second model found in its system messages, and the memory's recall()."""
    agents = _agents()
    memory = agents.Memory()
    env = Environment(task.get("tools", []), extra={"remember": memory.remember})
    model = ScriptedModel(task["script"], task["fmt"])
    first = agents.run_agent(model, env.tools, [{"role": "user", "content": task["question1"]}],
                             fmt=task["fmt"], max_steps=task["max_steps"], memory=memory)  # fmt: skip
    recall = RecallModel(task["key"])
    second = agents.run_agent(recall, env.tools, [{"role": "user", "content": task["question2"]}],
                              fmt=task["fmt"], max_steps=2, memory=memory)  # fmt: skip
    return {"first": first["answer"], "second": second["answer"], "system": recall.system[0] if recall.system else "",
            "recall": memory.recall(), "calls": env.calls}  # fmt: skip


def run_judge(items: list[list[str]], scores: dict[str, float], margin: float) -> dict:
    """``agents.judge_report`` with a ``BiasedJudge(scores, margin)``; the judge's calls added as ``calls``."""
    judge = BiasedJudge(scores, margin)
    out = _agents().judge_report(judge, [tuple(i) for i in items])
    return {**out, "calls": judge.calls}
