"""Hidden graders for lesson 14. They run in the grader's process; student code only in the worker.

References are the real libraries, never a copy of the course's reference: peft 0.21's LoRA layer
(``get_peft_model`` with ``LoraConfig``: outputs, ``scaling``, ``merge`` / ``unmerge``,
``merge_and_unload``, the modules it targets, ``get_nb_trainable_parameters``) and bitsandbytes
0.50's ``quantize_4bit`` / ``dequantize_4bit`` with ``quant_type="nf4"``, ``blocksize=64`` on CPU.
bitsandbytes is needed by the graders only; if it cannot be imported, the NF4 and QLoRA tests end
as a grading problem (never as the student's failure).
"""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from graders.engine import expect
from graders.lesson_14.bindings import Lesson14

pytestmark = pytest.mark.lesson_14

# (atol, rtol) for one layer's output against peft's; float64 is exact up to rounding of a few matmuls.
TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12)}
# Restoring the weight after merge + unmerge: W + D - D differs from W by rounding of |W| + |D|.
RESTORE_TOL = {torch.float32: 1e-6, torch.float64: 1e-14}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])


class Holder(nn.Module):
    """A model with one linear layer named ``proj``, for peft to adapt."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.proj = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def peft_layer(lin: nn.Linear, r: int, alpha: float, *, dropout: float = 0.0, use_rslora: bool = False):
    """peft's LoRA layer around ``lin`` (``get_peft_model`` with ``target_modules=["proj"]``)."""
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], lora_dropout=dropout, use_rslora=use_rslora)
    return get_peft_model(Holder(lin), config).base_model.model.proj


def random_lora(g: torch.Generator, layer, scale: float = 0.3) -> None:
    """Nonzero A and B (peft initialises B to zero, which would hide every bug of the branch)."""
    with torch.no_grad():
        for w in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
            w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * scale)


def peft_state(layer) -> dict[str, torch.Tensor]:
    """peft's layer state dict in the student's names (peft's keys without the adapter name)."""
    return {k.replace(".default", ""): v.detach().clone() for k, v in layer.state_dict().items()}


def make_pair(lesson14: Lesson14, case: tuple, dtype: torch.dtype, seed: int, *, dropout: float = 0.0):
    """(peft's layer with random A and B, the student's layer with the same weights, in, out)."""
    fin, fout, bias, r, alpha, rs = case
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(fin, fout, bias=bias).to(dtype)
    with torch.no_grad():
        for p in lin.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    base_state = {k: v.detach().clone() for k, v in lin.state_dict().items()}
    ref = peft_layer(lin, r, alpha, dropout=dropout, use_rslora=rs)
    random_lora(g, ref)
    base = lesson14.base_linear(fin, fout, bias, dtype, base_state)
    mine = lesson14.lora_linear(base, r, alpha, dropout=dropout, use_rslora=rs, dtype=dtype, state_dict=peft_state(ref))
    return ref, mine, g


# in, out, bias, r, alpha, use_rslora. Square layers too: a transposed B @ A still has the right shape there.
LAYER_CASES = {
    "r4-a16": (24, 24, True, 4, 16, False),
    "r4-a16-rslora": (24, 24, True, 4, 16, True),
    "r8-a8-rect-nobias": (20, 12, False, 8, 8, False),
    "r2-a32-rslora-rect": (12, 20, True, 2, 32, True),
}


# ---------------------------------------------------------------------------- the LoRA layer
@pytest.mark.points(1)
@DTYPES
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_lora_layer_matches_peft(lesson14: Lesson14, case: str, dtype: torch.dtype):
    """LoRA layer: output equals peft's LoRA Linear with the same W, b, A and B (B nonzero)"""
    ref, mine, g = make_pair(lesson14, LAYER_CASES[case], dtype, seed=len(case))
    x = torch.randn(3, 5, LAYER_CASES[case][0], generator=g, dtype=dtype)
    with torch.no_grad():
        want = ref(x)
    got = lesson14.forward(mine, x, LAYER_CASES[case][1])
    expect.close(got, want, f"LoRALinear output ({case}, {dtype})", *TOL[dtype])


@pytest.mark.points(1)
def test_lora_layer_scaling_equals_peft(lesson14: Lesson14):
    """LoRA layer: lora_scaling equals peft's scaling (alpha / r, rsLoRA alpha / sqrt(r))"""
    for r, alpha in ((1, 1), (4, 16), (8, 16), (16, 8), (64, 128), (3, 7)):
        for rs in (False, True):
            want = peft_layer(nn.Linear(4, 4), r, alpha, use_rslora=rs).scaling["default"]
            got = lesson14.scaling(r, alpha, rs)
            assert math.isclose(got, want, rel_tol=1e-12), (
                f"lora_scaling(r={r}, alpha={alpha}, use_rslora={rs}) = {got}, peft's scaling is {want}"
            )


@pytest.mark.points(1)
def test_lora_layer_starts_equal_to_its_base(lesson14: Lesson14):
    """LoRA layer: a new layer has B = 0, A of shape (r, in), and computes exactly its base layer"""
    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(16, 10)
    state = {k: torch.randn(v.shape, generator=g) for k, v in lin.state_dict().items()}
    lin.load_state_dict(state)
    base = lesson14.base_linear(16, 10, True, torch.float32, state)
    mine = lesson14.lora_linear(base, 4, 16)
    sd = lesson14.weights(mine)
    assert set(sd) == {"base_layer.weight", "base_layer.bias", "lora_A.weight", "lora_B.weight"}, (
        f"LoRALinear's state_dict keys are {sorted(sd)}, expected base_layer.weight, base_layer.bias, lora_A.weight, lora_B.weight"
    )
    assert sd["lora_A.weight"].shape == (4, 16) and sd["lora_B.weight"].shape == (10, 4), (
        f"lora_A.weight must be (r, in) = (4, 16) and lora_B.weight (out, r) = (10, 4); got "
        f"{tuple(sd['lora_A.weight'].shape)} and {tuple(sd['lora_B.weight'].shape)}"
    )
    assert torch.all(sd["lora_B.weight"] == 0), "lora_B must start at zero (peft's init): a new adapter changes nothing"
    assert sd["lora_A.weight"].abs().sum() > 0, "lora_A must start random (Kaiming-uniform), not at zero"
    x = torch.randn(7, 16, generator=g)
    with torch.no_grad():
        want = lin(x)
    expect.close(lesson14.forward(mine, x, 10), want, "a new LoRALinear's output (B = 0: the base layer's)", 1e-6, 1e-6)


@pytest.mark.points(1)
@DTYPES
def test_lora_layer_trains_only_a_and_b(lesson14: Lesson14, dtype: torch.dtype):
    """LoRA layer: gradients reach lora_A and lora_B only (the base is frozen) and equal peft's"""
    case = LAYER_CASES["r4-a16"]
    ref, mine, g = make_pair(lesson14, case, dtype, seed=11)
    x = torch.randn(6, case[0], generator=g, dtype=dtype)
    cot = torch.randn(6, case[1], generator=g, dtype=dtype)
    (ref(x) * cot).sum().backward()
    grads = mine.param_grads("forward", (x,), cot)
    frozen = [n for n in ("base_layer.weight", "base_layer.bias") if grads.get(n) is not None]
    assert not frozen, f"the base layer must be frozen (requires_grad=False), but {frozen} got gradients"
    for name in ("lora_A.weight", "lora_B.weight"):
        assert grads.get(name) is not None, f"{name} got no gradient: it must be trainable"
        want = getattr(ref, name.split(".")[0])["default"].weight.grad
        expect.close(grads[name], want, f"gradient of {name} ({dtype})", *TOL[dtype])


# ---------------------------------------------------------------------------- merge and unmerge
@pytest.mark.points(2)
@DTYPES
@pytest.mark.parametrize("case", ["r4-a16", "r2-a32-rslora-rect"])
def test_merge_matches_peft(lesson14: Lesson14, case: str, dtype: torch.dtype):
    """Merge: after merge() the output and base_layer.weight equal peft's merged layer (W + scaling * B @ A)"""
    ref, mine, g = make_pair(lesson14, LAYER_CASES[case], dtype, seed=20 + len(case))
    x = torch.randn(4, LAYER_CASES[case][0], generator=g, dtype=dtype)
    ref.merge()
    with torch.no_grad():
        want = ref(x)
    lesson14.run_method(mine, "merge")
    weight = lesson14.weights(mine)["base_layer.weight"]
    expect.close(
        weight, ref.base_layer.weight.detach(), f"base_layer.weight after merge ({case}, {dtype})", *TOL[dtype]
    )
    expect.close(lesson14.forward(mine, x, LAYER_CASES[case][1]), want, f"merged output ({case}, {dtype})", *TOL[dtype])


@pytest.mark.points(2)
@DTYPES
def test_merge_then_unmerge_restores_the_weight(lesson14: Lesson14, dtype: torch.dtype):
    """Merge: unmerge() after merge() gives the original weight back and the unmerged output again"""
    case = LAYER_CASES["r8-a8-rect-nobias"]
    ref, mine, g = make_pair(lesson14, case, dtype, seed=31)
    w0 = ref.base_layer.weight.detach().clone()
    x = torch.randn(5, case[0], generator=g, dtype=dtype)
    with torch.no_grad():
        want = ref(x)
    lesson14.run_method(mine, "merge")
    merged = lesson14.weights(mine)["base_layer.weight"]
    assert (merged - w0).abs().max() > 1e-3, "merge() must change base_layer.weight (by scaling * B @ A)"
    lesson14.run_method(mine, "unmerge")
    weight = lesson14.weights(mine)["base_layer.weight"]
    expect.close(weight, w0, f"base_layer.weight after merge and unmerge ({dtype})", RESTORE_TOL[dtype], 0.0)
    expect.close(lesson14.forward(mine, x, case[1]), want, f"output after merge and unmerge ({dtype})", *TOL[dtype])


# ---------------------------------------------------------------------------- dropout
@pytest.mark.points(1)
def test_dropout_has_no_effect_in_eval(lesson14: Lesson14):
    """Dropout: in eval mode a layer with lora_dropout = 0.5 equals peft's in eval mode"""
    case = LAYER_CASES["r4-a16"]
    ref, mine, g = make_pair(lesson14, case, torch.float32, seed=41, dropout=0.5)
    ref.eval()
    lesson14.set_training(mine, False)
    x = torch.randn(8, case[0], generator=g)
    with torch.no_grad():
        want = ref(x)
    expect.close(
        lesson14.forward(mine, x, case[1]), want, "eval-mode output with lora_dropout=0.5", *TOL[torch.float32]
    )


@pytest.mark.points(2)
def test_dropout_applies_to_the_lora_branch_input_only(lesson14: Lesson14):
    """Dropout: in train mode each row is base(x) + scaling * B A (m * x) / (1 - p) for some 0/1 mask m, with ~p dropped"""
    fin, fout, r, alpha, p = 6, 8, 8, 16, 0.5
    ref, mine, g = make_pair(lesson14, (fin, fout, True, r, alpha, False), torch.float64, seed=43, dropout=p)
    lesson14.set_training(mine, True)
    n = 300
    x = torch.randn(n, fin, generator=g, dtype=torch.float64)
    x = torch.where(x < 0, x - 0.2, x + 0.2)  # no entry near 0: each row's mask is identifiable
    got = lesson14.forward(mine, x, fout)
    with torch.no_grad():
        base = ref.base_layer(x)  # (n, out)
        a, b = ref.lora_A["default"].weight, ref.lora_B["default"].weight
        scaling = ref.scaling["default"]
        masks = torch.tensor(
            [[(m >> j) & 1 for j in range(fin)] for m in range(2**fin)], dtype=torch.float64
        )  # (64, in)
        kept = x[:, None, :] * masks[None] / (1 - p)  # (n, 64, in)
        candidates = base[:, None, :] + scaling * (kept @ a.T) @ b.T  # (n, 64, out)
    err = (got[:, None, :] - candidates).abs().amax(dim=-1)  # (n, 64)
    best_err, best = err.min(dim=1)  # (n,)
    bad = best_err > 1e-9 * (1 + candidates.abs().amax())
    assert not bad.any(), (
        f"{int(bad.sum())}/{n} rows of the train-mode output are not base_layer(x) + scaling * lora_B(lora_A(dropout(x))) "
        f"for any dropout mask of x (smallest error {best_err.max().item():.3g}): dropout must act on the input of the "
        "LoRA branch only, with kept values scaled by 1 / (1 - p), and the base path must see the clean x"
    )
    dropped = 1 - masks[best].mean()
    sigma = math.sqrt(p * (1 - p) / (n * fin))
    assert abs(float(dropped) - p) < 5 * sigma, (
        f"in train mode {float(dropped):.3f} of the LoRA branch's inputs were dropped; lora_dropout={p} should drop "
        f"about {p} (5-sigma bound {5 * sigma:.3f}): is the dropout active in train mode?"
    )


# ---------------------------------------------------------------------------- injection by name
LLAMA = {"vocab_size": 48, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
INJECT_CASES = {  # kind, config, target_modules, r, alpha, rslora
    "llama-q-v": ("llama", LLAMA, ["q_proj", "v_proj"], 4, 16, False),
    "phi3-up-o": ("phi3", {**LLAMA, "num_key_value_heads": 4}, ["up_proj", "o_proj"], 2, 8, False),  # not gate_up_proj
    "llama-paths-rslora": (
        "llama",
        {**LLAMA, "num_hidden_layers": 3},
        ["layers.1.mlp.down_proj", "k_proj", "lm_head"],
        8,
        16,
        True,
    ),
}


def tiny_hf(kind: str, config: dict):
    """The same tiny transformers model the provided tiny_lm.tiny_model builds, on the grader's side."""
    from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "phi3": (Phi3Config, Phi3ForCausalLM)}
    cfg_cls, model_cls = classes[kind]
    cfg = cfg_cls(**{"max_position_embeddings": 64, "tie_word_embeddings": False, **config},
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)  # fmt: skip
    cfg._attn_implementation = "eager"
    return model_cls(cfg).eval()


def peft_model(case: str, seed: int):
    """(the base weights before peft, peft's model with random A and B, the targeted names)."""
    kind, config, targets, r, alpha, rs = INJECT_CASES[case]
    torch.manual_seed(seed)
    model = tiny_hf(kind, config)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, use_rslora=rs))
    g = torch.Generator().manual_seed(seed + 1)
    names = []
    for name, module in pm.base_model.model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            names.append(name)
            random_lora(g, module)
    pm.eval()
    return base_state, pm, names


@pytest.mark.points(2)
@pytest.mark.parametrize("case", list(INJECT_CASES))
def test_injection_matches_peft(lesson14: Lesson14, case: str):
    """Injection: exactly peft's modules are replaced (names and state-dict keys), and the logits equal peft's"""
    kind, config, targets, r, alpha, rs = INJECT_CASES[case]
    base_state, pm, want_names = peft_model(case, seed=7)
    model = lesson14.model(kind, config, base_state)
    names = lesson14.inject(model, targets, r, alpha, 0.0, rs)
    extra, missing = sorted(set(names) - set(want_names)), sorted(set(want_names) - set(names))
    assert not extra and not missing, (
        f"target_modules={targets}: inject_lora replaced {len(names)} modules, peft {len(want_names)}; "
        f"extra: {extra[:3]}, missing: {missing[:3]} (peft: the name equals a target or ends with '.' + target)"
    )
    assert names == want_names, (
        f"inject_lora must return the names in named_modules() order: got {names}, expected {want_names}"
    )
    want_state = {k.removeprefix("base_model.model.").replace(".default", ""): v for k, v in pm.state_dict().items()}
    keys = set(lesson14.weights(model))
    assert keys == set(want_state), (
        f"the adapted model's state_dict keys differ from peft's (without 'base_model.model.' and '.default'): "
        f"extra {sorted(keys - set(want_state))[:3]}, missing {sorted(set(want_state) - keys)[:3]}"
    )
    model.load_state_dict(want_state)
    lesson14.set_training(model, False)
    ids = torch.randint(0, config["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = pm(input_ids=ids).logits
    got = lesson14.logits(model, ids, config["vocab_size"])
    expect.close(got, want, f"logits of the adapted model ({case})", 1e-5, 1e-5)


# ---------------------------------------------------------------------------- parameter counts
@pytest.mark.points(1)
@pytest.mark.parametrize("case", list(INJECT_CASES))
def test_counts_equal_peft_after_injection(lesson14: Lesson14, case: str):
    """Counts: (trainable, total) after injection equal peft's get_nb_trainable_parameters()"""
    kind, config, targets, r, alpha, rs = INJECT_CASES[case]
    base_state, pm, _ = peft_model(case, seed=8)
    model = lesson14.model(kind, config, base_state)
    lesson14.inject(model, targets, r, alpha, 0.0, rs)
    want = pm.get_nb_trainable_parameters()
    got = lesson14.counts(model)
    assert got == want, (
        f"count_parameters after inject_lora({targets}, r={r}) = {got}, peft counts (trainable, total) = {want}"
    )


@pytest.mark.points(1)
def test_counts_plain_models_and_tied_embeddings(lesson14: Lesson14):
    """Counts: a model without adapters (untied and tied embeddings) and a lone LoRALinear"""
    for tied in (False, True):
        config = {**LLAMA, "tie_word_embeddings": tied}
        ref = tiny_hf("llama", config)
        model = lesson14.model("llama", config, {k: v.detach().clone() for k, v in ref.state_dict().items()})
        n = sum(p.numel() for p in ref.parameters())  # parameters() yields a tied weight once
        got = lesson14.counts(model)
        assert got == (n, n), (
            f"count_parameters of a tiny Llama (tie_word_embeddings={tied}) = {got}, expected ({n}, {n})"
        )
    ref, mine, _ = make_pair(lesson14, LAYER_CASES["r8-a8-rect-nobias"], torch.float32, seed=9)
    trainable = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    want = (trainable, sum(p.numel() for p in ref.parameters()))
    got = lesson14.counts(mine)
    assert got == want, (
        f"count_parameters of a LoRALinear(20 -> 12, r=8) = {got}, expected (A and B only, all) = {want}"
    )


# ---------------------------------------------------------------------------- NF4
SHAPES = {"64x64": (64, 64), "96x128": (96, 128), "8x192": (8, 192), "3x50-partial-block": (3, 50), "130-1d": (130,)}


@pytest.fixture(scope="session")
def bnb():
    """bitsandbytes.functional, or a grading problem (a fixture's pytest.fail is never the student's failure)."""
    try:
        import bitsandbytes.functional as functional
    except Exception as exc:  # ImportError, or a broken native library
        pytest.fail(f"the graders need bitsandbytes (0.50) for the NF4 and QLoRA tests and cannot import it: {exc}")
    return functional


def reference_quantize(bnb, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bitsandbytes' (packed (n/2,), absmax, dequantised), checked against the code bound: a broken
    reference is the grader's problem (RuntimeError), not the student's."""
    q, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
    deq = bnb.dequantize_4bit(q, state).reshape(w.shape)  # a 1-D weight comes back as (1, n)
    code = bnb.get_4bit_type("nf4", device="cpu").float()
    bound = float((code[1:] - code[:-1]).max()) / 2
    block_of = torch.arange(w.numel()) // 64
    err = (deq.reshape(-1) - w.reshape(-1)).abs()
    if (err > bound * state.absmax[block_of] * (1 + 1e-6) + 1e-12).any():
        raise RuntimeError(
            f"bitsandbytes' NF4 round trip on {tuple(w.shape)} exceeds its own code bound: reference broken"
        )
    return q.reshape(-1), state.absmax, deq


def nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The 4-bit indices of packed bytes, the high nibble first (bitsandbytes' order): (2 * bytes,) int64."""
    p = packed.long()
    return torch.stack([p >> 4, p & 15], 1).reshape(-1)


def check_packed(got: torch.Tensor, want: torch.Tensor, w: torch.Tensor, absmax: torch.Tensor, what: str) -> None:
    """Equal bytes, except a nibble whose scaled value lies within 1e-6 of the midpoint of the two codes (a tie)."""
    if torch.equal(got, want):
        return
    code = torch.tensor(NF4_CODE_REF, dtype=torch.float64)
    gi, wi = nibbles(got), nibbles(want)
    diff = (gi != wi).nonzero().flatten()
    block_of = torch.arange(w.numel()) // 64
    scaled = w.reshape(-1).double()[diff] / absmax.double()[block_of[diff]].clamp_min(1e-38)
    tie = ((gi[diff] - wi[diff]).abs() == 1) & ((scaled - (code[gi[diff]] + code[wi[diff]]) / 2).abs() < 1e-6)
    if not tie.all():
        first = int(diff[~tie][0])
        pair = "high" if first % 2 == 0 else "low"
        raise AssertionError(
            f"{what}: {int((~tie).sum())}/{gi.numel()} 4-bit indices differ from bitsandbytes' (first: element {first}, "
            f"the {pair} nibble of byte {first // 2}: got {int(gi[first])}, expected {int(wi[first])}); the first element "
            "of each pair goes in the high nibble, each block of 64 has its own absmax, and the index is the nearest code"
        )


NF4_CODE_REF = (  # bitsandbytes' get_4bit_type("nf4"), checked against the library in test_nf4_quantize_*
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip


def nf4_input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Normal weights with a few outliers (the blocks' absmax differ a lot)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.05
    outliers = torch.rand(shape, generator=g) < 0.01
    return torch.where(outliers, w * 20, w)


@pytest.mark.points(1)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_nf4_quantize_matches_bitsandbytes(lesson14: Lesson14, bnb, shape: str):
    """NF4: packed bytes and absmax equal bitsandbytes' quantize_4bit(quant_type="nf4", blocksize=64)"""
    code = bnb.get_4bit_type("nf4", device="cpu").double()
    if not torch.equal(code, torch.tensor(NF4_CODE_REF, dtype=torch.float64)):
        raise RuntimeError("bitsandbytes' NF4 code table differs from the one this grader was written for")
    w = nf4_input(SHAPES[shape], seed=len(shape))
    want_packed, want_absmax, _ = reference_quantize(bnb, w)
    packed, absmax = lesson14.nf4_quantize(w)
    expect.close(absmax, want_absmax, f"absmax per block of 64 ({shape})", 0.0, 0.0)
    check_packed(packed, want_packed, w, want_absmax, f"packed NF4 bytes ({shape})")


@pytest.mark.points(2)
def test_nf4_dequantize_matches_bitsandbytes(lesson14: Lesson14, bnb):
    """NF4: nf4_dequantize of bitsandbytes' bytes and absmax equals dequantize_4bit"""
    for i, (name, shape) in enumerate(SHAPES.items()):
        w = nf4_input(shape, seed=100 + i)
        packed, absmax, deq = reference_quantize(bnb, w)
        got = lesson14.nf4_dequantize(packed, absmax, shape)
        expect.close(got, deq.float(), f"nf4_dequantize of bitsandbytes' quantisation ({name})", 0.0, 1e-6)


@pytest.mark.points(2)
def test_nf4_round_trip_error_within_the_code_bound(lesson14: Lesson14):
    """NF4: |w - dequantize(quantize(w))| <= 0.1519036 * absmax in every block (half the largest code gap)"""
    code = torch.tensor(NF4_CODE_REF, dtype=torch.float64)
    bound = float((code[1:] - code[:-1]).max()) / 2  # 0.15190359950065613, between -1 and -0.696
    g = torch.Generator().manual_seed(5)
    cases = {
        "normal 256x256": torch.randn(256, 256, generator=g),
        "uniform 64x96": torch.rand(64, 96, generator=g) * 2 - 1,
        "heavy-tailed 32x128": torch.randn(32, 128, generator=g) ** 3,
    }
    for name, w in cases.items():
        packed, absmax = lesson14.nf4_quantize(w)
        deq = lesson14.nf4_dequantize(packed, absmax, tuple(w.shape))
        block_of = torch.arange(w.numel()) // 64
        want_absmax = w.reshape(-1, 64).abs().amax(1)
        expect.close(absmax, want_absmax, f"absmax per block ({name})", 0.0, 0.0)
        ratio = (deq.reshape(-1).double() - w.reshape(-1).double()).abs() / want_absmax.double()[block_of]
        worst = float(ratio.max())
        assert worst <= bound * (1 + 1e-6), (
            f"round trip on {name}: an error of {worst:.4f} * absmax of its block, above the NF4 bound {bound:.7f} "
            "(the nearest of the 16 codes is never further than half the largest gap): round to the nearest code"
        )


@pytest.mark.points(1)
def test_nf4_zero_block_stays_zero(lesson14: Lesson14, bnb):
    """NF4: a block of zeros has absmax 0 and index 7 (the code 0.0), and dequantises to zeros"""
    w = nf4_input((4, 64), seed=9)
    w[1] = 0.0  # the second block
    want_packed, want_absmax, _ = reference_quantize(bnb, w)
    packed, absmax = lesson14.nf4_quantize(w)
    assert float(absmax[1]) == 0.0, f"the absmax of a block of zeros must be 0, got {float(absmax[1])}"
    assert torch.all(packed[32:64] == 0x77), (
        "a block of zeros must be index 7 (the code value 0.0) everywhere: bytes 0x77"
    )
    check_packed(packed, want_packed, w, want_absmax, "packed bytes with a zero block")
    deq = lesson14.nf4_dequantize(packed, absmax, (4, 64))
    assert torch.isfinite(deq).all() and torch.all(deq[1] == 0), (
        "a block of zeros must dequantise to zeros (no division by 0)"
    )


# ---------------------------------------------------------------------------- QLoRA
QLORA_CASES = {"r4-a16": (64, 48, True, 4, 16, False), "r8-a16-rslora-nobias": (128, 32, False, 8, 16, True)}


def qlora_pair(lesson14: Lesson14, bnb, case: str, seed: int, *, load: bool = True):
    """(W, b, A, B, scaling, reference packed/absmax/dequantised, the student's QLoRALinear)."""
    fin, fout, bias, r, alpha, rs = QLORA_CASES[case]
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(fout, fin, generator=g) * 0.1
    b = torch.randn(fout, generator=g) * 0.1 if bias else None
    base_state = {"weight": w, **({"bias": b} if bias else {})}
    base = lesson14.base_linear(fin, fout, bias, torch.float32, base_state)
    packed, absmax, deq = reference_quantize(bnb, w)
    a_w = torch.randn(r, fin, generator=g) * 0.2
    b_w = torch.randn(fout, r, generator=g) * 0.2
    state = {
        "weight_packed": packed,
        "absmax": absmax,
        "lora_A.weight": a_w,
        "lora_B.weight": b_w,
        **({"bias": b} if bias else {}),
    }
    layer = lesson14.qlora_linear(base, r, alpha, use_rslora=rs, state_dict=state if load else None)
    scaling = peft_layer(nn.Linear(4, 4), r, alpha, use_rslora=rs).scaling["default"]
    return {
        "w": w,
        "b": b,
        "A": a_w,
        "B": b_w,
        "scaling": scaling,
        "packed": packed,
        "absmax": absmax,
        "deq": deq,
        "layer": layer,
        "g": g,
    }


@pytest.mark.points(1)
@pytest.mark.parametrize("case", list(QLORA_CASES))
def test_qlora_quantises_the_base_weight(lesson14: Lesson14, bnb, case: str):
    """QLoRA: a new QLoRALinear holds bitsandbytes' NF4 bytes and absmax of the base weight, and B = 0"""
    ref = qlora_pair(lesson14, bnb, case, seed=60 + len(case), load=False)
    sd = lesson14.weights(ref["layer"])
    assert "weight_packed" in sd and "absmax" in sd, (
        f"QLoRALinear needs buffers weight_packed and absmax, has {sorted(sd)}"
    )
    assert "weight" not in sd and "base_layer.weight" not in sd, "QLoRALinear must not keep the float weight"
    packed = expect.tensor(sd["weight_packed"], "weight_packed", shape=ref["packed"].shape, dtype=torch.uint8)
    absmax = expect.tensor(sd["absmax"], "absmax", shape=ref["absmax"].shape, dtype=torch.float32)
    expect.close(absmax, ref["absmax"], f"QLoRALinear absmax ({case})", 0.0, 0.0)
    check_packed(packed, ref["packed"], ref["w"], ref["absmax"], f"QLoRALinear weight_packed ({case})")
    assert torch.all(sd["lora_B.weight"] == 0), "lora_B must start at zero"


@pytest.mark.points(2)
@pytest.mark.parametrize("case", list(QLORA_CASES))
def test_qlora_forward_equals_dequantised_base_plus_lora(lesson14: Lesson14, bnb, case: str):
    """QLoRA: output equals x @ dequantize_4bit(W).T + b + scaling * B A x, with bitsandbytes' bytes loaded"""
    ref = qlora_pair(lesson14, bnb, case, seed=70 + len(case))
    fin, fout = QLORA_CASES[case][:2]
    x = torch.randn(2, 5, fin, generator=ref["g"])
    want = torch.nn.functional.linear(x, ref["deq"], ref["b"]) + ref["scaling"] * (x @ ref["A"].T) @ ref["B"].T
    expect.close(lesson14.forward(ref["layer"], x, fout), want, f"QLoRALinear output ({case})", 1e-5, 1e-5)


@pytest.mark.points(1)
def test_qlora_trains_only_a_and_b(lesson14: Lesson14, bnb):
    """QLoRA: gradients reach lora_A and lora_B only, and equal the reference's"""
    ref = qlora_pair(lesson14, bnb, "r4-a16", seed=80)
    x = torch.randn(6, 64, generator=ref["g"])
    cot = torch.randn(6, 48, generator=ref["g"])
    a, b = ref["A"].clone().requires_grad_(True), ref["B"].clone().requires_grad_(True)
    out = torch.nn.functional.linear(x, ref["deq"], ref["b"]) + ref["scaling"] * (x @ a.T) @ b.T
    (out * cot).sum().backward()
    grads = ref["layer"].param_grads("forward", (x,), cot)
    assert grads.get("bias") is None, "the QLoRA layer's bias must be frozen (requires_grad=False)"
    for name, want in (("lora_A.weight", a.grad), ("lora_B.weight", b.grad)):
        assert grads.get(name) is not None, f"{name} got no gradient: it must be trainable"
        expect.close(grads[name], want, f"QLoRA gradient of {name}", 1e-5, 1e-5)
