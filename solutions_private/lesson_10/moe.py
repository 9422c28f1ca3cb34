"""Lesson 10: Mixture of Experts: routers, dispatch, load balancing, capacity, and parameter counts.

A sparse MoE layer replaces one feed-forward network by ``E`` of them (the experts) and a router
that sends every token to only ``k`` of them (Shazeer et al., 2017; Mixtral, Jiang et al., 2024).
The layer holds ``E`` experts' parameters but each token uses ``k``: *total* and *active*
parameters differ, and that is the point of the design.

Conventions follow transformers' Mixtral code (``MixtralSparseMoeBlock``), so that weights copy
over by name: ``gate.weight`` (E, H), ``experts.gate_up_proj`` (E, 2I, H) with the gate
projection first under ``chunk(2)``, and ``experts.down_proj`` (E, H, I).

Notation: ``B`` batch, ``T`` tokens per row, ``N = B * T`` tokens, ``H`` hidden size, ``I`` the
intermediate size of one expert, ``E`` experts, ``k`` experts per token (``top_k``), ``L`` layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MoEConfig:
    """The sizes of one Mixtral-style MoE block (names as in ``MixtralConfig``)."""

    hidden_size: int = 32  # H
    intermediate_size: int = 64  # I, of one expert
    num_local_experts: int = 8  # E
    num_experts_per_tok: int = 2  # k


def topk_softmax_router(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtral's router: softmax over the experts in float32, top-k, renormalise the k weights.

    Args:
        router_logits: (N, E), any float dtype.
        top_k: k, 1 <= k <= E.
    Returns:
        (weights, indices): weights (N, k) float32, each row summing to 1; indices (N, k) int64, the
        chosen experts, in decreasing order of probability (``torch.topk``'s order).

    Hints: ``softmax(logits.float(), dim=-1)`` over the *experts* (the last axis), then
    ``torch.topk``, then divide the k probabilities by their sum. This equals a softmax over the k
    largest logits only.
    """
    # BEGIN SOLUTION
    probs = F.softmax(router_logits.float(), dim=-1)  # (N, E)
    weights, indices = torch.topk(probs, top_k, dim=-1)  # (N, k) each
    weights = weights / weights.sum(dim=-1, keepdim=True)  # (N, k), rows sum to 1
    return weights, indices
    # END SOLUTION


class Experts(nn.Module):
    """E gated (SwiGLU) experts stored as two 3-D parameters, as in ``MixtralExperts`` (provided).

    Expert ``e`` maps a token ``x`` (H,) to ``down_proj[e] @ (silu(g) * u)`` where
    ``g, u = (gate_up_proj[e] @ x).chunk(2)``: the gate projection is the first I rows.
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        e, h, i = config.num_local_experts, config.hidden_size, config.intermediate_size
        self.gate_up_proj = nn.Parameter(torch.randn(e, 2 * i, h) * h**-0.5)  # (E, 2I, H)
        self.down_proj = nn.Parameter(torch.randn(e, h, i) * i**-0.5)  # (E, H, I)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on tokens x (n, H) -> (n, H)."""
        gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)  # (n, I) each
        return F.linear(F.silu(gate) * up, self.down_proj[e])  # (n, H)


class MoEBlock(nn.Module):
    """A sparse MoE block: a linear router, top-k softmax routing, E experts, a weighted sum.

    Parameters (names and shapes as in ``MixtralSparseMoeBlock``):
        gate.weight (E, H); experts.gate_up_proj (E, 2I, H); experts.down_proj (E, H, I).
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.config = config
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_local_experts
        self.gate = nn.Linear(config.hidden_size, config.num_local_experts, bias=False)
        self.experts = Experts(config)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Route each token to its k experts and combine their outputs.

        Args:
            hidden_states: (B, T, H).
        Returns:
            (output, router_logits): output (B, T, H) in the input's dtype,
            ``output[t] = sum_j weights[t, j] * expert_{indices[t, j]}(x_t)``; router_logits (N, E)
            (``N = B * T``), the gate's logits before the softmax (the aux loss needs them).

        Hints: flatten to (N, H); the router logits are the gate applied to the flat tokens; weights and indices from
        ``topk_softmax_router``. Dispatch: for each expert ``e`` that some token chose, find the
        (token, slot) pairs with ``torch.where(indices == e)``, run ``self.experts.expert(e, ...)``
        on those tokens only, scale by their weights and add them into the output with
        ``index_add_``. Skip experts nobody chose. Do not run every expert on every token.
        """
        # BEGIN SOLUTION
        b, t, h = hidden_states.shape
        x = hidden_states.reshape(-1, h)  # (N, H)
        router_logits = self.gate(x)  # (N, E)
        weights, indices = topk_softmax_router(router_logits, self.top_k)  # (N, k) each
        out = torch.zeros_like(x)  # (N, H)
        for e in indices.unique().tolist():
            token_idx, slot = torch.where(indices == e)  # (n_e,) each
            y = self.experts.expert(e, x[token_idx])  # (n_e, H)
            y = y * weights[token_idx, slot, None]  # (n_e, H), scaled by the router weight
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out.reshape(b, t, h), router_logits
        # END SOLUTION


def load_balancing_loss(
    gate_logits: tuple[torch.Tensor, ...] | list[torch.Tensor],
    num_experts: int,
    top_k: int = 2,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Switch / Mixtral auxiliary load-balancing loss ``E * sum_i f_i * P_i``, over all layers.

    Args:
        gate_logits: one (N, E) tensor of router logits per layer (``N = B * T``, the same tokens in
            every layer); all layers are concatenated into one set of ``L * N`` rows.
        num_experts: E.
        top_k: k.
        attention_mask: optional (B, T), 1 for real tokens and 0 for padding; padded tokens count
            neither in ``f`` nor in ``P`` (nor in the number of tokens).
    Returns:
        A 0-dim float32 tensor, where
        ``f_i`` = (number of top-k assignments to expert i) / (number of tokens): the f_i sum to k;
        ``P_i`` = mean over tokens of the softmax probability of expert i.
        At perfect balance (every f_i = k/E, every P_i = 1/E) the value is k, not 1.

    Hints: softmax in float32, ``torch.topk`` of the probabilities for the assignments, a one-hot
    (or ``bincount``) count per expert; repeat the flattened mask once per layer.
    """
    # BEGIN SOLUTION
    logits = torch.cat([g.float() for g in gate_logits], dim=0)  # (L*N, E)
    probs = F.softmax(logits, dim=-1)  # (L*N, E)
    _, selected = torch.topk(probs, top_k, dim=-1)  # (L*N, k)
    assigned = F.one_hot(selected, num_experts).sum(dim=1).float()  # (L*N, E): 1 where chosen
    if attention_mask is None:
        mask = torch.ones(logits.shape[0], dtype=torch.float32)
    else:
        mask = attention_mask.reshape(-1).float().repeat(len(gate_logits))  # (L*N,)
    mask = mask.to(logits.device)
    tokens = mask.sum()
    f = (assigned * mask[:, None]).sum(dim=0) / tokens  # (E,), sums to k
    p = (probs * mask[:, None]).sum(dim=0) / tokens  # (E,), sums to 1
    return num_experts * (f * p).sum()
    # END SOLUTION


def top1_capacity_routing(router_logits: torch.Tensor, expert_capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Switch Transformers' top-1 routing with an expert capacity: tokens over capacity are dropped.

    Args:
        router_logits: (B, T, E).
        expert_capacity: C, the most tokens one expert takes *per row* (per sequence).
    Returns:
        (dispatch, top_prob): dispatch (B, T, E) int64, one-hot of each token's argmax expert, with
        the row of a dropped token all zeros; top_prob (B, T, 1) float32, the softmax probability
        of the chosen expert (dropped tokens keep theirs).

    A token's priority is its rank among the tokens of *its own row* that chose the same expert,
    in sequence order (``cumsum`` over T): the first C tokens per expert and row are kept, later
    ones are dropped (they pass through the layer by the residual connection only).
    """
    # BEGIN SOLUTION
    probs = F.softmax(router_logits.float(), dim=-1)  # (B, T, E)
    expert_index = F.one_hot(probs.argmax(dim=-1), router_logits.shape[-1])  # (B, T, E)
    priority = torch.cumsum(expert_index, dim=-2)  # (B, T, E): rank within the row, in order
    dispatch = expert_index * (priority <= expert_capacity)  # (B, T, E)
    return dispatch, probs.max(dim=-1).values.unsqueeze(-1)
    # END SOLUTION


def sigmoid_topk_router(
    router_logits: torch.Tensor,
    e_score_correction_bias: torch.Tensor,
    top_k: int,
    n_group: int = 1,
    topk_group: int = 1,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nemotron-H (DeepSeek-V3 style) router: sigmoid scores, biased selection, unbiased weights.

    Args:
        router_logits: (N, E) float32.
        e_score_correction_bias: (E,), added to the scores for *selection only* (the auxiliary-loss-
            free balancing of DeepSeek-V3: a trainer nudges it up for under-used experts).
        top_k: k experts per token.
        n_group: the E experts form n_group groups of E / n_group consecutive experts.
        topk_group: each token may only pick experts from its topk_group best groups; a group's
            score is the sum of its 2 largest biased scores.
        routed_scaling_factor: the weights are multiplied by this after renormalising.
    Returns:
        (weights, indices): (N, k) float32 and (N, k) int64; any order of the k experts.
        ``weights = s[indices] / (sum s[indices] + 1e-20) * routed_scaling_factor`` with the
        *unbiased* sigmoid scores ``s = sigmoid(router_logits)``.
    """
    # BEGIN SOLUTION
    n, e = router_logits.shape
    scores = router_logits.float().sigmoid()  # (N, E)
    choice = scores + e_score_correction_bias.float()  # (N, E): for selection only
    group_scores = choice.view(n, n_group, e // n_group).topk(2, dim=-1).values.sum(dim=-1)  # (N, n_group)
    group_idx = group_scores.topk(topk_group, dim=-1).indices  # (N, topk_group)
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1.0)  # (N, n_group)
    allowed = group_mask.repeat_interleave(e // n_group, dim=-1).bool()  # (N, E)
    choice = choice.masked_fill(~allowed, float("-inf"))
    indices = choice.topk(top_k, dim=-1).indices  # (N, k)
    weights = scores.gather(1, indices)  # (N, k): unbiased scores
    weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    weights = weights * routed_scaling_factor
    return weights, indices
    # END SOLUTION


# ---------------------------------------------------------------------------- parameter counts
LAYER_CODES = {"M": "linear_attention", "E": "moe", "*": "full_attention", "-": "mlp"}


def pattern_to_layers(pattern: str) -> list[str]:
    """A NemotronH ``hybrid_override_pattern`` (M Mamba, E MoE, * attention, - MLP) as ``layers_block_type``."""
    return [LAYER_CODES[c] for c in pattern]


# Nemotron 3 Nano 30B-A3B, from NVIDIA-NeMo Megatron-Bridge (``Nemotron3NanoProvider`` in
# src/megatron/bridge/models/nemotronh/nemotron_h_provider.py); names as in transformers' NemotronHConfig.
NEMOTRON_3_NANO = {
    "vocab_size": 131072,
    "hidden_size": 2688,
    "layers_block_type": pattern_to_layers("MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"),
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "mamba_num_heads": 64,
    "mamba_head_dim": 64,
    "ssm_state_size": 128,
    "n_groups": 8,
    "conv_kernel": 4,
    "n_routed_experts": 128,
    "num_experts_per_tok": 6,
    "moe_intermediate_size": 1856,
    "moe_shared_expert_intermediate_size": 3712,
    "intermediate_size": 21504,  # "mlp" layers only (Nano has none)
    "tie_word_embeddings": False,
}


def param_counts(config: dict) -> dict[str, int]:
    """Total and active parameters of a NemotronH model (``NemotronHForCausalLM``) from its config.

    Args:
        config: a dict with the keys of ``NEMOTRON_3_NANO`` (the names of transformers'
            ``NemotronHConfig``). No biases anywhere (the config's defaults), one shared expert per
            MoE layer, no latent projection.
    Returns:
        ``{"total": ..., "active": ..., "active_without_input_embedding": ...}`` (Python ints):
        ``total`` counts every parameter, as ``sum(p.numel() for p in model.parameters())``;
        ``active`` is what one token uses: every parameter except the ``E - k`` routed experts it
        was not sent to in each MoE layer (the router and the shared expert always run);
        ``active_without_input_embedding`` also leaves out the input embedding (a lookup, not a matmul).

    The layers, each with its own RMSNorm weight (H,) before the mixer:
        - ``linear_attention`` (Mamba-2): ``d_in = mamba_num_heads * mamba_head_dim``,
          ``conv_dim = d_in + 2 * n_groups * ssm_state_size``; in_proj (d_in + conv_dim + heads, H),
          conv1d weight (conv_dim, 1, conv_kernel) and bias (conv_dim,), dt_bias, A_log, D (heads,)
          each, a gated RMSNorm weight (d_in,), out_proj (H, d_in);
        - ``full_attention``: q (heads * head_dim, H), k and v (kv_heads * head_dim, H), o (H, heads * head_dim);
        - ``moe``: router (E, H); E experts, each up (I, H) and down (H, I) (non-gated, relu^2);
          a shared expert up (I_shared, H) and down (H, I_shared);
        - ``mlp``: up (intermediate_size, H) and down (H, intermediate_size).
    Plus the embedding (V, H), a final norm (H,) and the lm_head (V, H) unless tied.
    """
    # BEGIN SOLUTION
    h, v = config["hidden_size"], config["vocab_size"]
    e, k = config["n_routed_experts"], config["num_experts_per_tok"]
    heads, d_head = config["mamba_num_heads"], config["mamba_head_dim"]
    d_in = heads * d_head
    conv_dim = d_in + 2 * config["n_groups"] * config["ssm_state_size"]
    mamba = (d_in + conv_dim + heads) * h + conv_dim * config["conv_kernel"] + conv_dim + 3 * heads + d_in + h * d_in
    q_dim = config["num_attention_heads"] * config["head_dim"]
    kv_dim = config["num_key_value_heads"] * config["head_dim"]
    attention = 2 * q_dim * h + 2 * kv_dim * h
    expert = 2 * config["moe_intermediate_size"] * h  # one routed expert: up + down
    shared = 2 * config["moe_shared_expert_intermediate_size"] * h
    moe = e * h + e * expert + shared
    mlp = 2 * config["intermediate_size"] * h
    per_type = {"linear_attention": mamba, "full_attention": attention, "moe": moe, "mlp": mlp}
    layers = config["layers_block_type"]
    embedding = v * h
    total = embedding + sum(h + per_type[t] for t in layers) + h
    if not config.get("tie_word_embeddings", False):
        total += v * h
    n_moe = sum(t == "moe" for t in layers)
    unused = n_moe * (e - k) * expert  # routed experts a token is not sent to
    active = total - unused
    return {"total": total, "active": active, "active_without_input_embedding": active - embedding}
    # END SOLUTION
