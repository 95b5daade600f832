"""Expert parallelism: 2 gloo processes on CPU give the single-process layer's output, and always shut down."""

import multiprocessing

import pytest
import torch

from course_utils.distributed import (
    ExpertParallelMoE,
    communication_bytes,
    dispatch_plan,
    expert_shards,
    run_expert_parallel,
)
from course_utils.moe import MoELayer


def test_expert_shards():
    assert expert_shards(8, 2) == [range(0, 4), range(4, 8)]
    assert expert_shards(6, 3) == [range(0, 2), range(2, 4), range(4, 6)]
    with pytest.raises(ValueError, match="divisible by world_size"):
        expert_shards(6, 4)
    with pytest.raises(ValueError, match="world_size"):
        expert_shards(8, 0)


def test_communication_volume_formula():
    # 2 ranks: half of the T·k slots leave, each carries d_model float32 values out and back
    assert communication_bytes(100, 2, 64, 2) == 2 * 100 * 2 * 64 * 4 / 2
    assert communication_bytes(100, 2, 64, 1) == 0


def test_rejects_unsupported_layers_and_bad_input():
    with pytest.raises(ValueError, match="capacity_factor"):
        ExpertParallelMoE(MoELayer(8, 16, 4, 2, capacity_factor=1.0), 0, 2)
    layer = MoELayer(8, 16, 4, 2)
    with pytest.raises(ValueError, match="d_model=8"):
        run_expert_parallel(layer, torch.randn(5, 7))
    with pytest.raises(ValueError, match="divisible"):
        run_expert_parallel(MoELayer(8, 16, 3, 1), torch.randn(6, 8))


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        dict(num_experts=8, top_k=2),
        dict(num_experts=8, top_k=3, score_func="sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5),
    ],
    ids=["mixtral-like", "deepseek-like"],
)
def test_two_processes_equal_one(options):
    torch.manual_seed(0)
    layer = MoELayer(32, 48, **options).eval()
    with torch.no_grad():
        layer.router.weight.mul_(3)  # a peaked router: uneven splits between the ranks
    x = torch.randn(41, 32)  # odd: the ranks get different numbers of tokens too
    with torch.no_grad():
        expected, _ = layer(x)
    y, stats = run_expert_parallel(layer, x, world_size=2)
    assert torch.allclose(y, expected, atol=1e-5), (y - expected).abs().max()
    sent = [s["sent_rows"] for s in stats.per_rank]
    received = [s["received_rows"] for s in stats.per_rank]
    assert [sum(r) for r in sent] == [21 * layer.top_k, 20 * layer.top_k]
    assert received == [[sent[0][0], sent[1][0]], [sent[0][1], sent[1][1]]]  # what r sends to s, s receives from r
    assert not multiprocessing.active_children()


@pytest.mark.slow
def test_workers_are_reaped_on_timeout():
    layer = MoELayer(16, 16, 4, 2)
    with pytest.raises(TimeoutError, match="did not finish"):
        run_expert_parallel(layer, torch.randn(8, 16), timeout_s=0.01)
    assert not multiprocessing.active_children()


def test_simulate_expert_parallel_matches_the_layer_and_rejects_a_wrong_plan():
    from course_utils.distributed import simulate_expert_parallel

    torch.manual_seed(0)
    layer = MoELayer(16, 24, 8, 2).eval()
    x = torch.randn(10, 16)
    with torch.no_grad():
        want, _ = layer(x)
        got = simulate_expert_parallel(layer, x, 2, dispatch_plan)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    def unsorted_plan(topk_idx, num_experts, world_size):  # slots in token order: ranks get foreign experts
        order, counts = dispatch_plan(topk_idx, num_experts, world_size)
        return torch.arange(order.numel()), counts

    with pytest.raises(RuntimeError, match="does not own"):
        simulate_expert_parallel(layer, x, 2, unsorted_plan)
