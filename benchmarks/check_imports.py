"""Cost of importing one lab check: ``from course_utils.checks import check_x`` in a fresh interpreter.

CONTRIBUTING promises that importing a check imports only the chapter module that defines it (issue #28: one check
≤ 1 s once torch is imported, since every lab has imported torch before it imports its checks). Each row runs a
fresh ``python`` that imports torch first, then times the check's import alone; it reports the best of
``--repeats`` runs, how many course_utils modules the import loaded, and which heavy optional libraries came along.
The modules loaded are asserted in tests/test_check_imports.py; the time is only measured here.

Usage: python benchmarks/check_imports.py [--repeats 3] [--limit-ms 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: one check per chapter (chapter 8 twice: its quantization checks and its serving checks)
CHECKS = (
    "check_get_stats",
    "check_scaled_dot_product_attention",
    "check_rms_norm",
    "check_topk_router",
    "check_swap_ffn_for_moe",
    "check_chunk_text",
    "check_lora_forward",
    "check_quantize_int8",
    "check_resilient_client",
)
HEAVY = ("transformers", "fastapi", "openai", "httpx", "nbclient", "ipywidgets", "matplotlib", "faiss", "gguf")

_CHILD = r"""
import json, sys, time
import torch
start = time.perf_counter()
import course_utils.checks as checks
check = getattr(checks, sys.argv[1])
ms = (time.perf_counter() - start) * 1000
mods = sorted(m for m in sys.modules if m.startswith("course_utils."))
heavy = sorted(h for h in sys.argv[2].split(",") if h in sys.modules)
print(json.dumps({"ms": ms, "home": check.__module__, "modules": mods, "heavy": heavy}))
"""


def measure(check: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, check, ",".join(HEAVY)], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"importing {check} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit-ms", type=float, default=1000.0)
    args = parser.parse_args(argv)
    print(f"{'check':<36} {'module':<26} {'ms (best)':>9} {'course mods':>11}  heavy libraries loaded")
    worst = 0.0
    for check in CHECKS:
        runs = [measure(check) for _ in range(args.repeats)]
        best = min(r["ms"] for r in runs)
        worst = max(worst, best)
        chapter = runs[0]["home"]
        heavy = ", ".join(runs[0]["heavy"]) or "-"
        print(f"{check:<36} {chapter:<26} {best:>9.0f} {len(runs[0]['modules']):>11}  {heavy}")
    verdict = "within" if worst <= args.limit_ms else "OVER"
    print(f"slowest check import {worst:.0f} ms: {verdict} the {args.limit_ms:.0f} ms target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
