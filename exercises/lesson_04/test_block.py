"""Visible tests for lesson 04. Run: .venv/bin/pytest exercises/lesson_04 (or make check LESSON=04)

They check shapes, the head split on a hand-made example, LayerNorm, attention and the MLP
against torch's modules at one size, causality, the residual path, the Pre-LN order, that
gradients reach every parameter and (with CUDA) the block on the GPU. The hidden graders check much more (see the lesson, section 3).
"""

import pytest
import torch
import torch.nn as nn

from exercises.lesson_04.block import MLP, Block, BlockConfig, LayerNorm, MultiHeadAttention, merge_heads, split_heads

pytestmark = pytest.mark.lesson_04


def test_split_heads_by_hand():
    x = torch.arange(12.0).view(1, 3, 4)  # B=1, T=3, C=4: position t holds 4t, 4t+1, 4t+2, 4t+3
    heads = split_heads(x, 2)  # nh=2, hs=2
    assert heads.shape == (1, 2, 3, 2), f"split_heads shape {tuple(heads.shape)}, expected (B, nh, T, hs) = (1, 2, 3, 2)"
    expected = torch.tensor([[[0.0, 1], [4, 5], [8, 9]], [[2.0, 3], [6, 7], [10, 11]]]).unsqueeze(0)
    assert torch.equal(heads, expected), (
        f"split_heads =\n{heads[0]}\nexpected (head 0 holds channels 0-1 of every position, head 1 channels 2-3)\n{expected[0]}"
    )


def test_merge_heads_inverts_split_heads():
    x = torch.randn(2, 5, 12)
    y = merge_heads(split_heads(x, 3))
    assert y.shape == x.shape, f"merge_heads shape {tuple(y.shape)}, expected (B, T, C) = {tuple(x.shape)}"
    assert torch.equal(y, x), "merge_heads(split_heads(x, n_head)) must give x back"


def test_layernorm_matches_torch():
    torch.manual_seed(0)
    ours, ref = LayerNorm(16), nn.LayerNorm(16)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 16) * 3 + 2
    torch.testing.assert_close(ours(x), ref(x), msg="LayerNorm differs from nn.LayerNorm: biased variance? eps inside sqrt?")


def copied_mha(c: int, h: int) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    """Our attention with the weights of torch's (random biases: torch starts them at zero)."""
    ref = nn.MultiheadAttention(c, h, batch_first=True)
    with torch.no_grad():
        ref.in_proj_bias.normal_()
        ref.out_proj.bias.normal_()
    ours = MultiHeadAttention(BlockConfig(n_embd=c, n_head=h))
    ours.load_state_dict({
        "c_attn.weight": ref.in_proj_weight, "c_attn.bias": ref.in_proj_bias,
        "c_proj.weight": ref.out_proj.weight, "c_proj.bias": ref.out_proj.bias,
    })  # fmt: skip
    return ours, ref


@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_torch(causal: bool):
    torch.manual_seed(1)
    ours, ref = copied_mha(32, 4)
    x = torch.randn(2, 7, 32)
    future = ~torch.ones(7, 7, dtype=torch.bool).tril()  # torch's convention: True = not allowed
    want = ref(x, x, x, attn_mask=future if causal else None, need_weights=False)[0]
    got = ours(x, causal=causal)
    assert got.shape == (2, 7, 32), f"output shape {tuple(got.shape)}, expected (B, T, C) = (2, 7, 32)"
    torch.testing.assert_close(got, want, msg=f"MultiHeadAttention(causal={causal}) differs from nn.MultiheadAttention")


def test_attention_is_causal_by_default():
    torch.manual_seed(2)
    ours, _ = copied_mha(16, 2)
    x = torch.randn(1, 6, 16)
    changed = x.clone()
    changed[:, 4:] = torch.randn(1, 2, 16)  # change positions 4 and 5 only
    before, after = ours(x), ours(changed)
    torch.testing.assert_close(after[:, :4], before[:, :4], msg="outputs at positions 0-3 changed when only 4-5 did")


def test_block_is_identity_when_sublayers_output_zero():
    block = Block(BlockConfig(n_embd=16, n_head=4))
    with torch.no_grad():
        for proj in (block.attn.c_proj, block.mlp.c_proj):
            proj.weight.zero_()
            proj.bias.zero_()
    x = torch.randn(2, 5, 16) * 3
    torch.testing.assert_close(block(x), x, msg="with both sublayers outputting 0, a Pre-LN block must return its input")


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(3)
    block = Block(BlockConfig(n_embd=16, n_head=4))
    mlp_out = MLP(BlockConfig(n_embd=16, n_head=4))(torch.randn(2, 5, 16))
    assert mlp_out.shape == (2, 5, 16), f"MLP output shape {tuple(mlp_out.shape)}, expected (2, 5, 16)"
    block(torch.randn(2, 5, 16)).pow(2).sum().backward()
    missing = [n for n, p in block.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no (or zero) gradient for {missing}"


def test_mlp_matches_linear_tanh_gelu_linear():
    torch.manual_seed(4)
    mlp = MLP(BlockConfig(n_embd=8, n_head=2))
    ref = nn.Sequential(nn.Linear(8, 32), nn.GELU(approximate="tanh"), nn.Linear(32, 8))
    mlp.load_state_dict({"c_fc.weight": ref[0].weight, "c_fc.bias": ref[0].bias,
                         "c_proj.weight": ref[2].weight, "c_proj.bias": ref[2].bias})  # fmt: skip
    x = torch.randn(3, 4, 8) * 3  # pre-activations of a few units, where the two GELUs differ most
    torch.testing.assert_close(mlp(x), ref(x), msg="MLP differs from Linear -> GELU (tanh approximation) -> Linear")


def test_block_normalises_sublayer_inputs_not_the_stream():
    torch.manual_seed(5)
    block = Block(BlockConfig(n_embd=16, n_head=2))
    with torch.no_grad():
        for ln in (block.ln_1, block.ln_2):  # LayerNorms that are not the identity, so their place matters
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.normal_()
    x = torch.randn(2, 6, 16) * 4 + 1
    h = x + block.attn(block.ln_1(x))
    want = h + block.mlp(block.ln_2(h))
    torch.testing.assert_close(block(x), want, msg="Pre-LN: each sublayer reads a normalised copy; the stream is never normalised")


@pytest.mark.gpu
def test_block_runs_on_cuda():
    torch.manual_seed(6)
    block = Block(BlockConfig(n_embd=32, n_head=4))
    x = torch.randn(2, 8, 32)
    want = block(x)
    got = block.cuda()(x.cuda())
    assert got.is_cuda, f"Block output is on {got.device}, expected cuda: make every tensor on the input's device"
    torch.testing.assert_close(got.cpu(), want, atol=5e-3, rtol=5e-3, msg="Block on CUDA differs from the same Block on the CPU")
