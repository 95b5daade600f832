"""Chapter 4's lab checks accept the reference and reject plausible wrong implementations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from helpers import assert_check_accepts, assert_check_rejects

from course_utils import moe
from course_utils.checks.ch04 import (
    check_apply_capacity,
    check_deepseek_v3_router,
    check_dispatch_combine,
    check_load_balancing_loss,
    check_moe_layer,
    check_router_z_loss,
    check_topk_router,
)


# ---------------------------------------------------------------------------------------------- right versions
def topk_router(logits, k):
    return moe.route(logits, k)


def dispatch_combine(x, topk_idx, topk_weight, gate_up, down):
    return moe.dispatch_sorted(x, topk_idx, topk_weight, gate_up, down)


def apply_capacity(topk_idx, num_experts, capacity_factor):
    T, k = topk_idx.shape
    return moe.apply_capacity(topk_idx, num_experts, moe.expert_capacity(T, k, num_experts, capacity_factor))


def deepseek_v3_router(logits, bias, top_k, n_group, topk_group, routed_scaling_factor):
    return moe.route(
        logits,
        top_k,
        score_func="sigmoid",
        bias=bias,
        n_group=n_group,
        topk_group=topk_group,
        routed_scaling_factor=routed_scaling_factor,
    )


def moe_forward(x, router_weight, gate_up_proj, down_proj, top_k):
    weight, idx = topk_router(x @ router_weight.T, top_k)
    return dispatch_combine(x, idx, weight, gate_up_proj, down_proj)


def test_reference_versions_pass(capsys):
    assert_check_accepts(check_topk_router, topk_router, capsys)
    assert_check_accepts(check_dispatch_combine, dispatch_combine, capsys)
    assert_check_accepts(check_dispatch_combine, moe.dispatch_per_expert, capsys)
    assert_check_accepts(check_load_balancing_loss, moe.load_balancing_loss, capsys)
    assert_check_accepts(check_router_z_loss, moe.router_z_loss, capsys)
    assert_check_accepts(check_apply_capacity, apply_capacity, capsys)
    assert_check_accepts(check_deepseek_v3_router, deepseek_v3_router, capsys)
    assert_check_accepts(check_moe_layer, moe_forward, capsys)


def test_any_order_of_the_k_choices_is_accepted(capsys):
    def reversed_order(logits, k):
        w, idx = moe.route(logits, k)
        return w.flip(-1), idx.flip(-1)

    assert_check_accepts(check_topk_router, reversed_order, capsys)


# ---------------------------------------------------------------------------------------------- wrong versions
def test_topk_router_without_renormalisation_is_rejected():
    def no_renorm(logits, k):
        return moe.route(logits, k, norm_topk_prob=False)

    assert_check_rejects(check_topk_router, no_renorm, match="weights of the chosen experts")


def test_topk_router_softmax_after_topk_over_all_is_rejected():
    def topk_of_logits_no_softmax(logits, k):
        w, idx = logits.topk(k, dim=-1)
        return w, idx  # raw logits as weights

    assert_check_rejects(check_topk_router, topk_of_logits_no_softmax, match="weights")


def test_dispatch_without_unpermute_is_rejected():
    def no_unpermute(x, topk_idx, topk_weight, gate_up, down):
        # sorts by expert, runs the experts, then adds row i of the sorted output to token i // k: wrong token
        T, k = topk_idx.shape
        order = topk_idx.reshape(-1).argsort(stable=True)
        rows = []
        for i, s in enumerate(order.tolist()):
            e = int(topk_idx.reshape(-1)[s])
            rows.append(moe.swiglu_expert(x[s // k], gate_up[e], down[e]) * topk_weight.reshape(-1)[i])
        return torch.stack(rows).view(T, k, -1).sum(1)

    assert_check_rejects(check_dispatch_combine, no_unpermute, match="y: .* values differ")


def test_dispatch_that_forgets_the_weights_is_rejected():
    def unweighted(x, topk_idx, topk_weight, gate_up, down):
        return moe.dispatch_sorted(x, topk_idx, torch.ones_like(topk_weight), gate_up, down)

    assert_check_rejects(check_dispatch_combine, unweighted, match="multiply it by that slot's weight")


def test_load_balancing_loss_missing_E_factor_is_rejected():
    def no_E(router_logits, num_experts, top_k):
        return moe.load_balancing_loss(router_logits, num_experts, top_k) / num_experts

    assert_check_rejects(check_load_balancing_loss, no_E, match="loss: expected")


def test_load_balancing_loss_counting_only_first_choice_is_rejected():
    def top1_counts(router_logits, num_experts, top_k):
        probs = router_logits.softmax(-1)
        f = F.one_hot(probs.argmax(-1), num_experts).float().mean(0)
        return num_experts * (f * probs.mean(0)).sum()

    assert_check_rejects(check_load_balancing_loss, top1_counts, match="uniform routing must give k")


def test_z_loss_without_square_is_rejected():
    assert_check_rejects(check_router_z_loss, lambda z: torch.logsumexp(z, -1).mean(), match="logsumexp")


def test_z_loss_over_wrong_axis_is_rejected():
    assert_check_rejects(check_router_z_loss, lambda z: torch.logsumexp(z, 0).pow(2).mean(), match="dim=-1")


def test_capacity_token_major_priority_is_rejected():
    def token_major(topk_idx, num_experts, capacity_factor):
        # walks token by token: token 0's second choice is served before token 2's first choice
        T, k = topk_idx.shape
        cap = math.ceil(capacity_factor * T * k / num_experts)
        used = [0] * num_experts
        keep = torch.zeros(T, k, dtype=torch.bool)
        for t in range(T):
            for j in range(k):
                e = int(topk_idx[t, j])
                if used[e] < cap:
                    used[e] += 1
                    keep[t, j] = True
        return keep

    assert_check_rejects(check_apply_capacity, token_major, match="before any second choice")


def test_capacity_with_floor_is_rejected():
    def floor_capacity(topk_idx, num_experts, capacity_factor):
        T, k = topk_idx.shape
        return moe.apply_capacity(topk_idx, num_experts, int(capacity_factor * T * k / num_experts))

    assert_check_rejects(check_apply_capacity, floor_capacity, match="ceil")


def test_capacity_returning_floats_is_rejected():
    assert_check_rejects(check_apply_capacity, lambda i, e, c: apply_capacity(i, e, c).float(), match="bool mask")


def test_deepseek_router_weighing_with_biased_scores_is_rejected():
    def biased_weights(logits, bias, top_k, n_group, topk_group, scale):
        w, idx = deepseek_v3_router(logits, bias, top_k, n_group, topk_group, scale)
        biased = logits.sigmoid() + bias
        w = biased.gather(1, idx)
        return w / w.sum(-1, keepdim=True) * scale, idx

    assert_check_rejects(check_deepseek_v3_router, biased_weights, match="unbiased")


def test_deepseek_router_without_groups_is_rejected():
    def no_groups(logits, bias, top_k, n_group, topk_group, scale):
        return deepseek_v3_router(logits, bias, top_k, 1, 1, scale)

    assert_check_rejects(check_deepseek_v3_router, no_groups, match="chosen experts")


def test_moe_layer_without_renormalisation_is_rejected():
    def qwen_style(x, router_weight, gate_up_proj, down_proj, top_k):
        weight, idx = moe.route(x @ router_weight.T, top_k, norm_topk_prob=False)
        return dispatch_combine(x, idx, weight, gate_up_proj, down_proj)

    assert_check_rejects(check_moe_layer, qwen_style, match="MixtralSparseMoeBlock")


def test_moe_layer_with_swapped_gate_and_up_is_rejected():
    def swapped(x, router_weight, gate_up_proj, down_proj, top_k):
        up_gate = torch.cat(gate_up_proj.chunk(2, dim=1)[::-1], dim=1)  # reads the up rows as the gate
        return moe_forward(x, router_weight, up_gate, down_proj, top_k)

    assert_check_rejects(check_moe_layer, swapped, match="values differ")


def test_unfinished_exercise_is_reported():
    def todo(*args):
        raise NotImplementedError("Exercise 4.1: softmax then topk")

    assert_check_rejects(check_topk_router, todo, match="NotImplementedError")


# ---------------------------------------------------------------------------------------------- open exercise 4.7
def test_balanced_route_check():
    from course_utils.checks.ch04 import check_balanced_route

    def proportional_bias(logits, k):
        """A different right answer: the bias moves in proportion to the overload, on log-probabilities."""
        logp, bias = logits.log_softmax(-1), torch.zeros(logits.shape[1])
        for _ in range(400):
            load = torch.bincount((logp + bias).topk(k, -1).indices.flatten(), minlength=logits.shape[1]).float()
            bias -= 0.05 * (load / load.mean() - 1)
        return (logp + bias).topk(k, -1).indices

    def plain_topk(logits, k):
        return logits.topk(k, dim=-1).indices

    def random_experts(logits, k):
        g = torch.Generator().manual_seed(0)
        return torch.stack([torch.randperm(logits.shape[1], generator=g)[:k] for _ in range(logits.shape[0])])

    def round_robin_with_repeats(logits, k):  # even, but the same expert twice for one token
        return (torch.arange(logits.shape[0])[:, None] % logits.shape[1]).expand(-1, k).contiguous()

    assert_check_accepts(check_balanced_route, proportional_bias)
    assert_check_rejects(check_balanced_route, plain_topk, match="above the target")
    assert_check_rejects(check_balanced_route, random_experts, match="below the target")
    assert_check_rejects(check_balanced_route, round_robin_with_repeats, match="same expert twice")


def test_checks_that_only_reuse_answers_carry_no_points():
    """The Mixtral check (4.1 + 4.2 again) and chapter 3's trained-model check (3.6-3.10 again) give 0 points in
    nbgrader, so one mistake is not graded twice; every other check cell gives 1."""
    from pathlib import Path

    import nbformat

    root = Path(__file__).resolve().parents[1]
    for name, reused in (
        ("04_moe_layer_lab.ipynb", "check_moe_layer("),
        ("03_tiny_gpt_lab.ipynb", "check_trained_gpt("),
    ):
        nb = nbformat.read(root / "solutions" / name, 4)
        graded = {
            c.source: c.metadata["nbgrader"]["points"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")
        }
        assert [p for s, p in graded.items() if reused in s] == [0], name
        assert all(p == 1 for s, p in graded.items() if reused not in s), name
