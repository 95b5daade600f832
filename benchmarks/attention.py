"""Cost of context: time and peak memory of causal self-attention against sequence length n.

Three implementations of the same function (chapter 2): naive attention that builds the n×n scores, the chunked
online-softmax version (course_utils.attention.online_softmax_attention), and PyTorch's fused
torch.nn.functional.scaled_dot_product_attention.

Memory is reported three ways, because PyTorch keeps no allocator statistics on the CPU (tracemalloc does not
see torch's buffers):
  * scores  — analytic: bytes of one batch×heads×n×n float32 score matrix;
  * tensors — measured: peak bytes of live tensors created by torch ops (course_utils.attention.TensorMemoryTracker,
              a TorchDispatchMode; it cannot see scratch space inside a fused kernel);
  * RSS     — measured: growth of the process's peak resident set size while one call runs (Linux: reset the
              peak with /proc/self/clear_refs, read VmHWM from /proc/self/status), each (method, n) in a fresh
              subprocess so memory freed by earlier runs (and reused by malloc) does not hide the growth.
Time is the best of `--repeats` calls, all methods timed in one run on the same inputs.

Usage: python benchmarks/attention.py [--ns 128 256 ...] [--heads 4] [--head-dim 64] [--no-rss]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from course_utils.attention import ATTENTION_METHODS, attention_cost

NS = (128, 256, 512, 1024, 2048, 4096)

_RSS_CHILD = r"""
import json, sys, torch
from course_utils.attention import ATTENTION_METHODS
method, n, heads, head_dim, block = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(int(sys.argv[6]))

def status(key):  # /proc/self/status values are in kB
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024

fn = ATTENTION_METHODS[method]
with torch.no_grad():
    fn(*[torch.randn(1, heads, 16, head_dim) for _ in range(3)], True, block)  # load kernels first
    q, k, v = (torch.randn(1, heads, n, head_dim) for _ in range(3))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS: the import's peak no longer counts
    before = status("VmRSS")
    out = fn(q, k, v, True, block)
    peak = status("VmHWM")
print(json.dumps({"rss_growth_bytes": peak - before}))
"""


def rss_growth(method: str, n: int, heads: int, head_dim: int, block: int) -> int:
    """Peak-RSS growth (bytes) of one call, measured in a fresh Python process."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    args = [
        sys.executable,
        "-c",
        _RSS_CHILD,
        method,
        str(n),
        str(heads),
        str(head_dim),
        str(block),
        str(torch.get_num_threads()),
    ]
    res = subprocess.run(args, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["rss_growth_bytes"]


def mib(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ns", type=int, nargs="+", default=list(NS))
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-rss", action="store_true", help="skip the subprocess RSS measurement (faster)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, {args.heads} heads, "
        f"head_dim {args.head_dim}, causal, float32, chunk {args.block} keys\n"
    )
    rows = []
    for n in args.ns:
        for method in ATTENTION_METHODS:
            r = attention_cost(
                method, n, n_heads=args.heads, head_dim=args.head_dim, block_size=args.block, repeats=args.repeats
            )
            r["rss"] = None if args.no_rss else rss_growth(method, n, args.heads, args.head_dim, args.block)
            rows.append(r)
            print(f"  measured {method:>10} n={n}", file=sys.stderr, flush=True)

    print(
        "| n | method | time (ms) | time / SDPA | tensors peak (MiB) | RSS growth (MiB) | one n×n score matrix (MiB) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        sdpa = next(x for x in rows if x["n"] == r["n"] and x["method"] == "torch_sdpa")
        rss = "–" if r["rss"] is None else mib(r["rss"])
        print(
            f"| {r['n']} | {r['method']} | {r['seconds'] * 1e3:,.2f} | {r['seconds'] / sdpa['seconds']:.1f}× | "
            f"{mib(r['peak_bytes'])} | {rss} | {mib(r['scores_bytes'])} |"
        )

    # growth exponents between the two largest n: 2 = quadratic, 1 = linear
    big, small = max(args.ns), sorted(args.ns)[-2] if len(args.ns) > 1 else None
    if small:
        import math

        print(f"\nGrowth exponent from n={small} to n={big} (log ratio / log {big // small}; 2 = quadratic):")
        print("| method | time | tensor memory |")
        print("|---|---:|---:|")
        for method in ATTENTION_METHODS:
            a = next(x for x in rows if x["n"] == small and x["method"] == method)
            b = next(x for x in rows if x["n"] == big and x["method"] == method)
            e_t = math.log(b["seconds"] / a["seconds"]) / math.log(big / small)
            e_m = math.log(b["peak_bytes"] / a["peak_bytes"]) / math.log(big / small)
            print(f"| {method} | {e_t:.2f} | {e_m:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
