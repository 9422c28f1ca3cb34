"""Lesson 18, an alternative correct implementation: other code for every function (must get full marks)."""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Callable

NAMES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "dict": "object", "list": "array"}


def type_schema(hint: object) -> dict:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint):  # Optional[T] / T | None
        inner = type_schema(args[0])
        inner["nullable"] = True
        return inner
    base = typing.get_origin(hint) or hint
    kind = NAMES[base.__name__]
    if kind == "array" and args:
        return {"type": kind, "items": type_schema(args[0])}
    return {"type": kind}


def parse_docstring(doc: str) -> tuple[str, dict[str, str], str | None]:
    text = inspect.cleandoc(doc)
    parts = re.split(r"^\s*(Args|Arguments|Returns|Return):\s*$", text, flags=re.M)
    description, sections = parts[0].strip(), dict(zip(parts[1::2], parts[2::2], strict=True))
    args: dict[str, str] = {}
    block = sections.get("Args", sections.get("Arguments", ""))
    for m in re.finditer(
        r"^\s{0,4}(\w+)(?:\s*\([^)]*\))?\s*:(.*?)(?=^\s{0,4}\w+(?:\s*\([^)]*\))?\s*:|\Z)", block, re.M | re.S
    ):
        args[m.group(1)] = " ".join(m.group(2).split())
    ret = sections.get("Returns", sections.get("Return"))
    return description, args, (" ".join(ret.split()) if ret and ret.strip() else None)


def tool_schema(fn: Callable) -> dict:
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    description, docs, returns = parse_docstring(inspect.getdoc(fn) or "")
    props = {}
    for name in sig.parameters:
        entry = type_schema(hints[name])
        desc = docs.get(name, "")
        if "(choices:" in desc:
            head, _, tail = desc.rpartition("(choices:")
            entry["enum"] = json.loads(tail.rstrip().removesuffix(")"))
            desc = head.strip()
        entry["description"] = desc
        props[name] = entry
    function = {
        "name": fn.__name__,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": props,
            "required": [n for n, p in sig.parameters.items() if p.default is p.empty],
            "additionalProperties": False,
        },
    }
    if hints.get("return", type(None)) is not type(None):
        function["return"] = type_schema(hints["return"]) | ({"description": returns} if returns else {})
    return {"type": "function", "function": function}


PYTHON = {"string": str, "number": (int, float), "boolean": bool, "object": dict, "array": list, "null": type(None)}


def _type_ok(kind: str, v: object) -> bool:
    if isinstance(v, bool):
        return kind == "boolean"
    if kind == "integer":
        return isinstance(v, int) or (isinstance(v, float) and float(v).is_integer())
    return isinstance(v, PYTHON[kind])


def _check(value: object, schema: dict, where: str, errors: list[str]) -> None:
    if "type" in schema and not _type_ok(schema["type"], value):
        errors.append(f"{where} has the wrong type")
        return
    if schema.get("enum") is not None and not any(
        value == e and isinstance(value, bool) == isinstance(e, bool) for e in schema["enum"]
    ):
        errors.append(f"{where} not allowed")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            _check(v, schema["items"], f"{where}.{i}", errors)


def validate_arguments(arguments: object, parameters: dict) -> list[str]:
    if type(arguments) is not dict:
        return ["not an object"]
    errors: list[str] = []
    props = parameters.get("properties", {})
    errors += [f"{k} is required" for k in parameters.get("required", []) if k not in arguments]
    for key, value in arguments.items():
        if key not in props:
            if parameters.get("additionalProperties", True) is False:
                errors.append(f"{key} is not allowed")
            continue
        _check(value, props[key], key, errors)
    return errors


def _convert(value: str, schema: dict | None) -> object:
    if not schema or schema.get("type") in ("string", None):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def parse_tool_calls(text: str, fmt: str, tools: list[dict] | None = None) -> dict:
    text = re.split(r"<\|im_end\|>|<\|endoftext\|>", text, maxsplit=1)[0]
    head, sep, tail = text.partition("<tool_call>")
    calls: list[dict] = []
    schemas = {t["function"]["name"]: t["function"]["parameters"]["properties"] for t in (tools or [])}
    rest = sep + tail
    while rest:
        if not rest.startswith("<tool_call>"):
            rest = rest[rest.find("<tool_call>") :] if "<tool_call>" in rest else ""
            continue
        end = rest.find("</tool_call>")
        if end < 0:
            raise ValueError("unclosed <tool_call>")
        inner, rest = rest[len("<tool_call>") : end], rest[end + len("</tool_call>") :]
        if "<tool_call>" in inner:
            raise ValueError("unclosed <tool_call>")
        if fmt == "json":
            try:
                obj = json.loads(inner.strip())
            except ValueError as exc:
                raise ValueError(f"bad JSON in tool call: {exc}") from exc
            args = obj.get("arguments", {}) if isinstance(obj, dict) else None
            if isinstance(args, str):
                args = json.loads(args)
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not isinstance(args, dict):
                raise ValueError("tool call needs a name and an object of arguments")
            calls.append({"name": obj["name"], "arguments": args})
        elif fmt == "nemotron":
            m = re.match(r"\s*<function=(\S+?)>(.*)</function>\s*$", inner, re.S)
            if m is None:
                raise ValueError("no <function=...> block")
            props = schemas.get(m.group(1), {})
            args = {}
            for pm in re.finditer(r"<parameter=(\S+?)>(.*?)</parameter>", m.group(2), re.S):
                raw = pm.group(2)
                raw = raw[1:] if raw.startswith("\n") else raw
                raw = raw[:-1] if raw.endswith("\n") else raw
                args[pm.group(1)] = _convert(raw, props.get(pm.group(1)))
            calls.append({"name": m.group(1), "arguments": args})
        else:
            raise ValueError(fmt)
    return {"content": head.strip(), "tool_calls": calls}


def summarize(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    assistants = [m.get("content") or "" for m in messages if m["role"] == "assistant"]
    return "asked: {} -> answered: {}".format(
        " ".join((users or [""])[0].split()), " ".join((assistants or [""])[-1].split())
    )


class Memory:
    def __init__(self) -> None:
        self._prefs: list[tuple[str, str]] = []
        self._log: list[str] = []

    def remember(self, key: str, value: str) -> str:
        """Store a user preference for later conversations.

        Args:
            key: The preference's name.
            value: Its value.
        """
        self._prefs = [(k, v) for k, v in self._prefs if k != key] + [(key, value)]
        return f"saved {key} = {value}"

    def end_conversation(self, messages: list[dict]) -> None:
        self._log += [summarize(messages)]

    def recall(self) -> str:
        out = ""
        if self._prefs:
            out += "Preferences:\n" + "".join(f"- {k}: {v}\n" for k, v in self._prefs)
        if self._log:
            out += "Earlier conversations:\n" + "".join(f"- {s}\n" for s in self._log)
        return out.rstrip("\n")


def _tool_message(name: str, content: str) -> dict:
    return {"role": "tool", "name": name, "content": content}


def run_agent(model, tools, messages, *, fmt="json", max_steps=6, memory=None) -> dict:
    convo = list(messages)
    if memory is not None:
        text = memory.recall()
        convo = ([{"role": "system", "content": text}] if text else []) + convo
    specs = [tool_schema(t) for t in tools.values()]
    params = dict(zip(tools, (s["function"]["parameters"] for s in specs), strict=True))
    answer = None
    used = 0
    for step in range(1, max_steps + 1):
        used = step
        raw = model(convo)
        try:
            reply = parse_tool_calls(raw, fmt, specs)
        except ValueError as err:
            convo += [{"role": "assistant", "content": raw}, _tool_message("parser", f"error: {err}")]
            continue
        convo.append(
            {
                "role": "assistant",
                "content": reply["content"],
                **({"tool_calls": reply["tool_calls"]} if reply["tool_calls"] else {}),
            }
        )
        if not reply["tool_calls"]:
            answer = reply["content"]
            break
        for c in reply["tool_calls"]:
            fn = tools.get(c["name"])
            if fn is None:
                convo.append(_tool_message(c["name"], "error: no tool named " + c["name"]))
                continue
            bad = validate_arguments(c["arguments"], params[c["name"]])
            if bad:
                convo.append(_tool_message(c["name"], "error: " + ", ".join(bad)))
                continue
            try:
                out = fn(**c["arguments"])
            except Exception as err:
                convo.append(_tool_message(c["name"], f"error: {err.__class__.__name__}: {err}"))
            else:
                convo.append(_tool_message(c["name"], f"{out}"))
    if memory is not None:
        memory.end_conversation(convo)
    return {"answer": answer, "steps": used, "messages": convo}


def judge_pair(judge, question, answer_a, answer_b) -> dict:
    def verdict(first: str, second: str, order: tuple[str, str]) -> str:
        said = judge(question, first, second).strip()
        return "tie" if said == "tie" else order[int(said) - 1]

    one = verdict(answer_a, answer_b, ("A", "B"))
    two = verdict(answer_b, answer_a, ("B", "A"))
    same = one == two
    return {"winner": one if same else "tie", "agree": same, "verdicts": [one, two]}


def judge_report(judge, items) -> dict:
    results = []
    wins = dict.fromkeys(("A", "B", "tie"), 0)
    for q, a, b in items:
        r = judge_pair(judge, q, a, b)
        wins[r["winner"]] += 1
        results.append(r)
    agreed = [r for r in results if r["agree"]]
    return {"results": results, "agreement": float(len(agreed)) / max(1, len(results)), "wins": wins}
