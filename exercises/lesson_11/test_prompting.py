"""Visible tests for lesson 11. Run: .venv/bin/pytest exercises/lesson_11 (or make check LESSON=11)

The renderers against ``apply_chat_template`` with the course's ChatML template and trl's Nemotron 3
Nano template on a few conversations; the few-shot budget with the course tokenizer; the haystack's
length and depth in tokens; scoring; a sweep against a scripted model. The hidden graders use more
conversations, other counters, other fillers and other blind spots (see the lesson, section 8).
"""

import pytest

from exercises.lesson_11.prompting import (
    build_few_shot_prompt,
    build_haystack,
    format_example,
    format_query,
    needle_sweep,
    render_chatml,
    render_nemotron,
    score_answer,
)  # fmt: skip
from exercises.lesson_11.promptkit import (
    COURSE_CHATML_TEMPLATE,
    ScriptedModel,
    count_tokens,
    course_tokenizer,
    make_filler,
    nemotron_template,
)  # fmt: skip

pytestmark = pytest.mark.lesson_11


@pytest.fixture(scope="module")
def tok():
    return course_tokenizer()


def apply(tok, messages, template, tools=None, **kwargs) -> str:
    return tok.apply_chat_template(messages, tools=tools, tokenize=False, chat_template=template, **kwargs)


CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]


@pytest.mark.parametrize("think", [True, False], ids=["on", "off"])
def test_chatml_equals_course_template(tok, think: bool):
    for gen in (True, False):
        want = apply(tok, CHAT, COURSE_CHATML_TEMPLATE, add_generation_prompt=gen, enable_thinking=think)
        assert render_chatml(CHAT, add_generation_prompt=gen, enable_thinking=think) == want


@pytest.mark.parametrize("think", [True, False], ids=["on", "off"])
def test_nemotron_plain_turns_and_switch(tok, think: bool):
    for messages in (CHAT, CHAT[1:]):  # with and without a system message
        want = apply(tok, messages, nemotron_template(), add_generation_prompt=True, enable_thinking=think)
        assert render_nemotron(messages, add_generation_prompt=True, enable_thinking=think) == want
    assert want.endswith("<|im_start|>assistant\n<think>\n" if think else "<|im_start|>assistant\n<think></think>")


def test_nemotron_history_thinking(tok):
    messages = [
        {"role": "user", "content": "Is 91 prime?"},
        {"role": "assistant", "reasoning_content": "91 = 7 * 13.", "content": "No."},
        {"role": "user", "content": "Is 97?"},
    ]
    for truncate in (True, False):
        want = apply(tok, messages, nemotron_template(), truncate_history_thinking=truncate)
        assert render_nemotron(messages, truncate_history_thinking=truncate) == want
    assert "91 = 7 * 13." not in render_nemotron(messages), "earlier reasoning is dropped by default"


def test_nemotron_tools(tok):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "description": "City"}}, "required": ["city"]}}}]  # fmt: skip
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "-3 C"},
    ]  # fmt: skip
    for msgs in (messages[:1], messages):
        want = apply(tok, msgs, nemotron_template(), tools, add_generation_prompt=True)
        assert render_nemotron(msgs, tools, add_generation_prompt=True) == want


EXAMPLES = [("great film", "positive"), ("dull and long", "negative"), ("I laughed a lot", "positive"),
            ("the plot made no sense at all", "negative"), ("fine", "positive")]  # fmt: skip


def test_few_shot_budget_order_and_maximal(tok):
    count = lambda s: count_tokens(tok, s)  # noqa: E731
    instruction, query = "Label the sentiment.", "not bad"
    for budget in range(33, 200, 9):
        prompt, k = build_few_shot_prompt(instruction, EXAMPLES, query, count, budget)
        assert count(prompt) <= budget
        assert prompt == "\n\n".join([instruction, *map(format_example, EXAMPLES[:k]), format_query(query)])
        if k < len(EXAMPLES):  # the next example would not fit
            longer = "\n\n".join([instruction, *map(format_example, EXAMPLES[: k + 1]), format_query(query)])
            assert count(longer) > budget


def test_few_shot_counts_separators():
    count = len  # characters
    instruction, query = "Label.", "ok"
    sep = "\n-----\n"
    budget = len(sep.join([instruction, format_example(EXAMPLES[0]), format_query(query)]))
    prompt, k = build_few_shot_prompt(instruction, EXAMPLES, query, count, budget, separator=sep)
    assert (k, len(prompt)) == (1, budget)
    prompt, k = build_few_shot_prompt(instruction, EXAMPLES, query, count, budget - 1, separator=sep)
    assert k == 0 and len(prompt) <= budget - 1
    with pytest.raises(ValueError):
        build_few_shot_prompt(instruction, EXAMPLES, query, count, 5)


NEEDLE = " The secret code of the blue tower is 4217. "


def test_haystack_length_and_depth_in_tokens(tok):
    filler = make_filler(300, 1, ((0.05, 0.15),))  # a block of codes: characters per token vary
    needle_tokens = count_tokens(tok, NEEDLE)
    for n in (200, 800):
        for d in (0.0, 0.3, 0.5, 1.0):
            context = build_haystack(tok, filler, NEEDLE, n, d)
            assert abs(count_tokens(tok, context) - n) <= 2, "the context has the target length in tokens"
            before = count_tokens(tok, context[: context.index(NEEDLE)])
            assert abs(before - d * (n - needle_tokens)) <= 2, "the needle sits at depth x haystack tokens"


def test_scoring_normalises():
    assert score_answer("The code is 4217.", "4217")
    assert score_answer("It is: BLUE-FALCON!", "blue falcon")
    assert not score_answer("42170", "4217")
    assert not score_answer("I could not find it.", "4217")


def test_sweep_recovers_a_scripted_curve(tok):
    facts = [(NEEDLE, "What is the secret code of the blue tower?", "4217"),
             (" The password of the old mill is blue falcon. ", "What is the password of the old mill?", "blue falcon")]  # fmt: skip
    model = ScriptedModel(tok, facts, blind_spots=[(300, 0.3, 0.7, [0, 1]), (0, 0.9, 1.0, [1])])
    depths, lengths = [0.0, 0.5, 1.0], [150, 500]
    grid = needle_sweep(model.generate, tok, make_filler(120, 2), facts, depths, lengths)
    assert grid == [[1.0, 1.0, 0.5], [1.0, 0.0, 0.5]], "rows are lengths, columns depths, a cell the share answered right"
    assert len(model.calls) == len(depths) * len(lengths) * len(facts)
