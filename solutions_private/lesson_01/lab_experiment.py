"""Lesson 01 lab experiment: bytes per token vs vocabulary size, logged with labkit.

Run it from this folder: ``python lab_experiment.py`` (or from the notebook). Each call of
:func:`main` is one logged run under ``runs/``: it trains your BPE once on a training text,
encodes a held-out text of the same made-up language with the first ``vocab_size - 256``
merges for every size in the sweep, and compares with two baselines on the same texts: raw
UTF-8 bytes (one token per byte, 1.0 byte per token) and Hugging Face's ``BpeTrainer``
(GPT-2's ByteLevel pre-tokenizer, the same vocabulary size).

The texts are made here from a seed (:func:`make_text`), not read from a file, so that the
rubric can re-execute a run from its config.json alone, anywhere. The seed of a run picks a
new draw of the training and held-out texts; the language (its lexicon) is fixed by
``language_seed``. Keep ``main(config)`` the only entry point and log every number you
interpret; change one config value at a time.

Why train only once: the trainer is greedy and deterministic, so the merges learnt for a
smaller vocabulary are exactly the first merges learnt for a larger one.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
import time

from bpe import encode, train_bpe
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from labkit import progress, start_run

DEFAULT_CONFIG = {
    "vocab_sizes": [256, 320, 384, 512, 768, 1024],  # the one variable this experiment sweeps
    "train_words": 12000,  # about 80 KB of training text
    "heldout_words": 3000,  # held-out text: same language, never seen by the trainer
    "lexicon": 1500,  # distinct stems of the made-up language (Zipfian frequencies)
    "language_seed": 0,  # fixes the language; the run's seed only draws new texts from it
}

SYLLABLE_ONSETS = "b c d f g h k l m n p r s t v w z ch sh th st tr pl br".split()
SYLLABLE_VOWELS = "a e i o u ai ea ou y é è à ö".split()
SUFFIXES = ["", "", "", "", "s", "ed", "ing", "er", "ly", "tion", "ment"]
FUNCTION_WORDS = "the of and to in a is that it for on with as by at from".split()
CJK = [chr(0x4E00 + 37 * i) for i in range(60)]  # a fixed handful of CJK characters (3 bytes each)
EMOJI = ["🙂", "🚀", "🎉", "👍🏽", "🌍", "📚"]


def make_text(n_words: int, seed: int | str, language_seed: int = 0, lexicon: int = 1500) -> str:
    """About ``n_words`` words of a made-up language: the same text for the same arguments.

    Zipfian stems with English-like suffixes and function words, capitalised sentences,
    a few CJK words, numbers and emoji (multi-byte UTF-8), paragraphs and blank lines.
    Uses only ``random.Random`` (string seeds are hashed with SHA-512), so every machine
    and Python version from 3.2 on gives the same text.
    """
    lang = random.Random(f"language-{language_seed}")
    stems = []
    for _ in range(lexicon):
        syllables = 1 + int(lang.random() * 3)
        stems.append("".join(lang.choice(SYLLABLE_ONSETS) + lang.choice(SYLLABLE_VOWELS) for _ in range(syllables)))
    cumulative, total = [], 0.0
    for rank in range(lexicon):
        total += 1.0 / (rank + 1) ** 1.1  # Zipf's law
        cumulative.append(total)

    rng = random.Random(f"text-{seed}")
    out, words = [], 0
    while words < n_words:
        sentence = []
        for i in range(4 + int(rng.random() * 12)):
            r = rng.random()
            if r < 0.25:
                word = rng.choice(FUNCTION_WORDS)
            elif r < 0.28:
                word = "".join(rng.choice(CJK) for _ in range(1 + int(rng.random() * 3)))
            elif r < 0.30:
                word = str(int(rng.random() ** 3 * 10000))
            elif r < 0.305:
                word = rng.choice(EMOJI)
            else:
                stem = stems[min(bisect.bisect(cumulative, rng.random() * total), lexicon - 1)]
                word = stem + rng.choice(SUFFIXES)
            sentence.append(word.capitalize() if i == 0 else word)
        words += len(sentence)
        out.append(" ".join(sentence) + rng.choice([".", ".", ".", "?", "!"]))
        out.append("\n\n" if rng.random() < 0.2 else " ")
    return "".join(out)


def hf_baseline(text: str, vocab_size: int) -> Tokenizer:
    """Hugging Face BPE trained on ``text``: all 256 byte tokens + ``vocab_size - 256`` merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # = pretokenize
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=0, show_progress=False, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def main(config: dict | None = None, seed: int = 0):
    config = {**DEFAULT_CONFIG, **(config or {})}
    run = start_run("tokenizer-lab", config, seeds=[seed], entrypoint=main)
    kw = {"language_seed": config["language_seed"], "lexicon": config["lexicon"]}
    train_text = make_text(config["train_words"], f"train-{seed}", **kw)
    heldout = make_text(config["heldout_words"], f"heldout-{seed}", **kw)
    n_train, n_heldout = len(train_text.encode("utf-8")), len(heldout.encode("utf-8"))
    run.log(kind="data", train_bytes=n_train, heldout_bytes=n_heldout,
            train_sha256=hashlib.sha256(train_text.encode("utf-8")).hexdigest())  # fmt: skip

    # Train once, at the largest size; every smaller tokenizer is a prefix of its merges.
    t0 = time.perf_counter()
    merges = train_bpe(train_text, max(config["vocab_sizes"]))
    train_ms = (time.perf_counter() - t0) * 1e3
    merges_json = json.dumps(merges)
    run.artifact("merges.json").write_text(merges_json, encoding="utf-8")
    run.artifact("heldout.txt").write_text(heldout, encoding="utf-8")

    hf_ms = 0.0
    for vocab_size in progress(config["vocab_sizes"], desc="vocab sizes"):
        ids = encode(heldout, merges[: max(vocab_size - 256, 0)])
        t0 = time.perf_counter()
        hf = hf_baseline(train_text, vocab_size)
        hf_ms += (time.perf_counter() - t0) * 1e3
        hf_tokens = len(hf.encode(heldout).ids)
        run.log(kind="compression", vocab_size=vocab_size, heldout_tokens=len(ids),
                bytes_per_token=n_heldout / len(ids),
                hf_baseline_bytes_per_token=n_heldout / hf_tokens,
                raw_bytes_baseline_bytes_per_token=1.0)  # fmt: skip
    last = run._metrics[-1]
    summary = {
        "bytes_per_token": last["bytes_per_token"],
        "hf_baseline_bytes_per_token": last["hf_baseline_bytes_per_token"],
        "merges_sha256": hashlib.sha256(merges_json.encode()).hexdigest(),
        "train_ms": train_ms,
        "hf_train_ms": hf_ms,
    }
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1):
        print(main(seed=s).dir)
