"""Lesson 01 lab experiment: what a tokenizer costs, logged with labkit.

Run it from labs/lesson_01/: ``python lab_experiment.py`` runs seeds 0, 1 and 2 (or call
``main(config, seed)`` from the notebook). Each call of :func:`main` is one logged run under
``runs/``; change one config value at a time. The rubric re-executes your newest run from its
config.json, with its seed and with another, so keep ``main(config, seed)`` the only entry point.

What one run does, as lessons/lesson_01.md section 8 asks:

(a) Compression: trains your BPE once at the largest of ``vocab_sizes`` (the merges of a smaller
    vocabulary are the first ones of a larger: the trainer is greedy and deterministic), encodes
    the held-out text at every size, next to two baselines on the same texts: raw UTF-8 bytes
    (1.0 byte per token) and Hugging Face's ``BpeTrainer`` (GPT-2's ByteLevel pre-tokenizer, same
    vocabulary size). compression.csv, compression.png, tokens.csv (first and last 30 learnt).
(b) The tokenization tax: tokens per character and bytes per token for every paragraph of
    ``data/sample.txt`` with the largest tokenizer (tax.csv). ``cjk_share`` sets the share of
    CJK words in the training language: change only it to test the mixture.
(c) Training cost: your trainer and :func:`naive_train_bpe` (a full recount after every merge)
    over corpus sizes ``cost_sizes_kb`` at ``cost_merges`` merges, then over ``cost_merge_counts``
    at ``cost_fixed_kb``; ``cost_repeats`` timings each, median and IQR (cost.csv, cost.png).
(d) Ablation: :func:`train_bpe_unsplit`, BPE on the training text as one word, against your
    trainer on the same text, compared on held-out compression and the first tokens learnt
    (ablation.csv).

Until you write :func:`naive_train_bpe` and :func:`train_bpe_unsplit`, the run logs a
``kind="todo"`` row for each and leaves out what depends on them.

Texts: by default made here from the seed (:func:`make_text`: a made-up language with Zipfian
stems, a few CJK words, numbers and emoji), so a run repeats from its config alone; the seed
draws new texts from the same language (fixed by ``language_seed``). For a real corpus set
``corpus_file`` (a path relative to this file): its text and SHA-256 are copied into the config,
and the seed picks which paragraphs are held out.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
import statistics
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from labkit import exercises, new_figure, progress, start_run, write_csv

EXERCISES = exercises("01", __file__)  # None in the grader's sandbox: the modules sit beside this file
from bpe import build_vocab, encode, merge_pair, pretokenize, train_bpe  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = {
    # (a) the one variable of the compression sweep
    "vocab_sizes": [256, 320, 384, 512, 768, 1024, 2048, 4096],
    "train_words": 12000,  # about 80 KB of training text
    "heldout_words": 3000,  # held-out text: same language, never seen by the trainer
    "lexicon": 1500,  # distinct stems of the made-up language (Zipfian frequencies)
    "language_seed": 0,  # fixes the language; the run's seed only draws new texts from it
    "cjk_share": 0.03,  # share of CJK words in the made-up language (part b: try 0.10)
    "corpus_file": None,  # a real corpus instead (relative to this file); copied into corpus_text
    "corpus_text": None,
    "heldout_share": 0.1,  # with a corpus file: the share of paragraphs held out (drawn by the seed)
    # (b) the paragraphs of the tokenization-tax table
    "tax_file": "data/sample.txt",  # relative to exercises/lesson_01/; copied into tax_text
    "tax_text": None,
    # (c) training cost
    "cost_sizes_kb": [100, 300, 1000, 3000],
    "cost_merges": 32,
    "cost_fixed_kb": 100,
    "cost_merge_counts": [8, 16, 32, 64],
    "cost_repeats": 3,
    # (d) ablation without pre-tokenization (a smaller text: the unsplit trainer is slow)
    "ablation_chars": 20000,
    "ablation_vocab": 512,
}

SYLLABLE_ONSETS = "b c d f g h k l m n p r s t v w z ch sh th st tr pl br".split()
SYLLABLE_VOWELS = "a e i o u ai ea ou y é è à ö".split()
SUFFIXES = ["", "", "", "", "s", "ed", "ing", "er", "ly", "tion", "ment"]
FUNCTION_WORDS = "the of and to in a is that it for on with as by at from".split()
CJK = [chr(0x4E00 + 37 * i) for i in range(60)]  # a fixed handful of CJK characters (3 bytes each)
EMOJI = ["🙂", "🚀", "🎉", "👍🏽", "🌍", "📚"]


def make_text(
    n_words: int, seed: int | str, language_seed: int = 0, lexicon: int = 1500, cjk_share: float = 0.03
) -> str:
    """About ``n_words`` words of a made-up language: the same text for the same arguments.

    Zipfian stems with English-like suffixes and function words (25%), capitalised sentences,
    CJK words (``cjk_share``), numbers (2%) and emoji (0.5%), paragraphs and blank lines. Uses
    only ``random.Random`` (string seeds are hashed with SHA-512), so every machine gives the
    same text.
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

    cjk_end = 0.25 + cjk_share
    rng = random.Random(f"text-{seed}")
    out, words = [], 0
    while words < n_words:
        sentence = []
        for i in range(4 + int(rng.random() * 12)):
            r = rng.random()
            if r < 0.25:
                word = rng.choice(FUNCTION_WORDS)
            elif r < cjk_end:
                word = "".join(rng.choice(CJK) for _ in range(1 + int(rng.random() * 3)))
            elif r < cjk_end + 0.02:
                word = str(int(rng.random() ** 3 * 10000))
            elif r < cjk_end + 0.025:
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


def naive_train_bpe(text: str, vocab_size: int) -> list[tuple[int, int]]:
    """The same merges as ``train_bpe``, the slow way: recount every pair after every merge.

    Count the pre-tokenized words once (as ``train_bpe`` does); then, for each of the
    ``vocab_size - 256`` merges, count every adjacent pair of every word from scratch (weighted
    by the word's frequency), take the most frequent with the course's tie-break, and merge it
    in every word with ``merge_pair``. Stop early when no pair is left. For the lab only.
    """
    # BEGIN SOLUTION
    words = [[list(w.encode("utf-8")), n] for w, n in Counter(pretokenize(text)).items()]
    merges: list[tuple[int, int]] = []
    for new_id in range(256, vocab_size):
        counts: Counter[tuple[int, int]] = Counter()
        for ids, n in words:
            for pair in pairwise(ids):
                counts[pair] += n
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for word in words:
            word[0] = merge_pair(word[0], best, new_id)
    return merges
    # END SOLUTION


def train_bpe_unsplit(text: str, vocab_size: int) -> list[tuple[int, int]]:
    """BPE without pre-tokenization: the whole of ``text`` is one word (its UTF-8 bytes).

    Same counting rule and tie-break as ``train_bpe``, but merges may now cross spaces and
    punctuation. Return the ``vocab_size - 256`` merges in the order learnt (fewer if the text
    becomes a single token). A recount after each merge is fine on a short text.
    """
    # BEGIN SOLUTION
    ids = list(text.encode("utf-8"))
    merges: list[tuple[int, int]] = []
    for new_id in range(256, vocab_size):
        counts = Counter(pairwise(ids))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        ids = merge_pair(ids, best, new_id)
    return merges
    # END SOLUTION


def encode_unsplit(text: str, merges: list[tuple[int, int]]) -> list[int]:
    """Token ids of ``text`` as one word: replay the merges in training order."""
    ids = list(text.encode("utf-8"))
    for i, pair in enumerate(merges):
        ids = merge_pair(ids, pair, 256 + i)
    return ids


def texts(config: dict, seed: int) -> tuple[str, str]:
    """(training text, held-out text): generated from the seed, or split from ``corpus_text``."""
    if config["corpus_text"] is None:
        kw = {"language_seed": config["language_seed"], "lexicon": config["lexicon"], "cjk_share": config["cjk_share"]}
        return make_text(config["train_words"], f"train-{seed}", **kw), make_text(
            config["heldout_words"], f"heldout-{seed}", **kw
        )
    paragraphs = [p for p in config["corpus_text"].split("\n\n") if p.strip()]
    order = list(range(len(paragraphs)))
    random.Random(f"split-{seed}").shuffle(order)
    held = set(order[: max(1, round(len(order) * config["heldout_share"]))])
    train = "\n\n".join(p for i, p in enumerate(paragraphs) if i not in held)
    return train, "\n\n".join(p for i, p in enumerate(paragraphs) if i in held)


def fill_texts(config: dict) -> dict:
    """Copy the files named in the config into it (text and SHA-256), so a rerun needs no file."""
    config = dict(config)
    for key, base in (("corpus", HERE), ("tax", EXERCISES or HERE)):
        path = base / config[f"{key}_file"] if config[f"{key}_file"] else None
        if config[f"{key}_text"] is None and path is not None and (key == "corpus" or path.is_file()):
            text = path.read_text(encoding="utf-8")
            config |= {f"{key}_text": text, f"{key}_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    return config


def median_iqr(times: list[float]) -> tuple[float, float]:
    """Median and interquartile range of a few timings."""
    q1, q2, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q2, q3 - q1


def time_ms(fn, repeats: int) -> tuple[float, float]:
    """Median and IQR in ms of ``repeats`` calls of ``fn()``, timed with ``time.perf_counter``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return median_iqr(times)


def compression(config: dict, run, train_text: str, heldout: str) -> tuple[list, list[dict], float]:
    """Part (a): (merges, rows of compression.csv, training ms); writes the tables and the plot."""
    n_heldout = len(heldout.encode("utf-8"))
    start = time.perf_counter()
    merges = train_bpe(train_text, max(config["vocab_sizes"]))
    train_ms = (time.perf_counter() - start) * 1e3
    run.artifact("merges.json").write_text(json.dumps(merges), encoding="utf-8")
    rows = []
    for vocab_size in progress(config["vocab_sizes"], desc="vocab sizes"):
        ids = encode(heldout, merges[: max(vocab_size - 256, 0)])
        hf_tokens = len(hf_baseline(train_text, vocab_size).encode(heldout).ids)
        row = {"vocab_size": vocab_size, "heldout_tokens": len(ids), "bytes_per_token": n_heldout / len(ids),
               "hf_baseline_bytes_per_token": n_heldout / hf_tokens, "raw_bytes_baseline_bytes_per_token": 1.0}  # fmt: skip
        run.log(kind="compression", **row)
        rows.append(row)
    write_csv(run.artifact("compression.csv"), rows)
    vocab = build_vocab(merges)
    learnt = list(range(256, len(vocab)))
    picked = [("first", i) for i in learnt[:30]] + [("last", i) for i in learnt[-30:]]
    write_csv(
        run.artifact("tokens.csv"),
        [{"group": g, "id": i, "n_bytes": len(vocab[i]), "token": repr(vocab[i])} for g, i in picked],
    )

    fig = new_figure(7, 4.5)
    ax = fig.subplots()
    sizes = [r["vocab_size"] for r in rows]
    ax.plot(sizes, [r["bytes_per_token"] for r in rows], "o-", label="your BPE")
    ax.plot(sizes, [r["hf_baseline_bytes_per_token"] for r in rows], "x--", label="HF BpeTrainer (baseline)")
    ax.axhline(1.0, color="grey", ls=":", label="raw UTF-8 bytes (baseline)")
    ax.set(
        xscale="log",
        xlabel="vocabulary size",
        ylabel="held-out bytes per token",
        title="Compression vs vocabulary size",
    )
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.artifact("compression.png"), dpi=100)
    return merges, rows, train_ms


def tax(config: dict, run, merges: list) -> None:
    """Part (b): tokens per character and bytes per token of every paragraph of the tax text."""
    if config["tax_text"] is None:  # e.g. a notebook run where data/ is not beside this file
        run.log(kind="skipped", part="tax", why=f"{config['tax_file']} not found: tax.csv not written")
        return
    rows = []
    for i, paragraph in enumerate(p for p in config["tax_text"].split("\n\n") if p.strip()):
        n_tokens = len(encode(paragraph, merges))
        n_bytes = len(paragraph.encode("utf-8"))
        row = {"paragraph": i, "chars": len(paragraph), "bytes": n_bytes, "tokens": n_tokens,
               "tokens_per_char": n_tokens / len(paragraph), "bytes_per_token": n_bytes / n_tokens,
               "start": paragraph[:24].replace("\n", " ")}  # fmt: skip
        run.log(kind="tax", **row)
        rows.append(row)
    write_csv(run.artifact("tax.csv"), rows)


def cost(config: dict, run, seed: int) -> dict:
    """Part (c): your trainer against the naive one, over corpus size then over merges."""
    kw = {"language_seed": config["language_seed"], "lexicon": config["lexicon"], "cjk_share": config["cjk_share"]}
    biggest = max([*config["cost_sizes_kb"], config["cost_fixed_kb"]]) * 1000
    data = make_text(biggest // 6, f"cost-{seed}", **kw).encode("utf-8")  # about 7 bytes per word
    points = [("corpus", kb, config["cost_merges"]) for kb in config["cost_sizes_kb"]]
    points += [("merges", config["cost_fixed_kb"], m) for m in config["cost_merge_counts"]]
    naive, rows = naive_train_bpe, []
    for sweep, kb, n_merges in progress(points, desc="training cost"):
        text = data[: kb * 1000].decode("utf-8", errors="ignore")  # a prefix (a cut character is dropped)
        row = {"sweep": sweep, "corpus_kb": kb, "corpus_bytes": len(text.encode("utf-8")), "merges": n_merges}
        ms, iqr = time_ms(lambda text=text, n=n_merges: train_bpe(text, 256 + n), config["cost_repeats"])
        row |= {"mine_ms": ms, "mine_iqr_ms": iqr}
        if naive is not None and not rows:  # the first point: check the naive trainer before timing it
            try:
                same = naive(text, 256 + n_merges) == train_bpe(text, 256 + n_merges)
            except NotImplementedError:
                run.log(kind="todo", missing="naive_train_bpe", skipped="naive_* columns of cost.csv")
                naive = None
            else:
                if not same:
                    raise AssertionError(
                        f"naive_train_bpe and train_bpe learn different merges on {kb} KB: fix one of them"
                    )
        if naive is not None:
            ms, iqr = time_ms(lambda text=text, n=n_merges, f=naive: f(text, 256 + n), config["cost_repeats"])
            row |= {"naive_ms": ms, "naive_iqr_ms": iqr, "naive_ratio": ms / row["mine_ms"]}
        run.log(kind="cost", repeats=config["cost_repeats"], **row)
        rows.append(row)
    write_csv(run.artifact("cost.csv"), rows)

    fig = new_figure(11, 4.2)
    for ax, sweep, x, label in zip(fig.subplots(1, 2), ("corpus", "merges"), ("corpus_kb", "merges"),
                                   ("corpus size (KB)", "merges"), strict=True):  # fmt: skip
        part = [r for r in rows if r["sweep"] == sweep]
        for impl, name in (("mine", "your trainer"), ("naive", "naive: recount per merge")):
            if part and f"{impl}_ms" in part[0]:
                ax.errorbar([r[x] for r in part], [r[f"{impl}_ms"] for r in part], yerr=[r[f"{impl}_iqr_ms"] / 2 for r in part],
                            fmt="o-", capsize=3, label=name)  # fmt: skip
        ax.set(
            xscale="log", yscale="log", xlabel=label, ylabel="median ms (bars: IQR)", title=f"training time vs {sweep}"
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.artifact("cost.png"), dpi=100)
    return {"cost_mine_ms": rows[-1]["mine_ms"], **({"cost_naive_ms": rows[-1]["naive_ms"]} if naive else {})}


def ablation(config: dict, run, train_text: str, heldout: str) -> dict:
    """Part (d): BPE with and without pre-tokenization on the same short text (ablation.csv)."""
    text, held = train_text[: config["ablation_chars"]], heldout[: config["ablation_chars"] // 2]
    try:
        unsplit = train_bpe_unsplit(text, config["ablation_vocab"])
    except NotImplementedError:
        run.log(kind="todo", missing="train_bpe_unsplit", skipped="ablation.csv (part d)")
        return {}
    n, rows = len(held.encode("utf-8")), []
    split = train_bpe(text, config["ablation_vocab"])
    for variant, merges, encoder in (("split", split, encode), ("unsplit", unsplit, encode_unsplit)):
        ids = encoder(held, merges)
        learnt = build_vocab(merges)[256:286]
        row = {"variant": variant, "train_chars": len(text), "vocab_size": 256 + len(merges),
               "bytes_per_token": n / len(ids), "first_tokens": " ".join(repr(t) for t in learnt)}  # fmt: skip
        run.log(kind="ablation", **row)
        rows.append(row)
    write_csv(run.artifact("ablation.csv"), rows)
    return {f"{r['variant']}_bytes_per_token": r["bytes_per_token"] for r in rows}


def main(config: dict | None = None, seed: int = 0):
    config = fill_texts({**DEFAULT_CONFIG, **(config or {})})
    run = start_run("tokenizer-lab", config, seeds=[seed], entrypoint=main)
    train_text, heldout = texts(config, seed)
    run.log(kind="data", train_bytes=len(train_text.encode("utf-8")), heldout_bytes=len(heldout.encode("utf-8")),
            train_sha256=hashlib.sha256(train_text.encode("utf-8")).hexdigest())  # fmt: skip
    run.artifact("heldout.txt").write_text(heldout, encoding="utf-8")
    merges, rows, train_ms = compression(config, run, train_text, heldout)
    tax(config, run, merges)
    timings = cost(config, run, seed)
    summary = {
        "bytes_per_token": rows[-1]["bytes_per_token"],
        "hf_baseline_bytes_per_token": rows[-1]["hf_baseline_bytes_per_token"],
        "vocab_size": rows[-1]["vocab_size"],
        "merges_sha256": hashlib.sha256(json.dumps(merges).encode()).hexdigest(),
        **ablation(config, run, train_text, heldout),
        "train_ms": train_ms,
        **timings,
    }
    run.log(kind="summary", **summary)
    run.finish(**summary)
    return run


if __name__ == "__main__":
    for s in (0, 1, 2):
        print(main(seed=s).dir)
