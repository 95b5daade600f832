"""Checks for Chapter 4's lab: the Mixture-of-Experts layer (solutions/04_moe_layer_lab.ipynb).

Each check runs the learner's function on several inputs (edge cases included: k = 1, k = E, an expert nobody
picks, a single token) and compares it with the reference in :mod:`course_utils.moe`; the last one compares the
learner's whole layer with transformers' ``MixtralSparseMoeBlock``. The open exercise's check
(:func:`check_balanced_route`) judges an outcome instead: even loads that still follow the router.
"""

from __future__ import annotations

import torch

from .. import moe
from ._core import call, compare, exercise, fail, passed

__all__ = [
    "check_topk_router",
    "check_dispatch_combine",
    "check_load_balancing_loss",
    "check_router_z_loss",
    "check_apply_capacity",
    "check_deepseek_v3_router",
    "check_moe_layer",
    "check_balanced_route",
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(check, got, inputs):
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        fail(
            check,
            f"expected a pair (topk_weight, topk_idx), got {type(got).__name__}",
            inputs=inputs,
            hint="return weights, indices — in that order",
        )
    return got


def _by_expert(weight, idx):
    """Sort each row's k entries by expert id, so any order of the k choices is accepted."""
    order = idx.argsort(dim=-1)
    return weight.gather(-1, order), idx.gather(-1, order)


def _compare_routing(check, got, expected, inputs, hint):
    weight, idx = _pair(check, got, inputs)
    if not (isinstance(idx, torch.Tensor) and isinstance(weight, torch.Tensor)):
        fail(check, "expected two tensors (topk_weight, topk_idx)", inputs=inputs)
    compare(check, tuple(idx.shape), tuple(expected[1].shape), what="shape of topk_idx", inputs=inputs)
    w_got, i_got = _by_expert(weight.detach().float(), idx.long())
    w_exp, i_exp = _by_expert(*expected)
    compare(check, i_got, i_exp, what="chosen experts (sorted per token)", inputs=inputs, hint=hint)
    compare(check, w_got, w_exp, what="weights of the chosen experts", inputs=inputs, hint=hint)


@exercise("4.1")
def check_topk_router(topk_router) -> None:
    """``topk_router(logits [T, E], k) -> (topk_weight [T, k], topk_idx [T, k])``: softmax, top-k, renormalise."""
    name = "check_topk_router"
    cases = [
        (torch.randn(6, 8, generator=_gen(0)), 2),
        (torch.randn(5, 4, generator=_gen(1)) * 3, 1),
        (torch.randn(3, 5, generator=_gen(2)), 5),
        (torch.randn(1, 16, generator=_gen(3)), 4),
    ]
    for logits, k in cases:
        inputs = {"logits": logits, "k": k}
        got = call(name, topk_router, logits.clone(), k, inputs=inputs)
        _compare_routing(
            name,
            got,
            moe.route(logits, k),
            inputs,
            hint="softmax over all E logits, keep the k largest probabilities, then divide them by "
            "their sum so that each token's k weights add up to 1",
        )
    passed(name, len(cases))


def _dispatch_cases():
    cases = []
    for seed, (T, E, k, H, I) in enumerate([(6, 4, 2, 8, 4), (1, 4, 1, 8, 4), (9, 5, 3, 4, 6), (4, 8, 8, 4, 2)]):
        g = _gen(10 + seed)
        x = torch.randn(T, H, generator=g)
        weight, idx = moe.route(torch.randn(T, E, generator=g), k)
        if seed == 0:
            idx = idx % (E - 1)  # expert E-1 gets no token at all
            idx[:, 1] = (idx[:, 0] + 1) % (E - 1)  # (still two different experts per token)
        cases.append((x, idx, weight, torch.randn(E, 2 * I, H, generator=g), torch.randn(E, H, I, generator=g)))
    return cases


@exercise("4.2")
def check_dispatch_combine(dispatch_combine) -> None:
    """``dispatch_combine(x [T, H], topk_idx, topk_weight, gate_up [E, 2I, H], down [E, H, I]) -> y [T, H]``."""
    name = "check_dispatch_combine"
    cases = _dispatch_cases()
    for x, idx, weight, gate_up, down in cases:
        inputs = {"x": x, "topk_idx": idx, "topk_weight": weight, "gate_up": gate_up, "down": down}
        got = call(name, dispatch_combine, x.clone(), idx.clone(), weight.clone(), gate_up, down, inputs=inputs)
        compare(
            name,
            got,
            moe.dispatch_per_token(x, idx, weight, gate_up, down),
            inputs=inputs,
            atol=1e-4,
            what="y",
            hint="after the experts ran on the sorted rows, put each output back at its token "
            "(slot s came from token s // k) and multiply it by that slot's weight before summing",
        )
    passed(name, len(cases))


def _balance_cases():
    cases = [
        (torch.randn(32, 8, generator=_gen(20)), 8, 2),
        (torch.randn(7, 4, generator=_gen(21)) * 4, 4, 1),
        (torch.randn(20, 6, generator=_gen(22)), 6, 6),
    ]
    collapsed = torch.full((16, 4), -30.0)
    collapsed[:, 0] = 30.0
    cases.append((collapsed, 4, 1))  # every token on expert 0: the loss is E = 4
    return cases


@exercise("4.3")
def check_load_balancing_loss(load_balancing_loss) -> None:
    """``load_balancing_loss(router_logits [T, E], num_experts, top_k) -> scalar`` (transformers' formula)."""
    name = "check_load_balancing_loss"
    cases = _balance_cases()
    for logits, E, k in cases:
        inputs = {"router_logits": logits, "num_experts": E, "top_k": k}
        got = call(name, load_balancing_loss, logits.clone(), E, k, inputs=inputs)
        compare(
            name,
            got,
            moe.load_balancing_loss(logits, E, k).item(),
            inputs=inputs,
            what="loss",
            hint="E · Σ_e f_e · P_e, where f_e = (number of top-k slots on e) / T and P_e = mean softmax "
            "probability of e; uniform routing must give k and total collapse E",
        )
    passed(name, len(cases))


@exercise("4.4")
def check_router_z_loss(router_z_loss) -> None:
    """``router_z_loss(router_logits [T, E]) -> scalar``: mean over tokens of logsumexp(logits)²."""
    name = "check_router_z_loss"
    cases = [torch.randn(10, 8, generator=_gen(30)), torch.randn(3, 4, generator=_gen(31)) * 5 + 2, torch.zeros(1, 6)]
    for logits in cases:
        inputs = {"router_logits": logits}
        got = call(name, router_z_loss, logits.clone(), inputs=inputs)
        compare(
            name,
            got,
            moe.router_z_loss(logits).item(),
            inputs=inputs,
            what="loss",
            hint="torch.logsumexp over the expert axis (dim=-1), square it, then average over tokens",
        )
    passed(name, len(cases))


@exercise("4.5")
def check_apply_capacity(apply_capacity) -> None:
    """``apply_capacity(topk_idx [T, k], num_experts, capacity_factor) -> keep [T, k] (bool)``."""
    name = "check_apply_capacity"
    cases = [
        (torch.tensor([[1, 0], [2, 0], [0, 1], [0, 2]]), 3, 0.75),  # first choices must beat earlier 2nd choices
        (torch.tensor([[0], [0], [0], [1], [0]]), 2, 1.0),  # capacity ceil(2.5) = 3: position priority
        (torch.tensor([[0, 1], [0, 1], [0, 1]]), 4, 1.0),  # capacity ceil(1.5) = 2
        (moe.route(torch.randn(30, 6, generator=_gen(40)) * 3, 2)[1], 6, 1.25),
        (moe.route(torch.randn(12, 4, generator=_gen(41)), 4)[1], 4, 2.0),  # k = E with room for all
    ]
    for idx, E, cf in cases:
        T, k = idx.shape
        inputs = {"topk_idx": idx, "num_experts": E, "capacity_factor": cf}
        got = call(name, apply_capacity, idx.clone(), E, cf, inputs=inputs)
        expected = moe.apply_capacity(idx, E, moe.expert_capacity(T, k, E, cf))
        if isinstance(got, torch.Tensor) and got.dtype != torch.bool:
            fail(name, f"expected a bool mask (True = kept), got dtype {got.dtype}", inputs=inputs)
        compare(
            name,
            got,
            expected,
            inputs=inputs,
            what="keep",
            hint="capacity = ceil(capacity_factor · T · k / E); serve all first choices (in token order) "
            "before any second choice: walk topk_idx column by column, not row by row",
        )
    passed(name, len(cases))


@exercise("4.6")
def check_deepseek_v3_router(deepseek_v3_router) -> None:
    """``deepseek_v3_router(logits, bias, top_k, n_group, topk_group, routed_scaling_factor) -> (weight, idx)``."""
    name = "check_deepseek_v3_router"
    cases = []
    for seed, (T, E, k, g, tg, s) in enumerate(
        [(8, 16, 4, 4, 2, 2.5), (5, 8, 2, 1, 1, 1.0), (6, 12, 3, 3, 1, 1.5), (4, 16, 8, 8, 4, 2.5)]
    ):
        gen = _gen(50 + seed)
        cases.append((torch.randn(T, E, generator=gen), torch.randn(E, generator=gen) * 0.5, k, g, tg, s))
    for logits, bias, k, g, tg, s in cases:
        inputs = {
            "logits": logits,
            "bias": bias,
            "top_k": k,
            "n_group": g,
            "topk_group": tg,
            "routed_scaling_factor": s,
        }
        got = call(name, deepseek_v3_router, logits.clone(), bias.clone(), k, g, tg, s, inputs=inputs)
        expected = moe.route(
            logits,
            k,
            score_func="sigmoid",
            norm_topk_prob=True,
            bias=bias,
            n_group=g,
            topk_group=tg,
            routed_scaling_factor=s,
        )
        _compare_routing(
            name,
            got,
            expected,
            inputs,
            hint="scores = sigmoid(logits); choose with scores + bias, restricted to the topk_group "
            "groups whose two best (biased) scores sum highest; weigh with the *unbiased* "
            "scores, renormalise, multiply by routed_scaling_factor",
        )
    passed(name, len(cases))


def _mixtral_block(E, k, H, I, seed):
    from transformers import MixtralConfig  # noqa: PLC0415 — transformers takes ~3 s to import; only this check compares with Mixtral
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock  # noqa: PLC0415 — the same transformers import

    config = MixtralConfig(
        hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=k, router_jitter_noise=0.0
    )
    config._experts_implementation = "eager"  # a standalone block: name the eager experts, or transformers warns
    block = MixtralSparseMoeBlock(config).eval()
    g = _gen(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return block


def check_moe_layer(moe_forward) -> None:
    """``moe_forward(x [T, H], router_weight [E, H], gate_up_proj, down_proj, top_k) -> y`` vs transformers' Mixtral."""
    name = "check_moe_layer"
    configs = [(8, 2, 16, 12), (4, 1, 8, 4), (5, 5, 8, 6), (16, 4, 32, 8)]
    for seed, (E, k, H, I) in enumerate(configs):
        block = _mixtral_block(E, k, H, I, 60 + seed)
        x = torch.randn(10, H, generator=_gen(70 + seed))
        inputs = {"x": x, "num_experts": E, "top_k": k}
        with torch.no_grad():
            expected = block(x[None].clone())[0]
            got = call(
                name,
                moe_forward,
                x.clone(),
                block.gate.weight.detach().clone(),
                block.experts.gate_up_proj.detach().clone(),
                block.experts.down_proj.detach().clone(),
                k,
                inputs=inputs,
            )
        compare(
            name,
            got,
            expected,
            inputs=inputs,
            atol=1e-5,
            what="layer output vs MixtralSparseMoeBlock",
            hint="router logits = x @ router_weight.T, then your topk_router and your dispatch_combine",
        )
    passed(name, len(configs), "your layer computes exactly what transformers' Mixtral block computes")


@exercise("4.7")
def check_balanced_route(balanced_route, *, max_load_ratio: float = 1.05, min_kept: float = 0.85) -> None:
    """Open exercise: ``balanced_route(logits [T, E], k) -> topk_idx [T, k]`` evens the loads of a skewed router.

    Checked by outcome on 4,096 tokens, 8 experts, top-2: the busiest expert's load is at most ``max_load_ratio``
    times the mean, and the chosen experts keep at least ``min_kept`` of the softmax probability plain top-k keeps.
    """
    check = "check_balanced_route"
    T, E, k = 4096, 8, 2
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(T, E, generator=g) + torch.linspace(0, 2.0, E)  # the high ids are favoured
    inputs = {"logits": logits, "k": k}
    idx = call(check, balanced_route, logits.clone(), k, inputs=inputs)
    if not isinstance(idx, torch.Tensor) or tuple(idx.shape) != (T, k) or idx.dtype not in (torch.int64, torch.int32):
        fail(
            check,
            f"expected an integer tensor of shape ({T}, {k}), got "
            f"{getattr(idx, 'dtype', type(idx).__name__)} {tuple(getattr(idx, 'shape', ()))}",
            inputs=inputs,
            hint="return expert ids, one row of k per token (e.g. the .indices of a topk)",
        )
    idx = idx.long()
    if int(idx.min()) < 0 or int(idx.max()) >= E:
        fail(check, f"expert ids outside [0, {E})", inputs=inputs)
    if bool((idx.sort(dim=1).values.diff(dim=1) == 0).any()):
        fail(
            check,
            "some token got the same expert twice",
            inputs=inputs,
            hint="choose k *distinct* experts per token (topk does; sampling with replacement does not)",
        )
    load = torch.bincount(idx.reshape(-1), minlength=E).double()
    ratio = float(load.max() / load.mean())
    probs = logits.double().softmax(-1)
    kept = float(probs.gather(1, idx).sum() / probs.topk(k, -1).values.sum())
    summary = f"busiest expert {ratio:.3f} × the mean load, {kept:.1%} of top-k's router probability kept"
    if ratio > max_load_ratio:
        fail(
            check,
            f"{summary}: the busiest expert is above the target {max_load_ratio} × the mean",
            hint="the router favours the high expert ids: something must push tokens away from busy experts, "
            "e.g. a per-expert bias lowered while the expert is over-loaded",
        )
    if kept < min_kept:
        fail(
            check,
            f"{summary}: below the target of {min_kept:.0%} kept",
            hint="even loads are easy by ignoring the router; move only the tokens that care least which expert "
            "they get (a bias on the logits does exactly that)",
        )
    passed(check, 1, summary)
