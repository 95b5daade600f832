"""Run chapter 5's experiment: dense vs MoE at equal active parameters (2 seeds) and three balance variants.

Every run trains chapter 3's GPT (d_model=64, 4 layers) on the course corpus with the same optimiser, schedule and
batches (:func:`course_utils.moe_lm.run_variant`); only the feed-forward block and the balancing differ. Writes

- ``course_utils/assets/ch5_results.json`` — histories, expert-load records, per-domain validation losses;
- ``course_utils/assets/ch5_moe.safetensors`` (+ ``.json``) — the MoE model (aux-loss 0.01, seed 0);

each with a ``.sha256`` that the notebook checks on load. Seeded and CPU-only, one thread per run:

    python scripts/train_ch5.py              # 6 runs in parallel: ~9 min on 2 shared, busy cores
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

RUNS = [("dense", 0), ("moe_aux0.01", 0), ("dense", 1), ("moe_aux0.01", 1), ("moe_aux0", 0), ("moe_lossfree", 0)]
TRAIN = dict(lr=3e-3, warmup=30, batch_size=16, block_size=128, eval_every=50, eval_iters=10)


def _round(obj, nd=5):
    if isinstance(obj, float):
        return round(obj, nd)
    if isinstance(obj, dict):
        return {k: _round(v, nd) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v, nd) for v in obj]
    return obj


def one_run(name: str, seed: int, steps: int, out_dir: str) -> dict:
    from course_utils.data import corpus_dataset
    from course_utils.model import save_checkpoint
    from course_utils.moe_lm import domain_losses, run_variant

    torch.set_num_threads(1)  # runs go in parallel: one thread each avoids oversubscription
    data = corpus_dataset()
    t0 = time.perf_counter()
    model, result = run_variant(name, data, steps=steps, seed=seed, progress=False, **TRAIN)
    result["wall_s"] = time.perf_counter() - t0
    result["history"] = result["history"].to_dict()  # JSON-ready, the keys the notebook reads
    result["domain_val_loss"] = domain_losses(model, data)
    if name == "moe_aux0.01" and seed == 0:
        save_checkpoint(
            model,
            Path(out_dir) / "ch5_moe.safetensors",
            meta={"script": "scripts/train_ch5.py", "variant": name, "seed": seed, "steps": steps},
        )
    print(f"{name} seed {seed}: val {result['history']['val_loss'][-1]:.4f} in {result['wall_s']:.0f} s", flush=True)
    return result


def main() -> None:
    from course_utils.moe_lm import ASSETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--out", default=str(ASSETS))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # each worker in its own session: on a shared Linux machine (autogroup scheduling) the runs then get the
    # CPU share of separate jobs rather than splitting one job's share six ways
    with ProcessPoolExecutor(args.workers, initializer=os.setsid) as pool:
        futures = [pool.submit(one_run, name, seed, args.steps, str(out)) for name, seed in RUNS]
        results = [f.result() for f in futures]
    payload = {"script": "scripts/train_ch5.py", "train": TRAIN, "steps": args.steps, "runs": _round(results)}
    results_path = out / "ch5_results.json"
    results_path.write_text(json.dumps(payload, separators=(",", ":")))
    from course_utils.model import write_sha256

    for path in (results_path, out / "ch5_moe.safetensors", out / "ch5_moe.json"):
        write_sha256(path)  # <path>.sha256, which moe_lm.verify_asset checks on load
    print(f"wrote {results_path} ({results_path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
