"""Visible tests for lesson 14. Run: .venv/bin/pytest exercises/lesson_14 (or make check LESSON=14)

Hand-computed cases and properties: the LoRA layer by hand, merge and unmerge, dropout's place,
injection names on a tiny Phi-3, counts by hand, NF4 on a hand-made block and its error bound, and
the QLoRA forward. The hidden graders compare with peft and bitsandbytes (see the lesson).
"""

import itertools
import math

import pytest
import torch
from torch import nn

from exercises.lesson_14.lora import (
    NF4_CODE,
    LoRALinear,
    QLoRALinear,
    count_parameters,
    inject_lora,
    lora_scaling,
    matches_target,
    nf4_dequantize,
    nf4_quantize,
)  # fmt: skip
from exercises.lesson_14.tiny_lm import tiny_model

pytestmark = pytest.mark.lesson_14


def layer_with(a: torch.Tensor, b: torch.Tensor, alpha: float, **kw) -> LoRALinear:
    """A LoRALinear on a random base with the given A (r, in) and B (out, r)."""
    base = nn.Linear(a.shape[1], b.shape[0])
    layer = LoRALinear(base, a.shape[0], alpha, **kw)
    with torch.no_grad():
        layer.lora_A.weight.copy_(a)
        layer.lora_B.weight.copy_(b)
    return layer


def test_lora_scaling_and_rslora():
    assert lora_scaling(4, 16) == 4.0, "scaling = alpha / r"
    assert lora_scaling(4, 16, use_rslora=True) == 8.0, "rsLoRA: alpha / sqrt(r)"
    assert math.isclose(lora_scaling(8, 16, True), 16 / math.sqrt(8))


def test_lora_layer_small_case_by_hand():
    torch.manual_seed(0)
    a = torch.tensor([[1.0, 0.0, 2.0]])  # r = 1, in = 3
    b = torch.tensor([[1.0], [-1.0]])  # out = 2
    layer = layer_with(a, b, alpha=2.0)  # scaling 2
    x = torch.tensor([[1.0, 1.0, 1.0]])
    want = layer.base_layer(x) + 2.0 * torch.tensor([[3.0, -3.0]])  # A x = 3, B (A x) = (3, -3)
    torch.testing.assert_close(layer(x), want)
    assert layer(torch.randn(4, 5, 3)).shape == (4, 5, 2), "any leading shape: (..., in) -> (..., out)"


def test_lora_layer_starts_as_base_and_freezes_it():
    torch.manual_seed(1)
    base = nn.Linear(6, 4)
    x = torch.randn(5, 6)
    want = base(x).detach()
    layer = LoRALinear(base, 2, 8)
    assert layer.base_layer is base, "keep the wrapped layer as self.base_layer"
    assert layer.lora_A.weight.shape == (2, 6) and layer.lora_B.weight.shape == (4, 2)
    assert torch.all(layer.lora_B.weight == 0) and layer.lora_A.weight.abs().sum() > 0, "A random, B zero"
    torch.testing.assert_close(layer(x), want, msg="a new adapter (B = 0) computes exactly the base layer")
    assert not any(p.requires_grad for p in base.parameters()), "the base layer must be frozen"
    assert layer.lora_A.weight.requires_grad and layer.lora_B.weight.requires_grad
    assert sorted(layer.state_dict()) == ["base_layer.bias", "base_layer.weight", "lora_A.weight", "lora_B.weight"]


def test_merge_equals_forward_and_unmerge_restores():
    torch.manual_seed(2)
    layer = layer_with(torch.randn(3, 8), torch.randn(8, 3), alpha=6.0)  # square: a transposed B @ A would fit too
    w0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(4, 8)
    want = layer(x).detach()
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, w0 + 2.0 * layer.lora_B.weight @ layer.lora_A.weight)
    torch.testing.assert_close(layer(x), want, msg="a merged layer computes the same output")
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0, atol=1e-6, rtol=0, msg="unmerge gives W back")
    torch.testing.assert_close(layer(x), want)


def test_dropout_only_in_train_and_only_on_the_branch():
    torch.manual_seed(3)
    layer = layer_with(torch.randn(2, 5), torch.zeros(3, 2), alpha=4.0, dropout=0.9)
    x = torch.randn(6, 5)
    layer.train()
    torch.testing.assert_close(layer(x), layer.base_layer(x), msg="B = 0: dropout must not touch the base path")
    layer = layer_with(torch.randn(2, 5), torch.randn(3, 2), alpha=4.0, dropout=0.5)
    layer.eval()
    clean = layer.base_layer(x) + 2.0 * layer.lora_B(layer.lora_A(x))
    torch.testing.assert_close(layer(x), clean, msg="in eval mode dropout is off")
    layer.train()
    assert not torch.allclose(layer(x), clean), "in train mode the LoRA branch's input is dropped out"


def test_injection_matches_names_after_a_dot():
    assert matches_target("model.layers.0.self_attn.q_proj", ["q_proj"])
    assert not matches_target("model.layers.0.mlp.gate_up_proj", ["up_proj"]), "a suffix after a dot, not a substring"
    assert matches_target("lm_head", ["lm_head"]) and not matches_target(
        "model.layers.11.mlp.down_proj", ["1.mlp.down_proj"]
    )
    model = tiny_model("phi3", {"hidden_size": 16, "intermediate_size": 32, "num_key_value_heads": 4}, seed=0)
    names = inject_lora(model, ["up_proj", "o_proj"], r=2, alpha=4)
    assert names == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"], names
    assert isinstance(model.get_submodule("model.layers.1.self_attn.o_proj"), LoRALinear)
    assert isinstance(model.get_submodule("model.layers.0.mlp.gate_up_proj"), nn.Linear)
    with pytest.raises(ValueError):
        inject_lora(tiny_model("llama", {"hidden_size": 16}), ["no_such_module"], r=2, alpha=4)


def test_counts_after_injection():
    model = tiny_model("llama", {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2}, seed=0)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == (total, total)
    inject_lora(model, ["q_proj", "v_proj"], r=4, alpha=16)
    # q_proj 16 -> 16 and v_proj 16 -> 8 (2 KV heads of 4) in 2 layers: 4 * (16 + 16) + 4 * (16 + 8) per layer
    lora = 2 * (4 * (16 + 16) + 4 * (16 + 8))
    assert count_parameters(model) == (lora, total + lora)


def test_nf4_hand_case_and_packing():
    code = torch.tensor(NF4_CODE)
    w = torch.zeros(64)
    w[0], w[1], w[2], w[3] = 2.0, -2.0, 0.0, 1.0  # absmax 2: scaled 1, -1, 0, 0.5
    packed, absmax = nf4_quantize(w)
    assert packed.dtype == torch.uint8 and packed.shape == (32,) and absmax.shape == (1,)
    assert float(absmax[0]) == 2.0
    # indices 15, 0, 7, and the nearest code to 0.5 is 0.4407 (index 12; 0.5626 is further): bytes 0xF0, 0x7C
    assert packed[0] == 0xF0 and packed[1] == 0x7C, f"high nibble = first element: got {packed[:2].tolist()}"
    assert torch.all(packed[2:] == 0x77), "zeros are index 7"
    back = nf4_dequantize(packed, absmax, (64,))
    torch.testing.assert_close(back[:4], torch.tensor([2.0, -2.0, 0.0, 2 * float(code[12])]))
    two = torch.cat([torch.full((64,), 0.5), torch.full((64,), -4.0)])  # two blocks, their own absmax
    _, absmax = nf4_quantize(two)
    assert absmax.tolist() == [0.5, 4.0], "one absmax per block of 64"


def test_nf4_round_trip_bound_and_zero_block():
    torch.manual_seed(4)
    w = torch.randn(32, 96)
    packed, absmax = nf4_quantize(w)
    back = nf4_dequantize(packed, absmax, w.shape)
    assert back.shape == w.shape and back.dtype == torch.float32 and torch.isfinite(back).all()
    bound = max(b - a for a, b in itertools.pairwise(NF4_CODE)) / 2  # 0.1519036
    block = torch.arange(w.numel()) // 64
    ratio = (back - w).abs().reshape(-1) / absmax[block].clamp_min(1e-30)
    assert float(ratio.max()) <= bound + 1e-6, f"error {float(ratio.max()):.4f} * absmax, above the bound {bound:.4f}"
    zero = torch.zeros(4, 64)
    packed, absmax = nf4_quantize(zero)
    assert torch.all(absmax == 0) and torch.all(packed == 0x77)
    assert torch.all(nf4_dequantize(packed, absmax, (4, 64)) == 0)


def test_qlora_forward_is_dequantised_base_plus_lora():
    torch.manual_seed(5)
    base = nn.Linear(64, 16)
    layer = QLoRALinear(base, 4, 8)
    assert layer.weight_packed.dtype == torch.uint8 and layer.weight_packed.shape == (64 * 16 // 2,)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(3, 64)
    w = nf4_dequantize(*nf4_quantize(base.weight.detach()), (16, 64))
    want = x @ w.T + base.bias + 2.0 * layer.lora_B(layer.lora_A(x))
    torch.testing.assert_close(layer(x), want)
    trainable = sorted(n for n, p in layer.named_parameters() if p.requires_grad)
    assert trainable == ["lora_A.weight", "lora_B.weight"], f"only A and B train, got {trainable}"
