"""Benchmark for chapter 5: the tiny MoE language model vs its dense twin, and expert parallelism on 2 processes.

1. Training throughput (tokens/s) of chapter 5's dense GPT and its MoE twin at equal active parameters (d_model 64,
   4 layers, batch 16 × 128 tokens): optimizer steps interleaved dense/MoE so a busy machine slows both alike; medians.
2. Validation loss each reaches in the notebook's live budget (60 steps, batch 16 × 64 tokens, seed 0), and — read
   from the shipped results of ``scripts/train_ch5.py`` — after the full 400 steps (mean of seeds 0 and 1).
3. Expert-parallel MoE layer forward on 2 gloo processes vs 1 (``course_utils.distributed.run_expert_parallel``),
   per-rank seconds per call (median of the ranks' means over ``--repeats`` calls), for the chapter's layer and a
   wider one.

    python benchmarks/moe_lm.py [--steps 12] [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from course_utils import moe_lm
from course_utils.data import corpus_dataset
from course_utils.distributed import run_expert_parallel
from course_utils.moe import MoELayer
from course_utils.train import configure_optimizer


def throughput(data, steps: int) -> dict:
    models = {kind: moe_lm.build_model(kind, seed=0) for kind in ("dense", "moe")}
    opts = {k: configure_optimizer(m, lr=1e-3, weight_decay=0.1) for k, m in models.items()}
    times = {k: [] for k in models}
    gen = torch.Generator().manual_seed(0)
    for i in range(steps + 2):  # the first two rounds warm up
        x, y = data.get_batch("train", 16, 128, gen)
        for kind, model in models.items():
            t0 = time.perf_counter()
            _, loss = model(x, y)
            total = loss if kind == "dense" else moe_lm.moe_training_loss(loss, model.last_moe_aux, 0.01)
            opts[kind].zero_grad(set_to_none=True)
            total.backward()
            opts[kind].step()
            if i >= 2:
                times[kind].append(time.perf_counter() - t0)
    return {k: 16 * 128 / statistics.median(v) for k, v in times.items()}


def live_budget(data) -> dict:
    out = {}
    for name in ("dense", "moe_aux0.01"):
        _, r = moe_lm.run_variant(
            name,
            data,
            steps=60,
            seed=0,
            batch_size=16,
            block_size=64,
            eval_every=60,
            eval_iters=4,
            warmup=10,
            progress=False,
        )
        out[name] = r["history"]["val_loss"][-1]
    return out


def expert_parallel(repeats: int) -> list[tuple]:
    rows = []
    for d_model, d_ff, tokens in ((64, 80, 2048), (256, 512, 4096)):
        torch.manual_seed(0)
        layer = MoELayer(d_model, d_ff, 8, 2).eval()
        x = torch.randn(tokens, d_model)
        sec = {}
        for world in (1, 2):
            _, stats = run_expert_parallel(layer, x, world_size=world, repeats=repeats, timeout_s=300)
            sec[world] = statistics.median(s["seconds"] for s in stats.per_rank)
        rows.append((f"d_model {d_model}, d_ff {d_ff}, {tokens} tokens", sec[1], sec[2]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = corpus_dataset()

    rate = throughput(data, args.steps)
    live = live_budget(data)
    full = {}
    try:
        runs = moe_lm.load_results()["runs"]
        for name in ("dense", "moe_aux0.01"):
            full[name] = statistics.mean(r["history"]["val_loss"][-1] for r in runs if r["name"] == name)
    except (FileNotFoundError, ValueError) as err:
        print(f"(no shipped results: {err})")
    ep = expert_parallel(args.repeats)

    print(f"\n### Chapter 5 benchmark ({args.threads} threads; steps interleaved, medians)\n")
    print("| model | tokens/s (training) | val loss, notebook live run (60 steps) | val loss, full run (400 steps) |")
    print("|---|---|---|---|")
    for kind, name in (("dense", "dense"), ("moe", "moe_aux0.01")):
        full_s = f"{full[name]:.3f}" if name in full else "n/a"
        print(f"| {kind} | {rate[kind]:,.0f} | {live[name]:.3f} | {full_s} |")
    print(f"\nMoE / dense throughput: ×{rate['moe'] / rate['dense']:.2f}\n")
    print("| expert-parallel MoE layer forward | 1 process [ms] | 2 processes [ms/rank] | ratio 2 / 1 |")
    print("|---|---|---|---|")
    for what, one, two in ep:
        print(f"| {what} | {one * 1e3:.2f} | {two * 1e3:.2f} | ×{two / one:.2f} |")


if __name__ == "__main__":
    main()
