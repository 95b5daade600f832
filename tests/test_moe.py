"""course_utils.moe: parity with transformers' Mixtral, Qwen2-MoE and DeepSeek-V3 blocks, the losses, capacity."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError, fields, replace

import pytest
import torch
import torch.distributed as dist

from course_utils import distributed, moe
from course_utils.model import GPT, GPTConfig
from course_utils.moe import MoELayer

transformers = pytest.importorskip("transformers")
from transformers import DeepseekV3Config, MixtralConfig, Qwen2MoeConfig  # noqa: E402
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE  # noqa: E402
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock, load_balancing_loss_func  # noqa: E402
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock  # noqa: E402

DISPATCH = list(moe.DISPATCHERS)


def randomize(block, seed=0):
    """transformers leaves some MoE weights at zero/empty until a model's init runs: fill everything."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for b in block.buffers():
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return block


def mixtral(E, k, H=16, I=12, seed=0):
    cfg = MixtralConfig(
        hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=k, router_jitter_noise=0.0
    )
    return randomize(MixtralSparseMoeBlock(cfg), seed)


def qwen2(E, k, H=16, I=12, shared=20, norm=False, seed=0):
    cfg = Qwen2MoeConfig(
        hidden_size=H,
        moe_intermediate_size=I,
        shared_expert_intermediate_size=shared,
        num_experts=E,
        num_experts_per_tok=k,
        norm_topk_prob=norm,
    )
    return randomize(Qwen2MoeSparseMoeBlock(cfg), seed)


def deepseek(E, k, n_group, topk_group, H=16, I=12, n_shared=2, scale=2.5, seed=0):
    cfg = DeepseekV3Config(
        hidden_size=H,
        moe_intermediate_size=I,
        n_routed_experts=E,
        n_shared_experts=n_shared,
        num_experts_per_tok=k,
        n_group=n_group,
        topk_group=topk_group,
        routed_scaling_factor=scale,
    )
    return randomize(DeepseekV3MoE(cfg), seed)


def qwen3(E, k, norm=True, seed=0):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = Qwen3MoeConfig(
        hidden_size=16, moe_intermediate_size=8, num_experts=E, num_experts_per_tok=k, norm_topk_prob=norm
    )
    return randomize(Qwen3MoeSparseMoeBlock(cfg), seed)


def olmoe(E, k, seed=0):
    from transformers import OlmoeConfig
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

    cfg = OlmoeConfig(hidden_size=16, intermediate_size=8, num_experts=E, num_experts_per_tok=k, norm_topk_prob=False)
    return randomize(OlmoeSparseMoeBlock(cfg), seed)


BLOCKS = {
    "mixtral E8 k2": lambda: mixtral(8, 2),
    "mixtral E4 k1": lambda: mixtral(4, 1),
    "mixtral E5 k5 (k=E, odd E)": lambda: mixtral(5, 5),
    "mixtral E16 k4": lambda: mixtral(16, 4, H=32, I=8),
    "qwen2 E6 k3 no-renorm": lambda: qwen2(6, 3),
    "qwen2 E7 k1 renorm": lambda: qwen2(7, 1, norm=True, shared=8),
    "qwen2 E16 k16": lambda: qwen2(16, 16, H=8, I=4),
    "deepseek E16 k4 g4/2": lambda: deepseek(16, 4, 4, 2),
    "deepseek E8 k1 g1": lambda: deepseek(8, 1, 1, 1, n_shared=1, scale=1.0),
    "deepseek E16 k8 g8/4": lambda: deepseek(16, 8, 8, 4, H=24, I=4),
    "qwen3 E8 k2": lambda: qwen3(8, 2),
    "olmoe E8 k2": lambda: olmoe(8, 2),
}


@pytest.mark.parametrize("name", list(BLOCKS))
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_from_hf_matches_transformers(name, dispatch):
    block = BLOCKS[name]().eval()
    layer = MoELayer.from_hf(block, dispatch=dispatch)
    x = torch.randn(2, 9, block.experts.gate_up_proj.shape[-1], generator=torch.Generator().manual_seed(1))
    y, aux = layer(x)
    with torch.no_grad():
        expected = block(x.clone())
    assert y.shape == x.shape
    assert (y - expected).abs().max() <= 1e-5
    assert aux["router_logits"].shape == (18, layer.num_experts)


@pytest.mark.parametrize("name", ["mixtral E8 k2", "qwen2 E6 k3 no-renorm", "deepseek E16 k4 g4/2"])
def test_from_hf_matches_in_training_mode_with_gradients(name):
    block = BLOCKS[name]().train()
    layer = MoELayer.from_hf(block)
    assert layer.training
    x = torch.randn(3, 5, block.experts.gate_up_proj.shape[-1], generator=torch.Generator().manual_seed(2))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, _ = layer(x1)
    expected = block(x2)
    assert (y - expected).abs().max() <= 1e-5
    (y.square().sum()).backward()
    (expected.square().sum()).backward()
    assert (x1.grad - x2.grad).abs().max() <= 1e-4
    assert (layer.router.weight.grad - block.gate.weight.grad).abs().max() <= 1e-4
    assert (layer.gate_up_proj.grad - block.experts.gate_up_proj.grad).abs().max() <= 1e-4


def test_routing_indices_match_transformers_router():
    block = deepseek(16, 4, 4, 2).eval()
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(3))
    _, hf_weight, hf_idx = block.gate(x)
    layer = MoELayer.from_hf(block)
    _, aux = layer(x)
    ours = torch.sort(aux["topk_idx"], dim=-1)
    theirs = torch.sort(hf_idx, dim=-1)
    assert torch.equal(ours.values, theirs.values)  # the same experts (transformers does not sort them)
    assert torch.allclose(aux["topk_weight"].gather(1, ours.indices), hf_weight.gather(1, theirs.indices), atol=1e-6)


def test_selection_bias_changes_choice_not_weights():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    bias = torch.tensor([0.0, 0.0, 0.0, 5.0])
    w, idx = moe.route(logits, 1, score_func="sigmoid", norm_topk_prob=False, bias=bias)
    assert idx.item() == 3  # the bias wins the choice ...
    assert math.isclose(w.item(), torch.sigmoid(torch.tensor(-1.0)).item(), rel_tol=1e-6)  # ... but not the weight


def test_softmax_topk_renormalised_equals_softmax_over_topk_logits():
    logits = torch.randn(50, 8, generator=torch.Generator().manual_seed(4))
    w, idx = moe.route(logits, 3)
    assert torch.allclose(w, logits.gather(1, idx).softmax(-1), atol=1e-6)
    w_raw, _ = moe.route(logits, 3, norm_topk_prob=False)
    assert (w_raw.sum(-1) < 1).all() and torch.allclose(w.sum(-1), torch.ones(50))


# ---------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("E,k", [(8, 2), (5, 1), (16, 4), (4, 4)])
def test_load_balancing_loss_equals_transformers(E, k):
    logits = torch.randn(37, E, generator=torch.Generator().manual_seed(E + k))
    ours = moe.load_balancing_loss(logits, E, k)
    theirs = load_balancing_loss_func((logits,), E, k)
    assert torch.allclose(ours, theirs, atol=1e-6)
    two = (logits, logits.flip(0) * 2)  # several layers are pooled, as in transformers
    assert torch.allclose(moe.load_balancing_loss(two, E, k), load_balancing_loss_func(two, E, k), atol=1e-6)


@pytest.mark.parametrize("E,k,layers", [(4, 1, 1), (8, 2, 3), (6, 3, 2)])
def test_load_balancing_loss_with_a_padding_mask_equals_transformers(E, k, layers):
    g = torch.Generator().manual_seed(E * 10 + k)
    B, S = 3, 5
    logits = tuple(torch.randn(B * S, E, generator=g) for _ in range(layers))
    mask = torch.ones(B, S, dtype=torch.long)
    mask[0, 3:], mask[2, :2] = 0, 0  # right- and left-padding
    ours = moe.load_balancing_loss(logits, E, k, attention_mask=mask)
    assert torch.allclose(ours, load_balancing_loss_func(logits, E, k, mask), atol=1e-6)
    # padding really is left out: the loss equals the loss on real tokens only, and differs from the unmasked one
    real = tuple(t[mask.reshape(-1).bool()] for t in logits)
    assert torch.allclose(ours, moe.load_balancing_loss(real, E, k), atol=1e-6)
    assert not torch.allclose(ours, moe.load_balancing_loss(logits, E, k), atol=1e-6)


def test_load_balancing_loss_rejects_a_mask_that_does_not_fit():
    logits = torch.randn(10, 4)
    with pytest.raises(ValueError, match="attention_mask"):
        moe.load_balancing_loss(logits, 4, 2, attention_mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="attention_mask"):
        moe.load_balancing_loss(logits, 4, 2, attention_mask=torch.ones(10))
    with pytest.raises(ValueError, match="every token"):
        moe.load_balancing_loss(logits, 4, 2, attention_mask=torch.zeros(2, 5))


@pytest.mark.parametrize("E,k", [(8, 2), (4, 1), (6, 3)])
def test_load_balancing_loss_uniform_is_k_and_collapse_is_E(E, k):
    # Uniform: every expert gets the same share of tokens and probability mass → loss = k.
    T = E * 10
    logits = torch.full((T, E), -1e4)
    for t in range(T):  # token t prefers experts t, t+1, ... (mod E): perfectly balanced top-k
        for j in range(k):
            logits[t, (t + j) % E] = 10.0 - j * 1e-3
    uniform_probs_logits = torch.zeros(T, E) + torch.nn.functional.one_hot(torch.arange(T) % E, E) * 1e-4
    assert math.isclose(moe.load_balancing_loss(uniform_probs_logits, E, k).item(), k, rel_tol=1e-3)
    # Collapse: every token sends everything to the same k experts → loss = E.
    collapsed = torch.full((T, E), -1e4)
    collapsed[:, :k] = 10.0
    assert math.isclose(moe.load_balancing_loss(collapsed, E, k).item(), E, rel_tol=1e-3)


def test_router_z_loss_formula():
    logits = torch.randn(11, 6, generator=torch.Generator().manual_seed(5))
    expected = sum(torch.logsumexp(row, 0) ** 2 for row in logits) / 11
    assert torch.allclose(moe.router_z_loss(logits), expected, atol=1e-5)
    assert moe.router_z_loss(logits * 10) > moe.router_z_loss(logits)  # it penalises large logits


def test_aux_keys_and_losses():
    layer = MoELayer(16, 8, 4, 2, capacity_factor=1.0)
    y, aux = layer(torch.randn(5, 3, 16))
    assert set(aux) == {
        "router_logits",
        "topk_idx",
        "topk_weight",
        "tokens_per_expert",
        "dropped",
        "load_balancing_loss",
        "z_loss",
    }
    assert aux["router_logits"].shape == (15, 4) and aux["topk_idx"].shape == (15, 2)
    assert aux["dropped"].dtype == torch.bool and aux["dropped"].shape == (15, 2)
    assert aux["tokens_per_expert"].sum() == (~aux["dropped"]).sum()
    assert torch.allclose(aux["load_balancing_loss"], moe.load_balancing_loss(aux["router_logits"], 4, 2))
    assert torch.allclose(aux["z_loss"], moe.router_z_loss(aux["router_logits"]))


# ---------------------------------------------------------------------------------------------- capacity
def test_capacity_formula():
    assert moe.expert_capacity(10, 2, 8, 1.0) == 3  # ceil(2.5)
    assert moe.expert_capacity(16, 2, 8, 1.25) == 5
    with pytest.raises(ValueError, match="capacity_factor"):
        moe.expert_capacity(10, 2, 8, 0.0)


def test_first_choices_before_second_choices():
    # Expert 0 has room for 2. Tokens 0 and 1 want it as 2nd choice, tokens 2 and 3 as 1st choice.
    idx = torch.tensor([[1, 0], [2, 0], [0, 1], [0, 2]])
    keep = moe.apply_capacity(idx, 3, capacity=2)
    assert keep[2, 0] and keep[3, 0]  # first choices win ...
    assert not keep[0, 1] and not keep[1, 1]  # ... over earlier tokens' second choices
    idx = torch.tensor([[0], [0], [0]])
    assert moe.apply_capacity(idx, 2, capacity=2).view(-1).tolist() == [True, True, False]  # position priority


@pytest.mark.parametrize("dispatch", DISPATCH)
@pytest.mark.parametrize("cf", [0.25, 0.5, 1.0, 2.0])
def test_capacity_never_exceeded_and_dropped_slots_contribute_zero(dispatch, cf):
    torch.manual_seed(0)
    layer = MoELayer(16, 12, 4, 2, capacity_factor=cf, dispatch=dispatch)
    with torch.no_grad():
        layer.router.weight.mul_(5)  # a skewed router, so that some experts overflow
    x = torch.randn(40, 16)
    y, aux = layer(x)
    cap = moe.expert_capacity(40, 2, 4, cf)
    assert (aux["tokens_per_expert"] <= cap).all()
    keep = ~aux["dropped"]
    expected = moe.dispatch_per_token(
        x, aux["topk_idx"], aux["topk_weight"] * keep, layer.gate_up_proj, layer.down_proj
    )
    assert torch.allclose(y, expected, atol=1e-5)
    if cf <= 0.5:
        assert aux["dropped"].any()
        fully_dropped = aux["dropped"].all(-1)
        assert fully_dropped.any() and (y[fully_dropped] == 0).all()  # nothing added: the residual carries it


@pytest.mark.parametrize("T,E,k", [(1, 4, 1), (7, 5, 2), (30, 8, 3), (3, 16, 16), (0, 4, 2)])
def test_dispatch_variants_agree(T, E, k):
    g = torch.Generator().manual_seed(T + E)
    x = torch.randn(T, 8, generator=g)
    w_gate_up, w_down = torch.randn(E, 24, 8, generator=g), torch.randn(E, 8, 12, generator=g)
    weight, idx = moe.route(torch.randn(T, E, generator=g), k)
    keep = torch.rand(T, k, generator=g) > 0.3
    for kp in (None, keep):
        ref = moe.dispatch_per_token(x, idx, weight, w_gate_up, w_down, kp)
        for name, fn in moe.DISPATCHERS.items():
            assert torch.allclose(fn(x, idx, weight, w_gate_up, w_down, kp), ref, atol=1e-4), name


def test_grouped_mm_falls_back_on_unaligned_widths():
    layer = MoELayer(10, 6, 3, 2, dispatch="grouped_mm")  # 10 floats = 40 bytes: not 16-byte aligned
    x = torch.randn(7, 10)
    ref = MoELayer(10, 6, 3, 2, dispatch="per_token")
    ref.load_state_dict(layer.state_dict())
    assert torch.allclose(layer(x)[0], ref(x)[0], atol=1e-5)


# ---------------------------------------------------------------------------------------------- gradients, options
def test_gradients_flow_to_router_through_combine_weights():
    torch.manual_seed(0)
    layer = MoELayer(16, 8, 4, 2)
    y, _ = layer(torch.randn(10, 16))
    y.pow(2).sum().backward()  # no auxiliary loss: the only path to the router is the combine weights
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def test_top1_renormalised_router_gets_no_gradient():
    # With k=1 and renormalisation the weight is always exactly 1: the router cannot learn from the task loss.
    layer = MoELayer(16, 8, 4, 1)
    y, _ = layer(torch.randn(10, 16))
    y.pow(2).sum().backward()
    assert layer.router.weight.grad.abs().max() < 1e-6


def test_noise_and_jitter_only_in_training():
    torch.manual_seed(0)
    layer = MoELayer(16, 8, 8, 2, noisy_gating=True, router_jitter=0.1)
    x = torch.randn(50, 16)
    layer.eval()
    a, b = layer(x)[1]["router_logits"], layer(x)[1]["router_logits"]
    assert torch.equal(a, b)
    layer.train()
    c = layer(x)[1]["router_logits"]
    assert not torch.allclose(a, c)


def test_expert_bias_update_moves_towards_balance():
    layer = MoELayer(8, 4, 4, 1)
    layer.update_expert_bias(torch.tensor([10, 0, 5, 5]), gamma=0.1)
    assert torch.allclose(layer.expert_bias, torch.tensor([-0.1, 0.1, 0.0, 0.0]))
    assert not layer.expert_bias.requires_grad and "expert_bias" in dict(layer.named_buffers())


def test_param_counts():
    layer = MoELayer(16, 8, 4, 2)
    per_expert = 3 * 16 * 8
    assert layer.param_counts() == {"total": 4 * 16 + 4 * per_expert, "active": 4 * 16 + 2 * per_expert}
    assert layer.param_counts()["total"] == sum(p.numel() for p in layer.parameters())
    shared = MoELayer(16, 8, 4, 2, num_shared_experts=2, shared_expert_gate=True)
    counts = shared.param_counts()
    assert counts["total"] == sum(p.numel() for p in shared.parameters())
    assert counts["total"] - counts["active"] == 2 * per_expert
    assert counts["active"] == 4 * 16 + 2 * per_expert + 3 * 16 * 16 + 16


def test_accepts_any_leading_shape():
    layer = MoELayer(8, 4, 4, 2)
    assert layer(torch.randn(8))[0].shape == (8,)
    assert layer(torch.randn(2, 3, 4, 8))[0].shape == (2, 3, 4, 8)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(top_k=0), "top_k"),
        (dict(top_k=9), "top_k"),
        (dict(num_experts=0, top_k=1), "num_experts"),
        (dict(capacity_factor=0), "capacity_factor"),
        (dict(capacity_factor=-1.5), "capacity_factor"),
        (dict(n_group=3), "n_group"),
        (dict(score_func="relu"), "score_func"),
        (dict(dispatch="magic"), "dispatch"),
        (dict(topk_group=5, n_group=4), "topk_group"),
        (dict(n_group=4, topk_group=1, top_k=3), "top_k"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(d_model=8, d_ff=4, num_experts=8, top_k=2) | kwargs
    with pytest.raises(ValueError, match=match):
        MoELayer(args.pop("d_model"), args.pop("d_ff"), args.pop("num_experts"), args.pop("top_k"), **args)


def test_bad_input_width():
    with pytest.raises(ValueError, match=r"d_model=8"):
        MoELayer(8, 4, 4, 2)(torch.randn(3, 7))


def test_from_hf_rejects_non_moe_block():
    with pytest.raises(TypeError, match="MoE block"):
        MoELayer.from_hf(torch.nn.Linear(3, 3))


# ---------------------------------------------------------------------------------------------- public configs
def test_public_config_counts_match_reported_numbers():
    for name, cfg in moe.load_public_configs().items():
        counts = moe.transformer_param_counts(cfg)
        rep = cfg["reported"]
        assert abs(counts["total"] / rep["total"] - 1) < 0.01, name
        assert abs(counts["active"] / rep["active"] - 1) < 0.03, name
        assert rep["source"] and cfg["source"].startswith("https://")


def test_expert_choice_routing_balances_by_construction():
    logits = torch.randn(12, 4, generator=torch.Generator().manual_seed(6))
    weight, token_idx = moe.expert_choice_routing(logits, capacity=6)
    assert weight.shape == token_idx.shape == (4, 6)
    for e in range(4):  # expert e took its 6 highest-affinity tokens
        best = logits.softmax(-1)[:, e].topk(6).indices
        assert set(token_idx[e].tolist()) == set(best.tolist())


def test_grouped_mm_probe_works_under_no_grad_and_keeps_the_seed(monkeypatch):
    # The first caller may be inside torch.no_grad() (inference); the probe needs autograd and must not
    # consume the global random stream that seeded notebooks rely on.
    monkeypatch.setattr(moe, "_GROUPED_MM", None)
    outside = moe.grouped_mm_available()
    monkeypatch.setattr(moe, "_GROUPED_MM", None)
    torch.manual_seed(0)
    with torch.no_grad():
        inside = moe.grouped_mm_available()
    after = torch.rand(3)
    torch.manual_seed(0)
    assert inside == outside and torch.equal(after, torch.rand(3))


# ---------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("name", list(BLOCKS))
def test_from_hf_is_exact_in_float64_with_the_default_dispatcher(name):
    # grouped_mm takes no float64: the default dispatcher must fall back, not crash; parity to round-off of float64
    block = BLOCKS[name]().eval().double()
    layer = MoELayer.from_hf(block)
    assert layer.gate_up_proj.dtype == torch.float64
    x = torch.randn(
        2, 9, block.experts.gate_up_proj.shape[-1], generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    y, _ = layer(x)
    with torch.no_grad():
        expected = block(x.clone())
    assert y.dtype == torch.float64 and (y - expected).abs().max() <= 1e-12


def test_deepseek_routes_like_transformers_in_bfloat16():
    # transformers computes DeepSeek-V3's router logits in float32 whatever the model dtype; so must we, or bf16
    # rounding of the logits alone sends some tokens to other experts
    differ = 0
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        E, groups = (16, 4) if seed % 2 else (8, 2)
        block = deepseek(E, 4, groups, 2, H=32, seed=seed).eval().to(torch.bfloat16)
        layer = MoELayer.from_hf(block)
        x = torch.randn(64, 32, generator=g).to(torch.bfloat16)
        with torch.no_grad():
            ours = layer(x)[1]["topk_idx"].sort(dim=-1).values
            theirs = block.gate(x)[2].sort(dim=-1).values  # (router_logits, topk_weights, topk_indices)
        assert layer.router_logits(x).dtype == torch.float32
        differ += int((ours != theirs).any(dim=-1).sum())
    assert differ == 0, f"{differ} tokens routed differently"


def test_routed_scaling_factor_and_capacity_must_be_finite():
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="routed_scaling_factor"):
            MoELayer(8, 8, 4, 2, routed_scaling_factor=bad)
        with pytest.raises(ValueError, match="capacity_factor"):
            MoELayer(8, 8, 4, 2, capacity_factor=bad)


# ---------------------------------------------------------------------------------------------- the one config
# A value other than the default for every MoEConfig field (with what it needs to be valid). A new option must be
# added here: the tests below then show that the layer, the model's Block, the expert-parallel shard, the workers'
# spec and from_hf all see it (and route as the layer does) — a place that drops it fails here.
NON_DEFAULT = {
    "num_experts": dict(num_experts=16),
    "top_k": dict(top_k=3),
    "score_func": dict(score_func="sigmoid"),
    "norm_topk_prob": dict(norm_topk_prob=False),
    "n_group": dict(n_group=4),
    "topk_group": dict(n_group=4, topk_group=2),
    "routed_scaling_factor": dict(routed_scaling_factor=2.5),
    "router_fp32": dict(router_fp32=True),
    "router_jitter": dict(router_jitter=0.2),
    "noisy_gating": dict(noisy_gating=True),
    "capacity_factor": dict(capacity_factor=0.5),
    "num_shared_experts": dict(num_shared_experts=1),
    "shared_d_ff": dict(num_shared_experts=1, shared_d_ff=24),
    "shared_expert_gate": dict(num_shared_experts=1, shared_expert_gate=True),
    "dispatch": dict(dispatch="per_expert"),
}
BASE = moe.MoEConfig(num_experts=8, top_k=2)


def test_every_option_has_a_non_default_value_in_these_tests():
    missing = {f.name for f in fields(moe.MoEConfig)} - set(NON_DEFAULT)
    assert not missing, f"add a non-default value for {sorted(missing)} to NON_DEFAULT (tests/test_moe.py)"
    for name, changes in NON_DEFAULT.items():
        assert getattr(replace(BASE, **changes), name) != getattr(BASE, name), name


@pytest.fixture(scope="module")
def one_rank_group():
    """A one-process gloo group, so that ExpertParallelMoE.forward (all-to-alls included) runs in this process."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _routes_like_the_layer(layer, shard, x) -> bool:
    """The shard's routing equals the layer's, in both modes (jitter and noise drawn from the same seed)."""
    for training in (False, True):
        layer.train(training), shard.train(training)
        torch.manual_seed(0)
        want = layer.select_experts(x)
        torch.manual_seed(0)
        got = shard.select_experts(x)
        if not all(torch.equal(a, b) for a, b in zip(want, got)):
            return False
    layer.eval(), shard.eval()
    return True


@pytest.mark.parametrize("option", list(NON_DEFAULT))
def test_an_option_reaches_every_reader_of_the_config(option, one_rank_group, tmp_path):
    config = replace(BASE, **NON_DEFAULT[option])
    x = torch.randn(13, 16, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(0)
    layer = MoELayer(16, 32, config).eval()
    with torch.no_grad():
        layer.router.weight.mul_(3)
        layer.expert_bias.normal_(0.0, 0.3)  # the selection bias travels too
    assert layer.config is config
    # the model: Block passes the config whole, from a MoEConfig or from the dict a checkpoint stores
    for moe_value in (config, config.to_dict()):
        gpt_cfg = GPTConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, ffn="moe", moe=moe_value)
        assert GPT(gpt_cfg).blocks[0].ffn.config == config
    # the workers of run_expert_parallel rebuild the layer from a saved spec
    torch.save(distributed._spec(layer, x), tmp_path / "spec.pt")
    rebuilt = distributed._layer_from_spec(torch.load(tmp_path / "spec.pt", weights_only=True))
    assert rebuilt.config == config and not rebuilt.training
    with torch.no_grad():
        want = layer(x)[0]
        assert torch.equal(rebuilt(x)[0], want)
    # expert parallelism: refused loudly where unsupported, else it routes and computes as the layer does
    if config.capacity_factor is not None or config.num_shared_experts:
        with pytest.raises(ValueError, match="capacity_factor and shared experts"):
            distributed.ExpertParallelMoE(layer, 0, 2)
        with pytest.raises(ValueError, match="capacity_factor and shared experts"):
            distributed.simulate_expert_parallel(layer, x, 2, distributed.dispatch_plan)
    else:
        assert _routes_like_the_layer(layer, distributed.ExpertParallelMoE(layer, 1, 2), x)
        with torch.no_grad():
            got = distributed.simulate_expert_parallel(layer, x, 2, distributed.dispatch_plan)
            one_rank = distributed.ExpertParallelMoE(layer, 0, 1)(x)[0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(one_rank, want, atol=1e-5, rtol=1e-5)
    # from_hf: an option overrides what the block says, except those the block's weights decide
    changes = NON_DEFAULT[option]
    if set(changes) & moe._WEIGHT_SHAPING:
        with pytest.raises(ValueError, match="from the block's weights"):
            MoELayer.from_hf(mixtral(8, 2), **changes)
    else:
        assert MoELayer.from_hf(mixtral(8, 2), **changes).config == config


def test_the_check_catches_a_shard_that_routes_the_old_way(monkeypatch):
    # Before the config was passed whole, the shard routed with hand-copied fields (and simulate with none):
    # routing with the defaults must fail the comparison above for every option that changes the routing.
    def old_way(self, x):
        logits = self.router(x)
        return (logits, *moe.route(logits, self.config.top_k))

    monkeypatch.setattr(distributed.ExpertParallelMoE, "select_experts", old_way)
    x = torch.randn(13, 16, generator=torch.Generator().manual_seed(7))
    for option in ("score_func", "norm_topk_prob", "n_group", "routed_scaling_factor", "noisy_gating"):
        torch.manual_seed(0)
        layer = MoELayer(16, 32, replace(BASE, **NON_DEFAULT[option])).eval()
        with torch.no_grad():
            layer.router.weight.mul_(3)
        assert not _routes_like_the_layer(layer, distributed.ExpertParallelMoE(layer, 0, 2), x), option


def test_the_short_forms_build_the_same_config():
    config = moe.MoEConfig(8, 2, score_func="sigmoid", routed_scaling_factor=2.5)
    for layer in (
        MoELayer(16, 32, config),
        MoELayer(16, 32, 8, 2, score_func="sigmoid", routed_scaling_factor=2.5),  # chapter 4's form
        MoELayer(d_model=16, d_ff=32, num_experts=8, top_k=2, score_func="sigmoid", routed_scaling_factor=2.5),
        MoELayer(16, 32, **config),  # the config read as a mapping
    ):
        assert layer.config == config and (layer.num_experts, layer.top_k) == (8, 2)
    logits = torch.randn(5, 8, generator=torch.Generator().manual_seed(8))
    want = moe.route(logits, config)
    for got in (
        moe.route(logits, 2, score_func="sigmoid", routed_scaling_factor=2.5),
        moe.route(logits, top_k=2, score_func="sigmoid", routed_scaling_factor=2.5),
    ):
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(TypeError, match="not both"):
        MoELayer(16, 32, config, norm_topk_prob=False)
    with pytest.raises(TypeError, match="not both"):
        moe.route(logits, config, top_k=3)
    with pytest.raises(TypeError, match="num_experts twice"):
        MoELayer(16, 32, 8, 2, num_experts=8)
    with pytest.raises(TypeError, match="top_k twice"):
        moe.route(logits, 2, top_k=2)
    with pytest.raises(ValueError, match="needs num_experts and top_k"):
        moe.route(logits)
    with pytest.raises(ValueError, match="config.num_experts is 4"):
        moe.route(logits, moe.MoEConfig(4, 2))
    with pytest.raises(ValueError, match="unknown MoE options"):
        MoELayer(16, 32, 8, 2, bogus_option=2.0)


def test_the_config_is_frozen_and_the_layer_keeps_no_copies_of_it():
    layer = MoELayer(16, 32, 8, 2, capacity_factor=1.0)
    with pytest.raises(FrozenInstanceError):
        layer.config.top_k = 3
    copies = set(vars(layer)) & {f.name for f in fields(moe.MoEConfig)}
    assert not copies, f"MoELayer copies config fields onto self: {sorted(copies)}"
    with pytest.raises(AttributeError):
        layer.top_k = 3  # read-only views of the config
    with pytest.raises(ValueError, match="from the block's weights"):
        MoELayer.from_hf(mixtral(8, 2), num_experts=4)
