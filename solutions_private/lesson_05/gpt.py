"""Lesson 05: GPTMini, a GPT-2-shaped language model: forward, loss, generate, a micro overfit.

The architecture is GPT-2's (Radford et al., 2019), in the manner of nanoGPT: token and
position embeddings, a stack of Pre-LN blocks (``blocks.py``, provided), a final LayerNorm
and a language-model head whose weight is the token embedding matrix (weight tying, Press &
Wolf, 2017). Parameter names match Hugging Face's ``GPT2LMHeadModel``, so its weights can be
copied in (transposing its ``Conv1D`` weights) and both models must give the same logits.

Notation: B batch, T sequence length, C = n_embd channels, V = vocab_size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # as part of the exercises package (visible tests, your lab)
    from .blocks import Block, LayerNorm
except ImportError:  # as a top-level module (the grader's sandbox holds gpt.py and blocks.py side by side)
    from blocks import Block, LayerNorm


@dataclass
class GPTConfig:
    block_size: int = 64  # longest context the model reads: wpe has this many rows
    vocab_size: int = 65  # tokens the model knows (65 = the characters of tiny Shakespeare)
    n_layer: int = 4  # Transformer blocks stacked; GPT-2 small has 12
    n_head: int = 4  # attention heads per block; must divide n_embd
    n_embd: int = 128  # width C of the residual stream; head size is n_embd // n_head
    dropout: float = 0.0  # 0 for tiny models and for exact comparisons; 0.1 or so when a big model overfits
    bias: bool = True  # biases in Linear and LayerNorm, as in GPT-2; False is slightly faster and about as good


class GPTMini(nn.Module):
    """GPT-2 in miniature. ``forward(idx, targets)`` -> (logits, loss); ``generate`` continues a prompt."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings (V, C)
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings (block_size, C)
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),  # final LayerNorm, after the last block
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output projection is the token embedding matrix itself (one tensor, V x C).
        # It saves V * C parameters and ties "which vector means token v" at both ends of the model.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameters counted once (the tied wte / lm_head matrix is one tensor)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position, and the loss when ``targets`` are given.

        Args:
            idx: (B, T) token ids (int64), with T <= config.block_size.
            targets: optional (B, T) int64, ALREADY ALIGNED: ``targets[b, t]`` is the token that
                follows ``idx[b, t]``. Do not shift them again (Hugging Face shifts its ``labels``
                inside the model; this API does not). -100 marks a position to ignore.
        Returns:
            (logits, loss): logits (B, T, V) for every position (not only the last one); loss is
            ``lm_loss(logits, targets)``, a 0-dim tensor, or None when ``targets`` is None.

        Steps: token embeddings (wte) + position embeddings (wpe) of positions 0..T-1 (one (T, C)
        table broadcast over the batch), dropout, every block in ``self.transformer.h`` in order,
        the final LayerNorm ``ln_f``, then ``lm_head``. Raise a ValueError if T > block_size:
        wpe has no row for those positions.
        """
        # BEGIN SOLUTION
        T = idx.size(1)  # idx: (B, T)
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C), broadcast over the batch
        x = self.transformer.drop(tok_emb + pos_emb)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)  # (B, T, C)
        x = self.transformer.ln_f(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        loss = lm_loss(logits, targets) if targets is not None else None
        return logits, loss
        # END SOLUTION

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        do_sample: bool = False,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Continue each row of ``idx`` by ``max_new_tokens`` tokens, one at a time.

        Args:
            idx: (B, T) int64 prompt; T may exceed block_size.
            max_new_tokens: how many tokens to append (0 returns the prompt unchanged).
            temperature: > 0; the next-token logits are divided by it before the softmax (only
                used when sampling: < 1 sharpens, > 1 flattens the distribution).
            do_sample: False = greedy (the argmax of the logits); True = sample from
                softmax(logits / temperature) with ``torch.multinomial``.
            seed: when sampling, draw from ``torch.Generator(device=idx.device).manual_seed(seed)``
                so the same seed gives the same tokens; None uses torch's global generator.
        Returns:
            (B, T + max_new_tokens) int64: the prompt followed by the new tokens.

        Each step runs the model on at most the LAST block_size tokens (crop the context: the
        model has no position embedding beyond that) and uses only the logits of the last position.
        """
        # BEGIN SOLUTION
        generator = None
        if do_sample and seed is not None:
            generator = torch.Generator(device=idx.device).manual_seed(seed)
        for _ in range(max_new_tokens):  # one token per step, each step a full forward pass (no cache)
            idx_cond = idx[:, -self.config.block_size :]  # (B, <= block_size): crop to the context window
            logits, _ = self(idx_cond)  # (B, T', V)
            logits = logits[:, -1, :]  # (B, V): the next-token distribution
            if do_sample:
                probs = F.softmax(logits / temperature, dim=-1)  # (B, V)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            else:
                idx_next = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)  # (B, T + 1)
        return idx
        # END SOLUTION


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (in nats) over every position whose target is not -100.

    Shapes: logits (B, T, V), targets (B, T) int64, already aligned with the logits:
    ``targets[b, t]`` is the token that should follow position t, so the logits at t are scored
    against ``targets[b, t]`` (no shift here). Returns a 0-dim tensor.

    Hint: ``F.cross_entropy`` wants (N, V) and (N,): flatten the batch and time axes together.
    Its default ``ignore_index=-100`` is the convention used here and by Hugging Face.
    """
    # BEGIN SOLUTION
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T), ignore_index=-100)
    # END SOLUTION


def get_batch(
    data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows from a 1-D stream of token ids.

    Draw ``batch_size`` start offsets i uniformly from every valid start (0 to
    len(data) - block_size - 1, inclusive) with ``torch.randint(..., generator=generator)``; then
    x[b] = data[i : i + block_size] and y[b] = data[i + 1 : i + 1 + block_size], the same window
    shifted by one token, so y[b, t] is the target for x[b, t].

    Returns (x, y), each (batch_size, block_size) int64.
    """
    # BEGIN SOLUTION
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    x = torch.stack([data[i : i + block_size] for i in starts.tolist()])  # (B, T)
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in starts.tolist()])  # (B, T)
    return x, y
    # END SOLUTION


def train_micro(
    model: GPTMini, data: torch.Tensor, *, steps: int = 200, batch_size: int = 16, lr: float = 3e-3, seed: int = 0
) -> list[float]:
    """Overfit ``model`` on ``data`` (1-D int64 token ids) with AdamW; return the loss of every step.

    One ``torch.Generator().manual_seed(seed)`` drives every ``get_batch`` call, so a run is
    reproducible. Each step: a batch of windows of the model's block_size, the loss from
    ``model(x, y)``, zero the gradients, backward, ``optimizer.step()``. Use
    ``torch.optim.AdamW(model.parameters(), lr=lr)`` with its other defaults and the model in
    training mode. The model is trained in place; the returned list holds ``steps`` Python floats.
    """
    # BEGIN SOLUTION
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        x, y = get_batch(data, model.config.block_size, batch_size, generator)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
    # END SOLUTION
