"""Benchmark: our MoE layer vs a dense SwiGLU with the same active FLOPs vs transformers' Mixtral block (eager).

A second dense baseline, ``dense-all-experts`` (width experts · d_ff), holds exactly the bytes of all experts'
weights. Once a batch is large enough to hit every expert (T = 16 with top-2 of 8 hits ~7.9 of them) the MoE
layer must read all of those bytes, so at small T that baseline, not dense-active, is the floor a dispatch can reach.

d_model 512, d_ff 1024, 8 experts, top-2, float32, 2 threads. For each token count T we time the forward pass and
forward+backward of every contender, interleaved round-robin so that a busy machine slows all of them alike, and
report medians (and minima, the least disturbed runs). Ratios are to the dense-active baseline of the same run.
The Markdown table is printed row by row, as each row is measured.

    python benchmarks/moe.py [--repeats 15] [--tokens 1 16 256 4096] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from course_utils.model import SwiGLU
from course_utils.moe import MoELayer, grouped_mm_available

D_MODEL, D_FF, EXPERTS, TOP_K = 512, 1024, 8, 2


def mixtral_block(layer: MoELayer, implementation: str | None = None):
    """transformers' MixtralSparseMoeBlock holding the same weights as ``layer``."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = MixtralConfig(
        hidden_size=D_MODEL,
        intermediate_size=D_FF,
        num_local_experts=EXPERTS,
        num_experts_per_tok=TOP_K,
        router_jitter_noise=0.0,
    )
    config._experts_implementation = implementation or "eager"  # None makes transformers warn on every block
    block = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        block.gate.weight.copy_(layer.router.weight)
        block.experts.gate_up_proj.copy_(layer.gate_up_proj)
        block.experts.down_proj.copy_(layer.down_proj)
    return block


def contenders() -> dict:
    torch.manual_seed(0)
    ours = MoELayer(D_MODEL, D_FF, EXPERTS, TOP_K)
    with torch.no_grad():  # a router that spreads tokens like a trained one does, not the near-uniform init
        ours.router.weight.normal_(0.0, 0.05)
    run = {
        "dense-active": (SwiGLU(D_MODEL, TOP_K * D_FF), False),
        # reads the same weight bytes as the MoE layer once every expert is hit (T >= 16): the memory floor
        "dense-all-experts": (SwiGLU(D_MODEL, EXPERTS * D_FF), False),
        "ours sorted": (MoELayer.from_hf(mixtral_block(ours), dispatch="sorted"), True),
    }
    if grouped_mm_available():
        run["ours grouped_mm"] = (MoELayer.from_hf(mixtral_block(ours), dispatch="grouped_mm"), True)
    run["transformers eager"] = (mixtral_block(ours, None), False)
    return run


def one_call(module, returns_aux: bool, x: torch.Tensor, backward: bool) -> float:
    x = x.detach().requires_grad_(backward)
    start = time.perf_counter()
    y = module(x)
    if returns_aux:
        y = y[0]
    if backward:
        y.backward(torch.ones_like(y))
    return time.perf_counter() - start


def measure(tokens: list[int], repeats: int):
    """Yield one row per (T, pass, statistic) as soon as it is measured."""
    run = contenders()
    for T in tokens:
        x = torch.randn(1, T, D_MODEL)
        for backward in (False, True):
            times = {name: [] for name in run}
            for r in range(repeats + 2):  # two warm-up rounds
                for name, (module, aux) in run.items():
                    module.zero_grad(set_to_none=True)
                    if backward:
                        t = one_call(module, aux, x, True)
                    else:
                        with torch.no_grad():
                            t = one_call(module, aux, x, False)
                    if r >= 2:
                        times[name].append(t)
            for stat, value in (("median", statistics.median), ("min", min)):
                yield {
                    "T": T,
                    "pass": "fwd+bwd" if backward else "fwd",
                    "stat": stat,
                    **{name: value(ts) for name, ts in times.items()},
                }


def header(names: list[str]) -> str:
    head = (
        "| T | pass | stat | "
        + " | ".join(f"{n} (ms)" for n in names)
        + " | "
        + " | ".join(f"{n} / dense" for n in names[1:])
        + " |"
    )
    return head + "\n|" + "---|" * (3 + 2 * len(names) - 1)


def table_row(r: dict) -> str:
    names = [k for k in r if k not in ("T", "pass", "stat")]
    base = r[names[0]]
    return (
        f"| {r['T']} | {r['pass']} | {r['stat']} | "
        + " | ".join(f"{r[n] * 1e3:.3f}" for n in names)
        + " | "
        + " | ".join(f"{r[n] / base:.2f}×" for n in names[1:])
        + " |"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 4096])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, float32, d_model={D_MODEL} d_ff={D_FF} "
        f"experts={EXPERTS} top_k={TOP_K}, grouped_mm available: {grouped_mm_available()}, "
        f"median of {args.repeats} interleaved repeats"
    )
    print("(median: the headline; min: the least disturbed run, shown because the machine may be shared)")
    for i, row in enumerate(measure(args.tokens, args.repeats)):
        if i == 0:
            print(header([k for k in row if k not in ("T", "pass", "stat")]))
        print(table_row(row), flush=True)


if __name__ == "__main__":
    main()
