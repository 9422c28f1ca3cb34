"""Lesson 08: decoding. Logits processors, a sampler that composes them, and a generate loop.

Every processor has the signature of Hugging Face's logits processors:

    processor(input_ids, scores, ...) -> scores

with ``input_ids`` (B, T) int64 (the whole sequence so far, prompt included) and ``scores``
(B, V) float, the next-token logits. A processor returns a new (B, V) tensor of the same dtype
(it never edits ``scores`` in place) and sets every token it removes to ``-inf``.

Inside ``generate``, Hugging Face applies them in this order (``_get_logits_processor``):
repetition penalty, no-repeat n-gram, temperature, top-k, top-p (nucleus, Holtzman et al., 2020),
min-p; then it samples with ``torch.multinomial(softmax(scores), 1)`` on float32 scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


def temperature(input_ids: torch.Tensor | None, scores: torch.Tensor, t: float) -> torch.Tensor:
    """Temperature scaling: ``scores / t``; (B, V) -> (B, V).

    ``t`` must be a number > 0 (raise ``ValueError`` otherwise). t < 1 sharpens the distribution,
    t > 1 flattens it. ``input_ids`` is unused (it is there for the common signature).
    """
    # BEGIN SOLUTION
    if not t > 0:
        raise ValueError(f"temperature must be > 0, got {t}")
    return scores / t
    # END SOLUTION


def top_k(input_ids: torch.Tensor | None, scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k filtering: keep the k highest scores of each row, set the rest to ``-inf``; (B, V) -> (B, V).

    Ties at the cut are all kept: a token is removed only if its score is strictly below the
    k-th largest score of its row ([2, 2, 2, 1, 0] with k = 2 keeps three tokens). k larger than
    V keeps every token; k < 1 is treated as 1.
    """
    # BEGIN SOLUTION
    k = min(max(k, 1), scores.size(-1))
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]  # (B, 1): the k-th largest score
    return scores.masked_fill(scores < kth, NEG_INF)
    # END SOLUTION


def top_p(input_ids: torch.Tensor | None, scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus (top-p) filtering; (B, V) -> (B, V).

    Keep the smallest set of highest-probability tokens whose total probability (softmax of the
    row) reaches ``p``; remove the others (``-inf``). Walking the tokens from the most to the least
    probable, a token is kept while the probability mass *before* it is still < p, so the token
    that crosses p is kept, and the first token is always kept (p = 0 keeps exactly one).
    """
    # BEGIN SOLUTION
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)  # (B, V)
    probs = sorted_scores.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V): probability of the tokens ranked above
    remove_sorted = mass_before >= p
    remove_sorted[..., 0] = False  # at least one token
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return scores.masked_fill(remove, NEG_INF)
    # END SOLUTION


def min_p(input_ids: torch.Tensor | None, scores: torch.Tensor, p: float) -> torch.Tensor:
    """Min-p filtering (Nguyen et al., 2024); (B, V) -> (B, V).

    With ``probs = softmax(scores)``, remove every token with ``probs < p * max(probs)`` (strictly
    below); the most probable token always stays.
    """
    # BEGIN SOLUTION
    probs = scores.float().softmax(dim=-1)  # (B, V)
    threshold = p * probs.amax(dim=-1, keepdim=True)  # (B, 1)
    remove = probs < threshold
    remove.scatter_(-1, scores.argmax(dim=-1, keepdim=True), False)  # keep the top token
    return scores.masked_fill(remove, NEG_INF)
    # END SOLUTION


def repetition_penalty(input_ids: torch.Tensor, scores: torch.Tensor, penalty: float) -> torch.Tensor:
    """Repetition penalty (Keskar et al., 2019, CTRL); (B, V) -> (B, V).

    For every distinct token id that occurs in the row's ``input_ids`` (prompt included), once
    however many times it occurs: a negative score is multiplied by ``penalty``, a positive (or
    zero) score is divided by it. With penalty > 1 both make the token less likely.
    """
    # BEGIN SOLUTION
    seen = torch.gather(scores, 1, input_ids)  # (B, T): the scores of the tokens in the sequence
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, input_ids, seen)  # a repeated id writes the same value again: once
    # END SOLUTION


def no_repeat_ngram(input_ids: torch.Tensor, scores: torch.Tensor, n: int) -> torch.Tensor:
    """Ban repeated n-grams; (B, V) -> (B, V).

    For each row: every earlier n-gram of ``input_ids`` (prompt included) whose first n - 1 tokens
    equal the last n - 1 tokens of the row bans its n-th token (``-inf``), so that no n-gram occurs
    twice. A row shorter than n - 1 tokens bans nothing; n = 1 bans every token already present.
    """
    # BEGIN SOLUTION
    out = scores.clone()
    T = input_ids.size(1)
    if n < 1 or T + 1 < n:
        return out
    for b, row in enumerate(input_ids.tolist()):
        suffix = row[T - n + 1 :] if n > 1 else []  # the n - 1 last tokens
        banned = {row[i + n - 1] for i in range(T - n + 1) if row[i : i + n - 1] == suffix}
        if banned:
            out[b, sorted(banned)] = NEG_INF
    return out
    # END SOLUTION


@dataclass
class SamplingConfig:
    """The decoding settings; each default switches its processor off (Hugging Face's defaults)."""

    temperature: float = 1.0  # > 0; 1 = off
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    no_repeat_ngram_size: int = 0  # 0 = off


def sample_next(
    input_ids: torch.Tensor,
    scores: torch.Tensor,
    config: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One sampled next token per row: (B, T) ids, (B, V) scores -> (B, 1) int64.

    Cast the scores to float32, apply the processors that ``config`` switches on, in Hugging
    Face's order: repetition penalty (if != 1), no-repeat n-gram (if > 0), temperature (if != 1),
    top-k (if > 0), top-p (if < 1), min-p (if > 0); then draw
    ``torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)``. Call
    ``torch.multinomial`` exactly once per step, so that a seeded run draws the same tokens as
    ``transformers``' ``generate(do_sample=True)`` with the same seed. ``config=None``: all off.
    """
    # BEGIN SOLUTION
    c = config or SamplingConfig()
    s = scores.float()  # (B, V)
    if c.repetition_penalty != 1.0:
        s = repetition_penalty(input_ids, s, c.repetition_penalty)
    if c.no_repeat_ngram_size > 0:
        s = no_repeat_ngram(input_ids, s, c.no_repeat_ngram_size)
    if c.temperature != 1.0:
        s = temperature(input_ids, s, c.temperature)
    if c.top_k > 0:
        s = top_k(input_ids, s, c.top_k)
    if c.top_p < 1.0:
        s = top_p(input_ids, s, c.top_p)
    if c.min_p > 0.0:
        s = min_p(input_ids, s, c.min_p)
    probs = torch.softmax(s, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)
    # END SOLUTION


def hits_stop_string(text: str, last_start: int, stop_strings: list[str]) -> bool:
    """True if one of ``stop_strings`` ends inside the last token of ``text``.

    ``text`` is the decoded sequence and ``last_start`` the length of the text before its last
    token. As in ``transformers``' ``StopStringCriteria``, a stop string counts only if it ends
    inside the last token (it may start in earlier tokens, or inside the last one): "st" + "op",
    "st" + "opera", "xstop" all match "stop"; "stop" + "at" does not (it ended a token ago, and
    generation would already have stopped there).
    """
    # BEGIN SOLUTION
    return any(s in text[max(0, last_start - len(s) + 1) :] for s in stop_strings)
    # END SOLUTION


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    config: SamplingConfig | None = None,
    *,
    stop_strings: list[str] | None = None,
    tokenizer=None,
    seed: int | None = None,
) -> torch.Tensor:
    """Sample up to ``max_new_tokens`` tokens after ``input_ids`` (B, T) -> (B, T + n) int64, n <= max_new_tokens.

    Each step runs ``model(ids).logits`` on the whole sequence so far (no cache), takes the last
    position's (B, V) logits and appends ``sample_next(ids, logits, config, generator)``. ``seed``: when
    given, every draw uses ``torch.Generator().manual_seed(seed)``, made once before the loop
    (otherwise torch's global generator).

    ``stop_strings`` (needs ``tokenizer`` and B = 1, else ``ValueError``): after each new token,
    decode the whole row with ``tokenizer.decode(ids, skip_special_tokens=False,
    clean_up_tokenization_spaces=False)`` and stop as soon as ``hits_stop_string`` is true. The
    stop string is kept in the output.
    """
    # BEGIN SOLUTION
    if stop_strings and (tokenizer is None or input_ids.size(0) != 1):
        raise ValueError("stop_strings need a tokenizer and a batch of one row")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    ids = input_ids
    for _ in range(max_new_tokens):
        logits = model(ids).logits[:, -1, :]  # (B, V)
        nxt = sample_next(ids, logits, config, generator)  # (B, 1)
        ids = torch.cat([ids, nxt], dim=1)  # (B, T + 1)
        if stop_strings:
            kw = dict(skip_special_tokens=False, clean_up_tokenization_spaces=False)
            before = tokenizer.decode(ids[0, :-1].tolist(), **kw)
            text = tokenizer.decode(ids[0].tolist(), **kw)
            if hits_stop_string(text, len(before), stop_strings):
                break
    return ids
    # END SOLUTION
