"""Hidden graders for lesson 11. They run in the grader's process; student code only in the worker.

References: ``PreTrainedTokenizerFast.apply_chat_template(..., tokenize=False)`` (transformers 5.23)
with trl's ``nemotron_3_nano.jinja`` (the template shipped with the NVIDIA-Nemotron-3-Nano
checkpoints) and with the course's ChatML template; the course tokenizer's own token counts for the
few-shot budget and the haystack; ``promptkit.ScriptedModel`` (the course's copy) for the recall
curve, whose expected grid is computed here from its blind-spot rules and the nominal depths and lengths.
"""

from __future__ import annotations

import importlib.util
import math
import random

import pytest

from graders.engine import lessons
from graders.lesson_11.bindings import Lesson11

pytestmark = pytest.mark.lesson_11


def _reference_promptkit():
    spec = importlib.util.spec_from_file_location("lesson11_promptkit", lessons.load("11").provided["promptkit"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


promptkit = _reference_promptkit()


@pytest.fixture(scope="module")
def tok():
    return promptkit.course_tokenizer()


def first_difference(got: str, want: str) -> str:
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return f"first difference at character {at}: got {got[max(0, at - 40) : at + 40]!r}, expected {want[max(0, at - 40) : at + 40]!r}"


def check_render(got: str, want: str, what: str) -> None:
    assert got == want, f"{what}: rendering differs from apply_chat_template; {first_difference(got, want)}"


# ---------------------------------------------------------------------------- conversations
SYSTEM = {"role": "system", "content": "You are a careful assistant. Answer briefly."}
CHATS = {
    "one-turn": [{"role": "user", "content": "What is the capital of Norway?"}],
    "system-one-turn": [SYSTEM, {"role": "user", "content": "Name a prime number above 10."}],
    "multi-turn": [
        SYSTEM,
        {"role": "user", "content": "Translate 'cat' to French."},
        {"role": "assistant", "content": "chat"},
        {"role": "user", "content": "And 'dog'?\nOne word please."},
        {"role": "assistant", "content": "  chien  "},
        {"role": "user", "content": "Thanks!"},
    ],
    "empty-system": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}],
}
REASONING = [  # assistant turns with reasoning_content: earlier ones are truncated by default
    SYSTEM,
    {"role": "user", "content": "Is 91 prime?"},
    {"role": "assistant", "reasoning_content": "91 = 7 * 13.", "content": "No, 91 = 7 x 13."},
    {"role": "user", "content": "Is 97 prime?"},
    {"role": "assistant", "reasoning_content": "Check 2, 3, 5, 7: none divides 97.\nSo prime.", "content": "Yes."},
]
REASONING_TAIL = [*REASONING, {"role": "user", "content": "And 99?"}]
BLANK_REASONING = [
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "reasoning_content": "   ", "content": "Hi!"},
    {"role": "user", "content": "Again."},
    {"role": "assistant", "content": ""},
]
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "  Current weather for a city.\n",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name, e.g. Oslo"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Unit"},
        }, "required": ["city"]},
    }},
    {"type": "function", "function": {
        "name": "search_docs",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}, "description": "Filter tags"},
            "limit": {"type": "integer", "default": 5},
        }},
    }},
    {"type": "function", "function": {"name": "now", "description": "The current time.", "parameters": {"type": "object", "properties": {}}}},
]  # fmt: skip


def call(name: str, **arguments: object) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


TOOL_CHAT = [
    SYSTEM,
    {"role": "user", "content": "Weather in Oslo and Paris, in celsius?"},
    {"role": "assistant", "reasoning_content": "Two cities: two calls.", "content": "Let me check.",
     "tool_calls": [call("get_weather", city="Oslo", unit="celsius"), call("get_weather", city="Paris", unit="celsius")]},
    {"role": "tool", "content": '{"temp": -3, "sky": "snow"}'},
    {"role": "tool", "content": '{"temp": 9, "sky": "rain"}'},
    {"role": "assistant", "reasoning_content": "Both arrived.", "content": "Oslo -3 C with snow; Paris 9 C with rain."},
    {"role": "user", "content": "Find docs about umbrellas."},
    {"role": "assistant", "content": "",
     "tool_calls": [call("search_docs", query="umbrella", tags=["rain", "gear"], limit=3, exact=False, opts={"lang": "en"})]},
    {"role": "tool", "content": "[]"},
]  # fmt: skip
TOOL_CHAT_NO_SYSTEM = [
    {"role": "user", "content": "What time is it?"},
    {"role": "assistant", "reasoning_content": "Use the clock.", "content": "", "tool_calls": [call("now")]},
    {"role": "tool", "content": "12:30"},
]  # fmt: skip
SWITCH = {
    "thinking-on": {"add_generation_prompt": True, "enable_thinking": True},
    "thinking-off": {"add_generation_prompt": True, "enable_thinking": False},
    "no-generation-prompt": {"add_generation_prompt": False, "enable_thinking": False},
}


def reference(tok, messages: list[dict], template: str, tools: list[dict] | None = None, **kwargs: bool) -> str:
    return tok.apply_chat_template(messages, tools=tools, tokenize=False, chat_template=template, **kwargs)


# ---------------------------------------------------------------------------- course ChatML
@pytest.mark.points(2)
@pytest.mark.parametrize("switch", list(SWITCH))
def test_chatml_equals_course_template(lesson11: Lesson11, tok, switch: str):
    """ChatML: render_chatml equals apply_chat_template with the course's ChatML template"""
    for name, messages in CHATS.items():
        want = reference(tok, messages, promptkit.COURSE_CHATML_TEMPLATE, **SWITCH[switch])
        check_render(lesson11.chatml(messages, **SWITCH[switch]), want, f"course ChatML, {name}, {switch}")


# ---------------------------------------------------------------------------- Nemotron 3 Nano
@pytest.mark.points(3)
@pytest.mark.parametrize("switch", list(SWITCH))
def test_nemotron_plain_conversations(lesson11: Lesson11, tok, switch: str):
    """Nemotron: system turn, user and assistant turns and the reasoning switch equal Nemotron 3 Nano's template"""
    template = promptkit.nemotron_template()
    for name, messages in CHATS.items():
        want = reference(tok, messages, template, **SWITCH[switch])
        check_render(lesson11.nemotron(messages, None, **SWITCH[switch]), want, f"Nemotron 3 Nano, {name}, {switch}")


@pytest.mark.points(1)
def test_nemotron_defaults(lesson11: Lesson11, tok):
    """Nemotron: the defaults (thinking on, history truncated) equal the template's"""
    template = promptkit.nemotron_template()
    for messages in (CHATS["one-turn"], REASONING_TAIL):
        want = reference(tok, messages, template, add_generation_prompt=True)
        check_render(lesson11.nemotron(messages, None, add_generation_prompt=True), want, "Nemotron 3 Nano, default switches")


@pytest.mark.points(3)
@pytest.mark.parametrize("truncate", [True, False], ids=["truncated", "kept"])
def test_nemotron_history_thinking(lesson11: Lesson11, tok, truncate: bool):
    """Nemotron: reasoning of earlier assistant turns (truncate_history_thinking) equals the template's"""
    template = promptkit.nemotron_template()
    for name, messages in (("reasoning", REASONING), ("reasoning-then-user", REASONING_TAIL), ("blank-reasoning", BLANK_REASONING)):
        for gen in (False, True):
            kw = {"add_generation_prompt": gen, "truncate_history_thinking": truncate}
            want = reference(tok, messages, template, **kw)
            check_render(lesson11.nemotron(messages, None, **kw), want, f"Nemotron 3 Nano, {name}, {kw}")


@pytest.mark.points(3)
def test_nemotron_tool_definitions(lesson11: Lesson11, tok):
    """Nemotron: tool definitions in the system turn equal the template's (with and without a system prompt)"""
    template = promptkit.nemotron_template()
    for name, messages in CHATS.items():
        for tools in (TOOLS[:1], TOOLS):
            want = reference(tok, messages, template, tools, add_generation_prompt=True)
            check_render(lesson11.nemotron(messages, tools, add_generation_prompt=True), want,
                         f"Nemotron 3 Nano, {name} with tools {[t['function']['name'] for t in tools]}")  # fmt: skip


@pytest.mark.points(3)
@pytest.mark.parametrize("switch", ["thinking-on", "thinking-off"])
def test_nemotron_tool_calls_and_responses(lesson11: Lesson11, tok, switch: str):
    """Nemotron: assistant tool calls and tool responses equal the template's"""
    template = promptkit.nemotron_template()
    for name, messages in (("two calls, two responses, two rounds", TOOL_CHAT), ("no system prompt", TOOL_CHAT_NO_SYSTEM)):
        for truncate in (True, False):
            kw = {**SWITCH[switch], "truncate_history_thinking": truncate}
            want = reference(tok, messages, template, TOOLS, **kw)
            check_render(lesson11.nemotron(messages, TOOLS, **kw), want, f"Nemotron 3 Nano, {name}, {kw}")


# ---------------------------------------------------------------------------- few-shot under a budget
COUNTERS = {"bpe": None, "words": lambda s: len(s.split()), "chars": len}


def counter(kind: str, tok):
    return (lambda s: promptkit.count_tokens(tok, s)) if kind == "bpe" else COUNTERS[kind]


def few_shot_case(seed: int, n: int = 12) -> tuple[str, list[tuple[str, str]], str]:
    rng = random.Random(seed)
    words = promptkit.WORDS
    examples = [(" ".join(rng.choice(words) for _ in range(rng.randint(2, 25))), rng.choice(["positive", "negative", "mixed"]))
                for _ in range(n)]  # fmt: skip
    return "Label the sentiment of each review.", examples, " ".join(rng.choice(words) for _ in range(8))


def expected_prompt(instruction, examples, query, count, budget, separator="\n\n") -> tuple[str, int]:
    """The specification: the first k examples, k the first index whose example does not fit."""
    parts = [promptkit_format(e) for e in examples]
    k = 0
    while k < len(examples) and count(separator.join([instruction, *parts[: k + 1], f"Input: {query}\nOutput:"])) <= budget:
        k += 1
    return separator.join([instruction, *parts[:k], f"Input: {query}\nOutput:"]), k


def promptkit_format(example: tuple[str, str]) -> str:
    return f"Input: {example[0]}\nOutput: {example[1]}"


def check_few_shot(lesson11, tok, kind, instruction, examples, query, budget, separator=None) -> None:
    count = counter(kind, tok)
    sep = "\n\n" if separator is None else separator
    prompt, k = lesson11.few_shot(instruction, examples, query, budget, separator=separator, counter=kind)
    what = f"budget {budget} ({kind} counter, separator {sep!r})"
    assert count(prompt) <= budget, f"{what}: your prompt has {count(prompt)} tokens: over the budget (count the whole prompt, separators included)"
    want, want_k = expected_prompt(instruction, examples, query, count, budget, sep)
    kept = [promptkit_format(e) for e in examples[:k]]
    assert prompt == sep.join([instruction, *kept, f"Input: {query}\nOutput:"]), (
        f"{what}: the prompt is not instruction, the first {k} examples in the given order and the query, joined by "
        f"the separator; {first_difference(prompt, sep.join([instruction, *kept, f'Input: {query}' + chr(10) + 'Output:']))}"
    )
    assert k == want_k, (
        f"{what}: you kept {k} examples; the first {want_k} fit ({count(want)} tokens) and example {want_k + 1} would not"
        if k < want_k else f"{what}: you kept {k} examples but only the first {want_k} fit"
    )


@pytest.mark.points(3)
@pytest.mark.parametrize("kind", list(COUNTERS))
def test_few_shot_budget_order_and_maximal(lesson11: Lesson11, tok, kind: str):
    """Few-shot: within the budget, the first examples in order, as many as fit"""
    instruction, examples, query = few_shot_case(len(kind))
    count = counter(kind, tok)
    full = count("\n\n".join([instruction, *map(promptkit_format, examples), f"Input: {query}\nOutput:"]))
    base = count("\n\n".join([instruction, f"Input: {query}\nOutput:"]))
    for frac in (0.0, 0.2, 0.45, 0.7, 0.93, 1.0):
        check_few_shot(lesson11, tok, kind, instruction, examples, query, base + round(frac * (full - base)))
    check_few_shot(lesson11, tok, kind, instruction, examples, query, full + 50)  # everything fits


@pytest.mark.points(2)
def test_few_shot_keeps_the_first_not_the_shortest(lesson11: Lesson11, tok):
    """Few-shot: stops at the first example that does not fit (a long example early drops everything after it)"""
    examples = [("short one", "a"), ("short two", "b"), (" ".join(promptkit.WORDS[:60]), "c"), ("short four", "d"), ("five", "e")]
    instruction, query = "Copy the label.", "short query"
    count = counter("bpe", tok)
    budget = count("\n\n".join([instruction, *map(promptkit_format, examples[:2]), f"Input: {query}\nOutput:"])) + 30
    check_few_shot(lesson11, tok, "bpe", instruction, examples, query, budget)


@pytest.mark.points(2)
@pytest.mark.parametrize("separator", ["\n###\n", "\n\n\n\n"], ids=["hashes", "blank-lines"])
def test_few_shot_counts_separators(lesson11: Lesson11, tok, separator: str):
    """Few-shot: a longer separator is counted in the budget (token counts do not add up across a join)"""
    instruction, examples, query = few_shot_case(7, 10)
    count = counter("bpe", tok)
    for k in (2, 5, 8):  # budgets exactly at k examples with the separator
        budget = count(separator.join([instruction, *map(promptkit_format, examples[:k]), f"Input: {query}\nOutput:"]))
        check_few_shot(lesson11, tok, "bpe", instruction, examples, query, budget, separator)
        check_few_shot(lesson11, tok, "bpe", instruction, examples, query, budget - 1, separator)


@pytest.mark.points(1)
def test_few_shot_rejects_a_budget_below_the_bare_prompt(lesson11: Lesson11, tok):
    """Few-shot: ValueError when instruction and query alone exceed the budget"""
    instruction, examples, query = few_shot_case(3, 4)
    base = promptkit.count_tokens(tok, "\n\n".join([instruction, f"Input: {query}\nOutput:"]))
    error = lesson11.few_shot_error(instruction, examples, query, base - 1)
    assert error is not None and error.startswith("ValueError"), (
        f"a budget of {base - 1} tokens cannot hold instruction and query ({base} tokens): expected ValueError, got "
        f"{error or 'a prompt'}"
    )


# ---------------------------------------------------------------------------- the haystack
FILLER = promptkit.make_filler(700, 11, ((0.02, 0.07), (0.16, 0.2), (0.45, 0.5)))  # code blocks: chars are not tokens
NEEDLE = " The secret code of the blue tower is 4217. "
LENGTHS = (160, 600, 1500)
DEPTHS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
LENGTH_TOL = 2  # tokens: re-encoding the decoded context may merge a token or two at the needle's edges
DEPTH_TOL = 2  # tokens of haystack before the needle


def measure(tok, context: str, needle: str) -> tuple[int, int, int]:
    """(context tokens, haystack tokens before the needle, after it), re-encoded."""
    at = context.find(needle)
    assert at >= 0, f"the needle {needle!r} is not in the context (insert it unchanged)"
    assert context.count(needle) == 1, "the needle occurs more than once in the context"
    return (promptkit.count_tokens(tok, context), promptkit.count_tokens(tok, context[:at]),
            promptkit.count_tokens(tok, context[at + len(needle) :]))  # fmt: skip


@pytest.fixture(scope="module")
def haystacks(lesson11: Lesson11) -> dict[tuple[int, float], str]:
    return {(n, d): lesson11.haystack(FILLER, NEEDLE, n, d) for n in LENGTHS for d in DEPTHS}


@pytest.mark.points(3)
def test_haystack_length_in_tokens(haystacks, tok):
    """Haystack: the context has the target length in tokens (needle included)"""
    for (n, d), context in haystacks.items():
        got = promptkit.count_tokens(tok, context)
        assert abs(got - n) <= LENGTH_TOL, (
            f"target {n} tokens, depth {d}: the context has {got} tokens (tolerance {LENGTH_TOL}); "
            "the haystack is context_tokens minus the needle's tokens"
        )


@pytest.mark.points(3)
def test_haystack_needle_depth_in_tokens(haystacks, tok):
    """Haystack: the needle sits at the depth counted in tokens of the haystack"""
    needle_tokens = promptkit.count_tokens(tok, NEEDLE)
    for (n, d), context in haystacks.items():
        _, before, after = measure(tok, context, NEEDLE)
        want = d * (n - needle_tokens)
        assert abs(before - want) <= DEPTH_TOL, (
            f"target {n} tokens, depth {d}: {before} haystack tokens before the needle and {after} after; expected "
            f"{want:.1f} before (depth x haystack tokens; tolerance {DEPTH_TOL}): count the depth in tokens, not characters"
        )


@pytest.mark.points(2)
def test_haystack_exact_placement(haystacks, tok):
    """Haystack: the context is decode(hay[:p]) + needle + decode(hay[p:]) with p = depth x n rounded"""
    ids = tok.encode(FILLER, add_special_tokens=False)
    needle_tokens = promptkit.count_tokens(tok, NEEDLE)
    for (n, d), context in haystacks.items():
        h = n - needle_tokens
        hay = ids[:h]
        options = sorted({math.floor(d * h), math.ceil(d * h)})
        wants = {p: tok.decode(hay[:p]) + NEEDLE + tok.decode(hay[p:]) for p in options}
        assert context in wants.values(), (
            f"target {n} tokens, depth {d}: expected the needle after p = {' or '.join(map(str, options))} of the "
            f"{h} haystack tokens (the first tokens of the filler); {first_difference(context, wants[options[0]])}"
        )


@pytest.mark.points(1)
def test_haystack_repeats_a_short_filler(lesson11: Lesson11, tok):
    """Haystack: a filler shorter than the context is repeated (in tokens) to the target length"""
    short = promptkit.make_filler(6, 3)
    for n, d in ((300, 0.5), (500, 0.2)):
        context = lesson11.haystack(short, NEEDLE, n, d)
        got, before, _ = measure(tok, context, NEEDLE)
        assert abs(got - n) <= LENGTH_TOL + 2, f"a {promptkit.count_tokens(tok, short)}-token filler, target {n}: got {got} tokens"
        want = d * (n - promptkit.count_tokens(tok, NEEDLE))
        assert abs(before - want) <= DEPTH_TOL + 2, f"short filler, target {n}, depth {d}: {before} tokens before the needle, expected {want:.0f}"


# ---------------------------------------------------------------------------- scoring
SCORING = [  # (answer, expected, right?)
    ("4217", "4217", True),
    ("The code is 4217.", "4217", True),
    ("THE ANSWER IS: BLUE-FALCON!", "blue falcon", True),
    ("It is 'Blue   Falcon'", "Blue Falcon", True),
    ("blue falcon", "BLUE FALCON.", True),
    ("42170", "4217", False),
    ("14217", "4217", False),
    ("The code is 4 2 1 7", "4217", False),
    ("falcon blue", "blue falcon", False),
    ("bluefalcon", "blue falcon", False),
    ("", "4217", False),
    ("I could not find it.", "4217", False),
]


@pytest.mark.points(2)
def test_scoring_normalised_whole_word_match(lesson11: Lesson11):
    """Scoring: case and punctuation normalised, the expected answer as whole words"""
    for answer, expected, right in SCORING:
        got = lesson11.score(answer, expected)
        assert got is right, f"score_answer({answer!r}, {expected!r}) = {got}, expected {right}"


# ---------------------------------------------------------------------------- the sweep
SWEEP_FILLER = promptkit.make_filler(140, 5, ((0.1, 0.2),))
FACTS = [
    (" The secret code of the blue tower is 4217. ", "What is the secret code of the blue tower?", "4217"),
    (" The password of the old mill is blue falcon. ", "What is the password of the old mill?", "blue falcon"),
    (" The harbour master keeps the golden key. ", "Who keeps the golden key?", "the harbour master"),
]
SWEEP_DEPTHS = [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]
SWEEP_LENGTHS = [120, 400, 900]
BLIND_SPOTS = {  # (min_tokens, lo, hi, facts missed); edges >= 0.05 from the depths, >= 100 tokens from the lengths
    "lost-in-the-middle": [(0, 0.4, 0.6, [0]), (300, 0.2, 0.8, [0, 1]), (700, 0.05, 0.85, [0, 1, 2])],
    "forgets-the-start": [(250, 0.0, 0.2, [1, 2]), (600, 0.0, 0.4, [0, 1, 2]), (0, 0.95, 1.0, [2])],
}


def expected_grid(rules: list) -> list[list[float]]:
    def missed(i: int, n: int, d: float) -> bool:
        return any(n >= m and lo <= d <= hi and i in f for m, lo, hi, f in rules)

    return [[sum(not missed(i, n, d) for i in range(len(FACTS))) / len(FACTS) for d in SWEEP_DEPTHS] for n in SWEEP_LENGTHS]


@pytest.mark.points(4)
@pytest.mark.parametrize("rules", list(BLIND_SPOTS))
def test_sweep_recovers_the_scripted_curve(lesson11: Lesson11, rules: str):
    """Sweep: the accuracy grid (lengths x depths) equals the scripted model's known recall curve"""
    grid, calls = lesson11.sweep(SWEEP_FILLER, FACTS, SWEEP_DEPTHS, SWEEP_LENGTHS, BLIND_SPOTS[rules])
    cells = len(SWEEP_DEPTHS) * len(SWEEP_LENGTHS) * len(FACTS)
    assert type(calls) is list and len(calls) == cells, f"the model was asked {len(calls)} times; expected once per cell and fact ({cells})"
    want = expected_grid(BLIND_SPOTS[rules])
    wrong = [(SWEEP_LENGTHS[i], SWEEP_DEPTHS[j], grid[i][j], want[i][j]) for i in range(len(want)) for j in range(len(want[0]))
             if abs(grid[i][j] - want[i][j]) > 1e-9]  # fmt: skip
    assert not wrong, (
        f"blind spots {rules!r}: {len(wrong)} cells differ from the known curve; first (tokens, depth, got, expected): "
        f"{wrong[0]}; rows are lengths, columns depths, a cell is the share of facts answered right"
    )
