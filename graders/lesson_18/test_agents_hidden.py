"""Hidden graders for lesson 18. They run in the grader's process; student code only in the worker.

References: ``transformers.utils.get_json_schema`` (transformers 5.23) for the schemas, with
``additionalProperties: False`` added; ``jsonschema.validate`` (4.26) for the validator and for every
tool call the environment received; trl's response parsing (``trl.chat_template_utils.add_response_schema``
then ``tokenizer.parse_response(text, prefix=..., tools=...)``) with Nemotron 3 Nano's and Qwen3's chat
templates for the parser; the course's ``agentkit`` (scripted model, environment, biased judge) for the
loop, memory and the judge, whose expected answers are written here from the tools' known behaviour.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import trl
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast
from transformers.utils import get_json_schema
from trl.chat_template_utils import add_response_schema

from graders.lesson_18.bindings import Lesson18

pytestmark = pytest.mark.lesson_18

TEMPLATES = Path(trl.__file__).parent / "chat_templates"


def reference_schema(source: str, name: str) -> dict:
    namespace: dict = {}
    exec(compile(source, name, "exec"), namespace)
    schema = get_json_schema(namespace[name])
    schema["function"]["parameters"]["additionalProperties"] = False
    return schema


# ---------------------------------------------------------------------------- schemas
SOURCES = {
    "one-string": '''
def shout(text: str) -> str:
    """Upper-case a text.

    Args:
        text: The text to shout.
    """
''',
    "defaults-and-choices": '''
def search(query: str, k: int = 5, mode: str = "hybrid", strict: bool = False) -> list[int]:
    """Search the course notes
    for passages.

    Args:
        query: What to look for,
            in plain words.
        k: How many passages to return (choices: [1, 3, 5, 10])
        mode: The retriever (choices: ["bm25", "dense", "hybrid"])
        strict: Only exact matches.

    Returns:
        The indices of the passages found.
    """
''',
    "numbers-lists-optional": '''
def stats(values: list[float], weights: list[int] | None = None, label: str | None = None, scale: float = 1.0):
    """Weighted statistics.

    Args:
        values: The numbers.
        weights: One integer weight per value.
        label: A name for the result.
        scale: Multiply everything by this.
    """
''',
    "object-and-all-required": '''
def store(key: str, payload: dict, ttl: int) -> bool:
    """Store a payload.

    Args:
        key: Where.
        payload: What, as an object.
        ttl: Seconds to keep it.

    Returns:
        Whether it was stored.
    """
''',
}


@pytest.mark.points(2)
@pytest.mark.parametrize("case", list(SOURCES))
def test_schema_equals_get_json_schema(lesson18: Lesson18, case: str):
    """Schemas: tool_schema equals transformers' get_json_schema plus additionalProperties false"""
    name = SOURCES[case].split("def ")[1].split("(")[0]
    got, want = lesson18.schema(SOURCES[case], name), reference_schema(SOURCES[case], name)
    assert got == want, (
        f"{case}: tool_schema differs from get_json_schema (+ additionalProperties false):\n got {json.dumps(got)}\nwant {json.dumps(want)}"
    )


@pytest.mark.points(2)
def test_schema_required_and_extra_keys(lesson18: Lesson18):
    """Schemas: required lists exactly the arguments without defaults, and additionalProperties is false"""
    got = lesson18.schema(SOURCES["defaults-and-choices"], "search")["function"]["parameters"]
    assert got.get("required") == ["query"], (
        f"required must be the arguments without a default, got {got.get('required')}"
    )
    assert got.get("additionalProperties") is False, "parameters must carry additionalProperties: false"


# ---------------------------------------------------------------------------- validation
PARAMS = reference_schema(SOURCES["defaults-and-choices"], "search")["function"]["parameters"]
PARAMS_STATS = reference_schema(SOURCES["numbers-lists-optional"], "stats")["function"]["parameters"]
ARGUMENTS = {
    "valid-minimal": (PARAMS, {"query": "lora rank"}),
    "valid-full": (PARAMS, {"query": "x", "k": 3, "mode": "dense", "strict": True}),
    "integer-as-float": (PARAMS, {"query": "x", "k": 5.0}),
    "extra-key": (PARAMS, {"query": "x", "top_k": 3}),
    "missing-required": (PARAMS, {"k": 3}),
    "integer-as-string": (PARAMS, {"query": "x", "k": "3"}),
    "integer-as-bool": (PARAMS, {"query": "x", "k": True}),
    "not-in-enum": (PARAMS, {"query": "x", "mode": "sparse"}),
    "enum-integer-not-listed": (PARAMS, {"query": "x", "k": 4}),
    "bool-as-string": (PARAMS, {"query": "x", "strict": "yes"}),
    "string-as-number": (PARAMS, {"query": 7}),
    "not-an-object": (PARAMS, ["x"]),
    "number-accepts-int": (PARAMS_STATS, {"values": [1, 2.5, 3]}),
    "array-item-wrong": (PARAMS_STATS, {"values": [1.0, "2"]}),
    "array-not-a-list": (PARAMS_STATS, {"values": 1.0}),
    "number-as-bool": (PARAMS_STATS, {"values": [1.0, False]}),
    "array-integer-items": (PARAMS_STATS, {"values": [1.0], "weights": [1, 2.5]}),
}
VALIDITY_GROUPS = {
    "types": ["valid-minimal", "valid-full", "integer-as-float", "integer-as-string", "integer-as-bool", "bool-as-string",
              "string-as-number", "not-an-object"],
    "keys": ["valid-minimal", "extra-key", "missing-required"],
    "enum": ["valid-full", "not-in-enum", "enum-integer-not-listed"],
    "arrays": ["number-accepts-int", "array-item-wrong", "array-not-a-list", "number-as-bool", "array-integer-items"],
}  # fmt: skip


def jsonschema_valid(arguments: object, parameters: dict) -> bool:
    try:
        jsonschema.validate(arguments, parameters)
    except jsonschema.ValidationError:
        return False
    return True


@pytest.mark.points(2)
@pytest.mark.parametrize("group", list(VALIDITY_GROUPS))
def test_validation_agrees_with_jsonschema(lesson18: Lesson18, group: str):
    """Validation: validate_arguments finds problems exactly when jsonschema.validate rejects"""
    for case in VALIDITY_GROUPS[group]:
        parameters, arguments = ARGUMENTS[case]
        want = jsonschema_valid(arguments, parameters)
        got = lesson18.validate(arguments, parameters)
        assert (not got) == want, (
            f"{case}: {arguments!r} is {'valid' if want else 'invalid'} for jsonschema, validate_arguments returned {got!r}"
        )


# ---------------------------------------------------------------------------- parsing
def _tokenizer(template: str) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tok.chat_template = (TEMPLATES / template).read_text()
    add_response_schema(tok)
    return tok


@pytest.fixture(scope="module")
def parsers():
    return {"nemotron": _tokenizer("nemotron_3_nano.jinja"), "json": _tokenizer("qwen3.jinja")}


SEARCH = reference_schema(SOURCES["defaults-and-choices"], "search")
STORE = reference_schema(SOURCES["object-and-all-required"], "store")
STATS = reference_schema(SOURCES["numbers-lists-optional"], "stats")
TOOLS = [SEARCH, STORE, STATS]


def nemotron_call(name: str, params: list[tuple[str, str]]) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params)
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def json_call(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


COMPLETIONS = {
    "nemotron": {
        "answer-only": "Rank 8 is a common choice.<|im_end|>",
        "one-call-typed": "Let me search.\n" + nemotron_call("search", [("query", "lora rank"), ("k", "3"), ("strict", "true")]) + "\n<|im_end|>",
        "strings-stay-strings": nemotron_call("search", [("query", "42"), ("mode", "bm25")]) + "\n<|im_end|>",
        "two-calls": "Two things.\n" + nemotron_call("store", [("key", "a b"), ("payload", '{"x": [1, 2]}'), ("ttl", "60")]) + "\n"
                     + nemotron_call("stats", [("values", "[1.5, 2]"), ("scale", "0.5")]) + "\n<|im_end|>",
        "multi-line-value": nemotron_call("search", [("query", "first line\nsecond line")]) + "\n<|im_end|>",
    },
    "json": {
        "answer-only": "Rank 8 is a common choice.<|im_end|>",
        "one-call": "Let me search.\n" + json_call("search", {"query": "lora rank", "k": 3}) + "<|im_end|>",
        "no-content": json_call("search", {"query": "q", "strict": False}) + "<|im_end|>",
        "two-calls": "Both.\n" + json_call("store", {"key": "k", "payload": {"x": [1, 2]}, "ttl": 60}) + "\n"
                     + json_call("stats", {"values": [1.5, 2], "label": "s"}) + "<|im_end|>",
    },
}  # fmt: skip


def trl_reference(parsers, fmt: str, text: str, tools: list[dict] | None) -> dict:
    tok = parsers[fmt]
    messages = [{"role": "user", "content": "Question?"}]
    prefix = tok.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    if fmt == "nemotron":  # the generation prompt opens <think>: the completion closes it (no reasoning here)
        text = "</think>" + text
    out = tok.parse_response(text, prefix=prefix, tools=tools)
    calls = [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in out.get("tool_calls", [])
    ]
    return {"content": (out.get("content") or "").strip(), "tool_calls": calls}


@pytest.mark.points(3)
@pytest.mark.parametrize("fmt", list(COMPLETIONS))
def test_parsing_equals_trl_response_parsing(lesson18: Lesson18, parsers, fmt: str):
    """Parsing: parse_tool_calls equals trl's parse_response (content, names, typed arguments)"""
    for case, text in COMPLETIONS[fmt].items():
        want = trl_reference(parsers, fmt, text, TOOLS)
        got = lesson18.parse(text, fmt, TOOLS)
        assert got == want, (
            f"{fmt}, {case}: parse_tool_calls differs from trl's parse_response\n got {got}\nwant {want}"
        )


@pytest.mark.points(2)
def test_parsing_nemotron_without_schemas_keeps_strings(lesson18: Lesson18, parsers):
    """Parsing: Nemotron arguments stay strings without tool schemas, as trl's do"""
    text = COMPLETIONS["nemotron"]["one-call-typed"]
    want = trl_reference(parsers, "nemotron", text, None)
    got = lesson18.parse(text, "nemotron", None)
    assert got == want, f"without tools: got {got}, want {want}"


MALFORMED = {
    "json-bad-json": (
        "json",
        '<tool_call>\n{"name": "search", "arguments": {"query": "x",, }}\n</tool_call><|im_end|>',
    ),
    "json-no-name": ("json", '<tool_call>\n{"arguments": {"query": "x"}}\n</tool_call><|im_end|>'),
    "json-unclosed": ("json", '<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n<|im_end|>'),
    "json-arguments-not-object": (
        "json",
        '<tool_call>\n{"name": "search", "arguments": [1, 2]}\n</tool_call><|im_end|>',
    ),
    "nemotron-no-function": ("nemotron", "<tool_call>\n<parameter=query>\nx\n</parameter>\n</tool_call><|im_end|>"),
    "nemotron-unclosed": (
        "nemotron",
        "<tool_call>\n<function=search>\n<parameter=query>\nx\n</parameter>\n</function>\n<|im_end|>",
    ),
}


@pytest.mark.points(2)
@pytest.mark.parametrize("case", list(MALFORMED))
def test_parsing_rejects_malformed_calls(lesson18: Lesson18, case: str):
    """Parsing: a malformed tool call raises ValueError"""
    fmt, text = MALFORMED[case]
    error = lesson18.parse_error(text, fmt, TOOLS)
    assert error is not None and error.startswith("ValueError"), (
        f"{case}: expected a ValueError, got {error or 'a return'}"
    )


# ---------------------------------------------------------------------------- the loop
def call(name: str, arguments: dict, recover: dict | None = None, say: str = "") -> dict:
    step = {"call": [name, arguments], "say": say}
    if recover is not None:
        step["recover"] = recover
    return step


TASKS = {
    "json-lookup": (
        {
            "fmt": "json",
            "max_steps": 4,
            "question": "Which country is Oslo in?",
            "script": [call("lookup", {"city": "oslo", "field": "country"}), {"answer": "Country: {last}"}],
        },
        "Country: Norway",
        2,
    ),
    "nemotron-add": (
        {
            "fmt": "nemotron",
            "max_steps": 4,
            "question": "2 + 40?",
            "script": [call("add", {"a": 2, "b": 40}, say="Adding."), {"answer": "Sum: {last}"}],
        },
        "Sum: 42",
        2,
    ),
    "three-steps": (
        {
            "fmt": "json",
            "max_steps": 5,
            "question": "Kyoto's population plus 40000?",
            "script": [
                call("lookup", {"city": "kyoto"}),
                call("add", {"a": 1460000, "b": 40000}),
                {"answer": "{last}"},
            ],
        },
        "1500000",
        3,
    ),
    "nemotron-convert": (
        {
            "fmt": "nemotron",
            "max_steps": 3,
            "question": "100 C in F?",
            "script": [call("convert", {"value": 100, "unit": "c_to_f"}), {"answer": "{last} F"}],
        },
        "212.0 F",
        2,
    ),
}
RECOVERIES = {
    "tool-raises": (
        {
            "fmt": "json",
            "max_steps": 5,
            "question": "Population of Paris, else Lyon?",
            "script": [
                call("lookup", {"city": "paris"}, recover=call("lookup", {"city": "lyon"})),
                {"answer": "{last}"},
            ],
        },
        "522000",
        3,
    ),
    "malformed-json": (
        {
            "fmt": "json",
            "max_steps": 5,
            "question": "1 + 2?",
            "script": [
                {
                    "raw": '<tool_call>\n{"name": "add", "arguments": {"a": 1,, "b": 2}}\n</tool_call>',
                    "recover": call("add", {"a": 1, "b": 2}),
                },
                {"answer": "{last}"},
            ],
        },
        "3",
        3,
    ),
    "nemotron-raises": (
        {
            "fmt": "nemotron",
            "max_steps": 5,
            "question": "Country of Rome, else Kyoto?",
            "script": [
                call(
                    "lookup",
                    {"city": "rome", "field": "country"},
                    recover=call("lookup", {"city": "kyoto", "field": "country"}),
                ),
                {"answer": "{last}"},
            ],
        },
        "Japan",
        3,
    ),
}
INVALID = {
    "extra-key": ({"fmt": "json", "max_steps": 5, "question": "1 + 2?",
                   "script": [call("add", {"a": 1, "b": 2, "c": 3}, recover=call("add", {"a": 1, "b": 2})), {"answer": "{last}"}]},
                  "3", 3),
    "not-in-enum": ({"fmt": "json", "max_steps": 5, "question": "100 C in K?",
                     "script": [call("convert", {"value": 100, "unit": "c_to_k"}, recover=call("convert", {"value": 100, "unit": "c_to_f"})),
                                {"answer": "{last}"}]}, "212.0", 3),
    "string-for-integer": ({"fmt": "json", "max_steps": 5, "question": "2 + 3?",
                            "script": [call("add", {"a": "2", "b": 3}, recover=call("add", {"a": 2, "b": 3})), {"answer": "{last}"}]},
                           "5", 3),
    "unknown-tool": ({"fmt": "nemotron", "max_steps": 5, "question": "2 * 3?",
                      "script": [call("multiply", {"a": 2, "b": 3}, recover=call("add", {"a": 3, "b": 3})), {"answer": "{last}"}]},
                     "6", 3),
    "missing-argument": ({"fmt": "nemotron", "max_steps": 5, "question": "4 + ?",
                          "script": [call("add", {"a": 4}, recover=call("add", {"a": 4, "b": 4})), {"answer": "{last}"}]}, "8", 3),
}  # fmt: skip

ENV_SCHEMAS: dict[str, dict] = {}


def env_parameters(name: str) -> dict:
    if not ENV_SCHEMAS:
        from graders.engine import lessons

        source = lessons.load("18").provided["agentkit"].read_text()
        for tool in ("add", "lookup", "convert"):
            start = source.index(f"def {tool}(")
            end = source.index("\n\n\n", start)
            ENV_SCHEMAS[tool] = reference_schema(source[start:end], tool)["function"]["parameters"]
    return ENV_SCHEMAS[name]


def check_task(lesson18: Lesson18, case: str, task: dict, answer: str, steps: int) -> dict:
    out = lesson18.task(copy.deepcopy(task))
    assert out["answer"] == answer, (
        f"{case}: the agent answered {out['answer']!r}, the task's answer is {answer!r} (model saw: {out['seen']})"
    )
    assert out["steps"] == steps == out["model_calls"], (
        f"{case}: {out['steps']} steps reported, {out['model_calls']} model calls, expected {steps}"
    )
    assert out["steps"] <= task["max_steps"]
    return out


@pytest.mark.points(3)
@pytest.mark.parametrize("case", list(TASKS))
def test_loop_task_success(lesson18: Lesson18, case: str):
    """Loop: scripted tasks end with the right answer in the right number of steps"""
    check_task(lesson18, case, *TASKS[case])


@pytest.mark.points(1)
def test_loop_message_roles(lesson18: Lesson18):
    """Loop: the conversation is user, then assistant and one tool message per call, then the final assistant"""
    out = check_task(lesson18, "three-steps", *TASKS["three-steps"])
    assert out["roles"] == ["user", "assistant", "tool", "assistant", "tool", "assistant"], f"roles: {out['roles']}"


@pytest.mark.points(3)
@pytest.mark.parametrize("case", list(RECOVERIES))
def test_loop_recovers_after_a_tool_error(lesson18: Lesson18, case: str):
    """Loop: a tool error or a malformed call goes back as an error tool message and the agent recovers"""
    out = check_task(lesson18, case, *RECOVERIES[case])
    errors = [s for s in out["seen"] if s["role"] == "tool" and s["content"].startswith("error")]
    assert errors, f"{case}: the model never saw an error tool message (saw {out['seen']})"


@pytest.mark.points(3)
@pytest.mark.parametrize("case", list(INVALID))
def test_loop_never_calls_a_tool_with_invalid_arguments(lesson18: Lesson18, case: str):
    """Loop: invalid arguments are refused before the tool runs, fed back, and the agent recovers"""
    out = check_task(lesson18, case, *INVALID[case])
    for name, arguments in out["calls"]:
        assert jsonschema_valid(arguments, env_parameters(name)), (
            f"{case}: {name} was called with invalid arguments {arguments}"
        )
    assert len(out["calls"]) == 1, f"{case}: the environment saw {out['calls']}, only the corrected call should run"


@pytest.mark.points(3)
@pytest.mark.parametrize("max_steps", [1, 4])
def test_loop_step_budget(lesson18: Lesson18, max_steps: int):
    """Loop: a model that never answers stops at max_steps with answer None"""
    task = {"fmt": "json", "max_steps": max_steps, "question": "Loop forever.",
            "script": [call("add", {"a": i, "b": 1}) for i in range(12)]}  # fmt: skip
    out = lesson18.task(task)
    assert out["answer"] is None, f"the budget ran out: the answer must be None, got {out['answer']!r}"
    assert out["steps"] == max_steps == out["model_calls"], (
        f"max_steps={max_steps}: {out['steps']} steps, {out['model_calls']} model calls"
    )


# ---------------------------------------------------------------------------- memory
MEMORY = {"fmt": "json", "max_steps": 4, "key": "unit", "question1": "Please use  celsius from now on.",
          "question2": "What is my unit?",
          "script": [call("remember", {"key": "unit", "value": "celsius"}), {"answer": "Noted: {last}"}]}  # fmt: skip


@pytest.mark.points(4)
def test_memory_recalled_in_a_later_conversation(lesson18: Lesson18):
    """Memory: a preference stored in one conversation is recalled in the next"""
    out = lesson18.memory(copy.deepcopy(MEMORY))
    assert out["first"] == "Noted: saved unit = celsius", f"first conversation answered {out['first']!r}"
    assert out["calls"] == [["remember", {"key": "unit", "value": "celsius"}]], f"remember calls: {out['calls']}"
    assert out["second"] == "Your unit is celsius.", (
        f"second conversation: {out['second']!r} (its system message: {out['system']!r})"
    )


@pytest.mark.points(2)
def test_memory_summaries_and_recall_format(lesson18: Lesson18):
    """Memory: recall() lists the preferences and one summary per finished conversation"""
    out = lesson18.memory(copy.deepcopy(MEMORY))
    want_system = ("Preferences:\n- unit: celsius\nEarlier conversations:\n"
                   "- asked: Please use celsius from now on. -> answered: Noted: saved unit = celsius")  # fmt: skip
    assert out["system"] == want_system, (
        f"the second conversation's system message:\n got {out['system']!r}\nwant {want_system!r}"
    )
    want = want_system + "\n- asked: What is my unit? -> answered: Your unit is celsius."
    assert out["recall"] == want, f"recall() after two conversations:\n got {out['recall']!r}\nwant {want!r}"


# ---------------------------------------------------------------------------- the judge
SCORES = {"good": 0.9, "fine": 0.8, "poor": 0.2, "same-1": 0.5, "same-2": 0.5, "ok": 0.6}
JUDGE_ITEMS = [
    ["q1", "good", "poor"],    # A clearly better: both orders say A
    ["q2", "poor", "good"],    # B clearly better
    ["q3", "fine", "good"],    # B slightly better: the biased judge says "first" both times -> disagreement
    ["q4", "good", "fine"],    # A slightly better: also a disagreement
    ["q5", "same-1", "same-2"],  # equal: tie both times, they agree
    ["q6", "ok", "poor"],      # A clearly better
]  # fmt: skip
WANT = [("A", True), ("B", True), ("tie", False), ("tie", False), ("tie", True), ("A", True)]


@pytest.mark.points(3)
def test_judge_cancels_position_bias(lesson18: Lesson18):
    """Judge: the position swap turns the biased judge's first-answer preference into ties, and keeps clear wins"""
    out = lesson18.judge(JUDGE_ITEMS, SCORES, 0.3)
    got = [(r["winner"], r["agree"]) for r in out["results"]]
    assert got == WANT, f"(winner, agree) per pair: got {got}, want {WANT}"


@pytest.mark.points(2)
def test_judge_reports_agreement_and_wins(lesson18: Lesson18):
    """Judge: the agreement rate and the win counts"""
    out = lesson18.judge(JUDGE_ITEMS, SCORES, 0.3)
    assert abs(out["agreement"] - 4 / 6) < 1e-12, f"agreement: got {out['agreement']}, want {4 / 6}"
    assert out["wins"] == {"A": 2, "B": 1, "tie": 3}, f"wins: {out['wins']}"


@pytest.mark.points(2)
def test_judge_asks_both_orders(lesson18: Lesson18):
    """Judge: each pair is judged twice, A first then B first"""
    out = lesson18.judge(JUDGE_ITEMS[:2], SCORES, 0.3)
    want = [[q, a, b] for q, a, b in JUDGE_ITEMS[:2] for a, b in ((a, b), (b, a))]
    want = [[q, x, y] for (q, a, b) in JUDGE_ITEMS[:2] for (x, y) in ((a, b), (b, a))]
    assert out["calls"] == want, f"the judge's calls: got {out['calls']}, want {want}"
