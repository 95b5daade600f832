"""A Mixture-of-Experts feed-forward layer with top-k routing, built from scratch (Chapter 4).

For each token x the layer computes

    y = shared(x) + Σ_{e ∈ TopK(x)} g_e(x) · FFN_e(x)

where ``FFN_e`` are ``num_experts`` SwiGLU MLPs and the router picks the ``top_k`` of them per token. Every option
(E, k, the router's kind, capacity, shared experts, dispatch) lives in one frozen :class:`MoEConfig` that each piece
reads whole; a new option is a field there, the line that uses it, and its test. The pieces, in the order a token
meets them:

1. **route** – router logits ``x Wᵣᵀ`` → scores (softmax: Mixtral, Qwen, OLMoE; sigmoid: DeepSeek-V3) → top-k →
   optionally renormalise the k weights (``norm_topk_prob``) and scale them (``routed_scaling_factor``).
   DeepSeek-V3 adds a per-expert bias that only changes *which* experts are chosen, and group-limited routing.
2. **capacity** – with ``capacity_factor`` each expert takes at most ``ceil(cf · tokens · k / E)`` token-slots;
   first choices are served before second choices, earlier tokens before later ones; the rest are dropped.
3. **dispatch / combine** – send each kept (token, slot) to its expert, weight the outputs, add them up per token.
   Four interchangeable versions below, from the clearest to the fastest.
4. **balance** – the Switch load-balancing loss and the ST-MoE router z-loss, returned in ``aux``, and DeepSeek-V3's
   loss-free bias update (:meth:`MoELayer.update_expert_bias`).

Expert weights use transformers' fused layout so that :meth:`MoELayer.from_hf` is a copy, not a reshuffle:
``gate_up_proj`` [E, 2·d_ff, d_model] holds the gate rows (classic name ``w1``) and then the up rows (``w3``);
``down_proj`` [E, d_model, d_ff] is ``w2``.
"""

from __future__ import annotations

import json
import math
from dataclasses import KW_ONLY, asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import SwiGLU  # the same dense block as chapter 3, for the shared expert
from .validate import check_int, positive_float

__all__ = [
    "MoEConfig",
    "MoELayer",
    "route",
    "router_logits",
    "expert_capacity",
    "apply_capacity",
    "load_balancing_loss",
    "router_z_loss",
    "expert_choice_routing",
    "swiglu_expert",
    "dispatch_per_token",
    "dispatch_per_expert",
    "dispatch_sorted",
    "dispatch_grouped_mm",
    "DISPATCHERS",
    "grouped_mm_available",
    "load_public_configs",
    "transformer_param_counts",
]

ASSETS = Path(__file__).resolve().parent / "assets"


# ================================================================================================ the options
@dataclass(frozen=True)
class MoEConfig:
    """Every option of a MoE layer but its widths, validated once, when built; frozen (``dataclasses.replace``
    makes a changed copy).

    The one object :func:`route`, :class:`MoELayer`, :meth:`MoELayer.from_hf`, the expert-parallel layer
    (:mod:`course_utils.distributed`) and ``GPTConfig(ffn="moe", moe=...)`` read: a new option is a field here plus
    the line of the router that uses it. A dict with the same keys is accepted where a config is stored
    (:meth:`from_value`), and the config reads like a read-only mapping (``cfg["top_k"]``, ``MoELayer(d, f, **cfg)``).
    """

    num_experts: int  # E
    top_k: int  # k experts per token
    _: KW_ONLY  # the options by name only
    # routing: scores, choice and weights (route)
    score_func: str = "softmax"  # "softmax" (Mixtral, Qwen, OLMoE) or "sigmoid" (DeepSeek-V3)
    norm_topk_prob: bool = True  # renormalise the k weights to sum to 1
    n_group: int = 1  # DeepSeek-V3 group-limited routing: experts in n_group groups ...
    topk_group: int = 1  # ... of which the topk_group best may be chosen from
    routed_scaling_factor: float = 1.0  # DeepSeek-V3: the k weights are multiplied by it
    # the router's logits (router_logits)
    router_fp32: bool = False  # DeepSeek-V3 computes its router logits in float32 whatever the model's dtype
    router_jitter: float = 0.0  # Switch: the router's input × U(1-j, 1+j) in training
    noisy_gating: bool = False  # Shazeer 2017: logits + N(0,1)·softplus(x W_noise) in training
    # capacity, shared experts, dispatch
    capacity_factor: float | None = None  # Switch: ceil(cf · T · k / E) slots per expert; None = no dropping
    num_shared_experts: int = 0  # always-on experts: one SwiGLU of width shared_d_ff ...
    shared_d_ff: int | None = None  # ... default num_shared_experts · d_ff
    shared_expert_gate: bool = False  # Qwen2-MoE: a per-token sigmoid gate on the shared expert
    dispatch: str = "auto"  # a key of DISPATCHERS, or "auto" = grouped_mm where it works, else sorted

    def __post_init__(self):
        check_int("num_experts", self.num_experts, 1)
        check_int("top_k", self.top_k, 1, self.num_experts)
        if self.score_func not in ("softmax", "sigmoid"):
            raise ValueError(f"score_func must be 'softmax' or 'sigmoid', got {self.score_func!r}")
        check_int("n_group", self.n_group, 1, self.num_experts)
        if self.num_experts % self.n_group:
            raise ValueError(
                f"num_experts ({self.num_experts}) must be divisible by n_group, got n_group={self.n_group}"
            )
        check_int("topk_group", self.topk_group, 1, self.n_group)
        per_group = self.num_experts // self.n_group
        if self.top_k > self.topk_group * per_group:
            raise ValueError(
                f"top_k must be <= topk_group · experts per group = {self.topk_group * per_group}, "
                f"got top_k={self.top_k}"
            )
        rsf = self.routed_scaling_factor
        if isinstance(rsf, bool) or not isinstance(rsf, (int, float)) or not math.isfinite(rsf) or rsf <= 0:
            raise ValueError(f"routed_scaling_factor must be a finite number > 0, got {rsf!r}")
        if not isinstance(self.router_jitter, (int, float)) or not 0.0 <= self.router_jitter < 1.0:
            raise ValueError(f"router_jitter must be in [0, 1), got {self.router_jitter!r}")
        cf = self.capacity_factor
        if cf is not None and (
            isinstance(cf, bool) or not isinstance(cf, (int, float)) or not math.isfinite(cf) or not cf > 0
        ):
            raise ValueError(f"capacity_factor must be a finite number > 0 or None, got {cf!r}")
        check_int("num_shared_experts", self.num_shared_experts, 0)
        if self.shared_d_ff is not None:
            check_int("shared_d_ff", self.shared_d_ff, 1)
        if self.shared_expert_gate and not self.num_shared_experts:
            raise ValueError("shared_expert_gate=True needs num_shared_experts >= 1")
        if self.dispatch != "auto" and self.dispatch not in DISPATCHERS:
            raise ValueError(f"dispatch must be 'auto' or one of {sorted(DISPATCHERS)}, got {self.dispatch!r}")

    @classmethod
    def from_value(cls, value, name: str = "moe") -> MoEConfig:
        """A :class:`MoEConfig` from a MoEConfig or a dict of its fields (unknown keys are an error)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"{name} must be a MoEConfig or a dict of its fields, got {type(value).__name__}")
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            known = [f.name for f in fields(cls)]
            raise ValueError(f"{name} has unknown MoE options {sorted(unknown)}; known: {known}")
        if not {"num_experts", "top_k"} <= set(value):
            raise ValueError(f"{name} needs num_experts and top_k, got {value!r}")
        return cls(**value)

    @classmethod
    def from_short_form(cls, first: str, value, options: dict, name: str) -> MoEConfig:
        """The one adapter from the keyword forms of chapter 4 to a config.

        ``route(logits, 2, norm_topk_prob=False)`` and ``MoELayer(16, 32, 8, 2, score_func="sigmoid")`` name the
        options one by one; ``value`` is the positional argument (``first`` says which field it is: ``"top_k"``
        for route, ``"num_experts"`` for MoELayer) — or a whole MoEConfig, in which case there may be no options.
        """
        if isinstance(value, cls):
            if options:
                raise TypeError(
                    f"{name}: pass a MoEConfig or its fields as keywords, not both (got {sorted(options)}); "
                    "dataclasses.replace(config, ...) changes a field"
                )
            return value
        if value is not None:
            if first in options:
                raise TypeError(f"{name} got {first} twice (positionally and as a keyword)")
            options = {first: value, **options}
        return cls.from_value(options, name)

    # read-only mapping access, for code written when the options were a dict
    def keys(self):
        return [f.name for f in fields(self)]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default=None):
        return getattr(self, key) if key in self.keys() else default

    def to_dict(self) -> dict:
        return asdict(self)


# ================================================================================================ routing
def _check_logits(name: str, logits) -> int:
    """The number of experts of router logits ``[tokens, experts]`` (a floating-point tensor)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [tokens, experts], got {type(logits).__name__}")
    if logits.dim() != 2 or not logits.is_floating_point() or logits.shape[-1] == 0:
        raise ValueError(
            f"{name} must be a floating-point tensor [tokens, experts], got dtype {logits.dtype}, "
            f"shape {tuple(logits.shape)}"
        )
    return logits.shape[-1]


def route(
    logits: torch.Tensor, config: MoEConfig | int | None = None, *, bias: torch.Tensor | None = None, **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, E] → (topk_weight [T, k], topk_idx [T, k]), best expert first, as ``config`` says.

    ``config`` is a :class:`MoEConfig` (what the layer passes), or — chapter 4's short form — ``top_k`` with the
    options as keywords: ``route(logits, 2, norm_topk_prob=False)`` builds ``MoEConfig(num_experts=E, top_k=2,
    norm_topk_prob=False)``. ``bias`` [E] is DeepSeek-V3's selection bias (state, not an option).

    - Mixtral: softmax, top-k, renormalise (``norm_topk_prob=True``) — the same as a softmax over the k kept logits.
    - Qwen2/3-MoE, OLMoE: ``norm_topk_prob=False`` keeps the k softmax probabilities as they are (they sum to < 1).
    - DeepSeek-V3: ``score_func="sigmoid"``; ``bias`` is added to the scores *for choosing only* (the weights use
      the unbiased scores); ``n_group``/``topk_group``: experts form ``n_group`` groups, each group is scored by
      the sum of its two best scores, and only the best ``topk_group`` groups may be chosen from; finally the
      weights are renormalised and multiplied by ``routed_scaling_factor``.
    """
    num_experts = _check_logits("logits", logits)
    if not isinstance(config, MoEConfig):
        options.setdefault("num_experts", num_experts)
    cfg = MoEConfig.from_short_form("top_k", config, options, "route")
    if cfg.num_experts != num_experts:
        raise ValueError(f"logits has {num_experts} experts (columns), config.num_experts is {cfg.num_experts}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (num_experts,)):
        raise ValueError(f"bias must be a tensor of shape ({num_experts},), got {getattr(bias, 'shape', bias)!r}")
    scores = logits.float().softmax(dim=-1) if cfg.score_func == "softmax" else logits.float().sigmoid()
    choice = scores if bias is None else scores + bias  # in the bias's dtype if wider, as transformers does
    if cfg.n_group > 1:
        per_group = num_experts // cfg.n_group
        grouped = choice.view(-1, cfg.n_group, per_group)
        group_score = grouped.topk(min(2, per_group), dim=-1).values.sum(dim=-1)  # [T, n_group]
        best_groups = group_score.topk(cfg.topk_group, dim=-1).indices
        allowed = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best_groups, True)
        choice = choice.masked_fill(~allowed.repeat_interleave(per_group, dim=1), float("-inf"))
    # The k weights are summed in the order transformers sums them (sorted for softmax routers, topk's unsorted
    # order for DeepSeek-V3's sigmoid router), so that from_hf is exact to the last bit; then best first.
    topk_idx = choice.topk(cfg.top_k, dim=-1, sorted=cfg.score_func == "softmax").indices
    topk_weight = scores.gather(1, topk_idx)
    if cfg.norm_topk_prob:
        topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)  # eps: sigmoid scores can all be ~0
    if cfg.score_func != "softmax":
        order = choice.gather(1, topk_idx).argsort(dim=-1, descending=True, stable=True)
        topk_idx, topk_weight = topk_idx.gather(1, order), topk_weight.gather(1, order)
    return topk_weight * cfg.routed_scaling_factor, topk_idx


def router_logits(
    x: torch.Tensor, router: nn.Linear, config: MoEConfig, noise: nn.Linear | None = None, training: bool = False
) -> torch.Tensor:
    """Router logits [T, E] = x Wᵣᵀ for flat tokens x [T, d_model], with ``config``'s jitter/noise in training."""
    if training and config.router_jitter > 0:
        x = x * torch.empty_like(x).uniform_(1.0 - config.router_jitter, 1.0 + config.router_jitter)
    # float32 logits (DeepSeek-V3): in bf16 the router's rounding alone can change which experts a token gets
    logits = F.linear(x.float(), router.weight.float()) if config.router_fp32 else router(x)
    if training and noise is not None:
        logits = logits + torch.randn_like(logits) * F.softplus(noise(x))
    return logits


def expert_choice_routing(logits: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert-choice routing (Zhou et al., 2022): each *expert* picks its ``capacity`` best tokens.

    Returns (weight [E, capacity], token_idx [E, capacity]). Load is perfectly balanced by construction, but a
    token may be picked by many experts or by none, and the choice looks at the whole batch (future tokens too),
    which is why decoder LLMs use token-choice top-k instead.
    """
    _check_logits("logits", logits)
    check_int("capacity", capacity, 1, logits.shape[0])
    affinity = logits.float().softmax(dim=-1)  # token→expert probabilities, as in the paper
    weight, token_idx = affinity.t().topk(capacity, dim=-1)
    return weight, token_idx


# ================================================================================================ capacity
def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """Switch/GShard capacity: ``ceil(capacity_factor · tokens · k / experts)`` token-slots per expert."""
    check_int("num_tokens", num_tokens, 0)
    check_int("num_experts", num_experts, 1)
    check_int("top_k", top_k, 1, num_experts)
    positive_float("capacity_factor", capacity_factor)
    return math.ceil(capacity_factor * num_tokens * top_k / num_experts)


def apply_capacity(topk_idx: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """keep [T, k] (bool): which token-slots fit into their expert's ``capacity``.

    Priority: all first choices (in token order) before any second choice, and so on (GShard's rule): a token
    loses its second expert before another token loses its first.
    """
    check_int("num_experts", num_experts, 1)
    check_int("capacity", capacity, 0)
    if not isinstance(topk_idx, torch.Tensor) or topk_idx.dim() != 2 or topk_idx.is_floating_point():
        got = getattr(topk_idx, "shape", topk_idx)
        raise ValueError(f"topk_idx must be an integer tensor [tokens, k], got {got!r}")
    if topk_idx.numel() and (topk_idx.min() < 0 or topk_idx.max() >= num_experts):
        raise ValueError(f"topk_idx must lie in 0..{num_experts - 1}")
    T, k = topk_idx.shape
    choice_major = topk_idx.t().reshape(-1)  # slot 0 of every token, then slot 1 of every token, ...
    one_hot = F.one_hot(choice_major, num_experts)  # [k·T, E]
    position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1  # place in the expert's queue
    return (position < capacity).view(k, T).t()


# ================================================================================================ balance
def load_balancing_loss(
    router_logits, num_experts: int, top_k: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch Transformer's auxiliary loss, as transformers' ``load_balancing_loss_func`` computes it.

    ``E · Σ_e f_e · P_e`` with ``f_e`` = fraction of tokens whose top-k contains expert e (Σ f = k) and ``P_e`` =
    mean router probability of e. Uniform routing gives k; all tokens on the same experts gives E. A list/tuple of
    logits (one per layer, each ``[B·S, E]``) is pooled over all layers' tokens, like transformers does.
    ``attention_mask`` ``[B, S]`` (1 = real token, 0 = padding) leaves padding out of both averages, so that a
    batch padded to one length is balanced on its real tokens only.
    """
    if isinstance(router_logits, (list, tuple)):
        router_logits = torch.cat([t.reshape(-1, t.shape[-1]) for t in router_logits])
    check_int("num_experts", num_experts, 1)
    if router_logits.shape[-1] != num_experts:
        raise ValueError(
            f"router_logits must have num_experts={num_experts} columns, got shape {tuple(router_logits.shape)}"
        )
    check_int("top_k", top_k, 1, num_experts)
    probs = router_logits.reshape(-1, num_experts).float().softmax(dim=-1)
    chosen = probs.topk(top_k, dim=-1).indices
    if attention_mask is None:
        f = torch.bincount(chosen.reshape(-1), minlength=num_experts).float() / probs.shape[0]
        return num_experts * (f * probs.mean(dim=0)).sum()
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        raise ValueError(
            f"attention_mask must be a [batch, seq] tensor, got {getattr(attention_mask, 'shape', attention_mask)!r}"
        )
    per_layer = attention_mask.numel()
    if probs.shape[0] % per_layer:
        raise ValueError(
            f"router_logits has {probs.shape[0]} token rows, not a multiple of attention_mask's "
            f"{tuple(attention_mask.shape)} = {per_layer} tokens per layer"
        )
    keep = attention_mask.reshape(-1).to(probs.dtype).repeat(probs.shape[0] // per_layer)  # the same mask per layer
    n_real = keep.sum()
    if n_real == 0:
        raise ValueError("attention_mask masks every token: there is nothing to balance")
    f = torch.zeros(num_experts, dtype=probs.dtype).index_add_(0, chosen.reshape(-1), keep.repeat_interleave(top_k))
    return num_experts * ((f / n_real) * ((probs * keep[:, None]).sum(dim=0) / n_real)).sum()


def router_z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss (Zoph et al., 2022): mean over tokens of logsumexp(logits)² — keeps logits small."""
    return torch.logsumexp(router_logits.float(), dim=-1).pow(2).mean()


# ================================================================================================ dispatch/combine
def swiglu_expert(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """One SwiGLU expert in the fused layout: ``gate_up`` [2I, H] (gate rows, then up rows), ``down`` [H, I]."""
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, down)


def _kept(topk_idx, keep):
    return torch.ones_like(topk_idx, dtype=torch.bool) if keep is None else keep


def dispatch_per_token(x, topk_idx, topk_weight, gate_up, down, keep=None):
    """The definition, one token-slot at a time: clear, and far too slow for real use."""
    keep = _kept(topk_idx, keep)
    rows = []
    for t in range(x.shape[0]):
        y_t = torch.zeros_like(x[t])
        for j in range(topk_idx.shape[1]):
            if keep[t, j]:
                e = int(topk_idx[t, j])
                y_t = y_t + topk_weight[t, j] * swiglu_expert(x[t], gate_up[e], down[e])
        rows.append(y_t)
    return torch.stack(rows) if rows else torch.zeros_like(x)


def dispatch_per_expert(x, topk_idx, topk_weight, gate_up, down, keep=None):
    """One batched call per expert on the tokens that chose it (what transformers' eager code does)."""
    keep = _kept(topk_idx, keep)
    y = torch.zeros_like(x)
    for e in range(gate_up.shape[0]):
        token, slot = torch.where((topk_idx == e) & keep)
        if token.numel():
            out = swiglu_expert(x[token], gate_up[e], down[e]) * topk_weight[token, slot, None]
            y = y.index_add(0, token, out.to(y.dtype))
    return y


def _sort_by_expert(topk_idx, keep, num_experts):
    """Kept token-slots (flat index t·k + j) grouped by expert, and how many each expert got."""
    flat_expert = topk_idx.reshape(-1)
    if keep is None:
        order = flat_expert.argsort(stable=True)  # stable: within an expert, tokens keep their order
        counts = torch.bincount(flat_expert, minlength=num_experts)
        return order, counts
    slots = keep.reshape(-1).nonzero().squeeze(1)
    expert_of_slot = flat_expert[slots]
    order = slots[expert_of_slot.argsort(stable=True)]
    return order, torch.bincount(expert_of_slot, minlength=num_experts)


def _combine(y_sorted, slots, topk_weight, num_tokens):
    """Un-permute and sum the k slots: weight each slot's output and add it to its token's row.

    One ``index_add`` (slot t·k + j belongs to token t) instead of scattering into a (T·k, H) buffer and summing:
    ~10× faster on a CPU (0.08 vs 0.82 ms at 256 tokens, one thread), and the same numbers for k = 2.
    """
    k = topk_weight.shape[1]
    weighted = y_sorted * topk_weight.reshape(-1)[slots, None].to(y_sorted.dtype)
    return y_sorted.new_zeros(num_tokens, y_sorted.shape[-1]).index_add_(0, slots // k, weighted)


def dispatch_sorted(x, topk_idx, topk_weight, gate_up, down, keep=None):
    """Sort token-slots by expert, run one contiguous matmul per expert, un-permute and sum the k slots."""
    slots, counts = _sort_by_expert(topk_idx, keep, gate_up.shape[0])
    x_sorted = x[slots // topk_idx.shape[1]]
    # unbind once: the backward of E separate `gate_up[e]` would allocate a full-size zero gradient per expert
    gate_ups, downs = gate_up.unbind(0), down.unbind(0)
    outputs = []
    for e, x_e in enumerate(x_sorted.split(counts.tolist())):
        if x_e.shape[0]:
            outputs.append(swiglu_expert(x_e, gate_ups[e], downs[e]))
    y_sorted = torch.cat(outputs) if outputs else x_sorted
    return _combine(y_sorted, slots, topk_weight, x.shape[0])


def _grouped_mm_probe() -> bool:
    fn = getattr(F, "grouped_mm", None)
    if fn is None:
        return False
    # exists in torch ≥ 2.10; make sure this build also runs it here (CPU, float32, with backward). enable_grad:
    # the first call may come from inside torch.no_grad(); a private generator leaves the global seed alone.
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.enable_grad():
            a = torch.randn(6, 8, generator=gen).requires_grad_()
            b = torch.randn(2, 8, 4, generator=gen).requires_grad_()
            out = fn(a, b, offs=torch.tensor([2, 6], dtype=torch.int32))
            out.pow(2).sum().backward()
        return torch.allclose(out[:2], a[:2] @ b[0], atol=1e-5) and torch.allclose(out[2:], a[2:] @ b[1], atol=1e-5)
    except (RuntimeError, NotImplementedError, TypeError):
        return False


_GROUPED_MM = None


def grouped_mm_available() -> bool:
    """Whether ``torch.nn.functional.grouped_mm`` exists in this torch and works on this device (checked once)."""
    global _GROUPED_MM
    if _GROUPED_MM is None:
        _GROUPED_MM = _grouped_mm_probe()
    return _GROUPED_MM


# F.grouped_mm on CPU takes these only (float64 raises): other dtypes use the sorted loop, which takes any.
GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _grouped_mm_fits(x, gate_up) -> bool:
    # The kernel wants 16-byte aligned rows: every width must be a multiple of 16 / element size.
    align = max(1, 16 // x.element_size())
    return (
        grouped_mm_available()
        and x.dtype == gate_up.dtype
        and x.dtype in GROUPED_MM_DTYPES
        and all(d % align == 0 for d in (gate_up.shape[1] // 2, gate_up.shape[2]))
    )


def dispatch_grouped_mm(x, topk_idx, topk_weight, gate_up, down, keep=None):
    """Like :func:`dispatch_sorted`, but all experts in one ``F.grouped_mm`` call per projection (no Python loop).

    Falls back to :func:`dispatch_sorted` where grouped_mm is missing, the dtype is not one it takes (float64), or
    the widths are not 16-byte aligned.
    """
    if not _grouped_mm_fits(x, gate_up):
        return dispatch_sorted(x, topk_idx, topk_weight, gate_up, down, keep)
    slots, counts = _sort_by_expert(topk_idx, keep, gate_up.shape[0])
    if slots.numel() == 0:
        return torch.zeros_like(x)
    x_sorted = x[slots // topk_idx.shape[1]]
    offs = counts.cumsum(0).to(torch.int32)  # end row of each expert's group
    gate, up = F.grouped_mm(x_sorted, gate_up.transpose(1, 2), offs=offs).chunk(2, dim=-1)
    y_sorted = F.grouped_mm(F.silu(gate) * up, down.transpose(1, 2), offs=offs)
    return _combine(y_sorted, slots, topk_weight, x.shape[0])


DISPATCHERS = {
    "per_token": dispatch_per_token,
    "per_expert": dispatch_per_expert,
    "sorted": dispatch_sorted,
    "grouped_mm": dispatch_grouped_mm,
}


# ================================================================================================ the layer
# The options that decide the layer's weights: from_hf reads them from the block, options may not override them.
_WEIGHT_SHAPING = frozenset({"num_experts", "num_shared_experts", "shared_d_ff", "shared_expert_gate"})


class MoELayer(nn.Module):
    """A drop-in feed-forward block: ``y, aux = layer(x)`` with x of shape (..., d_model).

    ``MoELayer(d_model, d_ff, config)`` with a :class:`MoEConfig` (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V3 and
    the classic papers' options: see its fields). The layer keeps that one object as ``self.config`` and every
    part reads it from there. Chapter 4's short form ``MoELayer(d_model, d_ff, num_experts, top_k, **options)``
    (options: MoEConfig's fields by name) builds the config in :meth:`MoEConfig.from_short_form`.
    """

    def __init__(
        self, d_model: int, d_ff: int, config: MoEConfig | int | None = None, top_k: int | None = None, **options
    ):
        super().__init__()
        check_int("d_model", d_model, 1)
        check_int("d_ff", d_ff, 1)
        if top_k is not None:
            options["top_k"] = top_k
        self.config = MoEConfig.from_short_form("num_experts", config, options, "MoELayer")
        self.d_model, self.d_ff = d_model, d_ff
        c = self.config

        self.router = nn.Linear(d_model, c.num_experts, bias=False)
        self.noise = nn.Linear(d_model, c.num_experts, bias=False) if c.noisy_gating else None
        self.gate_up_proj = nn.Parameter(torch.empty(c.num_experts, 2 * d_ff, d_model))  # [gate (w1); up (w3)]
        self.down_proj = nn.Parameter(torch.empty(c.num_experts, d_model, d_ff))  # w2
        # DeepSeek-V3's selection-only bias: a buffer, moved by update_expert_bias, never by gradients.
        self.register_buffer("expert_bias", torch.zeros(c.num_experts))
        self.shared_expert = self.shared_gate = None
        if c.num_shared_experts:
            self.shared_expert = SwiGLU(d_model, c.shared_d_ff or c.num_shared_experts * d_ff)
            self.shared_gate = nn.Linear(d_model, 1, bias=False) if c.shared_expert_gate else None
        self.reset_parameters()

    # the two sizes every caller asks for, read from the config (never copied)
    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    @property
    def top_k(self) -> int:
        return self.config.top_k

    def reset_parameters(self) -> None:
        # Each expert starts like an nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        nn.init.uniform_(self.gate_up_proj, -(self.d_model**-0.5), self.d_model**-0.5)
        nn.init.uniform_(self.down_proj, -(self.d_ff**-0.5), self.d_ff**-0.5)
        if self.noise is not None:
            nn.init.zeros_(self.noise.weight)  # start with unit-free noise scale softplus(0) ≈ 0.69

    # -------------------------------------------------------------------------------------------- forward
    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [T, E] for flat tokens x [T, d_model], with jitter/noise in training mode."""
        return router_logits(x, self.router, self.config, self.noise, self.training)

    def select_experts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The router, start to end, for flat tokens x [T, d_model]: (logits [T, E], topk_weight, topk_idx [T, k]).

        The expert-parallel layer runs this very method (it holds the same router, noise, bias and config).
        """
        logits = self.router_logits(x)
        topk_weight, topk_idx = route(logits, self.config, bias=self.expert_bias)
        return logits, topk_weight, topk_idx

    def forward(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.d_model:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (..., d_model={self.d_model}), got {got}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        shape = x.shape
        x = x.reshape(-1, self.d_model)
        logits, topk_weight, topk_idx = self.select_experts(x)
        c = self.config
        keep = None
        if c.capacity_factor is not None:
            capacity = expert_capacity(x.shape[0], c.top_k, c.num_experts, c.capacity_factor)
            keep = apply_capacity(topk_idx, c.num_experts, capacity)
        weight = topk_weight.to(x.dtype)
        dispatch = c.dispatch if c.dispatch != "auto" else "grouped_mm"
        y = DISPATCHERS[dispatch](x, topk_idx, weight, self.gate_up_proj, self.down_proj, keep)
        if self.shared_expert is not None:
            shared = self.shared_expert(x)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(x)) * shared
            y = y + shared
        kept_idx = topk_idx if keep is None else topk_idx[keep]
        aux = {
            "router_logits": logits,
            "topk_idx": topk_idx,
            "topk_weight": topk_weight,
            "tokens_per_expert": torch.bincount(kept_idx.reshape(-1), minlength=self.num_experts),
            "dropped": torch.zeros_like(topk_idx, dtype=torch.bool) if keep is None else ~keep,
            "load_balancing_loss": load_balancing_loss(logits, self.num_experts, self.top_k),
            "z_loss": router_z_loss(logits),
        }
        return y.view(shape), aux

    @torch.no_grad()
    def update_expert_bias(self, tokens_per_expert: torch.Tensor, gamma: float = 1e-3) -> None:
        """DeepSeek-V3's auxiliary-loss-free balancing: ``b_e += γ · sign(mean load − load_e)`` after each step."""
        load = tokens_per_expert.float()
        self.expert_bias += gamma * torch.sign(load.mean() - load)

    # -------------------------------------------------------------------------------------------- bookkeeping
    def param_counts(self) -> dict:
        """``total`` parameters and ``active`` per token (router, noise, shared expert and gate, top_k experts)."""
        per_expert = (self.gate_up_proj.numel() + self.down_proj.numel()) // self.num_experts
        always = sum(
            p.numel()
            for m in (self.router, self.noise, self.shared_expert, self.shared_gate)
            if m is not None
            for p in m.parameters()
        )
        return {"total": always + self.num_experts * per_expert, "active": always + self.top_k * per_expert}

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_ff={self.d_ff}, num_experts={self.num_experts}, top_k={self.top_k}, "
            f"score_func={self.config.score_func!r}, capacity_factor={self.config.capacity_factor}"
        )

    # -------------------------------------------------------------------------------------------- transformers
    @classmethod
    def from_hf(cls, block: nn.Module, **options) -> MoELayer:
        """Copy a transformers MoE block (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3) into a MoELayer.

        The result computes the same function: same routing, same weights (the fused ``gate_up_proj`` /
        ``down_proj`` tensors are copied as they are). ``options`` (e.g. ``dispatch=``, ``top_k=``) are
        :class:`MoEConfig` fields that override what is read from the block, except those that shape the weights.
        Mixtral's ``router_jitter_noise`` is not copied: transformers multiplies the experts' input by the noise
        too, while ``router_jitter`` here follows Switch Transformer and jitters only the router's input.
        """
        gate, experts = getattr(block, "gate", None), getattr(block, "experts", None)
        if gate is None or not hasattr(experts, "gate_up_proj") or not hasattr(experts, "down_proj"):
            raise TypeError(
                f"block must be a transformers MoE block with .gate and fused .experts, got {type(block).__name__}"
            )
        act = getattr(experts, "act_fn", None)
        if act is not None and type(act).__name__ not in ("SiLU", "SiLUActivation"):
            raise ValueError(f"only SiLU experts (SwiGLU) are supported, got {type(experts.act_fn).__name__}")
        num_experts, two_i, d_model = experts.gate_up_proj.shape
        structural = sorted(set(options) & _WEIGHT_SHAPING)
        if structural:
            raise ValueError(f"from_hf reads {structural} from the block's weights; options may not change them")
        is_deepseek = hasattr(gate, "e_score_correction_bias")
        shared = getattr(block, "shared_expert", None) or getattr(block, "shared_experts", None)
        read = dict(
            num_experts=num_experts, top_k=gate.top_k, norm_topk_prob=bool(getattr(gate, "norm_topk_prob", True))
        )
        if is_deepseek:
            read.update(
                score_func="sigmoid",
                n_group=gate.num_group,
                topk_group=gate.topk_group,
                router_fp32=True,
                routed_scaling_factor=float(gate.routed_scaling_factor),
            )
        if shared is not None:
            read.update(
                num_shared_experts=1,
                shared_d_ff=shared.gate_proj.out_features,
                shared_expert_gate=getattr(block, "shared_expert_gate", None) is not None,
            )
        config = MoEConfig.from_value(read | options, "from_hf options")  # built once, from the block and options
        layer = cls(d_model, two_i // 2, config)
        with torch.no_grad():
            layer.router.weight.copy_(gate.weight)
            layer.gate_up_proj.copy_(experts.gate_up_proj)
            layer.down_proj.copy_(experts.down_proj)
            if is_deepseek:
                layer.expert_bias.copy_(gate.e_score_correction_bias)
            if shared is not None:
                layer.shared_expert.w1.weight.copy_(shared.gate_proj.weight)
                layer.shared_expert.w3.weight.copy_(shared.up_proj.weight)
                layer.shared_expert.w2.weight.copy_(shared.down_proj.weight)
                if layer.shared_gate is not None:
                    layer.shared_gate.weight.copy_(block.shared_expert_gate.weight)
        return layer.to(experts.gate_up_proj.dtype).train(block.training)


# ================================================================================================ public configs
def load_public_configs() -> dict:
    """Published configs of real MoE models (course_utils/assets/moe_configs.json), with their sources."""
    return json.loads((ASSETS / "moe_configs.json").read_text(encoding="utf-8"))["models"]


def transformer_param_counts(cfg: dict) -> dict:
    """Total and per-token active parameters of a decoder-only (MoE) transformer from its config.

    Counts embeddings (and an untied LM head), attention (grouped-query, or DeepSeek's multi-head latent
    attention), RMSNorm weights, dense MLP layers, routed experts (only ``num_experts_per_tok`` of them active),
    shared experts and the router. Biases are absent in all these models.
    """
    H, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    if cfg.get("kv_lora_rank"):  # multi-head latent attention (DeepSeek-V2/V3)
        nh, qr, kvr = cfg["num_attention_heads"], cfg["q_lora_rank"], cfg["kv_lora_rank"]
        qk = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
        attn = (
            H * qr
            + qr
            + qr * nh * qk  # q down, its norm, q up
            + H * (kvr + cfg["qk_rope_head_dim"])
            + kvr  # joint kv down (+ shared rope key), its norm
            + kvr * nh * (cfg["qk_nope_head_dim"] + cfg["v_head_dim"])  # k and v up
            + nh * cfg["v_head_dim"] * H
        )  # output
    else:
        hd = cfg.get("head_dim") or H // cfg["num_attention_heads"]
        q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
        attn = H * q + 2 * H * kv + q * H
        if cfg.get("qk_norm") == "per_head":
            attn += 2 * hd
        elif cfg.get("qk_norm") == "full":
            attn += q + kv
    norms = 2 * H
    n_experts, k = cfg["num_experts"], cfg["num_experts_per_tok"]
    expert = 3 * H * cfg["moe_intermediate_size"]
    shared = 3 * H * cfg.get("shared_expert_intermediate_size", 0)
    router = n_experts * H + (n_experts if cfg.get("router_bias") else 0)
    n_dense = cfg.get("first_k_dense_replace", 0)
    dense_layer = attn + norms + 3 * H * cfg.get("intermediate_size", 0)
    moe_total = attn + norms + router + shared + n_experts * expert
    moe_active = attn + norms + router + shared + k * expert
    embed = V * H * (1 if cfg.get("tie_word_embeddings") else 2) + H  # + final norm
    n_moe = L - n_dense
    return {
        "total": embed + n_dense * dense_layer + n_moe * moe_total,
        "active": embed + n_dense * dense_layer + n_moe * moe_active,
    }
