"""Hidden graders for lesson 08. They run in the grader's process; student code only in the worker.

References are transformers' own classes: the logits processors of
``transformers.generation.logits_process``, ``LlamaForCausalLM.generate(do_sample=True)`` for seeded
sampling (same seed, one ``torch.multinomial`` per step on float32 scores), and
``StopStringCriteria`` for stop strings. The distribution of ``sample_next`` is checked with a
chi-square test (scipy) on 20,000 draws against softmax(HF processors(logits)).
"""

from __future__ import annotations

import random
from functools import lru_cache

import pytest
import torch
from scipy.stats import chisquare
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.stopping_criteria import StopStringCriteria

from graders.engine.sandbox import StudentError
from graders.lesson_08.bindings import Lesson08

pytestmark = pytest.mark.lesson_08

V = 50


def check_processed(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """The same removed set (-inf) and the same kept values."""
    gone, want_gone = torch.isneginf(got), torch.isneginf(want)
    rows = (gone != want_gone).any(-1)
    assert not rows.any(), (
        f"{what}: {int(rows.sum())}/{rows.numel()} rows remove a different set of tokens than transformers "
        f"(first row {int(rows.nonzero()[0])}: you keep {int((~gone[rows][0]).sum())}, transformers keeps {int((~want_gone[rows][0]).sum())})"
    )
    kept = ~want_gone
    assert torch.isfinite(got[kept]).all(), f"{what}: kept scores must stay finite"
    err = (got[kept].double() - want[kept].double()).abs()
    assert bool((err <= 1e-5 + 1e-5 * want[kept].double().abs()).all()), f"{what}: kept scores differ (max error {err.max():.3g})"


def random_scores(seed: int, rows: int = 64, vocab: int = V, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * scale  # continuous: no ties (nor ties at a top-p cut)


def random_ids(seed: int, rows: int, length: int, vocab: int) -> torch.Tensor:
    return torch.randint(vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- warpers
@pytest.mark.points(2)
@pytest.mark.parametrize("t", [0.5, 0.7, 1.3, 2.0])
def test_temperature_matches_hf(lesson08: Lesson08, t: float):
    """Temperature: equals TemperatureLogitsWarper"""
    scores = random_scores(1)
    check_processed(lesson08.process("temperature", None, scores, t), TemperatureLogitsWarper(t)(None, scores), f"temperature {t}")


@pytest.mark.points(1)
def test_temperature_rejects_non_positive(lesson08: Lesson08):
    """Temperature: t = 0 or t < 0 raises ValueError"""
    for t in (0.0, -1.0):
        with pytest.raises(StudentError, match="ValueError"):
            lesson08.process("temperature", None, random_scores(2, 2), t)


@pytest.mark.points(2)
@pytest.mark.parametrize("k", [1, 5, 50, 80])
def test_top_k_matches_hf(lesson08: Lesson08, k: int):
    """Top-k: equals TopKLogitsWarper on random rows"""
    scores = random_scores(3)
    check_processed(lesson08.process("top_k", None, scores, k), TopKLogitsWarper(k)(None, scores), f"top-k {k}")


@pytest.mark.points(2)
def test_top_k_keeps_ties_at_the_cut(lesson08: Lesson08):
    """Top-k: every token tied with the k-th score is kept"""
    scores = torch.tensor([[2.0, 2.0, 2.0, 1.0, 0.0], [0.0, 3.0, 1.0, 1.0, 1.0], [5.0, 4.0, 4.0, 4.0, 4.0]])
    for k in (1, 2, 3):
        check_processed(lesson08.process("top_k", None, scores, k), TopKLogitsWarper(k)(None, scores), f"top-k {k} with ties {scores.tolist()}")


@pytest.mark.points(2)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.999])
def test_top_p_matches_hf(lesson08: Lesson08, p: float):
    """Top-p: equals TopPLogitsWarper on random rows"""
    for seed, scale in ((4, 1.0), (5, 3.0)):
        scores = random_scores(seed, rows=200, scale=scale)
        check_processed(lesson08.process("top_p", None, scores, p), TopPLogitsWarper(p)(None, scores), f"top-p {p}")


@pytest.mark.points(2)
def test_top_p_keeps_the_crossing_token_and_at_least_one(lesson08: Lesson08):
    """Top-p: the token that crosses p is kept; p = 0 keeps one token, p = 1 keeps all"""
    for probs, p in (([0.5, 0.3, 0.2], 0.8), ([0.6, 0.3, 0.1], 0.9), ([0.55, 0.25, 0.15, 0.05], 0.6), ([0.7, 0.2, 0.1], 0.0), ([0.4, 0.35, 0.25], 1.0)):
        scores = torch.tensor([probs]).log()
        check_processed(lesson08.process("top_p", None, scores, p), TopPLogitsWarper(p)(None, scores), f"top-p {p} on probabilities {probs}")


@pytest.mark.points(2)
@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_min_p_matches_hf(lesson08: Lesson08, p: float):
    """Min-p: equals MinPLogitsWarper on random rows"""
    for seed, scale in ((6, 1.0), (7, 3.0)):
        scores = random_scores(seed, rows=100, scale=scale)
        check_processed(lesson08.process("min_p", None, scores, p), MinPLogitsWarper(p)(None, scores), f"min-p {p}")


# ---------------------------------------------------------------------------- penalties
@pytest.mark.points(3)
@pytest.mark.parametrize("penalty", [1.3, 0.8, 2.0])
def test_repetition_penalty_matches_hf(lesson08: Lesson08, penalty: float):
    """Repetition penalty: equals RepetitionPenaltyLogitsProcessor (negative and positive scores)"""
    scores = random_scores(8)
    ids = random_ids(9, 64, 12, V)  # repeats within a row happen
    check_processed(lesson08.process("repetition_penalty", ids, scores, penalty),
                    RepetitionPenaltyLogitsProcessor(penalty)(ids, scores), f"repetition penalty {penalty}")  # fmt: skip


@pytest.mark.points(2)
def test_repetition_penalty_once_per_token_and_by_sign(lesson08: Lesson08):
    """Repetition penalty: a token seen three times is penalised once; negative scores are multiplied"""
    scores = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.5]])
    ids = torch.tensor([[0, 0, 0, 1, 1, 3]])
    for penalty in (1.5, 0.5):
        want = RepetitionPenaltyLogitsProcessor(penalty)(ids, scores)
        check_processed(lesson08.process("repetition_penalty", ids, scores, penalty), want, f"penalty {penalty} on {scores.tolist()}, ids {ids.tolist()}")


@pytest.mark.points(3)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_no_repeat_ngram_matches_hf(lesson08: Lesson08, n: int):
    """No-repeat n-gram: equals NoRepeatNGramLogitsProcessor on random rows (small vocabulary: many repeats)"""
    scores = random_scores(10, rows=40, vocab=6)
    ids = random_ids(11, 40, 15, 6)
    check_processed(lesson08.process("no_repeat_ngram", ids, scores, n), NoRepeatNGramLogitsProcessor(n)(ids, scores.clone()), f"n = {n}")


@pytest.mark.points(1)
def test_no_repeat_ngram_short_rows_and_unigrams(lesson08: Lesson08):
    """No-repeat n-gram: rows shorter than n - 1 ban nothing, n = 1 bans every seen token"""
    scores = random_scores(12, rows=3, vocab=6)
    for ids, n in ((torch.tensor([[1, 2], [2, 2], [0, 5]]), 3), (torch.tensor([[1], [4], [0]]), 3), (torch.tensor([[1, 2, 1], [3, 3, 3], [0, 5, 4]]), 1)):
        want = NoRepeatNGramLogitsProcessor(n)(ids, scores.clone())
        check_processed(lesson08.process("no_repeat_ngram", ids, scores, n), want, f"n = {n}, ids {ids.tolist()}")


# ---------------------------------------------------------------------------- sampling
HF_ORDER = ("repetition_penalty", "no_repeat_ngram_size", "temperature", "top_k", "top_p", "min_p")


def hf_processors(settings: dict) -> LogitsProcessorList:
    """transformers' processors for ``settings``, in generate's order."""
    make = {
        "repetition_penalty": RepetitionPenaltyLogitsProcessor, "no_repeat_ngram_size": NoRepeatNGramLogitsProcessor,
        "temperature": TemperatureLogitsWarper, "top_k": TopKLogitsWarper, "top_p": TopPLogitsWarper, "min_p": MinPLogitsWarper,
    }  # fmt: skip
    return LogitsProcessorList([make[key](settings[key]) for key in HF_ORDER if key in settings])


SAMPLER_CASES = {  # settings whose support depends on the order of the processors
    "temperature-then-top-p": {"temperature": 3.0, "top_p": 0.6},
    "temperature-then-min-p": {"temperature": 0.5, "min_p": 0.2},
    "penalty-then-top-k": {"repetition_penalty": 3.0, "top_k": 3, "temperature": 1.5},
    "all": {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2, "temperature": 0.8, "top_k": 8, "top_p": 0.9, "min_p": 0.02},
}
SAMPLER_LOGITS = torch.tensor([3.0, 2.6, 2.3, 2.0, 1.6, 1.2, 0.9, 0.5, 0.2, -0.3, -0.8, -1.5])
SAMPLER_IDS = torch.tensor([1, 5, 0, 7, 1, 9])  # token 1 repeats; "1 5" and "1 9" are bigrams


@pytest.mark.points(3)
@pytest.mark.parametrize("case", list(SAMPLER_CASES))
def test_sampling_chi_square_on_20000_draws(lesson08: Lesson08, case: str):
    """Sampling: 20,000 draws of sample_next follow softmax(HF processors(logits)) (chi-square)"""
    settings, n = SAMPLER_CASES[case], 20_000
    ids = SAMPLER_IDS.repeat(n, 1)
    scores = SAMPLER_LOGITS.repeat(n, 1)
    draws = lesson08.sample_next(ids, scores, settings, seed=123)[:, 0]
    want = torch.softmax(hf_processors(settings)(SAMPLER_IDS[None], SAMPLER_LOGITS[None].clone()), -1)[0].double()
    support = want > 0
    assert int(support.sum()) >= 2, "grader case has a support of one token"
    assert bool(((draws >= 0) & (draws < len(want))).all()), "sample_next drew ids outside the vocabulary"
    counts = torch.bincount(draws, minlength=len(want)).double()
    outside = int(counts[~support].sum())
    assert outside == 0, (
        f"{case}: {outside} of {n} draws are tokens transformers' processors remove "
        f"(support {support.nonzero().flatten().tolist()}); check the processors and their order"
    )
    expected = want[support] / want[support].sum() * n  # float64, summing to n exactly enough for scipy
    _stat, pvalue = chisquare(counts[support].numpy(), expected.numpy())
    assert pvalue > 1e-4, f"{case}: the draws do not follow the processed distribution (chi-square p = {pvalue:.3g})"


@pytest.mark.points(3)
@pytest.mark.parametrize("case", list(SAMPLER_CASES))
def test_sampling_sample_next_seeded_equals_multinomial(lesson08: Lesson08, case: str):
    """Sampling: sample_next with torch.manual_seed(s) draws what torch.multinomial(softmax(HF processors)) draws"""
    settings = SAMPLER_CASES[case]
    scores, ids = random_scores(13, rows=32, vocab=20), random_ids(14, 32, 8, 20)
    got = lesson08.sample_next(ids, scores, settings, seed=7)
    torch.manual_seed(7)
    want = torch.multinomial(torch.softmax(hf_processors(settings)(ids, scores.clone()), -1), 1)
    assert torch.equal(got, want), f"{case}: {int((got != want).sum())}/32 rows drew another token than HF's processors + multinomial"


LM_CONFIG = dict(
    vocab_size=370, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
)  # fmt: skip


@lru_cache(maxsize=1)
def hf_model() -> LlamaForCausalLM:
    """A tiny Llama from a config, weights scaled so its next-token distributions are peaked (no download)."""
    cfg = LlamaConfig(**LM_CONFIG, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0)
    return model


@pytest.fixture(scope="module")
def student_model(lesson08: Lesson08):
    return lesson08.model({}, {k: v.clone() for k, v in hf_model().state_dict().items()})


GENERATE_CASES = {
    "temperature-top-k-top-p": {"temperature": 0.8, "top_k": 20, "top_p": 0.9},
    "penalties-min-p": {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_p": 0.1},
    "everything": {"repetition_penalty": 0.8, "no_repeat_ngram_size": 3, "temperature": 0.7, "top_k": 5, "top_p": 0.95, "min_p": 0.05},
    "plain": {},
}


@pytest.mark.points(4)
@pytest.mark.parametrize("case", list(GENERATE_CASES))
def test_sampling_seeded_generate_equals_hf_generate(lesson08: Lesson08, student_model, case: str):
    """Sampling: generate(seed=s) equals HF generate(do_sample=True) after torch.manual_seed(s), token for token"""
    settings = GENERATE_CASES[case]
    ids = random_ids(15, 2, 5, 370)
    for seed in (0, 1):
        got = lesson08.generate(student_model, ids, 12, settings, seed=seed)
        torch.manual_seed(seed)
        want = hf_model().generate(ids, do_sample=True, max_new_tokens=12, **({"top_k": 0} | settings))
        assert got.shape == want.shape, f"{case}, seed {seed}: {tuple(got.shape)} tokens, HF generate gives {tuple(want.shape)}"
        diff = (got != want).nonzero()
        assert not len(diff), (
            f"{case}, seed {seed}: first difference from HF generate at (row, position) {diff[0].tolist()}: "
            f"got {got.tolist()}, expected {want.tolist()}"
        )


@pytest.mark.points(3)
@pytest.mark.parametrize("settings", [{"repetition_penalty": 3.0, "temperature": 0.3}, {"no_repeat_ngram_size": 1, "temperature": 0.3}],
                         ids=["repetition-penalty", "no-repeat-unigram"])  # fmt: skip
def test_sampling_penalties_count_the_prompt(lesson08: Lesson08, student_model, settings: dict):
    """Sampling: in generate, the repetition penalty and no-repeat n-gram count the prompt's tokens"""
    torch.manual_seed(5)  # a prompt of tokens the model likes: unpenalised, they would come again
    prompt = hf_model().generate(random_ids(21, 2, 1, 370), do_sample=True, max_new_tokens=7, temperature=0.3, top_k=0)
    got = lesson08.generate(student_model, prompt, 8, settings, seed=4)
    torch.manual_seed(4)
    want = hf_model().generate(prompt, do_sample=True, max_new_tokens=8, top_k=0, **settings)
    assert torch.equal(got, want), (
        f"{settings}: got {got[:, 8:].tolist()}, HF generate {want[:, 8:].tolist()} after the prompt {prompt.tolist()}; "
        "the penalties read the whole sequence, prompt included"
    )


# ---------------------------------------------------------------------------- stopping
@lru_cache(maxsize=1)
def tokenizer():
    """The course's tiny tokenizer, built here by the same recipe as the provided tiny_tok.py."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sentences = [
        "The quick brown fox jumps over the lazy dog. The end.",
        "A tiny model writes tiny stories about the sea, the wind and the lighthouse.",
        "Stop here. Then stop there! Decoding ends at a stop string, or after max new tokens.",
    ]
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    tk.train_from_iterator(sentences, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=special[1:2] + special[3:])  # fmt: skip
    assert len(tok) == LM_CONFIG["vocab_size"], len(tok)
    return tok


DECODE = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
STOPS = ["stop", " the", "ea", "o", "Stop here.", "x y"]


@pytest.mark.points(3)
def test_stop_hits_equal_stop_string_criteria(lesson08: Lesson08):
    """Stop strings: hits_stop_string agrees with StopStringCriteria on 600 token sequences"""
    tok = tokenizer()
    crit = StopStringCriteria(tokenizer=tok, stop_strings=STOPS)
    rng = random.Random(0)
    cases, want, seqs = [], [], []
    for _ in range(600):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randint(1, 6))]
        if rng.random() < 0.6:  # a stop string, with text before and maybe an overhang after it
            text = rng.choice(["xx", "", " a", "s"]) + rng.choice(STOPS) + rng.choice(["", "pera", "ing", " at"])
            ids = ids[:2] + tok.encode(text, add_special_tokens=False)
        text, before = tok.decode(ids, **DECODE), tok.decode(ids[:-1], **DECODE)
        cases.append((text, len(before), STOPS))
        want.append(bool(crit(torch.tensor([ids]), None)[0]))
        seqs.append(ids)
    got = lesson08.hits(cases)
    wrong = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not wrong, (
        f"{len(wrong)}/600 sequences disagree with StopStringCriteria; first: tokens "
        f"{[tok.decode([i], **DECODE) for i in seqs[wrong[0]]]}, StopStringCriteria says {want[wrong[0]]}"
    )


def stop_string_for(ids: torch.Tensor, start: int, seed: int) -> str:
    """A stop string HF will meet: a piece of the text of an unstopped sampled run, ending inside a later token."""
    tok = tokenizer()
    torch.manual_seed(seed)
    full = hf_model().generate(ids, do_sample=True, max_new_tokens=20, top_k=0)[0].tolist()
    end = len(tok.decode(full[: ids.shape[1] + start + 1], **DECODE)) - 1  # inside token `start`
    text = tok.decode(full, **DECODE)
    return text[max(len(tok.decode(ids[0].tolist(), **DECODE)), end - 3) : end]


@pytest.mark.points(4)
@pytest.mark.parametrize(("start", "seed"), [(4, 0), (9, 1), (14, 2)])
def test_stop_generate_ends_where_hf_does(lesson08: Lesson08, student_model, start: int, seed: int):
    """Stop strings: generate(stop_strings=...) ends exactly where HF generate(stop_strings=...) ends, stop text kept"""
    ids = random_ids(16 + seed, 1, 4, 370)
    stop = stop_string_for(ids, start, seed)
    assert stop, "grader: empty stop string"
    tok = tokenizer()
    torch.manual_seed(seed)
    want = hf_model().generate(ids, do_sample=True, max_new_tokens=20, top_k=0, stop_strings=[stop], tokenizer=tok)
    got = lesson08.generate(student_model, ids, 20, None, seed=seed, stop_strings=[stop], tokenizer=lesson08.tokenizer())
    assert got.shape == want.shape and torch.equal(got, want), (
        f"stop string {stop!r}: HF stops after {want.shape[1] - 4} new tokens ({tok.decode(want[0, 4:].tolist(), **DECODE)!r}), "
        f"you after {got.shape[1] - 4} ({tok.decode(got[0, 4:].tolist(), **DECODE)!r}); the stop text stays in the output"
    )


@pytest.mark.points(2)
def test_stop_max_new_tokens(lesson08: Lesson08, student_model):
    """Max tokens: without a stop string, exactly max_new_tokens tokens are added (0 adds none)"""
    ids = random_ids(20, 3, 4, 370)
    for n in (0, 1, 7):
        got = lesson08.generate(student_model, ids, n, {"temperature": 0.9}, seed=3)
        assert got.shape == (3, 4 + n), f"max_new_tokens={n}: shape {tuple(got.shape)}, expected (3, {4 + n})"
        assert torch.equal(got[:, :4], ids), "the prompt must be kept unchanged at the start of the output"
