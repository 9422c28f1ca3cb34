"""Lesson 11, an alternative correct submission (not the reference): it must keep full marks.

Written differently on purpose: the renderers build each turn with small per-role functions, the
few-shot builder binary-searches k (token counts grow with k), the haystack cuts the decoded text at
the character offset of p tokens, the scorer compares word lists, and the sweep fills a dict first.
"""

from __future__ import annotations

import json
import re

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
START, END = "<|im_start|>", "<|im_end|>\n"
EMPTY_THINK = "<think></think>"


def _gen(enable_thinking: bool) -> str:
    return START + "assistant\n" + ("<think>\n" if enable_thinking else EMPTY_THINK)


def render_chatml(messages, add_generation_prompt=False, enable_thinking=True):
    text = ""
    for m in messages:
        text += START + m["role"] + "\n" + m["content"] + END
    return text + (_gen(enable_thinking) if add_generation_prompt else "")


def _v(x):
    if isinstance(x, (dict, list)):
        return json.dumps(x, ensure_ascii=False)
    return f"{x}"


def _extras(d, skip):
    return "".join(f"\n<{k}>{_v(v)}</{k}>" for k, v in d.items() if k not in skip)


def format_tools(tools):
    s = "# Tools\n\nYou have access to the following functions:\n\n<tools>"
    for t in tools:
        f = t["function"] if "function" in t else t
        s += "\n<function>\n<name>{}</name>".format(f["name"])
        if "description" in f:
            s += "\n<description>{}</description>".format(f["description"].strip())
        s += "\n<parameters>"
        p = f.get("parameters")
        props = p.get("properties") if isinstance(p, dict) else None
        for name, fld in (props.items() if isinstance(props, dict) else []):
            s += f"\n<parameter>\n<name>{name}</name>"
            s += "".join(
                [
                    "\n<type>{}</type>".format(fld["type"]) if "type" in fld else "",
                    "\n<description>{}</description>".format(fld["description"].strip()) if "description" in fld else "",
                    "\n<enum>{}</enum>".format(json.dumps(fld["enum"], ensure_ascii=False)) if "enum" in fld else "",
                ]
            )
            s += _extras(fld, {"name", "type", "description", "enum"}) + "\n</parameter>"
        if isinstance(p, dict):
            s += _extras(p, {"type", "properties", "required"})
            if "required" in p:
                s += "\n<required>" + json.dumps(p["required"], ensure_ascii=False) + "</required>"
        s += "\n</parameters>" + _extras(f, {"type", "name", "description", "parameters"}) + "\n</function>"
    return s + "\n</tools>" + TOOL_INSTRUCTIONS


def format_tool_call(call):
    f = call["function"] if "function" in call else call
    lines = ["<tool_call>", "<function={}>".format(f["name"])]
    for k, v in (f.get("arguments") or {}).items():
        lines += [f"<parameter={k}>", _v(v), "</parameter>"]
    lines += ["</function>", "</tool_call>"]
    return "\n".join(lines) + "\n"


def render_nemotron(messages, tools=None, add_generation_prompt=False, enable_thinking=True, truncate_history_thinking=True):
    msgs = list(messages)
    sys_text = msgs.pop(0)["content"] if msgs and msgs[0]["role"] == "system" else ""
    if tools:
        sys_text = sys_text + "\n\n" + format_tools(tools) if sys_text else format_tools(tools)
    parts = [START + "system\n" + sys_text + END]
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    last_user = users[-1] if users else -1
    for i, m in enumerate(msgs):
        if m["role"] == "user":
            parts.append(START + "user\n" + m["content"] + END)
            continue
        if m["role"] == "tool":
            opens = i > 0 and msgs[i - 1]["role"] != "tool"
            closes = i + 1 == len(msgs) or msgs[i + 1]["role"] != "tool"
            parts.append((START + "user\n" if opens else "") + "<tool_response>\n" + m["content"] + "\n</tool_response>\n"
                         + (END if closes else ""))  # fmt: skip
            continue
        content = m.get("content") or ""
        r = m.get("reasoning_content")
        has_r = isinstance(r, str) and r.strip() != ""
        after = ("\n" + content) if has_r else content  # what follows </think>
        full = ("<think>\n" + r + "\n</think>" if has_r else EMPTY_THINK) + after
        old = truncate_history_thinking and i < last_user
        if m.get("tool_calls"):
            head = (EMPTY_THINK + after.strip()) if old else full.strip()
            parts.append(START + "assistant\n" + head + "\n" + "".join(map(format_tool_call, m["tool_calls"])) + END)
        else:
            parts.append(START + "assistant\n" + (EMPTY_THINK + after if old else full).strip() + END)
    if add_generation_prompt:
        parts.append(_gen(enable_thinking))
    return "".join(parts)


def format_example(example):
    x, y = example
    return f"Input: {x}\nOutput: {y}"


def format_query(query):
    return f"Input: {query}\nOutput:"


def build_few_shot_prompt(instruction, examples, query, count_tokens, budget, separator="\n\n"):
    blocks = [format_example(e) for e in examples]

    def prompt(k):
        return separator.join([instruction, *blocks[:k], format_query(query)])

    if count_tokens(prompt(0)) > budget:
        raise ValueError("the bare prompt is over budget")
    lo, hi = 0, len(blocks)  # the largest k that fits (counts grow with k)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(prompt(mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return prompt(lo), lo


def needle_prompt(context, question):
    return f"{context}\n\nQuestion: {question}\nAnswer:"


def build_haystack(tokenizer, filler, needle, context_tokens, depth):
    ids = tokenizer.encode(filler, add_special_tokens=False)
    n = context_tokens - len(tokenizer.encode(needle, add_special_tokens=False))
    while len(ids) < n:
        ids = ids + ids
    text = tokenizer.decode(ids[:n])
    cut = len(tokenizer.decode(ids[: int(depth * n + 0.5)]))
    return text[:cut] + needle + text[cut:]


def normalize_answer(text):
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def score_answer(answer, expected):
    want, got = normalize_answer(expected).split(), normalize_answer(answer).split()
    return bool(want) and any(got[i : i + len(want)] == want for i in range(len(got) - len(want) + 1))


def needle_sweep(generate, tokenizer, filler, facts, depths, lengths):
    acc = {}
    for j, d in enumerate(depths):
        for i, n in enumerate(lengths):
            hits = [score_answer(generate(needle_prompt(build_haystack(tokenizer, filler, nd, n, d), q)), a) for nd, q, a in facts]
            acc[i, j] = sum(hits) / len(hits)
    return [[acc[i, j] for j in range(len(depths))] for i in range(len(lengths))]
