"""Texts for lesson 01's hidden tests, made here from a seed (no downloads, no data files).

``make_corpus`` writes a made-up language with Zipfian word frequencies (so BPE has real work:
frequent stems, shared suffixes, a long tail of rare words), mixed with accented letters, CJK,
emoji, numbers, contractions, punctuation and whitespace runs (tabs, indentation, blank lines).
It uses only ``random.Random(seed).random()``, so a seed gives the same text on every machine.
"""

from __future__ import annotations

import bisect
import random

CONSONANTS = "b c d f g h j k l m n p r s t v w z ch sh th st tr pl gr br".split()
VOWELS = "a e i o u ai ea ou io y".split()
ACCENTED = "é è ê à â ô û ü ï ç ñ ø å ß".split()
SUFFIXES = ["", "", "", "s", "ed", "ing", "er", "ly", "tion", "ness", "ment"]
PUNCT = [",", ",", ";", ":", " -", " (", ")", '"']
ENDS = [".", ".", ".", "!", "?", "...", "."]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'ll", "'d", "'m"]
EMOJI = ["😀", "🙂", "🚀", "🎉", "👍🏽", "❤️", "👩‍💻", "🇫🇷", "🌍", "✨", "🤖", "📚"]


def make_corpus(seed: int, n_words: int, lexicon: int = 6000) -> str:
    """About ``n_words`` words of synthetic multilingual text, the same for the same seed."""
    rng = random.Random(seed)

    def pick(items: list[str]) -> str:
        return items[int(rng.random() * len(items))]

    def word() -> str:
        parts = []
        for _ in range(1 + int(rng.random() * 3)):
            parts += [pick(CONSONANTS), pick(ACCENTED) if rng.random() < 0.12 else pick(VOWELS)]
        if rng.random() < 0.4:
            parts.append(pick(CONSONANTS))
        return "".join(parts)

    stems = [word() for _ in range(lexicon)]
    cumulative = []
    total = 0.0
    for rank in range(lexicon):
        total += 1.0 / (rank + 1) ** 1.05  # Zipf's law
        cumulative.append(total)

    def stem() -> str:
        return stems[min(bisect.bisect(cumulative, rng.random() * total), lexicon - 1)]

    cjk = [chr(0x4E00 + int(rng.random() * 20000)) for _ in range(400)]
    out: list[str] = []
    words = 0
    while words < n_words:
        if rng.random() < 0.08:  # a code-like block: tabs or spaces for indentation, double spaces
            for _ in range(2 + int(rng.random() * 4)):
                indent = "\t" * int(rng.random() * 3) if rng.random() < 0.5 else " " * (4 * int(rng.random() * 3))
                out.append(f"{indent}{stem()}_{stem()} = {stem()}({int(rng.random() * 100)}, {stem()})  # {stem()}\n")
                words += 5
            out.append("\n")
            continue
        for _ in range(1 + int(rng.random() * 5)):  # a paragraph of sentences
            n = 4 + int(rng.random() * 14)
            sentence = []
            for i in range(n):
                r = rng.random()
                if r < 0.04:
                    tok = "".join(cjk[min(int(rng.random() ** 2 * len(cjk)), len(cjk) - 1)] for _ in range(1 + int(rng.random() * 4)))
                elif r < 0.06:
                    tok = str(int(rng.random() ** 3 * 100000)) if rng.random() < 0.7 else f"{rng.random() * 100:.2f}"
                elif r < 0.07:
                    tok = pick(EMOJI)
                else:
                    tok = stem() + pick(SUFFIXES)
                    if i == 0 or rng.random() < 0.03:
                        tok = tok.capitalize()
                    if rng.random() < 0.03:
                        tok += pick(CONTRACTIONS)
                sentence.append(tok)
                if rng.random() < 0.08:
                    sentence.append(pick(PUNCT))
            out.append(" ".join(sentence) + pick(ENDS) + ("  " if rng.random() < 0.1 else " "))
            words += n
        out.append("\n\n" if rng.random() < 0.8 else "\n \n\n")
    return "".join(out)


# Text the trainers never see: scripts and symbols absent from make_corpus, combining accents,
# emoji sequences (ZWJ, skin tones, flags, keycaps), control characters and whitespace runs.
UNSEEN = {
    "empty": "",
    "one-cjk-char": "語",
    "one-emoji": "🦜",
    "latin-accents": "Crème brûlée, naïve façade, Ångström, Øresund, São Paulo, Łódź, İstanbul, straße.",
    "combining-marks": "e\u0301te\u0301 vs été; n\u0303 vs ñ; a\u030a\u0301; Z\u0351\u0308\u036b\u0347a\u0352l\u0360g\u0350o",
    "cjk": "自然语言处理很有趣。東京は日本の首都です。한국어 토큰화는 어렵습니다。",
    "emoji": "👨‍👩‍👧‍👦 family, 👍🏿 thumbs, 🏳️‍🌈 flag, 🇯🇵🇧🇷 flags, 1️⃣ keycap, 🧑🏽‍🚀 astronaut!",
    "other-scripts": "Привет, мир! مرحبا بالعالم שלום नमस्ते दुनिया สวัสดีชาวโลก Γειά σου κόσμε ∑∫√∞≠≤",
    "whitespace-runs": "a\tb\t\tc   d    e\n\nf\n\n\n\ng \t \t h\r\n\r\ni\u00a0j\u2003k\u3000l   ",
    "only-whitespace": " \t\n  \t\t\n\n\n      \r\n ",
    "code": "def f(x):\n\tif x:\n\t\treturn x  # 返回\n    else:\n        return [1, 2,  3]\n\n\n",
    "controls": "nul\x00byte, bell\x07, esc\x1b[0m, del\x7f, bom\ufeff, repl\ufffd, nonchar\U0010fffd.",
    "long-runs": "a" * 300 + " " * 64 + "\n" * 40 + "ha" * 100 + "..." * 20 + "🙂" * 30 + "\t" * 17,
    "mixed": "The café's naïve 🤖 said: «Ça va?» — 日本語テキスト, 1,234.56 €, 50% off!!! ¿Qué? x²+y²=z²",
}

# Byte sequences that are not valid UTF-8, as lists of byte-token ids.
INVALID_UTF8 = {
    "lone-lead-byte": [0xE4],
    "truncated-cjk": [0xE6, 0x97, 0x41, 0x42],
    "lone-continuation": [0x80, 0x41, 0xBF],
    "overlong-slash": [0xC0, 0xAF, 0x2F],
    "surrogate": [0xED, 0xA0, 0x80],
    "ff-fe": [0xFF, 0xFE, 0x68, 0x69],
    "split-emoji": [0xF0, 0x9F, 0x98, 0x20, 0xF0, 0x9F, 0x98, 0x80],
    "above-u10ffff": [0xF4, 0x90, 0x80, 0x80],
}
