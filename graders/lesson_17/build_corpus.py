"""Build lesson 17's frozen corpus once: python -m graders.lesson_17.build_corpus (kept for the record).

Passages are the prose paragraphs of lessons/lesson_01.md .. lesson_14.md as they stood on 2026-12-03
(code blocks and tables dropped, paragraphs under 25 words merged with the next one, long ones cut at a
sentence end near 40 words; the first 15 passages of each lesson are kept). The output, exercises/lesson_17/data/corpus.jsonl, is frozen data: later
edits to the lessons do not change it, and the query labels refer to its ids. Do not rerun it casually.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PER_LESSON = 15
OUT = ROOT / "exercises" / "lesson_17" / "data" / "corpus.jsonl"


def paragraphs(text: str):
    heading, block, in_code = "", [], False
    for line in [*text.splitlines(), ""]:
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code or line.startswith("|"):
            continue
        if line.startswith("#"):
            if block:
                yield heading, " ".join(block)
                block = []
            heading = line.lstrip("#").strip()
            continue
        if line.strip():
            block.append(line.strip())
        elif block:
            yield heading, " ".join(block)
            block = []


def split_long(text: str, limit: int = 40) -> list[str]:
    sentences = re.split(r"(?<=[.!?])\s+", text)
    out, cur = [], []
    for s in sentences:
        cur.append(s)
        if len(" ".join(cur).split()) >= limit:
            out.append(" ".join(cur))
            cur = []
    if cur:
        if out and len(" ".join(cur).split()) < 25:
            out[-1] += " " + " ".join(cur)
        else:
            out.append(" ".join(cur))
    return out


def build() -> list[dict]:
    rows = []
    for md in sorted((ROOT / "lessons").glob("lesson_[0-1][0-9].md")):
        n = int(md.stem[-2:])
        if n > 14:
            continue
        title = md.read_text(encoding="utf-8").splitlines()[0].lstrip("#").strip()
        pending = None
        for heading, para in paragraphs(md.read_text(encoding="utf-8")):
            if pending is not None:
                if pending[0] == heading:
                    para = pending[1] + " " + para
                else:
                    _emit(rows, n, title, *pending)
                pending = None
            if len(para.split()) < 25:
                pending = (heading, para)
                continue
            for piece in split_long(para):
                _emit(rows, n, title, heading, piece)
        if pending is not None:
            _emit(rows, n, title, *pending)
    return rows


def _emit(rows: list[dict], n: int, title: str, heading: str, text: str) -> None:
    if len(text.split()) < 12:
        return
    k = sum(1 for r in rows if r["lesson"] == n)
    if k >= PER_LESSON:
        return
    rows.append({"id": f"L{n:02d}-{k:03d}", "lesson": n, "section": heading, "text": text})


if __name__ == "__main__":
    rows = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(len(rows), "passages ->", OUT)
