"""Visible tests for lesson 08. Run: .venv/bin/pytest exercises/lesson_08 (or make check LESSON=08)

Hand-computed cases and small comparisons with transformers' own logits processors, ``generate`` and
``StopStringCriteria``. The hidden graders run the same comparisons on many more cases (see the lesson).
"""

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from exercises.lesson_08.decoding import (
    SamplingConfig,
    generate,
    hits_stop_string,
    min_p,
    no_repeat_ngram,
    repetition_penalty,
    sample_next,
    temperature,
    top_k,
    top_p,
)  # fmt: skip
from exercises.lesson_08.tiny_lm import tiny_llama
from exercises.lesson_08.tiny_tok import make_tokenizer

pytestmark = pytest.mark.lesson_08
INF = float("-inf")


def test_temperature_divides_and_rejects_zero():
    s = torch.tensor([[2.0, -1.0, 0.5]])
    torch.testing.assert_close(temperature(None, s, 0.5), torch.tensor([[4.0, -2.0, 1.0]]), msg="scores / t")
    with pytest.raises(ValueError):
        temperature(None, s, 0.0)


def test_top_k_keeps_ties():
    s = torch.tensor([[2.0, 2.0, 2.0, 1.0, 0.0]])
    out = top_k(None, s, 2)
    assert out.tolist() == [[2.0, 2.0, 2.0, INF, INF]], f"ties at the k-th score are all kept, got {out.tolist()}"
    assert torch.equal(top_k(None, s, 10), s), "k > V keeps everything"
    assert torch.equal(s, torch.tensor([[2.0, 2.0, 2.0, 1.0, 0.0]])), "do not edit scores in place"


def test_top_p_keeps_the_crossing_token():
    s = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]]).log()
    kept = torch.isfinite(top_p(None, s, 0.8))
    assert kept.tolist() == [[True, True, False], [False, True, True]], f"p = 0.8 keeps 0.5 and 0.3, got {kept.tolist()}"
    assert int(torch.isfinite(top_p(None, s, 0.0)).sum(-1).max()) == 1, "p = 0 keeps exactly one token"
    r = torch.randn(16, 30)
    want = TopPLogitsWarper(0.7)(None, r)
    assert torch.equal(torch.isfinite(top_p(None, r, 0.7)), torch.isfinite(want)), "same kept set as TopPLogitsWarper"


def test_min_p_is_relative_to_the_top():
    s = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = torch.isfinite(min_p(None, s, 0.5)).tolist()
    assert kept == [[True, True, False, False]], f"0.5 * max = 0.25: keeps 0.5 and 0.3, got {kept}"


def test_repetition_penalty_signs_and_prompt():
    s = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    ids = torch.tensor([[0, 1, 1, 1]])  # token 1 three times: penalised once
    out = repetition_penalty(ids, s, 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -4.0, 1.0, 0.5]]), msg="positive / penalty, negative * penalty, once")
    torch.testing.assert_close(out, RepetitionPenaltyLogitsProcessor(2.0)(ids, s))


def test_no_repeat_ngram_small_case():
    ids = torch.tensor([[1, 2, 3, 1, 2], [0, 1, 0, 1, 0]])
    s = torch.zeros(2, 5)
    out = no_repeat_ngram(ids, s, 3)
    assert torch.isneginf(out).tolist() == [[False, False, False, True, False], [False, True, False, False, False]], (
        "row 0 ends with '1 2', seen before '3'; row 1 ends with '1 0', seen before '1'"
    )
    assert torch.equal(out, NoRepeatNGramLogitsProcessor(3)(ids, s.clone()))


def model():
    m = tiny_llama(seed=0)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(6.0)  # peaked next-token distributions
    return m


def test_sampling_seeded_equals_hf_generate():
    m, ids = model(), torch.randint(370, (2, 4), generator=torch.Generator().manual_seed(0))
    settings = {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.2}
    got = generate(m, ids, 10, SamplingConfig(**settings), seed=3)
    torch.manual_seed(3)
    want = m.generate(ids, do_sample=True, max_new_tokens=10, **settings)
    assert torch.equal(got, want), f"got {got.tolist()}, HF generate {want.tolist()}"


def test_sampling_follows_the_processed_distribution():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])
    ids = torch.tensor([[1, 4]])
    cfg = SamplingConfig(temperature=2.0, top_p=0.7, repetition_penalty=1.5)
    procs = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.5), TemperatureLogitsWarper(2.0), TopPLogitsWarper(0.7)])
    want = torch.softmax(procs(ids, logits[None].clone()), -1)[0]
    n = 20_000
    draws = sample_next(ids.repeat(n, 1), logits.repeat(n, 1), cfg, torch.Generator().manual_seed(0))
    assert draws.shape == (n, 1) and draws.dtype == torch.long
    freq = torch.bincount(draws[:, 0], minlength=6).double() / n
    assert bool((freq[want == 0] == 0).all()), f"drew removed tokens: frequencies {freq.tolist()}, expected {want.tolist()}"
    assert float((freq - want).abs().max()) < 0.02, f"frequencies {freq.tolist()}, expected {want.tolist()}"


def test_stop_string_keeps_the_text():
    assert hits_stop_string("let us stop", len("let us st"), ["stop"]), "'st' + 'op'"
    assert hits_stop_string("xstopera", 0, ["stop"]), "inside the newest token, with an overhang"
    assert not hits_stop_string("stop at", len("stop"), ["stop"]), "it ended a token ago"
    tok = make_tokenizer()
    m, ids = model(), torch.tensor([[5, 6, 7]])
    full = generate(m, ids, 12, seed=1)
    kw = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    text = tok.decode(full[0].tolist(), **kw)
    stop = text[len(tok.decode(full[0, :9].tolist(), **kw)) - 2 : len(tok.decode(full[0, :9].tolist(), **kw))]
    got = generate(m, ids, 12, seed=1, stop_strings=[stop], tokenizer=tok)
    torch.manual_seed(1)
    want = m.generate(ids, do_sample=True, top_k=0, max_new_tokens=12, stop_strings=[stop], tokenizer=tok)
    assert torch.equal(got, want), f"stop string {stop!r}: got {got.tolist()}, HF {want.tolist()}"
    assert stop in tok.decode(got[0].tolist(), **kw), "the stop text stays in the output"


def test_stop_max_new_tokens():
    m, ids = model(), torch.tensor([[1, 2, 3]])
    assert generate(m, ids, 0).shape == (1, 3)
    out = generate(m, ids, 5, SamplingConfig(temperature=0.7))
    assert out.shape == (1, 8) and out.dtype == torch.long and torch.equal(out[:, :3], ids)
