"""Fine-tuning cost and prompting cost, measured: full fine-tuning vs LoRA (r = 4, 8, 16), and every method's accuracy.

    python benchmarks/finetune.py [--steps 20] [--d-model 64 --layers 4] [--skip-accuracy]

Part 1 — per training step, on the same batches: wall time (median of ``--steps`` steps after a warm-up) and peak
memory. Each configuration runs in a fresh subprocess; "peak memory" is the peak resident set size of that process
(ru_maxrss) minus its size right before training, i.e. what the optimizer states, gradients and activations add.
Ratios are against full fine-tuning, measured in the same run.

Part 2 — the knowledge task of chapter 7, read from the shipped study (``course_utils/assets/ch7_study.json``;
``scripts/study_ch7.py`` retrains it: 3 worlds x 2 training seeds): each method's accuracy on the trained, eval and
unseen phrasings and how often the old value of a changed fact comes back, pooled with its 95% interval and per seed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (resource.getpagesize() // 1024)


def one_config(mode: str, r: int, steps: int, d_model: int, layers: int, batch: int, block: int) -> dict:
    """Runs in a subprocess: time and memory of ``steps`` AdamW steps of full fine-tuning or LoRA rank ``r``."""
    from course_utils import finetune as ft
    from course_utils.model import GPT, GPTConfig

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = GPT(GPTConfig(vocab_size=ft.VOCAB_SIZE, d_model=d_model, n_layers=layers, n_heads=4, max_seq_len=block))
    if mode == "lora":
        ft.apply_lora(model, r=r, alpha=2 * r)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    x = torch.randint(0, ft.VOCAB_SIZE, (batch, block))
    rss0 = _rss_kib()
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        _, loss = model(x, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:  # the first steps allocate optimizer state and warm up kernels
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "trainable": sum(p.numel() for p in params),
        "total": ft.count_parameters(model)["total"],
        "ms_per_step": 1e3 * statistics.median(times),
        "peak_mib": max(0, peak - rss0) / 1024,
    }


def cost_table(args) -> list[str]:
    rows = []
    for mode, r in [("full", 0), ("lora", 4), ("lora", 8), ("lora", 16)]:
        cmd = [
            sys.executable,
            __file__,
            "--_one",
            json.dumps([mode, r, args.steps, args.d_model, args.layers, args.batch, args.block]),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append((mode if mode == "full" else f"LoRA r={r}", json.loads(out)))
    full = rows[0][1]
    lines = [
        f"Training step, d_model={args.d_model}, {args.layers} layers, batch {args.batch}×{args.block} "
        f"characters, 1 thread, median of {args.steps} steps",
        "| method | trainable params | % of model | ms/step | vs full | peak extra memory (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in rows:
        lines.append(
            f"| {name} | {m['trainable']:,} | {100 * m['trainable'] / m['total']:.1f}% | "
            f"{m['ms_per_step']:.1f} | {m['ms_per_step'] / full['ms_per_step']:.2f}× | {m['peak_mib']:.1f} |"
        )
    return lines


def accuracy_table() -> list[str]:
    """Chapter 7's knowledge table from the shipped study (``scripts/study_ch7.py`` retrains and rebuilds it): each
    method's accuracy with its 95% Wilson interval, the worlds and training seeds pooled, and each seed's share."""
    from course_utils import finetune as ft

    study = ft.load_study()
    meta = study["meta"]
    methods = list(ft.PROMPT_METHODS) + [m for k in meta["kinds"] for m in (k, f"{k} + RAG")]
    splits = ("trained", "eval", "unseen", "old")
    lines = [
        f"Knowledge task over worlds {meta['worlds']} x training seeds {meta['seeds']} ({meta['n_entities']} people "
        "per world), strict greedy exact match, pooled share [95% Wilson] (each seed's share)",
        "| method | " + " | ".join(splits) + " |",
        "|---|" + "---|" * len(splits),
    ]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(ft.study_cell(study, m, split) for split in splits) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        print(json.dumps(one_config(*json.loads(args._one))))
        return
    print("\n".join(cost_table(args)))
    if not args.skip_accuracy:
        print()
        print("\n".join(accuracy_table()))


if __name__ == "__main__":
    main()
