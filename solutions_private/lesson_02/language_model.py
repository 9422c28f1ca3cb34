"""Lesson 02: embeddings and language modelling.

A language model gives, at every position t of a token sequence, a distribution over the
next token: ``p(x_{t+1} | x_{<=t}) = softmax(logits_t)``. This file holds the pieces every
later model in the course reuses:

- ``cross_entropy`` and ``perplexity``: the training loss and its interpretable cousin;
- ``Embeddings``: token + learned position embeddings, the input layer of GPT-2;
- ``BigramLM``: the smallest language model, a table of next-token logits;
- ``sample``: drawing tokens from logits at a temperature.

Notation (nanoGPT's): ``B`` batch, ``T`` time (sequence length), ``C`` channels (embedding
width), ``V`` vocabulary size, ``N`` any number of positions flattened together.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits)``; matches ``F.cross_entropy``.

    Shapes:
        logits: (N, V) or (B, T, V), any float dtype (the class axis is the LAST one, unlike
            ``F.cross_entropy``, which wants (B, V, T) for sequences).
        targets: (N,) or (B, T), dtype long, values in [0, V) or ``ignore_index``.
    Returns:
        a 0-dim tensor of the dtype of ``logits``: the mean over the positions whose target is
        not ``ignore_index``. When every target is ignored the mean is 0/0 = NaN, as in
        ``F.cross_entropy``.

    For one position with logits z and target y: ``loss = logsumexp(z) - z[y]``
    (= ``-log softmax(z)[y]``).

    Numerical hints:
        - Stable for logits around 1e4: subtract the row maximum before ``exp``
          (``logsumexp(z) = m + log(sum(exp(z - m)))`` with ``m = max(z)``); never take
          ``log(softmax(z))``, whose small probabilities underflow to 0 and give ``-inf``.
        - Ignored positions must count neither in the sum nor in the divisor, and their target
          value (e.g. -100) is not a valid index: replace it before ``gather``/indexing.
        - Differentiable with autograd; no Python loop over positions. Do not call
          ``F.cross_entropy``, ``F.nll_loss`` or ``F.log_softmax``: writing them is the exercise.
    """
    # BEGIN SOLUTION
    V = logits.shape[-1]
    logits = logits.reshape(-1, V)  # (N, V)
    targets = targets.reshape(-1)  # (N,)
    keep = targets != ignore_index  # (N,) positions that count
    m = logits.amax(dim=-1, keepdim=True).detach()  # (N, 1) row max: exp(z - m) <= 1 never overflows
    logz = m.squeeze(-1) + (logits - m).exp().sum(dim=-1).log()  # (N,) log sum_j exp(z_j)
    safe = targets.masked_fill(~keep, 0)  # (N,) ignored targets point at a valid class, then are dropped
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (N,) z[y]
    nll = torch.where(keep, logz - picked, 0.0)  # (N,) zero (and zero gradient) where ignored
    return nll.sum() / keep.sum()  # 0-dim; 0/0 = NaN when everything is ignored, as torch
    # END SOLUTION


def perplexity(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``exp`` of the mean cross-entropy: the effective number of equally likely next tokens.

    Same shapes, ``ignore_index`` and return type (a 0-dim tensor of the dtype of ``logits``)
    as :func:`cross_entropy`. Uniform logits over V classes give exactly V; a perfect model
    gives 1. Use your ``cross_entropy``; the exponent is the *mean* over the counted
    positions, not the sum.
    """
    # BEGIN SOLUTION
    return cross_entropy(logits, targets, ignore_index).exp()
    # END SOLUTION


class Embeddings(nn.Module):
    """Token + learned position embeddings (GPT-2's input layer): ``x = wte[idx] + wpe[0..T-1]``.

    Parameters (the names are part of the contract: the graders load weights by name, and
    they are GPT-2's, so weights copy over in lesson 05):
        ``wte.weight``: (vocab_size, n_embd), one row per token id;
        ``wpe.weight``: (block_size, n_embd), one row per position 0 .. block_size - 1.
    Build both as ``nn.Embedding`` (default init N(0, 1) is fine here).
    """

    def __init__(self, vocab_size: int, block_size: int, n_embd: int) -> None:
        # BEGIN SOLUTION
        super().__init__()
        self.block_size = block_size  # the longest sequence the position table covers
        self.wte = nn.Embedding(vocab_size, n_embd)  # token embeddings
        self.wpe = nn.Embedding(block_size, n_embd)  # learned absolute position embeddings
        # END SOLUTION

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (B, T) long token ids -> (B, T, C) float embeddings.

        Position t of every sequence gets ``wpe.weight[t]`` (the position in the sequence,
        never the token id), broadcast over the batch. Build the positions on ``idx.device``.
        If T > block_size, raise ``ValueError`` with a message that names T and block_size
        (nn.Embedding would only say "index out of range").
        """
        # BEGIN SOLUTION
        T = idx.shape[1]  # idx: (B, T)
        if T > self.block_size:
            raise ValueError(f"sequence length T={T} is longer than block_size={self.block_size}")
        pos = torch.arange(T, device=idx.device)  # (T,) positions 0 .. T-1
        tok_emb = self.wte(idx)  # (B, T, C)
        pos_emb = self.wpe(pos)  # (T, C), broadcast over B
        return tok_emb + pos_emb  # (B, T, C)
        # END SOLUTION


class BigramLM(nn.Module):
    """The bigram language model: the next token depends on the current token only.

    One parameter, ``table.weight`` of shape (vocab_size, vocab_size), an ``nn.Embedding``
    whose row i holds the logits of the token that follows token i:
    ``logits[b, t] = table.weight[idx[b, t]]``.
    """

    def __init__(self, vocab_size: int) -> None:
        # BEGIN SOLUTION
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)  # row i: logits of the token after i
        # END SOLUTION

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) long -> (logits (B, T, V), loss).

        ``loss`` is ``cross_entropy(logits, targets)`` (your function, ignore_index -100) when
        ``targets`` (B, T) is given, else ``None``.
        """
        # BEGIN SOLUTION
        logits = self.table(idx)  # (B, T, V)
        loss = cross_entropy(logits, targets) if targets is not None else None
        return logits, loss
        # END SOLUTION

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, T) -> (B, T + max_new_tokens): append one sampled token at a time (given, not graded)."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -1:])  # (B, 1, V): a bigram needs only the last token
            nxt = sample(logits[:, -1, :], temperature, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)  # (B, T + 1)
        return idx


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Draw ``num_samples`` independent tokens from ``softmax(logits / temperature)``.

    Shapes:
        logits: (V,) -> returns (num_samples,); (B, V) -> returns (B, num_samples), row b drawn
        from row b's distribution. dtype long, on the device of ``logits``.
    Temperature:
        ``temperature > 0`` divides the logits (T < 1 sharpens, T > 1 flattens, T = 1 is the
        model's own distribution). ``temperature == 0`` means greedy: every sample is the
        argmax (the first one on ties) and no randomness is used. Negative: ``ValueError``.
    Randomness:
        ``seed`` (int): draw from a fresh ``torch.Generator(device=logits.device)`` seeded with
        it, so the same seed gives the same samples (the graders pass ``seed``: a Generator
        cannot cross the sandbox boundary). ``generator``: draw from it and advance its
        state (use this in a generation loop). Give at most one of the two; with neither,
        torch's global generator is used.

    Hints: samples are drawn *with replacement* (independent draws: ``num_samples`` may
    exceed V); softmax over the vocabulary axis (the last one); ``torch.multinomial`` takes
    probabilities, not logits.
    """
    # BEGIN SOLUTION
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if temperature == 0:
        greedy = logits.argmax(dim=-1, keepdim=True)  # (..., 1)
        return greedy.expand(*logits.shape[:-1], num_samples).clone()  # (..., num_samples)
    if seed is not None:
        generator = torch.Generator(device=logits.device).manual_seed(seed)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (..., V) over the vocabulary
    return torch.multinomial(probs, num_samples, replacement=True, generator=generator)  # (..., num_samples)
    # END SOLUTION
