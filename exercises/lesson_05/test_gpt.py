"""Visible tests for lesson 05. Run: .venv/bin/pytest exercises/lesson_05 (or make check LESSON=05)

They check shapes, the loss at initialisation, positions and causality, one parity check
against Hugging Face's GPT-2, the tied head and gradients, generation, sampling, batches and the
micro overfit (a few seconds of training). The hidden graders check much more (see the lesson, section 7).
"""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from exercises.lesson_05.gpt import GPTConfig, GPTMini, get_batch, lm_loss, train_micro

pytestmark = pytest.mark.lesson_05

TEXT = (Path(__file__).resolve().parent / "data" / "lighthouse.txt").read_text(encoding="utf-8")
SMALL = dict(block_size=16, vocab_size=23, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and two threads on a busy machine can be 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(seed: int = 0, **overrides) -> GPTMini:
    torch.manual_seed(seed)
    return GPTMini(GPTConfig(**{**SMALL, **overrides})).eval()


# ---------------------------------------------------------------------------- forward and loss
def test_forward_shapes():
    model = small_model()
    idx = torch.randint(23, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 23), f"logits shape {tuple(logits.shape)}, expected (B, T, V) = (3, 10, 23)"
    assert loss is None, "forward(idx) without targets must return loss None"
    _, loss = model(idx, torch.randint(23, (3, 10)))
    assert loss is not None and loss.shape == (), f"loss must be a 0-dim tensor, got {None if loss is None else loss.shape}"


def test_loss_at_init_is_about_log_vocab():
    model = small_model()
    idx, targets = torch.randint(23, (8, 16)), torch.randint(23, (8, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(23)) < 0.3, f"loss at init {loss.item():.3f}, expected about ln V = {math.log(23):.3f}"


def test_lm_loss_aligned_and_ignores_minus_100():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(2, 5, 7, generator=g), torch.randint(7, (2, 5), generator=g)
    want = F.cross_entropy(logits.reshape(10, 7), targets.reshape(10))
    torch.testing.assert_close(lm_loss(logits, targets), want, msg="lm_loss: targets are already aligned, do not shift them")
    targets[0, :3] = -100
    keep = targets.reshape(10) != -100
    want = F.cross_entropy(logits.reshape(10, 7)[keep], targets.reshape(10)[keep])
    torch.testing.assert_close(lm_loss(logits, targets), want, msg="lm_loss must leave out targets equal to -100")


def test_position_embeddings_are_used():
    model = small_model()
    logits, _ = model(torch.full((1, 6), 5))  # the same token at every position
    assert not torch.allclose(logits[0, 0], logits[0, 5]), "same token, different positions, same logits: add wpe"


def test_future_tokens_do_not_change_past_logits():
    model = small_model()
    idx = torch.randint(23, (2, 12))
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 23
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], msg="changing the last token changed earlier logits: causality broken")


def test_forward_rejects_a_too_long_input():
    with pytest.raises(ValueError):
        small_model()(torch.zeros(1, 17, dtype=torch.long))


def test_logits_match_hf_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=23, n_positions=16, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    conv1d = ("c_attn.weight", "c_proj.weight", "c_fc.weight")  # HF's Conv1D stores (in, out): transpose
    model = small_model()
    model.load_state_dict({k: v.t() if k.endswith(conv1d) else v for k, v in hf.state_dict().items()})
    idx = torch.randint(23, (2, 16))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4, msg="logits differ from HF GPT-2 with the same weights")


def test_head_is_tied_and_every_parameter_learns():
    model = small_model(n_layer=1)
    assert model.lm_head.weight is model.transformer.wte.weight, "tie lm_head.weight to transformer.wte.weight (one tensor)"
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names, "a tied head is not a parameter of its own"
    idx, targets = torch.randint(23, (2, 9)), torch.randint(23, (2, 9))
    model(idx, targets)[1].backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().max() == 0]
    assert not dead, f"no, zero or non-finite gradient for {dead}: is every parameter used in forward?"


# ---------------------------------------------------------------------------- generate
def test_greedy_generate_is_an_argmax_loop():
    model = small_model()
    prompt = torch.randint(23, (2, 4))
    out = model.generate(prompt, 6)
    assert out.shape == (2, 10) and out.dtype == torch.long, f"generate gave {tuple(out.shape)} {out.dtype}, expected (2, 10) int64"
    assert torch.equal(out[:, :4], prompt), "the output must start with the prompt, unchanged"
    want = prompt
    for _ in range(6):
        logits, _ = model(want)
        want = torch.cat([want, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, want), "greedy generation must append the argmax of the last position's logits"


def test_generate_crops_to_block_size():
    model = small_model(block_size=8)
    out = model.generate(torch.randint(23, (1, 12)), 5)  # the prompt alone is longer than block_size
    assert out.shape == (1, 17), "generate must crop the context to the last block_size tokens, not fail"


def test_sampling_with_a_seed_is_reproducible():
    model = small_model()
    prompt = torch.randint(23, (3, 2))
    a = model.generate(prompt, 10, do_sample=True, temperature=1.5, seed=3)
    b = model.generate(prompt, 10, do_sample=True, temperature=1.5, seed=3)
    assert torch.equal(a, b), "the same seed must give the same samples"


def test_sampled_tokens_follow_softmax_at_a_temperature():
    model = small_model(vocab_size=7)
    prompt = torch.randint(7, (1, 3))
    with torch.no_grad():
        logits, _ = model(prompt)
    for temperature in (0.7, 3.0):
        out = model.generate(prompt.expand(3000, 3), 1, do_sample=True, temperature=temperature, seed=5)
        freq = torch.bincount(out[:, -1], minlength=7).double() / 3000
        want = torch.softmax(logits[0, -1].double() / temperature, dim=-1)
        # 6 standard deviations of a frequency from 3000 draws is at most 6 * 0.5 / sqrt(3000) < 0.055.
        assert (freq - want).abs().max() < 0.055, f"T={temperature}: next-token frequencies {freq.tolist()}, expected {want.tolist()}"


# ---------------------------------------------------------------------------- batches and training
def test_get_batch_targets_are_inputs_shifted_by_one():
    data = torch.arange(50)
    x, y = get_batch(data, 8, 32)
    assert x.shape == y.shape == (32, 8), f"x {tuple(x.shape)}, y {tuple(y.shape)}: expected (batch_size, block_size)"
    assert torch.equal(y, x + 1), "y[b, t] must be the token after x[b, t]"
    assert torch.equal(x, x[:, :1] + torch.arange(8)), "each row of x must be a contiguous window of the data"


def test_micro_overfit():
    chars = sorted(set(TEXT))
    data = torch.tensor([chars.index(c) for c in TEXT])
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(block_size=32, vocab_size=len(chars), n_layer=1, n_head=4, n_embd=64))
    losses = train_micro(model, data, steps=300, batch_size=16, lr=2e-3, seed=0)  # the graded budget
    assert len(losses) == 300 and all(isinstance(v, float) for v in losses), "train_micro must return one float per step"
    n = (len(data) - 1) // 32
    x, y = data[: n * 32].view(n, 32), data[1 : n * 32 + 1].view(n, 32)
    model.eval()
    with torch.no_grad():
        _, loss = model(x, y)
    assert loss.item() < 1.8, f"loss on the whole text after training is {loss.item():.3f}, the bar is 1.8 (start: ln 44 = 3.78)"
