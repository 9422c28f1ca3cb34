"""Lesson 11: prompting, in-context learning and long context.

Three tools that every use of a chat model rests on:

1. Rendering a conversation into the one string the model was trained on: the course's ChatML
   template (``render_chatml``) and Nemotron 3 Nano's own template (``render_nemotron``: system
   prompt, the reasoning switch, earlier turns' reasoning truncated, tool definitions, tool calls
   and tool responses). Both must equal ``tokenizer.apply_chat_template(..., tokenize=False)``
   character for character.
2. A few-shot prompt under a token budget (``build_few_shot_prompt``): as many examples as fit,
   in the order given, counted with the real token counter on the whole prompt.
3. A needle-in-a-haystack harness: ``build_haystack`` (a fact at a depth, counted in tokens, in a
   context of a target length), ``score_answer`` (normalised match) and ``needle_sweep`` (depth x
   length, a grid of accuracies).

A message is a dict: ``{"role": "system" | "user" | "assistant" | "tool", "content": str}``; an
assistant message may carry ``"reasoning_content"`` (str) and ``"tool_calls"``
(``[{"type": "function", "function": {"name": str, "arguments": dict}}]``). The exact subset of
Nemotron's template that ``render_nemotron`` covers is in lessons/lesson_11.md, section 3.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

# The fixed instructions Nemotron 3 Nano's template writes after the tool definitions (copied from it).
TOOL_INSTRUCTIONS = (
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n<tool_call>\n"
    "<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow the specified "
    "format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n- You may provide optional reasoning for your function call in "
    "natural language BEFORE the function call, but NOT after\n- If there is no function call available, answer "
    "the question like normal with your current knowledge and do not tell the user about function calls\n"
    "</IMPORTANT>"
)


# ----------------------------------------------------------------------------- 1. chat templates
def render_chatml(messages: list[dict], add_generation_prompt: bool = False, enable_thinking: bool = True) -> str:
    """The course's ChatML template (``promptkit.COURSE_CHATML_TEMPLATE``) as a Python function.

    Every message becomes ``<|im_start|>{role}\\n{content}<|im_end|>\\n``, in order. With
    ``add_generation_prompt`` the string ends with ``<|im_start|>assistant\\n<think>\\n`` (thinking on:
    the model starts reasoning) or ``<|im_start|>assistant\\n<think></think>`` (thinking off: an empty
    reasoning block, the model answers at once).
    """
    # BEGIN SOLUTION
    out = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n" + ("<think>\n" if enable_thinking else "<think></think>"))
    return "".join(out)
    # END SOLUTION


def _value(value: object) -> str:
    """A value as Nemotron's template writes it: JSON for dicts and lists, ``str`` for the rest."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)


def _extra_keys(fields: dict, handled: tuple[str, ...]) -> str:
    """Keys the template has no slot for, each as ``\\n<key>value</key>``, in the dict's order."""
    return "".join(f"\n<{key}>{_value(value)}</{key}>" for key, value in fields.items() if key not in handled)


def format_tools(tools: list[dict]) -> str:
    """The tool definitions Nemotron 3 Nano writes into the system turn (lesson section 3).

    ``"# Tools\\n\\nYou have access to the following functions:\\n\\n<tools>"``, then per tool
    ``\\n<function>\\n<name>NAME</name>``, ``\\n<description>...</description>`` (stripped, if given),
    ``\\n<parameters>``, per property ``\\n<parameter>\\n<name>..</name>`` with ``\\n<type>``,
    ``\\n<description>`` (stripped), ``\\n<enum>`` (JSON) and any other key of the property, then
    ``\\n</parameter>``; the parameters' other keys; ``\\n<required>`` (JSON) if given;
    ``\\n</parameters>``; the tool's other keys; ``\\n</function>``. Then ``\\n</tools>`` and
    ``TOOL_INSTRUCTIONS``. A tool is ``{"type": "function", "function": {...}}`` or the inner dict.
    """
    # BEGIN SOLUTION
    out = ["# Tools\n\nYou have access to the following functions:\n\n<tools>"]
    for tool in tools:
        tool = tool.get("function", tool)
        out.append(f"\n<function>\n<name>{tool['name']}</name>")
        if "description" in tool:
            out.append(f"\n<description>{tool['description'].strip()}</description>")
        out.append("\n<parameters>")
        params = tool.get("parameters")
        if isinstance(params, dict) and isinstance(params.get("properties"), dict):
            for name, fields in params["properties"].items():
                out.append(f"\n<parameter>\n<name>{name}</name>")
                if "type" in fields:
                    out.append(f"\n<type>{fields['type']}</type>")
                if "description" in fields:
                    out.append(f"\n<description>{fields['description'].strip()}</description>")
                if "enum" in fields:
                    out.append(f"\n<enum>{json.dumps(fields['enum'], ensure_ascii=False)}</enum>")
                out.append(_extra_keys(fields, ("name", "type", "description", "enum")))
                out.append("\n</parameter>")
        if isinstance(params, dict):
            out.append(_extra_keys(params, ("type", "properties", "required")))
            if "required" in params:
                out.append(f"\n<required>{json.dumps(params['required'], ensure_ascii=False)}</required>")
        out.append("\n</parameters>")
        out.append(_extra_keys(tool, ("type", "name", "description", "parameters")))
        out.append("\n</function>")
    out.append("\n</tools>" + TOOL_INSTRUCTIONS)
    return "".join(out)
    # END SOLUTION


def format_tool_call(call: dict) -> str:
    """One assistant tool call in Nemotron's format: ``<tool_call>\\n<function=NAME>\\n``, per argument
    ``<parameter=KEY>\\nVALUE\\n</parameter>\\n`` (dicts and lists as JSON, other values ``str()``),
    then ``</function>\\n</tool_call>\\n``. ``call`` is ``{"type": "function", "function": {...}}`` or the inner dict.
    """
    # BEGIN SOLUTION
    call = call.get("function", call)
    args = "".join(f"<parameter={k}>\n{_value(v)}\n</parameter>\n" for k, v in call.get("arguments", {}).items())
    return f"<tool_call>\n<function={call['name']}>\n{args}</function>\n</tool_call>\n"
    # END SOLUTION


def render_nemotron(
    messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = False,
    enable_thinking: bool = True, truncate_history_thinking: bool = True,
) -> str:  # fmt: skip
    """Nemotron 3 Nano's chat template (trl's ``nemotron_3_nano.jinja``), for the subset in lesson section 3.

    1. The system turn is always written: ``<|im_start|>system\\n`` + the first message's content if
       it is a system message (else nothing) + (with tools: ``\\n\\n`` if that content is non-empty,
       then ``format_tools(tools)``) + ``<|im_end|>\\n``.
    2. A user message: ``<|im_start|>user\\n{content}<|im_end|>\\n``.
    3. An assistant message: its text is ``<think>\\n{reasoning_content}\\n</think>\\n{content}`` when it
       has non-blank ``reasoning_content``, else ``<think></think>{content}``. It is *historical* when
       ``truncate_history_thinking`` is on and a user message comes after it; then its reasoning is
       dropped: the text becomes ``<think></think>`` + what followed ``</think>``.
       Without tool calls: ``<|im_start|>assistant\\n{text.strip()}<|im_end|>\\n`` (historical: strip
       after truncating). With tool calls: ``<|im_start|>assistant\\n`` + ``text.strip()`` (historical:
       ``<think></think>`` + the stripped part after ``</think>``) + ``\\n``, then ``format_tool_call``
       of each call, then ``<|im_end|>\\n``.
    4. Consecutive tool messages share one user turn: the first opens ``<|im_start|>user\\n``, each is
       ``<tool_response>\\n{content}\\n</tool_response>\\n``, the last closes ``<|im_end|>\\n``.
    5. ``add_generation_prompt``: ``<|im_start|>assistant\\n<think>\\n`` (thinking on) or
       ``<|im_start|>assistant\\n<think></think>`` (off).
    """
    # BEGIN SOLUTION
    system = ""
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    out = ["<|im_start|>system\n" + system]
    if tools:
        out.append(("\n\n" if system else "") + format_tools(tools))
    out.append("<|im_end|>\n")
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "user":
            out.append(f"<|im_start|>user\n{m['content']}<|im_end|>\n")
        elif role == "tool":
            if i > 0 and messages[i - 1]["role"] != "tool":
                out.append("<|im_start|>user\n")
            out.append(f"<tool_response>\n{m['content']}\n</tool_response>\n")
            if i == len(messages) - 1 or messages[i + 1]["role"] != "tool":
                out.append("<|im_end|>\n")
        elif role == "assistant":
            content = m.get("content") or ""
            reasoning = m.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning.strip():
                text = f"<think>\n{reasoning}\n</think>\n{content}"
            else:
                text = "<think></think>" + content
            historical = truncate_history_thinking and i < last_user
            answer = text.split("</think>")[-1]  # what follows the reasoning
            if m.get("tool_calls"):
                head = "<think></think>" + answer.strip() if historical else text.strip()
                calls = "".join(format_tool_call(c) for c in m["tool_calls"])
                out.append(f"<|im_start|>assistant\n{head}\n{calls}<|im_end|>\n")
            else:
                body = ("<think></think>" + answer).strip() if historical else text.strip()
                out.append(f"<|im_start|>assistant\n{body}<|im_end|>\n")
        else:
            raise ValueError(f"role {role!r} is outside the lesson's subset (system first, then user, assistant, tool)")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n" + ("<think>\n" if enable_thinking else "<think></think>"))
    return "".join(out)
    # END SOLUTION


# ----------------------------------------------------------------------------- 2. few-shot prompts
def format_example(example: tuple[str, str]) -> str:
    """One demonstration: ``"Input: {x}\\nOutput: {y}"``."""
    x, y = example
    return f"Input: {x}\nOutput: {y}"


def format_query(query: str) -> str:
    """The query, left open for the model: ``"Input: {query}\\nOutput:"``."""
    return f"Input: {query}\nOutput:"


def build_few_shot_prompt(
    instruction: str, examples: list[tuple[str, str]], query: str, count_tokens: Callable[[str], int], budget: int,
    separator: str = "\n\n",
) -> tuple[str, int]:  # fmt: skip
    """A few-shot prompt that fits ``budget`` tokens: (prompt, number of examples kept).

    The prompt is ``separator.join([instruction, format_example(e_1), ..., format_example(e_k),
    format_query(query)])`` with ``e_1 .. e_k`` the *first* k examples in the order given (the caller
    orders them, e.g. nearest first), and k the largest such that ``count_tokens(prompt) <= budget``
    (stop at the first example that does not fit: the rest are dropped). Count the whole prompt,
    separators included: token counts do not add up across a join. Raise ``ValueError`` if even the
    prompt without examples exceeds the budget.
    """
    # BEGIN SOLUTION
    kept: list[str] = []
    if count_tokens(separator.join([instruction, format_query(query)])) > budget:
        raise ValueError(f"instruction and query alone exceed the budget of {budget} tokens")
    for example in examples:
        trial = separator.join([instruction, *kept, format_example(example), format_query(query)])
        if count_tokens(trial) > budget:
            break
        kept.append(format_example(example))
    return separator.join([instruction, *kept, format_query(query)]), len(kept)
    # END SOLUTION


# ----------------------------------------------------------------------------- 3. needle in a haystack
def needle_prompt(context: str, question: str) -> str:
    """The prompt the model gets: the context, then ``"\\n\\nQuestion: {question}\\nAnswer:"``."""
    return f"{context}\n\nQuestion: {question}\nAnswer:"


def build_haystack(tokenizer, filler: str, needle: str, context_tokens: int, depth: float) -> str:
    """A context of about ``context_tokens`` tokens with ``needle`` at ``depth`` (0 = start, 1 = end).

    Work in token ids of ``tokenizer`` (``encode(text, add_special_tokens=False)``, ``decode(ids)``):
    ``n = context_tokens - len(encode(needle))`` haystack tokens, the first ``n`` of ``encode(filler)``
    (its ids repeated if the filler is too short); the needle goes after ``p = round(depth * n)`` of
    them: return ``decode(hay[:p]) + needle + decode(hay[p:])``. The depth is counted in *tokens*,
    not characters.
    """
    # BEGIN SOLUTION
    ids = tokenizer.encode(filler, add_special_tokens=False)
    n = context_tokens - len(tokenizer.encode(needle, add_special_tokens=False))
    if n < 0 or not ids:
        raise ValueError(f"the needle does not fit in {context_tokens} tokens, or the filler is empty")
    hay = (ids * (n // len(ids) + 1))[:n]
    p = round(depth * n)
    return tokenizer.decode(hay[:p]) + needle + tokenizer.decode(hay[p:])
    # END SOLUTION


def normalize_answer(text: str) -> str:
    """Lower case, every run of characters other than ``a-z`` and ``0-9`` replaced by one space, stripped."""
    # BEGIN SOLUTION
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())
    # END SOLUTION


def score_answer(answer: str, expected: str) -> bool:
    """True iff the normalised ``expected`` occurs in the normalised ``answer`` as whole words.

    ``"The answer is: BLUE-FALCON!"`` matches ``"blue falcon"``; ``"4217"`` does not match ``"421"``.
    """
    # BEGIN SOLUTION
    want = normalize_answer(expected)
    return bool(want) and f" {want} " in f" {normalize_answer(answer)} "
    # END SOLUTION


def needle_sweep(
    generate: Callable[[str], str], tokenizer, filler: str, facts: list[tuple[str, str, str]], depths: list[float],
    lengths: list[int],
) -> list[list[float]]:  # fmt: skip
    """Accuracy over a grid: ``grid[i][j]`` for ``lengths[i]`` tokens and ``depths[j]``.

    For every cell and every fact ``(needle, question, answer)``: build the haystack, ask
    ``generate(needle_prompt(context, question))`` and score it with ``score_answer``; the cell is the
    share of facts answered right (a float in [0, 1]). Rows are lengths, columns are depths.
    """
    # BEGIN SOLUTION
    grid = []
    for length in lengths:
        row = []
        for depth in depths:
            right = 0
            for needle, question, answer in facts:
                context = build_haystack(tokenizer, filler, needle, length, depth)
                right += score_answer(generate(needle_prompt(context, question)), answer)
            row.append(right / len(facts))
        grid.append(row)
    return grid
    # END SOLUTION
