"""Hidden graders for lesson 10. They run in the grader's process; student code only in the worker.

References are transformers' own modules, never a copy of the course's reference:
``MixtralTopKRouter`` / ``MixtralSparseMoeBlock`` and ``load_balancing_loss_func`` (Mixtral),
``SwitchTransformersTop1Router`` (capacity), ``NemotronHTopkRouter`` (sigmoid router) and
``NemotronHForCausalLM`` (parameter counts: built on the meta device for Nemotron 3 Nano, for real
for the tiny configs), whose own ``parameters()`` are counted.
"""

from __future__ import annotations

import pytest
import torch
from transformers import MixtralConfig, NemotronHConfig, NemotronHForCausalLM, SwitchTransformersConfig
from transformers.models.mixtral.modeling_mixtral import (
    MixtralSparseMoeBlock,
    MixtralTopKRouter,
    load_balancing_loss_func,
)
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHTopkRouter
from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersTop1Router

from graders.engine import expect
from graders.lesson_10.bindings import Lesson10

pytestmark = pytest.mark.lesson_10

# (atol, rtol) of the block output. Mixtral's router computes its softmax in float32 even for a
# float64 block, so a float64 output is only as exact as float32 routing weights.
BLOCK_TOL = {torch.float32: (2e-5, 1e-4), torch.float64: (1e-6, 1e-6)}


def sort_routing(weights: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's experts in increasing order, weights aligned with them: any order of the k is right."""
    indices, order = indices.sort(dim=-1)
    return weights.gather(1, order), indices


def check_routing(got, want, what: str, atol: float = 1e-6) -> None:
    (gw, gi), (ww, wi) = sort_routing(*got), sort_routing(*want)
    rows = (gi != wi).any(dim=-1)
    assert not rows.any(), (
        f"{what}: {int(rows.sum())}/{rows.numel()} tokens got a different set of experts "
        f"(first: token {int(rows.nonzero()[0])}, got {gi[rows][0].tolist()}, expected {wi[rows][0].tolist()})"
    )
    expect.close(gw, ww, f"{what}: routing weights", atol, 1e-5)


# ---------------------------------------------------------------------------- top-k softmax router
def mixtral_config(hidden: int, inter: int, experts: int, k: int) -> MixtralConfig:
    return MixtralConfig(hidden_size=hidden, intermediate_size=inter, num_local_experts=experts, num_experts_per_tok=k)


@pytest.mark.points(2)
@pytest.mark.parametrize(("experts", "k"), [(8, 2), (4, 1), (16, 4)], ids=["E8k2", "E4k1", "E16k4"])
def test_router_matches_mixtral(lesson10: Lesson10, experts: int, k: int):
    """Router: weights and experts equal MixtralTopKRouter's (softmax in float32, top-k, renormalised)"""
    g = torch.Generator().manual_seed(experts + k)
    router = MixtralTopKRouter(mixtral_config(24, 8, experts, k))
    with torch.no_grad():
        router.weight.copy_(torch.randn(experts, 24, generator=g))
    for dtype in (torch.float32, torch.float64):
        h = torch.randn(40, 24, generator=g, dtype=dtype)
        logits, weights, indices = router.to(dtype)(h)
        got = lesson10.topk_router(logits.detach(), k)
        check_routing(got, (weights.detach(), indices), f"top-{k} of {experts} experts, {dtype} logits")


# ---------------------------------------------------------------------------- the MoE block
BLOCK_CASES = {  # hidden, intermediate, experts, k, (B, T)
    "E8k2": (32, 48, 8, 2, (3, 7)),
    "E4k1-few-tokens": (16, 24, 4, 1, (1, 2)),  # most experts get no token
    "E6k3": (24, 16, 6, 3, (2, 9)),
}


@pytest.mark.points(3)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_block_matches_mixtral_sparse_moe(lesson10: Lesson10, case: str, dtype: torch.dtype):
    """MoE block: output and router logits equal MixtralSparseMoeBlock's from the same weights"""
    hidden, inter, experts, k, (b, t) = BLOCK_CASES[case]
    g = torch.Generator().manual_seed(len(case))
    ref = MixtralSparseMoeBlock(mixtral_config(hidden, inter, experts, k)).to(dtype).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.3)
    state = {name: p.detach().clone() for name, p in ref.state_dict().items()}
    config = {"hidden_size": hidden, "intermediate_size": inter, "num_local_experts": experts, "num_experts_per_tok": k}
    block = lesson10.block(config, state, dtype)
    x = torch.randn(b, t, hidden, generator=g, dtype=dtype)
    out, logits = lesson10.block_forward(block, x, experts)
    with torch.no_grad():
        want = ref(x.clone())
        want_logits = ref.gate(x.reshape(-1, hidden))[0]
    lt = 1e-5 if dtype == torch.float32 else 1e-12
    expect.close(logits, want_logits, f"router logits ({case}, {dtype})", lt, lt)
    expect.close(out, want, f"block output ({case}, {dtype})", *BLOCK_TOL[dtype])


# ---------------------------------------------------------------------------- load-balancing loss
def aux_inputs(seed: int, layers: int, tokens: int, experts: int, scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(tokens, experts, generator=g) * scale for _ in range(layers))


@pytest.mark.points(2)
@pytest.mark.parametrize(("layers", "experts", "k"), [(3, 8, 2), (1, 4, 1), (2, 16, 6)], ids=["L3E8k2", "L1E4k1", "L2E16k6"])
def test_aux_loss_matches_mixtral(lesson10: Lesson10, layers: int, experts: int, k: int):
    """Aux loss: equals transformers' load_balancing_loss_func without a mask"""
    for seed, scale in ((0, 1.0), (1, 3.0)):  # scale 3: far from balance
        gate_logits = aux_inputs(seed + experts, layers, 24, experts, scale)
        got = lesson10.aux_loss(list(gate_logits), experts, k, None)
        want = load_balancing_loss_func(gate_logits, experts, k)
        expect.close(got, want.double(), f"aux loss (L={layers}, E={experts}, k={k}, logit scale {scale})", 1e-5, 1e-5)


@pytest.mark.points(2)
def test_aux_loss_with_attention_mask(lesson10: Lesson10):
    """Aux loss with an attention mask: padded tokens count neither in f nor in P"""
    g = torch.Generator().manual_seed(5)
    for b, t, layers, experts, k in ((3, 6, 2, 8, 2), (2, 9, 3, 4, 1)):
        gate_logits = aux_inputs(b * t, layers, b * t, experts, 2.0)
        mask = (torch.rand(b, t, generator=g) > 0.4).long()
        mask[:, 0] = 1  # left-aligned rows, at least one token each
        got = lesson10.aux_loss(list(gate_logits), experts, k, mask)
        want = load_balancing_loss_func(gate_logits, experts, k, mask)
        expect.close(got, want.double(), f"aux loss with a mask (B={b}, T={t}, L={layers}, E={experts}, k={k})", 1e-5, 1e-5)


@pytest.mark.points(1)
def test_aux_loss_balanced_is_top_k(lesson10: Lesson10):
    """Aux loss at perfect balance: uniform router logits give top_k"""
    for experts, k in ((8, 2), (4, 1), (16, 6)):
        gate_logits = (torch.zeros(12, experts), torch.zeros(12, experts))
        got = lesson10.aux_loss(list(gate_logits), experts, k, None)
        want = load_balancing_loss_func(gate_logits, experts, k)
        expect.close(got, want.double(), f"aux loss for uniform logits (E={experts}, k={k}; expected {k})", 1e-5, 1e-5)


# ---------------------------------------------------------------------------- capacity and token dropping
def switch_router(experts: int, capacity: int) -> SwitchTransformersTop1Router:
    """Switch's top-1 router with an identity classifier: its hidden states are the router logits."""
    cfg = SwitchTransformersConfig(d_model=experts, num_experts=experts, expert_capacity=capacity, router_bias=False)
    router = SwitchTransformersTop1Router(cfg).eval()
    with torch.no_grad():
        router.classifier.weight.copy_(torch.eye(experts))
    return router


def check_capacity(lesson10: Lesson10, logits: torch.Tensor, capacity: int, what: str) -> None:
    experts = logits.shape[-1]
    with torch.no_grad():
        want_dispatch, want_prob, _ = switch_router(experts, capacity)(logits)
    dispatch, prob = lesson10.capacity_routing(logits, capacity)
    kept, want_kept = dispatch.sum(-1), want_dispatch.sum(-1)  # (B, T) 1 = kept
    wrong = (kept != want_kept).nonzero().tolist()
    assert not wrong, (
        f"{what}: kept/dropped differs from SwitchTransformersTop1Router at (row, position) {wrong[:4]}: "
        f"you dropped {int((kept == 0).sum())} tokens, Switch drops {int((want_kept == 0).sum())}; "
        "a token's priority is its place among its own row's tokens for that expert, in sequence order"
    )
    assert torch.equal(dispatch, want_dispatch.long()), f"{what}: the dispatch mask is not the one-hot of the argmax expert"
    expect.close(prob, want_prob.float(), f"{what}: top_prob", 1e-6, 1e-5)


@pytest.mark.points(3)
@pytest.mark.parametrize(("b", "t", "experts", "capacity"), [(4, 4, 4, 1), (3, 16, 4, 3), (2, 32, 8, 2), (1, 10, 2, 10)], ids=["B4T4E4C1", "B3T16E4C3", "B2T32E8C2", "no-drop"])
def test_capacity_matches_switch_router(lesson10: Lesson10, b: int, t: int, experts: int, capacity: int):
    """Capacity: the dispatch mask (who is kept, who dropped) equals SwitchTransformersTop1Router's"""
    g = torch.Generator().manual_seed(b * t + capacity)
    logits = torch.randn(b, t, experts, generator=g)
    logits[..., 0] += 1.0  # expert 0 is popular: it overflows
    check_capacity(lesson10, logits, capacity, f"B={b}, T={t}, E={experts}, capacity {capacity}")


@pytest.mark.points(2)
def test_capacity_drops_the_latest_tokens_per_row(lesson10: Lesson10):
    """Capacity: each row keeps its first tokens for an expert and drops the later ones"""
    logits = torch.full((3, 6, 4), -2.0)
    logits[0, :, 0] = 2.0  # row 0: every token wants expert 0
    logits[1, ::2, 1] = 2.0  # row 1: even positions want expert 1, odd ones expert 2
    logits[1, 1::2, 2] = 2.0
    logits[2, :, 0] = torch.linspace(1.0, 3.0, 6)  # row 2: expert 0 again, more and more sure
    check_capacity(lesson10, logits, 2, "hand-made rows, capacity 2 (row 0 keeps positions 0 and 1)")


# ---------------------------------------------------------------------------- sigmoid router (Nemotron-H)
SIGMOID_CASES = {  # experts, k, n_group, topk_group, routed_scaling_factor
    "nano-like": (16, 6, 1, 1, 2.5),
    "grouped": (16, 4, 4, 2, 1.0),
    "grouped-scaled": (32, 8, 8, 3, 2.5),
}


def nemotron_router(case: str, seed: int) -> tuple[NemotronHTopkRouter, torch.Tensor, torch.Tensor]:
    experts, k, n_group, topk_group, scale = SIGMOID_CASES[case]
    cfg = NemotronHConfig(
        hidden_size=24, n_routed_experts=experts, num_experts_per_tok=k, n_group=n_group, topk_group=topk_group,
        routed_scaling_factor=scale,
    )  # fmt: skip
    router = NemotronHTopkRouter(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        router.weight.copy_(torch.randn(experts, 24, generator=g) * 0.3)
        router.e_score_correction_bias.copy_(torch.randn(experts, generator=g) * 0.4)  # large enough to change choices
    h = torch.randn(50, 24, generator=g)
    with torch.no_grad():
        logits, weights, indices = router(h)
    return router, logits, (weights, indices)


@pytest.mark.points(2)
@pytest.mark.parametrize("case", list(SIGMOID_CASES))
def test_sigmoid_router_index_sets(lesson10: Lesson10, case: str):
    """Sigmoid router: every token's set of experts equals NemotronHTopkRouter's (selection with the bias)"""
    _, k, n_group, topk_group, scale = SIGMOID_CASES[case]
    router, logits, (want_w, want_i) = nemotron_router(case, 11)
    got_w, got_i = lesson10.sigmoid_router(logits, router.e_score_correction_bias.clone(), k, n_group, topk_group, scale)
    (_, gi), (_, wi) = sort_routing(got_w, got_i), sort_routing(want_w, want_i)
    rows = (gi != wi).any(dim=-1)
    assert not rows.any(), (
        f"sigmoid router ({case}): {int(rows.sum())}/{rows.numel()} tokens got a different set of experts "
        f"(first: got {gi[rows][0].tolist()}, expected {wi[rows][0].tolist()}); select on sigmoid(logits) + bias, "
        f"within the best {topk_group} of {n_group} groups"
    )


@pytest.mark.points(2)
@pytest.mark.parametrize("case", list(SIGMOID_CASES))
def test_sigmoid_router_weights(lesson10: Lesson10, case: str):
    """Sigmoid router: weights equal NemotronHTopkRouter's (unbiased scores, renormalised, scaled)"""
    _, k, n_group, topk_group, scale = SIGMOID_CASES[case]
    router, logits, want = nemotron_router(case, 12)
    got = lesson10.sigmoid_router(logits, router.e_score_correction_bias.clone(), k, n_group, topk_group, scale)
    check_routing(got, want, f"sigmoid router ({case}, routed_scaling_factor {scale})")


# ---------------------------------------------------------------------------- parameter counts
# Nemotron 3 Nano 30B-A3B: NVIDIA-NeMo Megatron-Bridge, Nemotron3NanoProvider (nemotron_h_provider.py);
# transformers' NemotronHConfig defaults are not these numbers. See lessons/lesson_10.md.
NANO = {
    "vocab_size": 131072, "hidden_size": 2688,
    "hybrid_override_pattern": "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
    "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128, "mamba_num_heads": 64, "mamba_head_dim": 64,
    "ssm_state_size": 128, "n_groups": 8, "n_routed_experts": 128, "num_experts_per_tok": 6, "moe_intermediate_size": 1856,
    "moe_shared_expert_intermediate_size": 3712, "routed_scaling_factor": 2.5, "n_group": 1, "topk_group": 1,
    "tie_word_embeddings": False,
}  # fmt: skip
TINY = {
    "vocab_size": 128, "hidden_size": 64, "layers_block_type": ["linear_attention", "moe", "full_attention", "moe"],
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "mamba_num_heads": 8, "mamba_head_dim": 16,
    "ssm_state_size": 16, "n_groups": 2, "chunk_size": 16, "n_routed_experts": 8, "num_experts_per_tok": 2,
    "moe_intermediate_size": 32, "moe_shared_expert_intermediate_size": 64,
}  # fmt: skip
TINY_2 = dict(  # another shape, with an MLP layer and top-1: no hard-coded numbers
    TINY, vocab_size=96, hidden_size=48, layers_block_type=["moe", "linear_attention", "mlp", "full_attention", "moe", "moe"],
    num_attention_heads=6, num_key_value_heads=3, head_dim=8, mamba_num_heads=4, mamba_head_dim=24, ssm_state_size=8,
    n_groups=1, n_routed_experts=6, num_experts_per_tok=1, moe_intermediate_size=20, moe_shared_expert_intermediate_size=40,
    intermediate_size=72,
)  # fmt: skip
STUDENT_KEYS = (
    "vocab_size", "hidden_size", "layers_block_type", "num_attention_heads", "num_key_value_heads", "head_dim",
    "mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "conv_kernel", "n_routed_experts",
    "num_experts_per_tok", "moe_intermediate_size", "moe_shared_expert_intermediate_size", "intermediate_size",
    "tie_word_embeddings",
)  # fmt: skip


def reference_counts(config: dict, meta: bool) -> tuple[dict[str, int], dict]:
    """Counts from NemotronHForCausalLM's own parameters, and the student's config dict (from the built config)."""
    cfg = NemotronHConfig(**config)
    if meta:
        with torch.device("meta"):
            model = NemotronHForCausalLM(cfg)
    else:
        model = NemotronHForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    e, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)  # every routed expert
    active = total - routed * (e - k) // e  # each MoE layer runs k of its E routed experts per token
    embedding = model.model.embeddings.weight.numel()
    student = {key: getattr(cfg, key) for key in STUDENT_KEYS}
    student["layers_block_type"] = list(student["layers_block_type"])
    want = {"total": total, "active": active, "active_without_input_embedding": active - embedding}
    return want, student


def check_counts(got: dict[str, int], want: dict[str, int], what: str) -> None:
    for key in ("total", "active", "active_without_input_embedding"):
        assert got[key] == want[key], (
            f"{what}: {key} = {got[key]:,}, counting NemotronHForCausalLM's parameters gives {want[key]:,} "
            f"(off by {got[key] - want[key]:+,})"
        )


@pytest.mark.points(3)
def test_param_counts_nemotron_3_nano(lesson10: Lesson10):
    """Parameter counts: Nemotron 3 Nano's total and active equal its NemotronHForCausalLM (meta device)"""
    want, student = reference_counts(NANO, meta=True)
    check_counts(lesson10.counts(student), want, "Nemotron 3 Nano (31.58 B total, 3.58 B active, 3.23 B without input embedding)")


@pytest.mark.points(2)
@pytest.mark.parametrize("config", [TINY, TINY_2], ids=["tiny", "tiny-mlp-top1"])
def test_param_counts_tiny_nemotron_h(lesson10: Lesson10, config: dict):
    """Parameter counts: a tiny NemotronH built in transformers, its own parameters counted"""
    want, student = reference_counts(config, meta=False)
    check_counts(lesson10.counts(student), want, f"tiny NemotronH {student['layers_block_type']}")
