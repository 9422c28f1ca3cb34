"""Lesson 11, provided: an offline tokenizer, chat templates, filler text, a scripted model, run helpers.

Nothing to implement here. This file is given to you complete (it is graded with the course's
copy, never yours), so that lesson 11 is about the prompt: your renderers, few-shot builder and
needle-in-a-haystack harness in ``prompting.py`` run on these pieces.

- ``course_tokenizer()``: a small byte-level BPE tokenizer trained here, offline, on this file's
  prose, with the chat markers as special tokens (``encode``, ``decode``, ``apply_chat_template``).
  Prose compresses well under it (about 5.5 characters a token); codes such as ``qz7-x4k9`` do not
  (about 1.2): characters are not tokens.
- ``COURSE_CHATML_TEMPLATE``: the course's ChatML template (Jinja), the specification of
  ``render_chatml``; ``nemotron_template()``: Nemotron 3 Nano's own template, shipped in trl.
- ``make_filler``: deterministic filler text for the haystack (prose, optionally code blocks).
- ``ScriptedModel``: a stand-in long-context model whose recall is a *known* function of where the
  needle sits and how long the context is, so that your harness can be checked against a known curve.
- ``run_*``: what the graders call in the sandbox (and the visible tests and the lab use).
"""

from __future__ import annotations

import functools
import importlib
import random
import re

SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
                  "<tool_response>", "</tool_response>"]  # fmt: skip

# The course's ChatML template: every message as <|im_start|>role\ncontent<|im_end|>\n, then the
# generation prompt with the reasoning switch. Extra keyword arguments of apply_chat_template
# (enable_thinking) reach the template as variables.
COURSE_CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{%- if enable_thinking is defined and not enable_thinking %}"
    "{{- '<|im_start|>assistant\\n<think></think>' }}"
    "{%- else %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

WORDS = (
    "the a of and to in is was for on with as by at from that this it its their our every each some many "
    "river mountain valley village forest garden market harbour bridge road tower castle library school "
    "farmer teacher sailor baker painter writer doctor child family neighbour traveller merchant soldier "
    "walks builds carries watches finds opens reads paints sells keeps follows crosses remembers gathers "
    "old quiet bright narrow ancient green golden heavy gentle distant small busy cold warm early late "
    "morning evening winter summer autumn spring night day year season storm rain wind light shadow "
    "stone wood water bread letter story song map lamp door window wall field path hill lake sea"
).split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 13))]
    return " ".join(words).capitalize() + "."


def _code(rng: random.Random) -> str:
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    parts = ["".join(rng.choice(chars) for _ in range(rng.randint(3, 5))) for _ in range(rng.randint(2, 4))]
    return "Log entry " + "-".join(parts) + "."


def make_filler(n_sentences: int, seed: int = 0, code_blocks: tuple[tuple[float, float], ...] = ()) -> str:
    """``n_sentences`` sentences of filler, separated by spaces; a sentence whose position (as a fraction
    of ``n_sentences``) falls in one of ``code_blocks`` ((start, end) pairs) is a log line of random codes."""
    rng = random.Random(seed)
    out = []
    for i in range(n_sentences):
        frac = i / max(1, n_sentences)
        out.append(_code(rng) if any(a <= frac < b for a, b in code_blocks) else _sentence(rng))
    return " ".join(out)


@functools.cache
def _backend_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    corpus = [make_filler(40, seed) for seed in range(50)]
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok.to_str()


class CourseTokenizer:
    """The course tokenizer: a ``tokenizers.Tokenizer`` with the few methods of a Hugging Face tokenizer
    this lesson needs (``encode``, ``decode``, ``tokenize``, ``len``), and ``apply_chat_template`` through
    a ``transformers.PreTrainedTokenizerFast`` over the same tokenizer, built on first use."""

    def __init__(self, backend_json: str) -> None:
        from tokenizers import Tokenizer

        self._json = backend_json
        self.backend = Tokenizer.from_str(backend_json)
        self.pad_token_id = self.eos_token_id = self.backend.token_to_id("<|im_end|>")
        self._hf = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def tokenize(self, text: str) -> list[str]:
        return self.backend.encode(text, add_special_tokens=False).tokens

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def hf(self):
        """The same tokenizer as a ``transformers.PreTrainedTokenizerFast``."""
        if self._hf is None:
            from tokenizers import Tokenizer
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(self._json), eos_token="<|im_end|>",
                                          pad_token="<|im_end|>", clean_up_tokenization_spaces=False)  # fmt: skip
            tok.add_special_tokens({"additional_special_tokens": [t for t in SPECIAL_TOKENS if t != "<|im_end|>"]})
            self._hf = tok
        return self._hf

    def apply_chat_template(self, *args, **kwargs):
        """``PreTrainedTokenizerFast.apply_chat_template`` (transformers 5: ``tokenize=True`` returns a
        ``BatchEncoding`` unless ``return_dict=False``)."""
        return self.hf.apply_chat_template(*args, **kwargs)


def course_tokenizer(vocab_size: int = 1000) -> CourseTokenizer:
    """The course's offline tokenizer: byte-level BPE trained on this file's prose, chat markers special.

    ``len(tok.encode(text, add_special_tokens=False))`` counts tokens; ``tok.decode(ids)`` is exact
    on ASCII text (decode(a) + decode(b) == decode(a + b)). Trained in about 0.2 s, the same every time.
    """
    return CourseTokenizer(_backend_tokenizer_json(vocab_size))


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` under ``tokenizer`` (no special tokens added)."""
    return len(tokenizer.encode(text, add_special_tokens=False))


def nemotron_template() -> str:
    """Nemotron 3 Nano's chat template, as trl ships it: the file trl/chat_templates/nemotron_3_nano.jinja.

    The same string as ``from trl.chat_template_utils import nemotron_3_nano_chat_template``, read
    from the installed trl without importing it (importing trl takes seconds).
    """
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("trl is not installed: it ships Nemotron 3 Nano's chat template (pip install trl)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return (folder / "chat_templates" / "nemotron_3_nano.jinja").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- the scripted model
QUESTION_MARK = "\n\nQuestion: "


class ScriptedModel:
    """A stand-in long-context model with a known recall curve (the *environment* of the harness).

    ``facts``: (needle, question, answer) triples. ``blind_spots``: (min_tokens, lo, hi, facts) rules:
    the model misses fact ``i`` when the context has at least ``min_tokens`` tokens, the needle's depth
    lies in ``[lo, hi]`` and ``i`` is in ``facts``. Otherwise it finds the needle and answers.

    ``generate(prompt)`` reads the prompt as ``needle_prompt`` writes it (context, then
    ``"\\n\\nQuestion: "``, the question, ``"\\nAnswer:"``), looks for the needle of the asked question in
    the context, and measures, with its tokenizer, the context's length in tokens and the needle's
    depth: the share of the context's *other* tokens (the haystack) that come before the needle.
    Its right answers vary in case and punctuation (``"BLUE FALCON."``, ``"The answer is: Blue-Falcon!"``);
    a missed needle gets ``"I could not find it."``. Every call is recorded in ``calls``.
    """

    STYLES = ("{a}", "{A}.", "The answer is: {T}!", "It is '{a}'", "{A}")

    def __init__(self, tokenizer, facts: list, blind_spots: list = ()) -> None:
        self.tokenizer = tokenizer
        self.facts = [tuple(f) for f in facts]
        self.blind_spots = [tuple(b) for b in blind_spots]
        self.calls: list[dict] = []

    def misses(self, fact: int, tokens: int, depth: float) -> bool:
        return any(tokens >= m and lo <= depth <= hi and fact in set(f) for m, lo, hi, f in self.blind_spots)

    def measure(self, context: str, needle: str) -> tuple[int, float | None]:
        """(context tokens, needle depth as a share of the haystack tokens; None if the needle is absent)."""
        tokens = count_tokens(self.tokenizer, context)
        at = context.find(needle)
        if at < 0:
            return tokens, None
        before = count_tokens(self.tokenizer, context[:at])
        after = count_tokens(self.tokenizer, context[at + len(needle) :])
        return tokens, before / max(1, before + after)

    def generate(self, prompt: str) -> str:
        context, _, rest = prompt.rpartition(QUESTION_MARK)
        question = rest.removesuffix("\nAnswer:")
        found = [i for i, (_, q, _) in enumerate(self.facts) if q == question]
        call = {"question": question, "fact": found[0] if found else None, "tokens": None, "depth": None, "answered": False}
        self.calls.append(call)
        if not found:
            return "I do not understand the question."
        i = found[0]
        needle, _, answer = self.facts[i]
        call["tokens"], call["depth"] = self.measure(context, needle)
        if call["depth"] is None or self.misses(i, call["tokens"], call["depth"]):
            return "I could not find it."
        call["answered"] = True
        style = self.STYLES[len(self.calls) % len(self.STYLES)]
        return style.format(a=answer, A=answer.upper(), T=answer.title().replace(" ", "-"))


# ----------------------------------------------------------------------------- run helpers
def _prompting():
    """Your ``prompting`` module: ``exercises.lesson_11.prompting`` from the repository, ``prompting`` in the sandbox."""
    if __package__:
        return importlib.import_module(f"{__package__}.prompting")
    return importlib.import_module("prompting")


def counter(kind: str):
    """A token counter for the few-shot builder: "bpe" (the course tokenizer), "words" or "chars"."""
    if kind == "bpe":
        tok = course_tokenizer()
        return lambda text: count_tokens(tok, text)
    if kind == "words":
        return lambda text: len(re.findall(r"\S+", text))
    if kind == "chars":
        return len
    raise ValueError(f"unknown counter {kind!r}")


def run_few_shot(instruction: str, examples: list, query: str, budget: int, separator: str | None, kind: str = "bpe"):
    """Your ``build_few_shot_prompt`` with the counter ``kind`` (``separator`` None: its default)."""
    extra = {} if separator is None else {"separator": separator}
    examples = [tuple(e) for e in examples]
    return _prompting().build_few_shot_prompt(instruction, examples, query, counter(kind), budget, **extra)


def run_haystack(filler: str, needle: str, context_tokens: int, depth: float):
    """Your ``build_haystack`` with the course tokenizer."""
    return _prompting().build_haystack(course_tokenizer(), filler, needle, context_tokens, depth)


def run_sweep(filler: str, facts: list, depths: list, lengths: list, blind_spots: list) -> dict:
    """Your ``needle_sweep`` against a ``ScriptedModel``: {"grid": its reply, "calls": the model's log}."""
    tok = course_tokenizer()
    model = ScriptedModel(tok, facts, blind_spots)
    facts = [tuple(f) for f in facts]
    grid = _prompting().needle_sweep(model.generate, tok, filler, facts, list(depths), list(lengths))
    return {"grid": grid, "calls": model.calls}
