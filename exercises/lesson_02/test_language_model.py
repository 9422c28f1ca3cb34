"""Visible tests for lesson 02. Run: .venv/bin/pytest exercises/lesson_02 (or make check LESSON=02)

They check shapes, cases small enough to do by hand, parity with torch on one easy input, padding,
large logits, gradients against torch's autograd, a rough check of the sampler and (with CUDA) the
GPU. The hidden graders check much more (see the lesson, section 6).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from exercises.lesson_02.language_model import BigramLM, Embeddings, cross_entropy, perplexity, sample

pytestmark = pytest.mark.lesson_02


def test_cross_entropy_hand_computed():
    # Two classes, logits [0, ln 3]: softmax = [1/4, 3/4]; targets 1 then 0: loss = (ln(4/3) + ln 4) / 2.
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    loss = cross_entropy(logits, torch.tensor([1, 0]))
    assert loss.shape == (), f"the loss must be a 0-dim tensor, got shape {tuple(loss.shape)}"
    want = (math.log(4 / 3) + math.log(4)) / 2
    assert abs(loss.item() - want) < 1e-6, f"cross_entropy = {loss.item():.6f}, expected {want:.6f}"


def test_cross_entropy_matches_torch_on_sequences():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(2, 5, 7, generator=g), torch.randint(0, 7, (2, 5), generator=g)
    want = F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1))
    torch.testing.assert_close(cross_entropy(logits, targets), want, msg="(B, T, V) logits: the class axis is the last one")


def test_cross_entropy_ignores_padding():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [9.0, 9.0, 9.0]])
    targets = torch.tensor([0, 2, -100])
    want = F.cross_entropy(logits, targets)  # mean over the first two rows only
    got = cross_entropy(logits, targets)
    torch.testing.assert_close(got, want, msg="the -100 target must count neither in the sum nor in the mean")
    nothing = cross_entropy(logits, torch.full((3,), -100))
    assert torch.isnan(nothing), f"with no target counted the mean is 0/0 = NaN, as in F.cross_entropy; got {nothing.item()}"


def test_cross_entropy_large_logits_finite():
    logits = torch.tensor([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]])
    loss = cross_entropy(logits, torch.tensor([1, 2]))
    assert torch.isfinite(loss), "inf/NaN at logits of 1e4: subtract the row max before exp"
    torch.testing.assert_close(loss, torch.tensor((1e4 + math.log(2.0)) / 2))


def test_perplexity_of_uniform_is_vocab_size():
    ppl = perplexity(torch.zeros(3, 4, 10), torch.randint(0, 10, (3, 4)))
    torch.testing.assert_close(ppl, torch.tensor(10.0), msg="uniform logits over V=10 classes: perplexity 10")


def test_embeddings_shapes_and_positions():
    emb = Embeddings(vocab_size=20, block_size=8, n_embd=4)
    names = {name: tuple(p.shape) for name, p in emb.named_parameters()}
    assert names == {"wte.weight": (20, 4), "wpe.weight": (8, 4)}, f"parameters {names}"
    idx = torch.tensor([[3, 3, 3], [5, 1, 0]])
    out = emb(idx)
    assert out.shape == (2, 3, 4), f"output shape {tuple(out.shape)}, expected (B, T, C) = (2, 3, 4)"
    torch.testing.assert_close(out[0, 1], emb.wte.weight[3] + emb.wpe.weight[1], msg="x[b, t] = wte[idx[b, t]] + wpe[t]")
    with pytest.raises(ValueError):
        emb(torch.zeros(1, 9, dtype=torch.long))


def test_bigram_logits_and_loss():
    model = BigramLM(6)
    idx, targets = torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([[1, 2, 3], [4, 5, 0]])
    logits, loss = model(idx)
    assert logits.shape == (2, 3, 6) and loss is None, "forward(idx) returns ((B, T, V) logits, None)"
    torch.testing.assert_close(logits[1, 2], model.table.weight[5], msg="logits[b, t] = table.weight[idx[b, t]]")
    _, loss = model(idx, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 6), targets.reshape(-1)))


def test_sample_shapes_seed_and_greedy():
    logits = torch.tensor([0.0, 2.0, 1.0])
    s = sample(logits, 1.0, 100, seed=0)
    assert s.shape == (100,) and s.dtype == torch.long, f"got shape {tuple(s.shape)}, dtype {s.dtype}"
    assert torch.equal(s, sample(logits, 1.0, 100, seed=0)), "the same seed must give the same samples"
    assert sample(torch.zeros(4, 3), 1.0, 7, seed=0).shape == (4, 7), "(B, V) logits give (B, num_samples)"
    assert (sample(logits, 0.0, 10) == 1).all(), "temperature 0 returns the argmax"


def test_sample_frequencies_roughly_right():
    logits = torch.tensor([0.0, 1.0, 2.0])
    for temperature in (0.5, 2.0):
        s = sample(logits, temperature, 20_000, seed=1)
        freq = torch.bincount(s, minlength=3).double() / s.numel()
        want = torch.softmax(logits.double() / temperature, dim=0)
        # 6 standard deviations of a frequency from 20000 draws is at most 6 * 0.5 / sqrt(20000) < 0.022.
        assert (freq - want).abs().max() < 0.022, f"T={temperature}: frequencies {freq.tolist()}, expected {want.tolist()}"


def test_loss_gradients_match_torch_autograd():
    g = torch.Generator().manual_seed(4)
    logits, targets = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.tensor([0, 4, -100, 2, 2, -100])
    ours, ref = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    cross_entropy(ours, targets).backward()
    F.cross_entropy(ref, targets).backward()
    torch.testing.assert_close(ours.grad, ref.grad, msg="d loss / d logits differs from autograd through F.cross_entropy")
    assert (ours.grad[targets == -100] == 0).all(), "an ignored position must get a zero gradient"
    model = BigramLM(5)
    idx = torch.tensor([[0, 1, 1, 3]])
    model(idx, torch.tensor([[1, 1, 3, 4]]))[1].backward()
    grad = model.table.weight.grad
    assert grad is not None, "BigramLM: no gradient reached table.weight"
    assert (grad[[2, 4]] == 0).all() and (grad[[0, 1, 3]] != 0).any(dim=1).all(), "only the rows of tokens 0, 1, 3 are read"
    emb = Embeddings(vocab_size=5, block_size=6, n_embd=3)
    emb(idx).sum().backward()
    assert emb.wpe.weight.grad is not None and emb.wte.weight.grad is not None, "no gradient reached wte or wpe"
    assert (emb.wpe.weight.grad[4:] == 0).all() and (emb.wpe.weight.grad[:4] == 1).all(), "T = 4: wpe rows 0-3 only"


@pytest.mark.gpu
def test_cuda_loss_and_sampler():
    g = torch.Generator().manual_seed(5)
    logits, targets = torch.randn(4, 6, 9, generator=g), torch.randint(0, 9, (4, 6), generator=g)
    targets[0, 3:] = -100
    want = F.cross_entropy(logits.reshape(-1, 9), targets.reshape(-1))
    got = cross_entropy(logits.cuda(), targets.cuda())
    assert got.is_cuda, "cross_entropy of CUDA tensors must stay on the GPU"
    torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)
    s = sample(logits[:, 0].cuda(), 1.5, 50, seed=11)
    assert s.is_cuda and s.shape == (4, 50), f"sample on CUDA logits gave {tuple(s.shape)} on {s.device}"
    assert torch.equal(s, sample(logits[:, 0].cuda(), 1.5, 50, seed=11)), "the same seed must give the same samples on CUDA"
