"""Execute every notebook (lessons and solved labs) in a fresh kernel and print a table of wall times.

    python benchmarks/notebook_times.py [--only 01,04]

The README's chapter map and the instructor guide show the lesson times `make outputs` records in
docs/chapter_times.json (one source); this script checks the budget, solved labs included.

Budget: each notebook ≤ 180 s and the whole course ≤ 20 minutes on 2 CPU cores. Exit code 1 when over budget.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
PER_NOTEBOOK_S, TOTAL_S = 180, 20 * 60


def run(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated chapter numbers, e.g. 01,04")
    args = parser.parse_args()
    os.environ.setdefault("COURSE_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    only = {c.strip() for c in args.only.split(",") if c.strip()}
    paths = [
        p
        for d in ("notebooks", "solutions")
        for p in sorted((ROOT / d).glob("*.ipynb"))
        if not only or p.name[:2] in only
    ]
    times: dict[str, float] = {}
    print(f"| notebook | wall time [s] | within {PER_NOTEBOOK_S} s |")
    print("|---|---:|---|")
    for path in paths:
        rel = path.relative_to(ROOT).as_posix()
        times[rel] = run(path)
        print(f"| {rel} | {times[rel]:.1f} | {'yes' if times[rel] <= PER_NOTEBOOK_S else 'NO'} |", flush=True)
    lessons = sum(t for k, t in times.items() if k.startswith("notebooks/"))
    print(f"\nlessons together: {lessons:.0f} s (budget {TOTAL_S} s); with solved labs: {sum(times.values()):.0f} s")
    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}")
    over = [k for k, t in times.items() if t > PER_NOTEBOOK_S]
    return 1 if over or lessons > TOTAL_S else 0


if __name__ == "__main__":
    sys.exit(main())
