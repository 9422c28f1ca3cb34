"""Hidden graders for lesson 02. They run in the grader's process; student code only in the worker.

References are torch's own: ``F.cross_entropy`` (and autograd through it) for the loss,
``F.embedding`` with the same weights for the modules, and ``softmax(logits / T)`` for the
sampler, compared with the empirical frequencies by a chi-square test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from graders.engine import expect
from graders.engine.sandbox import StudentError
from graders.lesson_02.bindings import Lesson02

pytestmark = pytest.mark.lesson_02

# Per dtype (atol, rtol) for a loss over a few hundred positions, and for its gradient.
TOL = {torch.float64: (1e-12, 1e-10), torch.float32: (1e-6, 1e-5)}


def make_batch(shape: tuple[int, ...], V: int, dtype: torch.dtype, seed: int, scale: float = 3.0):
    """Random logits of ``shape + (V,)`` and targets of ``shape`` from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    targets = torch.randint(0, V, shape, generator=g)
    return logits, targets


def torch_ce(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=ignore_index)


# ---------------------------------------------------------------------------- cross_entropy
@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", [(37,), (4, 9)], ids=["(N,V)", "(B,T,V)"])
def test_cross_entropy_parity(lesson02: Lesson02, shape: tuple[int, ...], dtype: torch.dtype):
    """cross_entropy matches F.cross_entropy"""
    for seed, V in ((0, 5), (1, 50), (2, 1)):
        logits, targets = make_batch(shape, V, dtype, seed)
        got = lesson02.cross_entropy(logits, targets)
        expect.close(got, torch_ce(logits, targets), f"cross_entropy (logits {tuple(logits.shape)}, {dtype})", *TOL[dtype])


# Each case: shape of targets, V, ignore_index passed (None: the default -100), positions ignored.
IGNORE_CASES = {
    "default-100-padding": ((3, 8), 7, None, "tail"),
    "default-100-scattered": ((40,), 11, None, "random"),
    "custom-index-is-a-class": ((5, 6), 9, 2, "class"),
}


def ignore_case(name: str, dtype: torch.dtype, seed: int = 5):
    shape, V, ignore_index, where = IGNORE_CASES[name]
    logits, targets = make_batch(shape, V, dtype, seed)
    g = torch.Generator().manual_seed(seed + 100)
    if where == "tail":  # right-padded sequences of lengths 8, 5 and 2
        for row, length in enumerate((8, 5, 2)):
            targets[row, length:] = -100
    elif where == "random":
        targets[torch.rand(shape, generator=g) < 0.4] = -100
    # "class": ignore_index 2 is a real class id; about 1/9 of the targets are ignored as they are
    assert (targets == (-100 if ignore_index is None else ignore_index)).any()
    return logits, targets, ignore_index


@pytest.mark.points(2)
@pytest.mark.parametrize("case", list(IGNORE_CASES))
def test_cross_entropy_ignore_index(lesson02: Lesson02, case: str):
    """ignore_index: ignored positions count neither in the sum nor in the mean"""
    for dtype in (torch.float32, torch.float64):
        logits, targets, ignore_index = ignore_case(case, dtype)
        got = lesson02.cross_entropy(logits, targets, ignore_index)
        want = torch_ce(logits, targets, -100 if ignore_index is None else ignore_index)
        expect.close(got, want, f"cross_entropy with ignored targets ({case}, {dtype})", *TOL[dtype])


@pytest.mark.points(1)
def test_cross_entropy_all_ignored_is_nan(lesson02: Lesson02):
    """Every target ignored: NaN (0/0), as F.cross_entropy"""
    logits, targets = make_batch((2, 3), 5, torch.float32, 7)
    got = lesson02.cross_entropy(logits, torch.full_like(targets, -100))
    assert torch.isnan(got), f"cross_entropy with every target ignored returned {got.item():g}; the documented result is NaN"


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_cross_entropy_large_logits(lesson02: Lesson02, dtype: torch.dtype):
    """Stable for logits around 1e4 (and -1e4)"""
    logits, targets = make_batch((6, 11), 50, dtype, 11, scale=1e4)
    got = lesson02.cross_entropy(logits, targets)
    assert torch.isfinite(got), f"cross_entropy is {got.item()} with logits around 1e4: subtract the row max before exp"
    want = torch_ce(logits.double(), targets)
    # The loss is ~1e4; float32 logits of size 1e4 carry absolute rounding ~1e-3, so compare relatively.
    expect.close(got, want.to(dtype), f"cross_entropy at logits around 1e4 ({dtype})", 1e-3 if dtype == torch.float32 else 1e-8, 1e-5)
    # A shift by a huge constant changes nothing: softmax is shift-invariant.
    shifted = lesson02.cross_entropy(logits[:1] + 3e4, targets[:1])
    expect.close(shifted, torch_ce(logits[:1].double(), targets[:1]).to(dtype), "cross_entropy of logits + 3e4", 1e-2, 1e-5)


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_cross_entropy_gradients(lesson02: Lesson02, dtype: torch.dtype):
    """Gradient w.r.t. the logits matches autograd through F.cross_entropy (zero on ignored rows)"""
    for case in ("default-100-scattered", "custom-index-is-a-class"):
        logits, targets, ignore_index = ignore_case(case, dtype, seed=21)
        got = lesson02.cross_entropy_grad(logits, targets, ignore_index)
        x = logits.clone().requires_grad_(True)
        torch_ce(x, targets, -100 if ignore_index is None else ignore_index).backward()
        ignored = targets == (-100 if ignore_index is None else ignore_index)
        leak = got[ignored].abs().max().item()
        assert leak == 0.0, f"an ignored position has a nonzero gradient ({leak:.3g}) ({case})"
        expect.close(got, x.grad, f"d loss / d logits ({case}, {dtype})", *TOL[dtype])


# ---------------------------------------------------------------------------- perplexity
@pytest.mark.points(2)
def test_perplexity(lesson02: Lesson02):
    """perplexity = exp(mean cross-entropy); uniform logits give V"""
    for V in (2, 7, 100):
        logits = torch.full((3, 5, V), 0.25, dtype=torch.float64)
        targets = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(V))
        got = lesson02.perplexity(logits, targets)
        expect.close(got, torch.tensor(float(V), dtype=torch.float64), f"perplexity of uniform logits over V={V}", 1e-9, 1e-9)
    for case in IGNORE_CASES:
        logits, targets, ignore_index = ignore_case(case, torch.float32, seed=31)
        got = lesson02.perplexity(logits, targets, ignore_index)
        want = torch_ce(logits, targets, -100 if ignore_index is None else ignore_index).exp()
        expect.close(got, want, f"perplexity ({case})", 1e-5, 1e-5)


# ---------------------------------------------------------------------------- Embeddings
def weights(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.points(1)
def test_embeddings_parameters(lesson02: Lesson02):
    """Embeddings has exactly wte.weight (V, C) and wpe.weight (block_size, C)"""
    got = lesson02.parameters(lesson02.embeddings(50, 16, 8))
    want = {"wte.weight": (50, 8), "wpe.weight": (16, 8)}
    assert got == want, f"Embeddings(50, 16, 8).state_dict() has {got}, expected {want}"


# Each case: V, block_size, C, B, T.
EMB_CASES = {
    "T-equals-block": (50, 16, 8, 3, 16),
    "T-shorter-than-block": (50, 16, 8, 2, 5),
    "vocab-smaller-than-block": (11, 32, 4, 2, 20),
}


@pytest.mark.points(2)
@pytest.mark.parametrize("case", list(EMB_CASES))
def test_embeddings_forward(lesson02: Lesson02, case: str):
    """Embeddings(idx) = wte[idx] + wpe[0..T-1] with the grader's weights"""
    V, block, C, B, T = EMB_CASES[case]
    model = lesson02.embeddings(V, block, C)
    wte, wpe = weights((V, C), 1), weights((block, C), 2)
    model.load_state_dict({"wte.weight": wte, "wpe.weight": wpe})
    idx = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(3))
    got = lesson02.embed(model, idx, C)
    want = F.embedding(idx, wte) + F.embedding(torch.arange(T), wpe)
    expect.close(got, want, f"Embeddings output ({case})", 1e-6, 1e-6)


@pytest.mark.points(1)
def test_embeddings_gradients(lesson02: Lesson02):
    """Gradients reach wte at the used ids and wpe at positions 0..T-1 only"""
    V, block, C, B, T = 20, 12, 6, 3, 7
    model = lesson02.embeddings(V, block, C)
    wte, wpe = weights((V, C), 4), weights((block, C), 5)
    model.load_state_dict({"wte.weight": wte, "wpe.weight": wpe})
    g = torch.Generator().manual_seed(6)
    idx = torch.randint(0, V, (B, T), generator=g)
    cot = torch.randn(B, T, C, generator=g)
    grads = lesson02.param_grads(model, (idx,), cot, None, {"wte.weight": (V, C), "wpe.weight": (block, C)})
    w1, w2 = wte.clone().requires_grad_(True), wpe.clone().requires_grad_(True)
    ((F.embedding(idx, w1) + F.embedding(torch.arange(T), w2)) * cot).sum().backward()
    expect.close(grads["wte.weight"], w1.grad, "gradient of wte.weight", 1e-5, 1e-5)
    expect.close(grads["wpe.weight"], w2.grad, "gradient of wpe.weight (rows T.. must be zero)", 1e-5, 1e-5)


@pytest.mark.points(1)
def test_embeddings_too_long_raises(lesson02: Lesson02):
    """T == block_size works; T > block_size raises ValueError naming block_size"""
    block = 13
    model = lesson02.embeddings(40, block, 4)
    lesson02.embed(model, torch.zeros(2, block, dtype=torch.long), 4)  # exactly block_size is allowed
    with pytest.raises(StudentError) as info:
        model.call("forward", torch.zeros(2, block + 4, dtype=torch.long))
    message = str(info.value).split(" (at ")[0]
    assert message.startswith("ValueError"), f"T > block_size raised {message[:200]!r}; expected a ValueError"
    assert str(block) in message, f"the error {message[:200]!r} should name block_size ({block})"


# ---------------------------------------------------------------------------- BigramLM
@pytest.mark.points(1)
def test_bigram_parameters(lesson02: Lesson02):
    """BigramLM has exactly table.weight of shape (V, V)"""
    got = lesson02.parameters(lesson02.bigram(13))
    assert got == {"table.weight": (13, 13)}, f"BigramLM(13).state_dict() has {got}, expected {{'table.weight': (13, 13)}}"


@pytest.mark.points(2)
def test_bigram_forward_and_loss(lesson02: Lesson02):
    """BigramLM: logits = table[idx]; loss = cross-entropy (None without targets)"""
    V, B, T = 13, 3, 9
    model = lesson02.bigram(V)
    table = weights((V, V), 7)
    model.load_state_dict({"table.weight": table})
    g = torch.Generator().manual_seed(8)
    idx = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    want_logits = F.embedding(idx, table)  # (B, T, V)
    logits, loss = lesson02.bigram_forward(model, idx, None, V)
    expect.close(logits, want_logits, "BigramLM logits", 1e-6, 1e-6)
    logits, loss = lesson02.bigram_forward(model, idx, targets, V)
    expect.close(logits, want_logits, "BigramLM logits (with targets)", 1e-6, 1e-6)
    expect.close(loss, torch_ce(want_logits, targets), "BigramLM loss", *TOL[torch.float32])
    targets[1, 4:] = -100  # padding is ignored, with the default ignore_index
    _, loss = lesson02.bigram_forward(model, idx, targets, V)
    expect.close(loss, torch_ce(want_logits, targets), "BigramLM loss with -100 targets", *TOL[torch.float32])


@pytest.mark.points(1)
def test_bigram_gradients(lesson02: Lesson02):
    """BigramLM: the gradient of the loss w.r.t. table.weight matches torch"""
    V, B, T = 10, 4, 6
    model = lesson02.bigram(V)
    table = weights((V, V), 9)
    model.load_state_dict({"table.weight": table})
    g = torch.Generator().manual_seed(10)
    idx, targets = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    grads = lesson02.param_grads(model, (idx, targets), torch.tensor(1.0), 1, {"table.weight": (V, V)})
    w = table.clone().requires_grad_(True)
    torch_ce(F.embedding(idx, w), targets).backward()
    expect.close(grads["table.weight"], w.grad, "gradient of table.weight", 1e-6, 1e-5)


# ---------------------------------------------------------------------------- sample
N_SAMPLES = 20_000
LOGITS = torch.tensor([1.0, 0.5, 0.0, -0.5, 0.8, 0.2, -0.3, 0.4])
# Three rows that differ, so a softmax over the batch axis gives other distributions.
BATCH_LOGITS = torch.stack([LOGITS, LOGITS.flip(0), 2 * LOGITS.roll(3)])
# Pearson's chi-square test of the counts against softmax(logits / T). A correct sampler fails
# one check with probability about P_FAIL (chi-square asymptotics, accurate here: every expected
# count is above 300). This file makes 6 such checks (9 with a GPU), so a correct sampler loses
# points with probability below 1e-8. With fixed seeds each implementation always gives the same
# verdict; the probability is over seeds and implementations. The wrong samplers the lesson names
# give statistics in the thousands (p-values below 1e-200).
P_FAIL = 1e-9


def chi_square(samples: torch.Tensor, probs: torch.Tensor, what: str) -> None:
    """Assert that ``samples`` (n,) look like independent draws from ``probs`` (V,)."""
    V, n = probs.numel(), samples.numel()
    counts = torch.bincount(samples, minlength=V).double()
    expected = n * probs.double()
    assert expected.min() > 300, "grader bug: expected counts too small for the chi-square approximation"
    stat = ((counts - expected) ** 2 / expected).sum()
    p_value = torch.special.gammaincc(torch.tensor((V - 1) / 2, dtype=torch.float64), stat / 2).item()
    assert p_value > P_FAIL, (
        f"{what}: the sample frequencies do not follow softmax(logits / temperature) "
        f"(chi-square {stat.item():.1f} on {V - 1} degrees of freedom, p = {p_value:.2g} < {P_FAIL:g}); "
        f"observed {[round(x, 3) for x in (counts / n).tolist()]}, expected {[round(x, 3) for x in probs.tolist()]}"
    )


@pytest.mark.points(2)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sample_follows_softmax_at_temperature(lesson02: Lesson02, temperature: float):
    """sample draws from softmax(logits / T): 20000 draws, chi-square test"""
    got = lesson02.sample(LOGITS, temperature, N_SAMPLES, seed=1234)
    chi_square(got, torch.softmax(LOGITS.double() / temperature, dim=-1), f"temperature {temperature:g}")


@pytest.mark.points(2)
def test_sample_batched_rows(lesson02: Lesson02):
    """Batched logits (B, V): row b is drawn from softmax of row b"""
    got = lesson02.sample(BATCH_LOGITS, 1.0, N_SAMPLES, seed=99)
    probs = torch.softmax(BATCH_LOGITS.double(), dim=-1)
    for b in range(BATCH_LOGITS.shape[0]):
        chi_square(got[b], probs[b], f"row {b} of batched logits")


@pytest.mark.points(1)
def test_sample_temperature_zero_is_argmax(lesson02: Lesson02):
    """Temperature 0 is greedy: every sample is the argmax"""
    got = lesson02.sample(LOGITS, 0.0, 50, seed=0)
    assert (got == LOGITS.argmax()).all(), f"temperature 0 gave {got[:10].tolist()}..., expected all {LOGITS.argmax().item()}"
    got = lesson02.sample(BATCH_LOGITS, 0.0, 5, seed=0)
    want = BATCH_LOGITS.argmax(dim=-1, keepdim=True).expand(-1, 5)
    assert torch.equal(got, want), f"temperature 0 on batched logits gave {got.tolist()}, expected {want.tolist()}"


@pytest.mark.points(1)
def test_sample_seed_reproducible(lesson02: Lesson02):
    """Same seed, same samples; different seeds, different samples"""
    a = lesson02.sample(LOGITS, 1.0, 2000, seed=7)
    b = lesson02.sample(LOGITS, 1.0, 2000, seed=7)
    c = lesson02.sample(LOGITS, 1.0, 2000, seed=8)
    assert torch.equal(a, b), "two calls with seed=7 gave different samples: draw from a generator seeded with `seed`"
    # Two independent draws of 2000 from this distribution agree everywhere with probability < 0.2^2000.
    assert not torch.equal(a, c), "seeds 7 and 8 gave the same samples: the seed is not used"
    assert len(set(a.tolist())) > 1, "2000 samples at temperature 1 are all the same token"


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.points(2)
def test_gpu_cross_entropy_and_sample(lesson02: Lesson02):
    """GPU: cross_entropy and sample work on CUDA tensors"""
    logits, targets, _ = ignore_case("default-100-scattered", torch.float32, seed=41)
    got = lesson02.cross_entropy(logits, targets, device="cuda")
    expect.close(got, torch_ce(logits, targets), "cross_entropy on CUDA", 1e-5, 1e-5)
    a = lesson02.sample(BATCH_LOGITS, 2.0, N_SAMPLES, seed=3, device="cuda")
    b = lesson02.sample(BATCH_LOGITS, 2.0, N_SAMPLES, seed=3, device="cuda")
    assert torch.equal(a, b), "the same seed gave different samples on CUDA"
    probs = torch.softmax(BATCH_LOGITS.double() / 2.0, dim=-1)
    for r in range(BATCH_LOGITS.shape[0]):
        chi_square(a[r], probs[r], f"row {r} on CUDA at temperature 2")
