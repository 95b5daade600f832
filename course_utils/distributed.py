"""Expert parallelism on a real distributed engine (Chapter 5).

Each of ``world_size`` processes holds the router (replicated) and only ``num_experts / world_size`` experts.
A step, on every rank at once:

1. route the rank's own tokens (top-k) and sort the token-slots by the rank that owns their expert;
2. ``all_to_all_single`` the per-rank counts, then the token vectors themselves (uneven splits);
3. run the local experts on what arrived;
4. ``all_to_all_single`` the results back (the splits reversed), weight them and sum each token's k slots.

With gloo this runs on CPU processes; the same code runs on GPUs with NCCL under ``torchrun``. Workers started by
``torch.multiprocessing`` must be importable functions, so they live here and not in a notebook.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from .moe import MoEConfig, MoELayer, swiglu_expert
from .net import free_port
from .validate import check_int, positive_float, positive_int

__all__ = [
    "ExpertParallelMoE",
    "expert_shards",
    "dispatch_plan",
    "communication_bytes",
    "run_expert_parallel",
    "EPStats",
    "simulate_expert_parallel",
]


def expert_shards(num_experts: int, world_size: int) -> list[range]:
    """Contiguous blocks of experts per rank: rank r owns experts ``[r·E/W, (r+1)·E/W)``."""
    positive_int("num_experts", num_experts)
    positive_int("world_size", world_size)
    if num_experts % world_size:
        raise ValueError(f"num_experts ({num_experts}) must be divisible by world_size ({world_size})")
    per = num_experts // world_size
    return [range(r * per, (r + 1) * per) for r in range(world_size)]


def dispatch_plan(topk_idx: torch.Tensor, num_experts: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plan one rank's all-to-all: ``(order [T·k], send_counts [world_size])``.

    ``order`` lists the flat token-slots ``t·k + j`` grouped by expert (hence by owning rank, since ranks own
    contiguous blocks of experts), stable within an expert; ``send_counts[r]`` is how many of them go to rank r.
    Sending ``x[order // k]`` split by ``send_counts`` delivers every slot to the rank that owns its expert.
    """
    per = len(expert_shards(num_experts, world_size)[0])
    expert = topk_idx.reshape(-1)
    order = expert.argsort(stable=True)
    send_counts = torch.bincount(expert // per, minlength=world_size)
    return order, send_counts


def _check_supported(layer: MoELayer) -> None:
    if layer.config.capacity_factor is not None or layer.shared_expert is not None:
        raise ValueError("this teaching version supports layers without capacity_factor and shared experts")


class ExpertParallelMoE(nn.Module):
    """The rank-local part of a :class:`~course_utils.moe.MoELayer`: the router and this rank's experts only.

    It routes with the layer's own code and config (nothing copied field by field), so it routes as the layer does
    for every :class:`~course_utils.moe.MoEConfig` option.
    """

    def __init__(self, layer: MoELayer, rank: int, world_size: int):
        super().__init__()
        _check_supported(layer)
        shards = expert_shards(layer.num_experts, world_size)
        self.shard = shards[check_int("rank", rank, 0, world_size - 1)]
        self.rank, self.world_size = rank, world_size
        # the replicated router: the layer's config, router, noise and selection bias (shared, not copied)
        self.config, self.router, self.noise = layer.config, layer.router, layer.noise
        self.register_buffer("expert_bias", layer.expert_bias)
        self.train(layer.training)  # training mode decides jitter and noise, as in the layer
        sl = slice(self.shard.start, self.shard.stop)
        self.gate_up_proj = nn.Parameter(layer.gate_up_proj.detach()[sl].clone())
        self.down_proj = nn.Parameter(layer.down_proj.detach()[sl].clone())

    # The layer's routing methods themselves (not copies): they read .config, .router, .noise and .expert_bias.
    router_logits = MoELayer.router_logits
    select_experts = MoELayer.select_experts

    def forward(self, x: torch.Tensor, group=None) -> tuple[torch.Tensor, dict]:
        """x [T, d_model] (this rank's tokens) → (y [T, d_model], communication stats)."""
        T, k = x.shape[0], self.config.top_k
        _, topk_weight, topk_idx = self.select_experts(x)
        expert = topk_idx.reshape(-1)  # token-slot t·k + j → expert
        order, send_counts = dispatch_plan(topk_idx, self.config.num_experts, self.world_size)  # by owning rank
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=group)  # 1) who sends how many rows to whom
        send_split, recv_split = send_counts.tolist(), recv_counts.tolist()
        x_recv = x.new_empty(sum(recv_split), x.shape[1])
        dist.all_to_all_single(x_recv, x[order // k].contiguous(), recv_split, send_split, group=group)  # 2) tokens
        e_recv = expert.new_empty(sum(recv_split))
        dist.all_to_all_single(e_recv, expert[order].contiguous(), recv_split, send_split, group=group)
        y_recv = torch.empty_like(x_recv)
        for local, e in enumerate(self.shard):  # 3) this rank's experts on what arrived
            rows = (e_recv == e).nonzero().squeeze(1)
            if rows.numel():
                y_recv[rows] = swiglu_expert(x_recv[rows], self.gate_up_proj[local], self.down_proj[local])
        y_sorted = x.new_empty(T * k, x.shape[1])
        dist.all_to_all_single(y_sorted, y_recv, send_split, recv_split, group=group)  # 4) results go home
        y_slots = torch.empty_like(y_sorted).index_copy_(0, order, y_sorted)
        y = torch.einsum("tkh,tk->th", y_slots.view(T, k, -1), topk_weight.to(x.dtype))
        remote = T * k - send_split[self.rank]
        stats = {
            "sent_rows": send_split,
            "received_rows": recv_split,
            "bytes_out": 2 * remote * x.shape[1] * x.element_size(),
        }  # tokens out + results back
        return y, stats


def communication_bytes(num_tokens: int, top_k: int, d_model: int, world_size: int, bytes_per_value: int = 4) -> float:
    """Expected bytes one rank sends per MoE layer forward with uniform routing: tokens out and results back.

    Each of its T·k token-slots leaves the rank with probability (W-1)/W; each trip carries d_model values.
    """
    check_int("num_tokens", num_tokens, 0)
    for name, value in (("top_k", top_k), ("d_model", d_model), ("world_size", world_size)):
        positive_int(name, value)
    positive_float("bytes_per_value", bytes_per_value)
    return 2 * num_tokens * top_k * d_model * bytes_per_value * (world_size - 1) / world_size


def simulate_expert_parallel(layer: MoELayer, x: torch.Tensor, world_size: int, plan) -> torch.Tensor:
    """Expert parallelism in one process: lists stand in for the ranks, list slicing for ``all_to_all_single``.

    ``plan`` is a :func:`dispatch_plan`-like function (the chapter-5 check passes the learner's). Returns the
    layer's output for all of ``x``; raises ``RuntimeError`` when a rank receives a token for an expert it does
    not own (a wrong plan).
    """
    _check_supported(layer)
    shards = expert_shards(layer.num_experts, world_size)
    k = layer.top_k
    chunks = x.chunk(world_size)
    outbox, routes = [], []
    for xr in chunks:  # every rank routes its own tokens (as the layer does) and plans what goes where
        _, weight, idx = layer.select_experts(xr)
        order, counts = plan(idx, layer.num_experts, world_size)
        expert = idx.reshape(-1)[order]
        outbox.append((xr[order // k].split(counts.tolist()), expert.split(counts.tolist()), counts))
        routes.append((weight, order, xr.shape[0]))
    results = [[None] * world_size for _ in range(world_size)]
    for dst, shard in enumerate(shards):  # rank dst receives from every src and runs its own experts
        for src in range(world_size):
            rows, experts = outbox[src][0][dst], outbox[src][1][dst]
            y = torch.zeros_like(rows)
            for e in shard:
                mask = experts == e
                if mask.any():
                    y[mask] = swiglu_expert(rows[mask], layer.gate_up_proj[e], layer.down_proj[e])
            if (~torch.isin(experts, torch.tensor(list(shard), dtype=experts.dtype))).any():
                raise RuntimeError(f"rank {dst} received a token for an expert it does not own")
            results[src][dst] = y
    out = []
    for src, (weight, order, T) in enumerate(routes):  # results go home, un-permute, weight, sum the k slots
        y_sorted = torch.cat(results[src])
        y_slots = torch.empty_like(y_sorted).index_copy_(0, order, y_sorted)
        out.append(torch.einsum("tkh,tk->th", y_slots.view(T, k, -1), weight))
    return torch.cat(out)


def _spec(layer: MoELayer, x: torch.Tensor) -> dict:
    """What the workers need to rebuild ``layer``: widths, its whole config (as a dict), weights, mode, and x."""
    return {
        "widths": (layer.d_model, layer.d_ff),
        "config": layer.config.to_dict(),
        "state": layer.state_dict(),
        "training": layer.training,
        "x": x.detach(),
    }


def _layer_from_spec(spec: dict) -> MoELayer:
    layer = MoELayer(*spec["widths"], MoEConfig(**spec["config"]))
    layer.load_state_dict(spec["state"])
    return layer.train(spec["training"])


@dataclass
class EPStats:
    world_size: int
    seconds: float
    per_rank: list


def _worker(rank: int, world_size: int, port: int, folder: str, repeats: int) -> None:
    """One process: join the group, run the expert-parallel layer on its tokens, save output and stats."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        spec = torch.load(Path(folder) / "spec.pt", weights_only=True)
        part = ExpertParallelMoE(_layer_from_spec(spec), rank, world_size)
        x = spec["x"].chunk(world_size)[rank]
        with torch.no_grad():
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(repeats):
                y, stats = part(x)
            seconds = (time.perf_counter() - t0) / repeats
        stats["seconds"] = seconds
        torch.save({"y": y, "stats": stats}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_expert_parallel(
    layer: MoELayer, x: torch.Tensor, world_size: int = 2, *, repeats: int = 1, timeout_s: float = 120.0
) -> tuple[torch.Tensor, EPStats]:
    """Run ``layer`` expert-parallel on ``world_size`` local processes (gloo); return the output for all of ``x``.

    ``x`` [T, d_model] is split into ``world_size`` contiguous chunks, one per rank (as data parallelism would).
    Processes are always reaped: on error or after ``timeout_s`` they are terminated and an error is raised.
    """
    if x.dim() != 2 or x.shape[1] != layer.d_model:
        raise ValueError(f"x must have shape (tokens, d_model={layer.d_model}), got {tuple(x.shape)}")
    if x.shape[0] < world_size:
        raise ValueError(f"need at least world_size={world_size} tokens, got {x.shape[0]}")
    expert_shards(layer.num_experts, world_size)  # validates divisibility before any process starts
    with tempfile.TemporaryDirectory() as folder:
        torch.save(_spec(layer, x), Path(folder) / "spec.pt")
        t0 = time.perf_counter()
        ctx = mp.start_processes(
            _worker,
            args=(world_size, free_port(), folder, repeats),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout_s
        try:
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"expert-parallel workers did not finish within {timeout_s} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
                p.join(5)
        seconds = time.perf_counter() - t0
        results = [torch.load(Path(folder) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    y = torch.cat([r["y"] for r in results])
    return y, EPStats(world_size, seconds, [r["stats"] for r in results])
