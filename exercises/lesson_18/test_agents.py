"""Visible tests for lesson 18. Run: .venv/bin/pytest exercises/lesson_18 (or make check LESSON=18)

Hand-written cases: a small tool's schema, validation by hand, both tool-call formats and malformed
calls, the loop on scripted tasks (a recovery and the step budget), memory across two conversations,
and the judge's position swap. The hidden graders compare with transformers' get_json_schema,
jsonschema and trl's response parsing, on other tools, tasks and judges (see the lesson).
"""

import pytest

from exercises.lesson_18.agentkit import run_judge, run_memory, run_task
from exercises.lesson_18.agents import parse_tool_calls, tool_schema, validate_arguments

pytestmark = pytest.mark.lesson_18


def weather(city: str, days: int = 1, unit: str = "c") -> str:
    """Get the weather.

    Args:
        city: The city,
            in lower case.
        days: How many days.
        unit: The unit (choices: ["c", "f"])

    Returns:
        The forecast.
    """
    return f"{city}: sunny for {days} days ({unit})"


WANT = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Get the weather.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, in lower case."},
                "days": {"type": "integer", "description": "How many days."},
                "unit": {"type": "string", "enum": ["c", "f"], "description": "The unit"},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
        "return": {"type": "string", "description": "The forecast."},
    },
}


def test_schema_of_a_small_tool():
    assert tool_schema(weather) == WANT


def test_validation_by_hand():
    params = WANT["function"]["parameters"]
    assert validate_arguments({"city": "oslo"}, params) == []
    assert validate_arguments({"city": "oslo", "days": 2.0, "unit": "f"}, params) == []  # 2.0 is a JSON integer
    for bad in ({"days": 2}, {"city": "oslo", "when": "now"}, {"city": "oslo", "days": "2"}, {"city": "oslo", "days": True},
                {"city": "oslo", "unit": "k"}, ["oslo"]):  # fmt: skip
        problems = validate_arguments(bad, params)
        assert problems and all(isinstance(p, str) for p in problems), bad


def test_parsing_both_formats():
    tools = [WANT]
    nemo = ("Checking.\n<tool_call>\n<function=weather>\n<parameter=city>\noslo\n</parameter>\n"
            "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>\n<|im_end|>")  # fmt: skip
    want = {"content": "Checking.", "tool_calls": [{"name": "weather", "arguments": {"city": "oslo", "days": 2}}]}
    assert parse_tool_calls(nemo, "nemotron", tools) == want
    assert parse_tool_calls(nemo, "nemotron", None)["tool_calls"][0]["arguments"] == {"city": "oslo", "days": "2"}
    js = 'Checking.\n<tool_call>\n{"name": "weather", "arguments": {"city": "oslo", "days": 2}}\n</tool_call><|im_end|>'
    assert parse_tool_calls(js, "json", tools) == want
    assert parse_tool_calls("Sunny.<|im_end|>", "json", tools) == {"content": "Sunny.", "tool_calls": []}


def test_parsing_rejects_malformed():
    for fmt, text in [("json", '<tool_call>\n{"name": "weather", "arguments": {"city": }\n</tool_call>'),
                      ("json", '<tool_call>\n{"name": "weather"'),
                      ("nemotron", "<tool_call>\n<parameter=city>\noslo\n</parameter>\n</tool_call>")]:  # fmt: skip
        with pytest.raises(ValueError):
            parse_tool_calls(text, fmt, [WANT])


def test_loop_scripted_task_with_a_recovery():
    task = {"fmt": "json", "max_steps": 5, "question": "Population of Atlantis, else Oslo?",
            "script": [{"call": ["lookup", {"city": "atlantis"}], "recover": {"call": ["lookup", {"city": "oslo"}]}},
                       {"answer": "It is {last}."}]}  # fmt: skip
    out = run_task(task)
    assert out["answer"] == "It is 709000." and out["steps"] == 3
    assert out["calls"] == [["lookup", {"city": "atlantis"}], ["lookup", {"city": "oslo"}]]
    assert out["roles"] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    task = {"fmt": "nemotron", "max_steps": 5, "question": "1 + 2?",
            "script": [{"call": ["add", {"a": 1, "b": 2, "c": 0}], "recover": {"call": ["add", {"a": 1, "b": 2}]}}, {"answer": "{last}"}]}  # fmt: skip
    out = run_task(task)
    assert out["answer"] == "3" and out["calls"] == [["add", {"a": 1, "b": 2}]]  # the extra key never reached the tool


def test_loop_budget():
    task = {
        "fmt": "json",
        "max_steps": 3,
        "question": "Forever.",
        "script": [{"call": ["add", {"a": i, "b": i}]} for i in range(9)],
    }
    out = run_task(task)
    assert out["answer"] is None and out["steps"] == 3 == out["model_calls"]


def test_memory_recalled_in_a_later_conversation():
    out = run_memory({"fmt": "json", "max_steps": 3, "key": "city", "question1": "I live in Lyon.", "question2": "Where do I live?",
                      "script": [{"call": ["remember", {"key": "city", "value": "lyon"}]}, {"answer": "Noted."}]})  # fmt: skip
    assert out["second"] == "Your city is lyon."
    assert out["system"].startswith("Preferences:\n- city: lyon\nEarlier conversations:\n- asked: I live in Lyon.")


def test_judge_position_swap():
    scores = {"great": 1.0, "good": 0.9, "bad": 0.0}
    out = run_judge([["q", "great", "bad"], ["q", "good", "great"]], scores, 0.5)
    assert [(r["winner"], r["agree"]) for r in out["results"]] == [("A", True), ("tie", False)]
    assert out["agreement"] == 0.5 and out["wins"] == {"A": 1, "B": 0, "tie": 1}
    assert len(out["calls"]) == 4
