"""Lesson 18: agents. Tool schemas, argument validation, tool-call parsing, a ReAct loop, memory, a judge.

Write each function where it says ``raise NotImplementedError``. The specification is in
lessons/lesson_18.md; the visible tests are in test_agents.py. Only the standard library is needed
(``inspect``, ``typing``, ``re``, ``json``): do not import transformers, trl or jsonschema here, they are
what the graders compare you with.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable

# ---------------------------------------------------------------------------- 1. tool schemas
_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


def type_schema(hint: object) -> dict:
    """The JSON schema of one type hint: ``str`` -> ``{"type": "string"}``; ``int`` -> integer, ``float`` ->
    number, ``bool`` -> boolean, ``dict`` -> object, ``list[T]`` -> ``{"type": "array", "items": <T>}``,
    ``T | None`` -> T's schema plus ``"nullable": True``."""
    # BEGIN SOLUTION
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"only T | None unions are supported, got {hint}")
        return {**type_schema(args[0]), "nullable": True}
    if origin is list:
        (item,) = typing.get_args(hint)
        return {"type": "array", "items": type_schema(item)}
    if origin is dict:
        return {"type": "object"}
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    raise TypeError(f"unsupported type hint {hint!r}")
    # END SOLUTION


def parse_docstring(doc: str) -> tuple[str, dict[str, str], str | None]:
    """A Google-style docstring -> (description, {argument: description}, returns description or None).

    The description is the text before ``Args:`` (stripped; its line breaks kept). Each argument's
    description is its lines after ``name:`` joined with single spaces. ``Returns:`` is joined the same way."""
    # BEGIN SOLUTION
    lines = inspect.cleandoc(doc).splitlines()
    section, desc, args, returns, current = "desc", [], {}, [], None
    for line in lines:
        head = line.strip()
        if head in ("Args:", "Arguments:"):
            section = "args"
            continue
        if head in ("Returns:", "Return:"):
            section = "returns"
            continue
        if section == "desc":
            desc.append(line)
        elif section == "args":
            m = re.match(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if m and (len(line) - len(line.lstrip())) <= 4:
                current = m.group(1)
                args[current] = [m.group(2).strip()]
            elif head and current:
                args[current].append(head)
        elif head:
            returns.append(head)
    joined = {k: " ".join(p for p in v if p) for k, v in args.items()}
    return "\n".join(desc).strip(), joined, (" ".join(returns) if returns else None)
    # END SOLUTION


def tool_schema(fn: Callable) -> dict:
    """The function-calling schema of ``fn``: what ``transformers.utils.get_json_schema(fn)`` returns, with
    ``"additionalProperties": False`` added to ``parameters`` (so extra arguments fail validation).

    ``{"type": "function", "function": {"name", "description", "parameters": {"type": "object",
    "properties": {...}, "required": [...], "additionalProperties": False}, "return": {...}}}``.
    Each property is ``type_schema(hint)``, then ``"enum": [...]`` when its description ends with
    ``(choices: [...])`` (a JSON list, removed from the description), then ``"description"``. Arguments
    with a default are not required. ``return`` (only when there is a return hint) is the return type's
    schema plus the ``Returns:`` description when there is one."""
    # BEGIN SOLUTION
    hints = typing.get_type_hints(fn)
    desc, arg_docs, returns = parse_docstring(fn.__doc__ or "")
    properties, required = {}, []
    for name, param in inspect.signature(fn).parameters.items():
        prop = type_schema(hints[name])
        text = arg_docs.get(name, "")
        m = re.search(r"\(choices:\s*(.*?)\)\s*$", text)
        if m:
            prop["enum"] = json.loads(m.group(1))
            text = text[: m.start()].strip()
        prop["description"] = text
        properties[name] = prop
        if param.default is inspect.Parameter.empty:
            required.append(name)
    parameters = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    out = {"name": fn.__name__, "description": desc, "parameters": parameters}
    if "return" in hints and hints["return"] is not type(None):
        out["return"] = type_schema(hints["return"])
        if returns:
            out["return"]["description"] = returns
    return {"type": "function", "function": out}
    # END SOLUTION


# ---------------------------------------------------------------------------- 2. validation
_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def _check(value: object, schema: dict, where: str, errors: list[str]) -> None:
    # BEGIN SOLUTION
    kind = schema.get("type")
    if kind is not None and not _CHECKS[kind](value):
        errors.append(f"{where}: {value!r} is not of type {kind!r}")
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if kind == "array" and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]", errors)
    # END SOLUTION


def validate_arguments(arguments: object, parameters: dict) -> list[str]:
    """Check ``arguments`` against a tool's ``parameters`` schema, as ``jsonschema.validate`` does: the
    arguments are an object, every ``required`` key is present, no key outside ``properties`` when
    ``additionalProperties`` is False, each value has its property's ``type`` (JSON Schema's types: an
    integer is an int or a float with no fraction such as 2.0, never a bool; a number is an int or a float,
    never a bool), is in its ``enum``, and an array's items match ``items``.

    Returns the list of problems found, one readable line each; empty when the arguments are valid."""
    # BEGIN SOLUTION
    if not isinstance(arguments, dict):
        return [f"arguments must be an object, got {type(arguments).__name__}"]
    errors = [f"missing required argument {k!r}" for k in parameters.get("required", []) if k not in arguments]
    props = parameters.get("properties", {})
    if parameters.get("additionalProperties") is False:
        errors += [f"unexpected argument {k!r}" for k in arguments if k not in props]
    for key, value in arguments.items():
        if key in props:
            _check(value, props[key], key, errors)
    return errors
    # END SOLUTION


# ---------------------------------------------------------------------------- 3. parsing tool calls
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_END_MARKERS = ("<|im_end|>", "<|endoftext|>")


def _convert(value: str, schema: dict | None) -> object:
    """A Nemotron parameter's text as its schema's type (strings stay as written)."""
    # BEGIN SOLUTION
    if schema is None or schema.get("type") == "string":
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
    # END SOLUTION


def parse_tool_calls(text: str, fmt: str, tools: list[dict] | None = None) -> dict:
    """One assistant completion -> ``{"content": str, "tool_calls": [{"name": str, "arguments": dict}, ...]}``.

    ``text`` is what the model wrote after the generation prompt (reasoning already removed); an end
    marker (``<|im_end|>``) and everything after it is dropped. ``content`` is the text before the first
    ``<tool_call>``, stripped. ``fmt``:

    - ``"nemotron"``: ``<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>...</function>\\n</tool_call>``;
      VALUE is the text between the newline after ``<parameter=KEY>`` and the newline before ``</parameter>``,
      converted with ``tools`` (the schemas of the tools offered): a value whose property is not a string is
      read as JSON (``"2"`` -> 2) when it parses; without a schema the value stays a string.
    - ``"json"``: ``<tool_call>\\n{"name": NAME, "arguments": {...}}\\n</tool_call>`` (Qwen3/Hermes).

    A ``<tool_call>`` block that cannot be read (bad JSON, no name, no closing tag, arguments not an
    object) raises ``ValueError`` whose message says what is wrong."""
    # BEGIN SOLUTION
    for marker in _END_MARKERS:
        text = text.split(marker)[0]
    if fmt not in ("nemotron", "json"):
        raise ValueError(f"unknown format {fmt!r}")
    start = text.find("<tool_call>")
    content = (text if start < 0 else text[:start]).strip()
    if start < 0:
        return {"content": content, "tool_calls": []}
    rest = text[start:]
    if rest.count("<tool_call>") != rest.count("</tool_call>"):
        raise ValueError("a <tool_call> without its </tool_call>")
    props = {t["function"]["name"]: t["function"]["parameters"].get("properties", {}) for t in tools or []}
    calls = []
    for block in _CALL.findall(rest):
        if fmt == "json":
            try:
                data = json.loads(block)
            except json.JSONDecodeError as exc:
                raise ValueError(f"tool call is not valid JSON: {exc}") from None
            if not isinstance(data, dict) or not isinstance(data.get("name"), str):
                raise ValueError("tool call has no name")
            arguments = data.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    raise ValueError("tool call arguments are not a JSON object") from None
            if not isinstance(arguments, dict):
                raise ValueError("tool call arguments are not a JSON object")
            calls.append({"name": data["name"], "arguments": arguments})
        else:
            m = re.search(r"<function=([^>\s]+)>(.*?)</function>", block, re.S)
            if not m:
                raise ValueError("tool call has no <function=NAME>...</function>")
            name, body = m.group(1), m.group(2)
            schema = props.get(name, {})
            arguments = {}
            for key, value in re.findall(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", body, re.S):
                arguments[key] = _convert(value, schema.get(key))
            calls.append({"name": name, "arguments": arguments})
    return {"content": content, "tool_calls": calls}
    # END SOLUTION


# ---------------------------------------------------------------------------- 4. memory
def summarize(messages: list[dict]) -> str:
    """One line for a finished conversation: ``"asked: <first user message> -> answered: <last assistant
    content>"`` (each with its whitespace collapsed)."""
    # BEGIN SOLUTION
    first = next((m["content"] for m in messages if m["role"] == "user"), "")
    last = next((m.get("content") or "" for m in reversed(messages) if m["role"] == "assistant"), "")
    return f"asked: {' '.join(first.split())} -> answered: {' '.join(last.split())}"
    # END SOLUTION


class Memory:
    """What an agent keeps between conversations: preferences (key -> value) and one summary per conversation."""

    def __init__(self) -> None:
        self.preferences: dict[str, str] = {}
        self.summaries: list[str] = []

    def remember(self, key: str, value: str) -> str:
        """Store a user preference for later conversations.

        Args:
            key: The preference's name, e.g. unit.
            value: Its value, e.g. celsius.
        """
        # BEGIN SOLUTION
        self.preferences[key] = value
        return f"saved {key} = {value}"
        # END SOLUTION

    def end_conversation(self, messages: list[dict]) -> None:
        """Keep ``summarize(messages)``."""
        # BEGIN SOLUTION
        self.summaries.append(summarize(messages))
        # END SOLUTION

    def recall(self) -> str:
        """The system message text for a new conversation: a line ``"Preferences:"`` then ``"- key: value"``
        per preference, a line ``"Earlier conversations:"`` then ``"- summary"`` per summary (a section only
        when it has entries); ``""`` when there is nothing to recall."""
        # BEGIN SOLUTION
        lines = []
        if self.preferences:
            lines += ["Preferences:", *(f"- {k}: {v}" for k, v in self.preferences.items())]
        if self.summaries:
            lines += ["Earlier conversations:", *(f"- {s}" for s in self.summaries)]
        return "\n".join(lines)
        # END SOLUTION


# ---------------------------------------------------------------------------- 5. the agent loop
def run_agent(
    model: Callable[[list[dict]], str], tools: dict[str, Callable], messages: list[dict], *, fmt: str = "json",
    max_steps: int = 6, memory: Memory | None = None,
) -> dict:  # fmt: skip
    """A ReAct loop: call ``model(messages)`` (it returns one raw completion), parse it with
    ``parse_tool_calls(text, fmt, schemas)`` and append ``{"role": "assistant", "content": ...,
    "tool_calls": [...]}`` (``tool_calls`` only when there are some). No tool call: that content is the
    answer, stop. Otherwise run each call and append ``{"role": "tool", "name": NAME, "content": RESULT}``:

    - an unknown tool, or arguments with problems (``validate_arguments`` against that tool's
      ``tool_schema``): the tool is NOT called; RESULT is ``"error: "`` + what is wrong;
    - the tool raises: RESULT is ``"error: "`` + the exception's type and message;
    - otherwise RESULT is ``str(result)``.

    A completion that ``parse_tool_calls`` rejects is appended as assistant content, followed by
    ``{"role": "tool", "name": "parser", "content": "error: " + the message}``. Each model call is one
    step; at most ``max_steps`` of them. With ``memory``: ``memory.recall()`` (when not empty) goes first as
    a system message, and its ``end_conversation`` hook gets the whole conversation at the end.

    Returns ``{"answer": str | None (None when the budget ran out), "steps": int, "messages": [...]}``
    (the messages as sent to the model, including the memory's system message)."""
    # BEGIN SOLUTION
    schemas = {name: tool_schema(fn) for name, fn in tools.items()}
    listed = list(schemas.values())
    messages = [dict(m) for m in messages]
    if memory is not None and (recalled := memory.recall()):
        messages.insert(0, {"role": "system", "content": recalled})
    answer, steps = None, 0
    while steps < max_steps:
        steps += 1
        text = model(messages)
        try:
            parsed = parse_tool_calls(text, fmt, listed)
        except ValueError as exc:
            messages.append({"role": "assistant", "content": text})
            messages.append({"role": "tool", "name": "parser", "content": f"error: {exc}"})
            continue
        turn = {"role": "assistant", "content": parsed["content"]}
        if parsed["tool_calls"]:
            turn["tool_calls"] = parsed["tool_calls"]
        messages.append(turn)
        if not parsed["tool_calls"]:
            answer = parsed["content"]
            break
        for call in parsed["tool_calls"]:
            name, args = call["name"], call["arguments"]
            if name not in tools:
                result = f"error: unknown tool {name!r}; the tools are {', '.join(tools)}"
            elif problems := validate_arguments(args, schemas[name]["function"]["parameters"]):
                result = "error: invalid arguments: " + "; ".join(problems)
            else:
                try:
                    result = str(tools[name](**args))
                except Exception as exc:
                    result = f"error: {type(exc).__name__}: {exc}"
            messages.append({"role": "tool", "name": name, "content": result})
    if memory is not None:
        memory.end_conversation(messages)
    return {"answer": answer, "steps": steps, "messages": messages}
    # END SOLUTION


# ---------------------------------------------------------------------------- 6. the judge
_FIRST = {"1": "A", "2": "B", "tie": "tie"}
_SECOND = {"1": "B", "2": "A", "tie": "tie"}


def judge_pair(judge: Callable[[str, str, str], str], question: str, answer_a: str, answer_b: str) -> dict:
    """Ask ``judge(question, first, second)`` (it returns ``"1"``, ``"2"`` or ``"tie"``) twice: A first,
    then B first. Map both verdicts to ``"A"``/``"B"``/``"tie"``. They agree: that is the winner;
    they disagree: the winner is ``"tie"`` (position bias, not preference).

    Returns ``{"winner": "A"|"B"|"tie", "agree": bool, "verdicts": [first call's, second call's]}``."""
    # BEGIN SOLUTION
    v1 = _FIRST[judge(question, answer_a, answer_b).strip()]
    v2 = _SECOND[judge(question, answer_b, answer_a).strip()]
    return {"winner": v1 if v1 == v2 else "tie", "agree": v1 == v2, "verdicts": [v1, v2]}
    # END SOLUTION


def judge_report(judge: Callable[[str, str, str], str], items: list[tuple[str, str, str]]) -> dict:
    """``judge_pair`` on each (question, answer_a, answer_b) -> ``{"results": [...], "agreement": the
    fraction of pairs whose two verdicts agree, "wins": {"A": n, "B": n, "tie": n}}``."""
    # BEGIN SOLUTION
    results = [judge_pair(judge, q, a, b) for q, a, b in items]
    wins = {k: sum(r["winner"] == k for r in results) for k in ("A", "B", "tie")}
    agreement = sum(r["agree"] for r in results) / len(results) if results else 0.0
    return {"results": results, "agreement": agreement, "wins": wins}
    # END SOLUTION
