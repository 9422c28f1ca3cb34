"""Lesson 09, provided: a tiny language model, a toy corpus, a batch sampler, and run helpers.

Nothing to implement here. This file is given to you complete (it is graded with the course's
copy, never yours), so that lesson 09 is about the training *system*: your optimizer, schedule,
clipping, evaluation and checkpoints in ``training.py`` drive this model.

Everything here is deliberately random in the ways a real pipeline is, so that a checkpoint
that forgets one random number generator (RNG) shows:

- ``TinyLM`` has dropout, drawn from torch's global CPU RNG (``torch.get_rng_state``);
- ``BatchSampler.next`` draws window offsets from its own ``torch.Generator`` (the data order,
  ``sampler.generator``), decides per batch with Python's ``random`` whether to corrupt the
  inputs, and draws the corrupted positions and tokens from numpy's global RNG.

The ``run_*`` helpers at the end are what the graders call in the sandbox (and what the lab and
the visible tests use): they build the model, the sampler and your optimizer the same way every
time, then call your ``train``, ``save_checkpoint`` and ``load_checkpoint``.

Notation: B batch, T sequence length, C channels, V vocabulary size.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int = 32
    block_size: int = 16  # longest sequence (positions)
    n_embd: int = 32
    n_head: int = 2
    dropout: float = 0.1  # > 0 on purpose: a resumed run must restore torch's RNG to match


class TinyLM(nn.Module):
    """One pre-LayerNorm Transformer block: embeddings, causal self-attention, MLP, tied head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, c)
        self.wpe = nn.Embedding(config.block_size, c)
        self.ln_1 = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c)
        self.fc = nn.Linear(c, 4 * c)
        self.fc_out = nn.Linear(4 * c, c)
        self.ln_f = nn.LayerNorm(c)
        self.drop = nn.Dropout(config.dropout)
        for module in self.modules():  # GPT-2's init: N(0, 0.02) weights, zero biases
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) int64 -> (logits (B, T, V), mean cross-entropy over the B*T targets, or None)."""
        b, t = idx.shape
        nh, c = self.config.n_head, self.config.n_embd
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(t, device=idx.device)))  # (B, T, C)
        q, k, v = self.qkv(self.ln_1(x)).split(c, dim=-1)  # each (B, T, C)
        q, k, v = (z.view(b, t, nh, c // nh).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        x = x + self.drop(self.fc_out(F.gelu(self.fc(self.ln_2(x)))))
        logits = self.ln_f(x) @ self.wte.weight.T  # (B, T, V): the head is tied to the embedding
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def toy_corpus(n_tokens: int = 8192, vocab_size: int = 32, seed: int = 0) -> torch.Tensor:
    """A token stream from a fixed random Markov chain: each token has 3 likely successors.

    A model that learns the chain gets its loss from ln V (uniform) down to about the chain's
    entropy rate; ``chain_entropy`` gives that floor.
    """
    g = torch.Generator().manual_seed(seed)
    probs = _chain(vocab_size, g)
    tokens = torch.empty(n_tokens, dtype=torch.long)
    tokens[0] = 0
    for i in range(1, n_tokens):
        tokens[i] = torch.multinomial(probs[tokens[i - 1]], 1, generator=g)
    return tokens


def _chain(vocab_size: int, g: torch.Generator) -> torch.Tensor:
    logits = torch.full((vocab_size, vocab_size), -4.0)
    for row in range(vocab_size):
        logits[row, torch.randperm(vocab_size, generator=g)[:3]] = torch.tensor([2.0, 1.0, 0.5])
    return logits.softmax(dim=-1)  # (V, V): row i is the distribution of the token after i


def chain_entropy(vocab_size: int = 32, seed: int = 0) -> float:
    """The entropy rate (nats per token) of ``toy_corpus``'s chain: the best loss any model can reach."""
    probs = _chain(vocab_size, torch.Generator().manual_seed(seed)).double()
    rows = -(probs * probs.log()).sum(dim=-1)  # (V,): entropy of each row
    stationary = torch.linalg.matrix_power(probs, 200)[0]  # (V,): the chain's long-run token frequencies
    return float((stationary * rows).sum())


class BatchSampler:
    """Random training windows of a token stream, drawn from three RNGs (see the module docstring).

    ``next()`` -> (x, y), each (batch_size, seq_len) int64, y = x shifted by one token. With
    probability ``corrupt_prob`` (Python ``random``) a batch's inputs are corrupted: each position
    is replaced, with probability ``corrupt_rate`` (numpy), by a random token (numpy); targets
    are never corrupted. ``generator`` is the data-order RNG: a checkpoint must save its state.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, vocab_size: int, *, seed: int = 0,
                 corrupt_prob: float = 0.5, corrupt_rate: float = 0.1) -> None:  # fmt: skip
        self.tokens, self.batch_size, self.seq_len, self.vocab_size = tokens, batch_size, seq_len, vocab_size
        self.corrupt_prob, self.corrupt_rate = corrupt_prob, corrupt_rate
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.tokens.numel() - self.seq_len - 1
        starts = torch.randint(0, n, (self.batch_size,), generator=self.generator)  # data order
        offsets = starts[:, None] + torch.arange(self.seq_len)  # (B, T)
        x, y = self.tokens[offsets], self.tokens[offsets + 1]  # (B, T) each
        if random.random() < self.corrupt_prob:  # Python's RNG: corrupt this batch?
            where = np.random.random_sample(x.shape) < self.corrupt_rate  # numpy's RNG: which positions
            noise = np.random.randint(0, self.vocab_size, size=x.shape)  # numpy's RNG: which tokens
            x = torch.where(torch.from_numpy(where), torch.from_numpy(noise).long(), x)
        return x, y


def set_seed(seed: int) -> None:
    """Seed torch (CPU), Python's ``random`` and numpy's global RNG."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def parameter_sha256(model: nn.Module) -> str:
    """sha256 over every state_dict entry (name, dtype, shape and raw bytes), in order."""
    return state_sha256(model.state_dict())


def state_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_to_bytes(save_checkpoint, **objects: object) -> bytes:
    """``save_checkpoint(buffer, **objects)`` into memory; the bytes it wrote."""
    buffer = io.BytesIO()
    save_checkpoint(buffer, **objects)
    return buffer.getvalue()


def checkpoint_from_bytes(load_checkpoint, blob: bytes, **objects: object) -> object:
    """``load_checkpoint(buffer, **objects)`` from the bytes ``blob``; what it returned (the step to continue from)."""
    return load_checkpoint(io.BytesIO(blob), **objects)


# ---------------------------------------------------------------------------- run helpers (graders, lab, tests)
RUN_DEFAULTS = {"seed": 0, "n_tokens": 4096, "batch_size": 8, "corrupt_prob": 0.5, "corrupt_rate": 0.1}


def _training():
    """Your ``training`` module: ``exercises.lesson_09.training`` from the repository, ``training`` in the sandbox."""
    if __package__:
        return importlib.import_module(f"{__package__}.training")
    return importlib.import_module("training")


def build(model: dict | None = None, run: dict | None = None, *, seed_offset: int = 0):
    """(model, sampler) for a run: every RNG seeded from ``run["seed"] + seed_offset`` first.

    ``model``: ModelConfig fields; ``run``: RUN_DEFAULTS keys. The corpus is always the same
    (seeded from ``run["seed"]`` alone); ``seed_offset`` changes the model's init and every RNG,
    as a fresh process would, which a resumed run must then overwrite from its checkpoint.
    """
    mcfg, rcfg = ModelConfig(**(model or {})), {**RUN_DEFAULTS, **(run or {})}
    tokens = toy_corpus(rcfg["n_tokens"], mcfg.vocab_size, rcfg["seed"])
    set_seed(rcfg["seed"] + seed_offset)
    net = TinyLM(mcfg)
    sampler = BatchSampler(tokens, rcfg["batch_size"], mcfg.block_size, mcfg.vocab_size, seed=rcfg["seed"] + 1 + seed_offset,
                           corrupt_prob=rcfg["corrupt_prob"], corrupt_rate=rcfg["corrupt_rate"])  # fmt: skip
    return net, sampler


def make_optimizer(net: nn.Module, train: dict, optimizer: str = "yours") -> torch.optim.Optimizer:
    """Your ``AdamW`` (or torch's, ``optimizer="torch"``) with the TrainConfig's lr, betas, eps and weight decay."""
    t = _training()
    cfg = t.TrainConfig(**train)
    cls = t.AdamW if optimizer == "yours" else torch.optim.AdamW
    return cls(net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def _logs(logs: object) -> list[dict]:
    return [{k: float(v) for k, v in row.items() if k in ("step", "lr", "loss", "grad_norm")} for row in logs]


def run_training(train: dict, model: dict | None = None, run: dict | None = None, *, stop_at: int | None = None,
                 optimizer: str = "yours") -> dict:  # fmt: skip
    """Train from scratch; stop after step ``stop_at - 1`` and checkpoint there when ``stop_at`` is given.

    Returns {"state_dict", "logs", "checkpoint": bytes or None, "step": steps done}.
    """
    t = _training()
    net, sampler = build(model, run)
    opt = make_optimizer(net, train, optimizer)
    logs = t.train(t.TrainConfig(**train), net, sampler, opt, stop_at=stop_at)
    done = t.TrainConfig(**train).total_steps if stop_at is None else stop_at
    ckpt = None
    if stop_at is not None:
        ckpt = checkpoint_to_bytes(t.save_checkpoint, model=net, optimizer=opt, step=done, data=sampler)
    return {"state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()}, "logs": _logs(logs),
            "checkpoint": ckpt, "step": done}  # fmt: skip


def run_resume(train: dict, checkpoint: bytes, model: dict | None = None, run: dict | None = None) -> dict:
    """A fresh start (other init, other RNG states) that loads ``checkpoint`` and trains to the end.

    Returns {"state_dict", "logs", "step": the step load_checkpoint returned}.
    """
    t = _training()
    net, sampler = build(model, run, seed_offset=12345)
    opt = make_optimizer(net, train)
    step = checkpoint_from_bytes(t.load_checkpoint, checkpoint, model=net, optimizer=opt, data=sampler)
    logs = t.train(t.TrainConfig(**train), net, sampler, opt, start_step=int(step))
    return {"state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()}, "logs": _logs(logs),
            "step": step}  # fmt: skip


def run_evaluate(batches: list, model: dict | None = None, run: dict | None = None) -> dict:
    """Your ``evaluate`` on a freshly built model (in training mode) over ``batches`` [(x, y), ...].

    Returns {"result": what evaluate returned, "training_after": model.training afterwards,
    "rng_untouched": torch's RNG state is the same after as before}.
    """
    t = _training()
    net, _ = build(model, run)
    net.train()
    before = torch.get_rng_state()
    result = t.evaluate(net, [(x, y) for x, y in batches])
    return {"result": result, "training_after": net.training, "rng_untouched": bool(torch.equal(before, torch.get_rng_state()))}


def run_adamw(params: list[torch.Tensor], grads: list[list[torch.Tensor | None]], groups: list[dict] | None = None,
              hyper: dict | None = None, loss: str | None = None, steps: int = 0,
              inputs: list[torch.Tensor] | None = None) -> list[list[torch.Tensor]]:  # fmt: skip
    """Your AdamW from ``params``: the parameters after every step.

    Either the gradients are given (``grads[step][i]``, None: that parameter has no gradient at
    that step), or ``loss="mlp"`` computes them from a tiny regression on ``inputs`` = [X, Y]
    for ``steps`` steps. ``groups``: param groups as {"params": [indices], ...options};
    ``hyper``: the optimizer's keyword arguments (omitted ones keep your defaults).
    """
    t = _training()
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    spec = [{**g, "params": [ps[i] for i in g["params"]]} for g in groups] if groups else ps
    opt = t.AdamW(spec, **(hyper or {}))
    return adamw_trajectory(opt, ps, grads, loss, steps, inputs)


def adamw_trajectory(opt: torch.optim.Optimizer, ps: list[torch.Tensor], grads: list, loss: str | None, steps: int,
                     inputs: list[torch.Tensor] | None) -> list[list[torch.Tensor]]:  # fmt: skip
    """Step ``opt`` over ``ps`` (see ``run_adamw``); the graders run torch's AdamW through this same function."""
    out = []
    for step in range(steps if loss else len(grads)):
        if loss == "mlp":
            x, y = inputs
            w1, b1, w2 = ps[:3]
            for p in ps:
                p.grad = None
            (((x @ w1 + b1).tanh() @ w2 - y) ** 2).mean().backward()
        else:
            for p, g in zip(ps, grads[step], strict=True):
                p.grad = None if g is None else g.clone()
        opt.step()
        out.append([p.detach().clone() for p in ps])
    return out


def run_clip(grads: list[torch.Tensor | None], max_norm: float) -> dict:
    """Your ``clip_grad_norm`` on parameters holding ``grads`` (None: no gradient), passed as a generator.

    Returns {"norm": what it returned, "grads": the gradients afterwards (None stays None)}.
    """
    t = _training()
    ps = []
    for g in grads:
        p = torch.zeros(g.shape if g is not None else (3,), dtype=g.dtype if g is not None else torch.float32,
                        requires_grad=True)  # fmt: skip
        p.grad = None if g is None else g.clone()
        ps.append(p)
    norm = t.clip_grad_norm((p for p in ps), max_norm)  # a generator, as model.parameters() is
    return {"norm": norm, "grads": [None if p.grad is None else p.grad.detach().clone() for p in ps]}


def run_schedule(warmup_steps: int, total_steps: int, num_cycles: float) -> list:
    """Your ``cosine_with_warmup`` at every step 0 .. total_steps."""
    t = _training()
    return [t.cosine_with_warmup(s, warmup_steps, total_steps, num_cycles) for s in range(total_steps + 1)]


def config_dict(config: object) -> dict:
    """A dataclass config as a plain dict (what crosses to the sandbox)."""
    return asdict(config)
