"""Checks for Chapter 5's lab: a tiny MoE language model (solutions/05_moe_lm_lab.ipynb).

Each check compares the learner's function with the reference in :mod:`course_utils.moe_lm` (or
:mod:`course_utils.distributed`) on several inputs, hand-built edge cases included: an uneven expert load (where the
chance rate is not 1/E), a label with no tokens, a dense model with no MoE layers, a rank that receives nothing.
The open exercise's check (:func:`check_beat_moe_recipe`) judges an outcome: a lower validation loss than the
lab's MoE recipe at equal active parameters and equal training tokens.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from .. import moe_lm
from ..data import corpus_dataset
from ..distributed import dispatch_plan, simulate_expert_parallel  # re-exported: tests import it here
from ..model import GPT, GPTConfig
from ..moe import MoELayer, load_balancing_loss, router_z_loss
from ..train import configure_optimizer, evaluate, lr_at, train_step
from ._core import CountingData, call, compare, exercise, fail, fail_if_not_train_only, passed

__all__ = [
    "check_swap_ffn_for_moe",
    "check_add_aux_loss",
    "check_routing_stats",
    "check_consecutive_same_expert_rate",
    "check_expert_parallel_dispatch",
    "check_beat_moe_recipe",
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ swap_ffn_for_moe
@exercise("5.1")
def check_swap_ffn_for_moe(swap_ffn_for_moe) -> None:
    """``swap_ffn_for_moe(config, num_experts, top_k) -> GPTConfig`` with equal active FFN parameters."""
    name = "check_swap_ffn_for_moe"
    cases = [
        (GPTConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=96), 8, 2),
        (GPTConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, d_ff=96), 4, 1),
        (GPTConfig(vocab_size=80, d_model=16, n_layers=3, n_heads=2, d_ff=48, max_seq_len=32), 6, 3),
    ]
    hint = (
        "keep every field of the dense config, set ffn='moe', moe=dict(num_experts=..., top_k=...), and make each "
        "expert d_ff / top_k wide: a token then runs through top_k · d_ff/top_k = d_ff FFN units, like the "
        "dense model"
    )
    for config, E, k in cases:
        inputs = {"config": config, "num_experts": E, "top_k": k}
        before, expected = asdict(config), moe_lm.moe_config(config, E, k)
        got = call(name, swap_ffn_for_moe, config, E, k, inputs=inputs)
        if not isinstance(got, GPTConfig):
            fail(name, f"expected a GPTConfig, got {type(got).__name__}", inputs=inputs, hint=hint)
        got_fields, exp_fields = asdict(got), asdict(expected)
        got_fields["moe"] = {key: got.moe.get(key) for key in ("num_experts", "top_k")}
        exp_fields["moe"] = {key: expected.moe[key] for key in ("num_experts", "top_k")}
        compare(name, got_fields, exp_fields, what="config", inputs=inputs, hint=hint)
        if asdict(config) != before:
            fail(
                name,
                "your function changed the config it was given (it must return a new one)",
                inputs=inputs,
                hint="use dataclasses.replace(config, ...) instead of assigning to config's fields",
            )
        dense_active = GPT(config).param_counts()["active"]
        moe_active = GPT(got).param_counts()["active"]
        router = config.n_layers * config.d_model * E
        compare(
            name,
            moe_active - router,
            dense_active,
            what="active parameters minus the routers",
            inputs=inputs,
            hint=hint,
        )
    passed(name, len(cases), "equal active parameters")


# ------------------------------------------------------------------------------------------------ add_aux_loss
def _aux_case(n_layers: int, tokens: int, E: int, k: int, seed: int):
    g = _gen(seed)
    logits = [(torch.randn(tokens, E, generator=g) * 2).requires_grad_() for _ in range(n_layers)]
    aux = [
        {"router_logits": l, "load_balancing_loss": load_balancing_loss(l, E, k), "z_loss": router_z_loss(l)}
        for l in logits
    ]
    lm_loss = (torch.rand((), generator=g) + 2).requires_grad_()
    return lm_loss, aux, logits


@exercise("5.2")
def check_add_aux_loss(add_aux_loss) -> None:
    """``add_aux_loss(lm_loss, moe_aux, aux_loss_coef) -> total``: lm_loss + coef · mean over layers of the
    balancing loss."""
    name = "check_add_aux_loss"
    cases = [(3, 10, 8, 2, 0.01, 0), (1, 7, 4, 1, 0.5, 1), (2, 12, 6, 3, 0.0, 2), (0, 5, 4, 2, 0.01, 3)]
    hint = (
        "total = lm_loss + aux_loss_coef * mean over layers of aux['load_balancing_loss']; keep it a tensor "
        "(no .item()) so that the gradient reaches the routers"
    )
    for n_layers, T, E, k, coef, seed in cases:
        lm_loss, aux, logits = _aux_case(n_layers, T, E, k, seed)
        inputs = {"lm_loss": lm_loss, "n_layers": n_layers, "aux_loss_coef": coef}
        got = call(name, add_aux_loss, lm_loss, aux, coef, inputs=inputs)
        if not isinstance(got, torch.Tensor):
            fail(name, f"expected a tensor, got {type(got).__name__}", inputs=inputs, hint=hint)
        expected = moe_lm.moe_training_loss(lm_loss, aux, coef)
        compare(name, float(got.detach()), float(expected.detach()), what="total loss", inputs=inputs, hint=hint)
        if coef > 0 and n_layers:
            if not got.requires_grad:
                fail(name, "the total loss has no gradient", inputs=inputs, hint=hint)
            grads = torch.autograd.grad(got, logits, allow_unused=True)
            if any(g is None or not torch.isfinite(g).all() or g.abs().sum() == 0 for g in grads):
                fail(name, "no gradient reaches the router logits of every layer", inputs=inputs, hint=hint)
    passed(name, len(cases), "value and gradient")


# ------------------------------------------------------------------------------------------------ routing_stats
def _routing_cases():
    # 5 tokens, 3 labels, 4 experts, top-2; label 2 has no tokens (its row must be zeros)
    hand = (torch.tensor([[0, 1], [0, 2], [3, 0], [1, 0], [2, 3]]), torch.tensor([0, 0, 0, 1, 1]), 3, 4)
    top1 = (torch.tensor([2, 2, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 1, 0, 0]), 2, 3)
    g = _gen(7)
    rand = (torch.randint(0, 8, (200, 2), generator=g), torch.randint(0, 5, (200,), generator=g), 5, 8)
    return [hand, top1, rand]


@exercise("5.3")
def check_routing_stats(routing_stats) -> None:
    """``routing_stats(expert_idx [N] or [N, k], labels [N], num_labels, num_experts) -> [num_labels, num_experts]``."""
    name = "check_routing_stats"
    cases = _routing_cases()
    hint = (
        "count the token-slots of each (label, expert) pair — all k choices of a token count — then divide each "
        "ROW by its sum: row l answers 'where did label l's tokens go?'. A label with no tokens gets zeros"
    )
    for expert_idx, labels, L, E in cases:
        inputs = {"expert_idx": expert_idx, "labels": labels, "num_labels": L, "num_experts": E}
        got = call(name, routing_stats, expert_idx.clone(), labels.clone(), L, E, inputs=inputs)
        expected = moe_lm.routing_stats(expert_idx, labels, L, E)
        if not isinstance(got, torch.Tensor):
            got = torch.as_tensor(got)
        compare(name, got.double(), expected, what="table", inputs=inputs, hint=hint)
    passed(name, len(cases), "rows are labels and sum to 1")


# ------------------------------------------------------------------------------------------------ consecutive rate
@exercise("5.4")
def check_consecutive_same_expert_rate(consecutive_same_expert_rate) -> None:
    """``consecutive_same_expert_rate(expert_ids [B, T], num_experts) -> (rate, chance)``."""
    name = "check_consecutive_same_expert_rate"
    g = _gen(11)
    cases = [
        torch.tensor([[0, 0, 0, 1, 1, 0]]),  # uneven load: chance = (4/6)² + (2/6)² = 5/9, not 1/E
        torch.tensor([[2, 2, 2], [3, 3, 3]]),  # every within-row pair repeats; the boundary 2|3 is not a pair
        torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]]),
        torch.randint(0, 8, (4, 50), generator=g),
    ]
    E_of = [4, 4, 2, 8]
    hint = (
        "rate: compare e[:, 1:] with e[:, :-1] inside each row (a row's last token and the next row's first are "
        "not neighbours); chance: with p_e = share of all tokens on expert e, two independent draws agree with "
        "probability Σ p_e² (1/E only for a perfectly even load)"
    )
    for e, E in zip(cases, E_of):
        inputs = {"expert_ids": e, "num_experts": E}
        got = call(name, consecutive_same_expert_rate, e.clone(), E, inputs=inputs)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            fail(name, f"expected a pair (rate, chance), got {type(got).__name__}", inputs=inputs, hint=hint)
        rate, chance = moe_lm.consecutive_same_expert_rate(e, E)
        compare(name, float(got[0]), rate, what="rate", inputs=inputs, hint=hint)
        compare(name, float(got[1]), chance, what="chance rate", inputs=inputs, hint=hint)
    passed(name, len(cases))


# ------------------------------------------------------------------------------------------------ expert parallel
@exercise("5.5")
def check_expert_parallel_dispatch(expert_parallel_dispatch) -> None:
    """``expert_parallel_dispatch(topk_idx [T, k], num_experts, world_size) -> (order [T·k], send_counts [W])``."""
    name = "check_expert_parallel_dispatch"
    hint = (
        "rank r owns experts r·E/W … (r+1)·E/W − 1; send_counts[r] = number of token-slots whose expert lives on "
        "rank r (length world_size); order = the flat slots t·k + j sorted so that all slots for rank 0 come "
        "first, then rank 1, ... (argsort of the expert ids does it)"
    )
    hand = torch.tensor([[5, 0], [1, 7], [4, 2]])
    cases = [
        (hand, 8, 2),
        (torch.tensor([[0, 1], [2, 3], [1, 0]]), 8, 2),  # rank 1 receives nothing
        (torch.randint(0, 6, (9, 1), generator=_gen(3)), 6, 3),
        (hand, 8, 1),
    ]
    for idx, E, W in cases:
        inputs = {"topk_idx": idx, "num_experts": E, "world_size": W}
        got = call(name, expert_parallel_dispatch, idx.clone(), E, W, inputs=inputs)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            fail(name, f"expected a pair (order, send_counts), got {type(got).__name__}", inputs=inputs, hint=hint)
        order, counts = (torch.as_tensor(t).long() for t in got)
        _, exp_counts = dispatch_plan(idx, E, W)
        compare(name, counts, exp_counts, what="send_counts", inputs=inputs, hint=hint)
        if sorted(order.tolist()) != list(range(idx.numel())):
            fail(
                name,
                f"order must be a permutation of the {idx.numel()} token-slots 0..T·k-1, got {order.tolist()}",
                inputs=inputs,
                hint=hint,
            )
        rank_of_slot = idx.reshape(-1)[order] // (E // W)
        if (rank_of_slot[1:] < rank_of_slot[:-1]).any():
            fail(
                name,
                f"the slots are not grouped by destination rank: ranks in your order are {rank_of_slot.tolist()}",
                inputs=inputs,
                hint=hint,
            )
    torch.manual_seed(0)
    layer = MoELayer(16, 24, 8, 2).eval()
    x = torch.randn(13, 16, generator=_gen(5))
    with torch.no_grad():
        expected, _ = layer(x)

        def plan(i, E, W):
            return tuple(torch.as_tensor(t).long() for t in expert_parallel_dispatch(i, E, W))

        got = simulate_expert_parallel(layer, x, 2, plan)
    compare(name, got, expected, what="layer output with your plan on 2 simulated ranks", atol=1e-5, hint=hint)
    passed(name, len(cases) + 1, "the simulated 2-rank layer equals the single-process layer")


# ------------------------------------------------------------------------------------------------ open: beat the recipe
# The lab's MoE recipe (Exercise 5.1's model, 8 experts, top-2), trained on a budget that fits the lab's minutes.
MOE_RECIPE = dict(steps=120, batch_size=8, block_size=64, lr=3e-3, warmup=20, aux_loss_coef=0.01)
MOE_TOKEN_BUDGET = MOE_RECIPE["steps"] * MOE_RECIPE["batch_size"] * MOE_RECIPE["block_size"]  # 61,440
# What reference_moe_recipe() reaches (20 validation batches of 16 x 64 tokens); tests/test_checks_ch05.py
# re-measures it, so this number cannot drift from the code.
MOE_RECIPE_VAL = 4.694
# The recipe's seed spread (seed s: torch.manual_seed(s) for the weights, a generator seeded s for the batches),
# measured on 2026-12-07 on a 2-core x86-64 machine: seeds 0-5 give 4.694, 4.456, 4.806, 4.513, 4.783, 4.601,
# a spread of 0.35 nats. The check's target sits below the best of them, so that the unchanged recipe fails on
# every seed tried; the check also fixes the seed it hands to the learner's function (MOE_CHECK_SEED).
MOE_TARGET = 4.40
MOE_CHECK_SEED = 0


def reference_moe_recipe(data, seed: int = 0) -> GPT:
    """Train the lab's MoE (``moe_lm.moe_config(moe_lm.BASE_CONFIG)``) with :data:`MOE_RECIPE`, from ``seed``."""

    r = MOE_RECIPE
    torch.manual_seed(seed)
    model = GPT(moe_lm.moe_config(moe_lm.BASE_CONFIG))
    opt = configure_optimizer(model, lr=r["lr"], weight_decay=0.1)
    gen = _gen(seed)
    for step in range(r["steps"]):
        x, y = data.get_batch("train", r["batch_size"], r["block_size"], gen)
        train_step(
            model,
            opt,
            x,
            y,
            lr_at(step, lr=r["lr"], warmup=r["warmup"], steps=r["steps"]),
            aux_loss_coef=r["aux_loss_coef"],
        )
    return model.eval()


def moe_val_loss(model, data) -> float:
    """The score of the open exercise: mean cross-entropy over 20 seeded validation batches of 16 x 64 tokens."""

    return evaluate(model, data, "val", iters=20, batch_size=16, block_size=min(64, model.config.max_seq_len))


def _active_outside_routers(model: GPT) -> int:
    """Active parameters per token, minus the routers' (which grow with the number of experts, a free choice)."""
    routers = sum(
        p.numel()
        for block in model.blocks
        if block.is_moe
        for m in (block.ffn.router, block.ffn.noise)
        if m is not None
        for p in m.parameters()
    )
    return model.param_counts()["active"] - routers


@exercise("5.6")
def check_beat_moe_recipe(train_moe, *, target: float = MOE_TARGET, token_budget: int = MOE_TOKEN_BUDGET) -> None:
    """Open exercise: ``train_moe(data, seed) -> GPT``, an MoE model with at most the recipe's active parameters,
    trained on at most ``token_budget`` training tokens from ``seed`` (fixed by the check), must reach a validation
    loss below ``target``: below the recipe's best seed, not just below its seed-0 number."""

    name = "check_beat_moe_recipe"
    data = CountingData(corpus_dataset())
    torch.manual_seed(MOE_CHECK_SEED)  # a function that draws from torch's global generator is reproducible too
    inputs = {"token_budget": token_budget, "seed": MOE_CHECK_SEED}
    model = call(name, train_moe, data, MOE_CHECK_SEED, inputs=inputs)
    if not isinstance(model, GPT):
        fail(name, f"expected train_moe to return a course_utils.model.GPT, got {type(model).__name__}")
    if not all(block.is_moe for block in model.blocks):
        fail(
            name,
            "every block's feed-forward layer must be a Mixture of Experts (GPTConfig(ffn='moe', ...))",
            hint="the exercise compares MoE recipes; start from swap_ffn_for_moe(dense_cfg, ...)",
        )
    limit = _active_outside_routers(GPT(moe_lm.moe_config(moe_lm.BASE_CONFIG)))
    active = _active_outside_routers(model)
    if active > limit:
        fail(
            name,
            f"your model has {active:,} active parameters per token outside the routers, the recipe's has {limit:,}",
            hint="more experts are free (total parameters and router weights do not count); wider "
            "experts, more experts per token or a wider model are not",
        )
    fail_if_not_train_only(name, data)
    if data.train_tokens == 0:
        fail(
            name,
            "no training tokens were drawn through data.get_batch('train', ...)",
            hint="train on batches from the data object you are given: that is how the budget is counted",
        )
    if data.train_tokens > token_budget:
        fail(
            name,
            f"{data.train_tokens:,} training tokens drawn, over the budget of {token_budget:,}",
            hint="steps × batch_size × block_size must stay within the budget",
        )
    val = moe_val_loss(model, data._data)
    summary = (
        f"validation loss {val:.3f} with {active:,} active parameters (outside the routers) and "
        f"{data.train_tokens:,} training tokens"
    )
    if not val < target:
        fail(
            name,
            f"{summary}: not below the target {target} (the recipe scores {MOE_RECIPE_VAL} with seed 0 and "
            f"4.456-4.806 over seeds 0-5: a win must be larger than luck)",
            hint="ideas: the schedule (how long the warm-up, how far the decay), batch size against number of "
            "steps, the balancing loss's weight, how many experts",
        )
    passed(name, 1, f"{summary} (target {target}; the recipe: {MOE_RECIPE_VAL} at seed 0, 4.456-4.806 over 6 seeds)")
