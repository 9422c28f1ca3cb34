"""Lesson 18 capstone: an agentic RAG app over the course's own texts (lessons/lesson_18.md, section 9).

Run it from labs/lesson_18/ (``python lab_experiment.py``) or call ``main(config, seed)`` from the
notebook. Every call is one labkit run under ``runs/``. The app is your ``run_agent`` with three tools:

- ``search(query, k)``: lesson 17's retriever over lesson 17's corpus (``exercises/lesson_17/data/corpus.jsonl``),
  imported from ``exercises.lesson_17.rag`` (your own lesson 17). Without it (lesson 17 not done, or not in
  this project) a small keyword retriever stands in and the run logs ``retriever = "fallback"``;
- ``calculator(expression)``: arithmetic on + - * / and parentheses (errors go back to the model);
- ``remember(key, value)``: your ``Memory``; the first conversation stores the citation style, every
  later conversation starts from ``memory.recall()``.

The model: ``config["model"]`` "scripted" (default) is ``CapstonePolicy``, a deterministic stand-in that
searches, cites and calculates (so the harness has something to measure); any other value is a labkit
backend spec ("openai:http://127.0.0.1:8000/v1#MODEL", "transformers:/path"), whose calls are logged
into the run (``backend_calls.jsonl``). The judge: ``config["judge"]`` "scripted" (keyword overlap with
the gold passage) or a backend spec. Evaluated with a non-LLM metric (retrieval hit rate and exact
match) and an LLM-judge rubric (pairwise, position swapped, against a no-retrieval baseline).
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

from labkit import exercises, make_backend, new_figure, start_run, write_csv

exercises("18", __file__)
from agents import Memory, judge_report, run_agent, tool_schema  # noqa: E402

DEFAULT_CONFIG = {
    "model": "scripted",  # "scripted" (CapstonePolicy) or a backend spec
    "judge": "scripted",  # "scripted" (keyword overlap) or a backend spec
    "retriever": "bm25",  # "bm25" or "hybrid" (lesson 17's HybridRetriever: loads the shipped MiniLM)
    "n_questions": 12,
    "n_arithmetic": 4,
    "k": 3,
    "max_steps": 4,
    "budgets": [1, 2, 3, 4, 6],
    "max_tokens": 128,
    "judge_max_tokens": 8,  # "1", "2" or "tie"; a model that starts a tool call needs room to close it
}
FALLBACK_CORPUS = [
    {"id": "F-000", "text": "A tokenizer turns text into integers; byte-pair encoding learns merges from a corpus."},
    {"id": "F-001", "text": "Attention weights are a softmax of scaled dot products between queries and keys."},
    {"id": "F-002", "text": "LoRA trains a low-rank update B A beside a frozen weight, scaled by alpha over r."},
    {
        "id": "F-003",
        "text": "BM25 scores a passage by term frequency, saturated by k1, and inverse document frequency.",
    },
    {"id": "F-004", "text": "An agent calls tools in a loop until it answers or its step budget runs out."},
    {"id": "F-005", "text": "DPO optimises a policy directly on preference pairs against a frozen reference model."},
]


# ---------------------------------------------------------------------------- corpus and retriever
def find_corpus(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        path = folder / "exercises" / "lesson_17" / "data" / "corpus.jsonl"
        if path.is_file():
            return path
    return None


def load_corpus(start: Path) -> list[dict]:
    path = find_corpus(start)
    if path is None:
        return list(FALLBACK_CORPUS)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class KeywordRetriever:
    """The stand-in when lesson 17's retriever is absent: passages ranked by shared words (ties by index)."""

    def __init__(self, texts: list[str]) -> None:
        self.docs = [set(_words(t)) for t in texts]

    def search(self, query: str, k: int = 5) -> list[int]:
        q = set(_words(query))
        return sorted(range(len(self.docs)), key=lambda i: (-len(q & self.docs[i]), i))[:k]


def make_retriever(texts: list[str], kind: str, start: Path):
    """Lesson 17's retriever (from ``exercises.lesson_17.rag``) -> (search(query, k) -> indices, its name)."""
    root = next((f for f in (start, *start.parents) if (f / "exercises" / "lesson_17").is_dir()), None)
    if root is not None and str(root) not in sys.path:
        sys.path.append(str(root))
    try:
        from exercises.lesson_17 import rag

        if kind == "hybrid":
            hybrid = rag.HybridRetriever(texts)
            hybrid.search("warm up", 1)
            return (lambda q, k: list(hybrid.search(q, k))), "lesson17-hybrid"
        bm25 = rag.BM25([rag.tokenize(t) for t in texts])
        bm25.get_scores(rag.tokenize("warm up"))

        def search(query: str, k: int) -> list[int]:
            scores = bm25.get_scores(rag.tokenize(query))
            return [int(i) for i in sorted(range(len(texts)), key=lambda i: (-float(scores[i]), i))[:k]]

        return search, "lesson17-bm25"
    except (ImportError, NotImplementedError, AttributeError, OSError):
        fallback = KeywordRetriever(texts)
        return fallback.search, "fallback"


# ---------------------------------------------------------------------------- tools
def safe_eval(expression: str) -> float:
    """+ - * / and parentheses on numbers, nothing else (no names, no calls)."""
    if not re.fullmatch(r"[\d\s.+\-*/()]+", expression):
        raise ValueError(f"only numbers and + - * / ( ) are allowed, got {expression!r}")
    return eval(expression, {"__builtins__": {}}, {})


def make_tools(corpus: list[dict], search_fn, memory: Memory, log: list) -> dict:
    def search(query: str, k: int = 3) -> str:
        """Search the course notes for passages.

        Args:
            query: What to look for, in plain words.
            k: How many passages to return (choices: [1, 2, 3, 5])
        """
        hits = search_fn(query, k)
        log.append({"tool": "search", "query": query, "ids": [corpus[i]["id"] for i in hits]})
        return "\n".join(f"[{corpus[i]['id']}] {corpus[i]['text']}" for i in hits)

    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression.

        Args:
            expression: Numbers with + - * / and parentheses, e.g. (2 + 3) * 4.
        """
        log.append({"tool": "calculator", "expression": expression})
        value = safe_eval(expression)
        return f"{value:g}"

    return {"search": search, "calculator": calculator, "remember": memory.remember}


# ---------------------------------------------------------------------------- models
def _call_text(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


class CapstonePolicy:
    """A deterministic stand-in for a tool-using model (JSON tool-call format). "remember ...": calls remember;
    "Compute E": calls the calculator (with a deliberate typo the first time when ``typo``, to exercise the
    error path); any other question: searches, then answers with the first passage, cited in the style it
    finds in memory ("[id]" by default)."""

    def __init__(self, k: int, typo: bool = True) -> None:
        self.k, self.typo = k, typo

    def __call__(self, messages: list[dict]) -> str:
        user = next(m["content"] for m in messages if m["role"] == "user")
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        last = messages[-1]
        if user.lower().startswith("remember"):
            if last["role"] == "tool":
                return "Noted."
            key, _, value = user.split(" ", 1)[1].partition("=")
            return _call_text("remember", {"key": key.strip(), "value": value.strip()})
        if user.startswith("Compute "):
            expression = user.removeprefix("Compute ").rstrip("?")
            if last["role"] == "tool" and not last["content"].startswith("error"):
                return f"The result is {last['content']}."
            errored = last["role"] == "tool"
            bad = self.typo and not errored
            return _call_text("calculator", {"expression": expression + (" +" if bad else "")})
        if last["role"] == "tool" and not last["content"].startswith("error"):
            first = last["content"].splitlines()[0] if last["content"] else ""
            m = re.match(r"\[([^\]]+)\] (.*)", first)
            if not m:
                return "I found nothing."
            cite = f"({m.group(1)})" if "- citation: parentheses" in system else f"[{m.group(1)}]"
            return f"{m.group(2)} {cite}"
        return _call_text("search", {"query": user, "k": self.k})


def _to_openai(messages: list[dict]) -> list[dict]:
    """run_agent's messages as OpenAI chat messages (tool calls with ids, tool results pointing at them)."""
    out, ids = [], []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            ids = [f"call_{len(out)}_{i}" for i in range(len(m["tool_calls"]))]
            out.append({"role": "assistant", "content": m.get("content") or "",
                        "tool_calls": [{"id": i, "type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                                       for i, c in zip(ids, m["tool_calls"], strict=True)]})  # fmt: skip
        elif m["role"] == "tool":
            out.append({"role": "tool", "content": m["content"], "tool_call_id": ids.pop(0) if ids else "call_none"})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def backend_model(backend, schemas: list[dict], max_tokens: int):
    """A labkit backend as ``model(messages) -> completion``: its parsed tool calls written back as JSON calls."""

    offered = [
        {"type": "function", "function": {k: v for k, v in s["function"].items() if k != "return"}} for s in schemas
    ]

    def model(messages: list[dict]) -> str:  # OpenAI's tool format has no "return" entry
        result = backend.chat(_to_openai(messages), tools=offered, max_tokens=max_tokens)
        calls = "".join("\n" + _call_text(tc.name, tc.arguments) for tc in result.tool_calls)
        return (result.text or "") + calls

    return model


def overlap_judge(gold: dict[str, str]):
    """A scripted pairwise judge: the answer sharing more words with the question's gold passage wins
    ("1" / "2" / "tie"); like many LLM judges it leans to the first answer when the two are close."""

    def judge(question: str, first: str, second: str) -> str:
        ref = set(_words(gold.get(question, "")))
        s1, s2 = len(ref & set(_words(first))), len(ref & set(_words(second)))
        if s1 == s2:
            return "tie"
        return "2" if s2 >= s1 + 2 else "1"

    return judge


def backend_judge(backend, max_tokens: int = 8):
    """An LLM as the pairwise judge: asked for 1, 2 or tie; anything else reads as tie. A judge answers in
    words: generation stops where a tool call would start (no tools are offered)."""

    def judge(question: str, first: str, second: str) -> str:
        prompt = (f"Question: {question}\nAnswer 1: {first}\nAnswer 2: {second}\n"
                  "Which answer is more correct and better supported? Reply with exactly 1, 2 or tie.")  # fmt: skip
        reply = backend.chat([{"role": "user", "content": prompt}], max_tokens=max_tokens, stop=("<tool_call>",))
        text = reply.text.strip().lower()
        return "1" if text.startswith("1") else "2" if text.startswith("2") else "tie"

    return judge


# ---------------------------------------------------------------------------- the evaluation set
def make_questions(corpus: list[dict], n: int, n_arith: int, rng: random.Random) -> list[dict]:
    """Retrieval questions (a passage's own words as the query: its id is the gold citation) and arithmetic ones."""
    picks = rng.sample(range(len(corpus)), min(n, len(corpus)))
    out = []
    for i in picks:
        words = corpus[i]["text"].split()
        start = rng.randint(0, max(0, len(words) - 12))
        out.append({"kind": "retrieval", "question": "What do the notes say about: " + " ".join(words[start : start + 12]) + "?",
                    "gold": corpus[i]["id"], "gold_text": corpus[i]["text"]})  # fmt: skip
    for _ in range(n_arith):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        out.append(
            {
                "kind": "arithmetic",
                "question": f"Compute ({a} + {b}) * {c}?",
                "gold": f"{(a + b) * c:g}",
                "gold_text": "",
            }
        )
    return out


def exact_match(question: dict, answer: str | None) -> float:
    if answer is None:
        return 0.0
    if question["kind"] == "retrieval":
        return float(question["gold"] in re.findall(r"[\[(]([A-Za-z0-9\-]+)[\])]", answer))
    numbers = re.findall(r"-?\d+(?:\.\d+)?", answer)
    return float(bool(numbers) and numbers[-1] == question["gold"])


def run_app(model, tools, questions, memory, max_steps, search_log):
    rows, answers = [], []
    for qi, q in enumerate(questions):
        start = len(search_log)
        out = run_agent(model, tools, [{"role": "user", "content": q["question"]}], fmt="json",
                        max_steps=max_steps, memory=memory)  # fmt: skip
        retrieved = [i for e in search_log[start:] if e["tool"] == "search" for i in e["ids"]]
        errors = sum(1 for m in out["messages"] if m["role"] == "tool" and str(m["content"]).startswith("error"))
        hit = float(q["gold"] in retrieved) if q["kind"] == "retrieval" else float("nan")
        rows.append({"question_id": qi, "kind": q["kind"], "retrieval_hit": hit, "exact_match": exact_match(q, out["answer"]),
                     "steps": out["steps"], "tool_errors": errors, "answered": float(out["answer"] is not None)})  # fmt: skip
        answers.append(out["answer"] or "")
    return rows, answers


def _mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else 0.0


def main(config: dict | None = None, seed: int = 0, model=None, judge=None):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("agentic-rag-capstone", config, seeds=[seed], entrypoint=main)
    rng = random.Random(seed)
    here = Path(__file__).resolve().parent
    corpus = load_corpus(here)
    search_fn, retriever = make_retriever([p["text"] for p in corpus], config["retriever"], here)
    run.log(kind="setup", retriever=retriever, passages=len(corpus))
    questions = make_questions(corpus, config["n_questions"], config["n_arithmetic"], rng)
    search_log: list = []
    memory = Memory()
    tools = make_tools(corpus, search_fn, memory, search_log)
    if model is None:
        if config["model"] == "scripted":
            model = CapstonePolicy(config["k"])
        else:
            backend = make_backend(config["model"], log=run, default_settings={"max_tokens": config["max_tokens"]})
            model = backend_model(backend, [tool_schema(f) for f in tools.values()], config["max_tokens"])
    try:
        # memory: the first conversation stores a preference; every later one starts from it
        first = run_agent(model, tools, [{"role": "user", "content": "remember citation = brackets"}], fmt="json",
                          max_steps=config["max_steps"], memory=memory)  # fmt: skip
        run.log(kind="memory", answer=first["answer"], recall=memory.recall())
        rows, answers = run_app(model, tools, questions, memory, config["max_steps"], search_log)
        # the step budget sweep (a fresh memory each time, the same questions)
        sweep = []
        for budget in config["budgets"]:
            b_rows, _ = run_app(model, tools, questions, Memory(), budget, [])
            sweep.append({"max_steps": budget, "exact_match": _mean([r["exact_match"] for r in b_rows]),
                          "answered": _mean([r["answered"] for r in b_rows])})  # fmt: skip
        # the judge: the app's answers against a no-retrieval baseline, both orders
        if judge is None:
            if config["judge"] == "scripted":
                judge = overlap_judge({q["question"]: q["gold_text"] or q["gold"] for q in questions})
            else:
                judge = backend_judge(make_backend(config["judge"], log=run), config["judge_max_tokens"])
        baseline = ["I do not know." for _ in questions]
        report = judge_report(
            judge, [(q["question"], a, b) for q, a, b in zip(questions, answers, baseline, strict=True)]
        )
    except NotImplementedError as exc:
        run.log(kind="todo", why=str(exc))
        return run
    for row, res in zip(rows, report["results"], strict=True):
        row["judge_score"] = {"A": 1.0, "tie": 0.5, "B": 0.0}[res["winner"]]
    write_csv(run.artifact("capstone_eval.csv"), rows)
    write_csv(run.artifact("budget_sweep.csv"), sweep)
    write_csv(run.artifact("judge_pairs.csv"), [{"pair": i, "agree": float(r["agree"]), "winner": r["winner"]}
                                               for i, r in enumerate(report["results"])])  # fmt: skip
    fig = new_figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([s["max_steps"] for s in sweep], [s["exact_match"] for s in sweep], "o-", label="exact match")
    ax.plot([s["max_steps"] for s in sweep], [s["answered"] for s in sweep], "s--", label="answered")
    ax.set(
        xlabel="step budget (max_steps)",
        ylabel="fraction of questions",
        ylim=(-0.05, 1.05),
        title="capstone: step budget",
    )
    ax.legend()
    fig.savefig(run.artifact("budget_sweep.png"), dpi=80)
    summary = {
        "retrieval_hit_rate": _mean([r["retrieval_hit"] for r in rows]),
        "exact_match": _mean([r["exact_match"] for r in rows]),
        "judge_win_rate": _mean([r["judge_score"] for r in rows]),
        "judge_agreement": report["agreement"],
        "mean_steps": _mean([r["steps"] for r in rows]),
        "tool_errors": float(sum(r["tool_errors"] for r in rows)),
        "memory_recalled": float("- citation: brackets" in memory.recall()),
        "baseline_exact_match": _mean([exact_match(q, b) for q, b in zip(questions, baseline, strict=True)]),
    }
    run.log(kind="summary", retriever=retriever, **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
