"""How many learners the workshop hub's machine holds: memory per learner while a lab trains.

    python benchmarks/hub_memory.py [--learners 2] [--out hub_memory.json]

Starts the hub (hub/jupyterhub_config.py, loopback, a temporary state folder), starts ``--learners`` servers at
once, and in each one's kernel runs solved lab 3 top to bottom up to its training cell (300 steps of the learner's
own GPT on the course corpus), all learners at the same time. While they run, every learner's server and kernel
are sampled every 0.25 s (RSS, and PSS: shared libraries counted once per machine, split across the processes
that share them). Prints a table: the hub's own processes, each learner's peak (server + kernel), and how many
learners fit in this machine's RAM at that peak with 2 GiB left for the system.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hub"))
from hubctl import running_hub  # noqa: E402

LAB = ROOT / "solutions" / "03_tiny_gpt_lab.ipynb"
TRAINING_CELL = "for step in tqdm(range(STEPS)"  # the lab's training loop
SYSTEM_RESERVE = 2 * 2**30
GiB, MiB = 2**30, 2**20


def lab_cells() -> list[str]:
    """The solved lab's code cells up to and including its training loop."""
    cells = [c.source for c in nbformat.read(str(LAB), as_version=4).cells if c.cell_type == "code"]
    end = next(i for i, src in enumerate(cells) if TRAINING_CELL in src)
    return cells[: end + 1]


def memory(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over ``pids`` (processes that ended are skipped)."""
    rss = pss = 0
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
    return rss, pss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    names = [f"learner{i:02d}" for i in range(1, args.learners + 1)]
    cells = lab_cells()
    with tempfile.TemporaryDirectory() as state, running_hub(Path(state), learners=args.learners) as hub:
        for name in names:
            hub.start_server(name, wait=False)
        kernels = {}
        for name in names:
            hub.wait_ready(name)
            kernels[name] = hub.start_kernel(name)
        idle = {name: memory(hub.server_pids(name)) for name in names}
        hub_pids = [
            hub.proc.pid,
            *(p.pid for p in psutil.Process(hub.proc.pid).children() if "proxy" in " ".join(p.cmdline())),
        ]
        peak = {name: (0, 0) for name in names}
        done = threading.Event()

        def sample():
            while not done.is_set():
                for name in names:
                    rss, pss = memory(hub.server_pids(name))
                    peak[name] = (max(peak[name][0], rss), max(peak[name][1], pss))
                time.sleep(0.25)

        def run(name):
            for src in cells:
                hub.execute(name, kernels[name], src)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        workers = [threading.Thread(target=run, args=(name,)) for name in names]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
        hub_rss, hub_pss = memory(hub_pids)
    total = psutil.virtual_memory().total
    per_learner = max(p for _, p in peak.values())
    fits = int((total - SYSTEM_RESERVE - hub_pss) // per_learner)
    print(f"hub + proxy: RSS {hub_rss / MiB:.0f} MiB, PSS {hub_pss / MiB:.0f} MiB")
    print("| learner | idle server + kernel RSS / PSS (MiB) | peak while lab 3 trains RSS / PSS (MiB) |")
    print("|---|---|---|")
    for name in names:
        print(
            f"| {name} | {idle[name][0] / MiB:.0f} / {idle[name][1] / MiB:.0f} | "
            f"{peak[name][0] / MiB:.0f} / {peak[name][1] / MiB:.0f} |"
        )
    print(
        f"{args.learners} learners ran lab 3 to the end of its training loop at once in {seconds:.0f} s; this "
        f"machine ({total / GiB:.1f} GiB, {psutil.cpu_count()} cores) holds about {fits} learners at "
        f"{per_learner / MiB:.0f} MiB each with 2 GiB left for the system"
    )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "learners": args.learners,
                    "seconds": round(seconds, 1),
                    "hub_pss_mib": round(hub_pss / MiB),
                    "idle_mib": {n: [round(v / MiB) for v in idle[n]] for n in names},
                    "peak_mib": {n: [round(v / MiB) for v in peak[n]] for n in names},
                    "machine_gib": round(total / GiB, 1),
                    "cores": psutil.cpu_count(),
                    "fits": fits,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
