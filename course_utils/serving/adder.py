"""The adder task of chapter 8: two GPTs of different sizes trained to add numbers — a task whose answers can
be checked, so a model cascade can be measured (small model first, the large one when the small one is unsure).

Problems (:func:`addition_problems`), training data (:class:`AdditionData`), training (:func:`train_adder`,
:func:`build_adders`), the committed sha256-checked checkpoints (:func:`load_adder`) and scoring
(:func:`answer_additions`).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..checkpoints import load_checkpoint, save_checkpoint, sha256_of
from ..model import GPT, GPTConfig
from ..train import TrainConfig, train
from .backends import ByteTokenizer, GenRequest, GPTBackend

__all__ = [
    "ADDER_CONFIGS",
    "ADDER_SHA256",
    "addition_problem",
    "addition_problems",
    "answer_additions",
    "AdditionData",
    "train_adder",
    "build_adders",
    "load_adder",
]

# Two GPTs of different sizes that add numbers: a task whose answers can be checked, for the model cascade.
ASSETS = Path(__file__).parents[1] / "assets"
ADDER_CONFIGS = {  # name -> (GPTConfig kwargs, training steps)
    "adder-small": (dict(vocab_size=256, d_model=16, n_layers=2, n_heads=2, max_seq_len=32), 8000),
    "adder-large": (dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4, max_seq_len=32), 3000),
}
REBUILD = "python -c 'from course_utils.adder import build_adders; build_adders()'"


def _checkpoint(name: str) -> Path:
    return ASSETS / f"serve_{name.replace('-', '_')}.safetensors"


# The recorded sha256 of each committed checkpoint, read from its sidecar `.sha256` (the one mechanism every asset
# uses; build_adders writes them); kept under this name for code that reads it.
ADDER_SHA256 = {
    name: _checkpoint(name).with_name(_checkpoint(name).name + ".sha256").read_text().split()[0]
    for name in ADDER_CONFIGS
}


def addition_problem(rng: random.Random, max_digits: int = 3) -> tuple[str, str]:
    """``("47+815=", "268\n")``: each operand has 1..``max_digits`` digits (uniformly), so difficulty varies.

    The sum is written least-significant digit first (862 → "268"), so each digit depends only on digits the model
    has already seen and the carry — the format that lets small transformers learn addition (Lee et al., 2023,
    "Teaching Arithmetic to Small Transformers").
    """
    a = rng.randint(0, 10 ** rng.randint(1, max_digits) - 1)
    b = rng.randint(0, 10 ** rng.randint(1, max_digits) - 1)
    return f"{a}+{b}=", f"{str(a + b)[::-1]}\n"


def addition_problems(n: int, seed: int, max_digits: int = 3) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [addition_problem(rng, max_digits) for _ in range(n)]


def answer_additions(backend, problems, *, batch_size: int | None = None) -> tuple[list[bool], list[list[float]]]:
    """Greedy answers of ``backend`` to ``problems`` (pairs from :func:`addition_problems`): whether each answer
    line is exactly right, and the log-probabilities of its first ``len(answer)`` tokens (the confidence a cascade
    reads). ``batch_size`` requests per padded batch (None: all at once)."""
    if (
        isinstance(problems, (str, bytes))
        or not problems
        or not all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(t, str) for t in p) for p in problems)
    ):
        raise ValueError(
            "problems must be a non-empty list of (prompt, answer) string pairs, e.g. addition_problems(10, 0)"
        )
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    step = batch_size or len(problems)
    gens = []
    for i in range(0, len(problems), step):
        gens += backend.generate_batch(
            [GenRequest(backend.tokenizer.encode(q), 5, 0.0) for q, _ in problems[i : i + step]]
        )
    correct = [g.text.split("\n")[0] + "\n" == a for g, (_, a) in zip(gens, problems)]
    return correct, [list(g.logprobs[: len(a)]) for g, (_, a) in zip(gens, problems)]


class AdditionData:
    """``get_batch(split, batch_size, block_size, generator)`` for :func:`course_utils.train.train`: byte ids,
    loss only on the answer (prompt and padding targets are -1). Train and val draw from different seeds."""

    block_size = 16

    def get_batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) * 2 + (split == "val")
        x = torch.zeros(batch_size, block_size, dtype=torch.long)
        y = torch.full((batch_size, block_size), -1, dtype=torch.long)
        for i, (q, a) in enumerate(addition_problems(batch_size, seed)):
            ids = list((q + a).encode())
            x[i, : len(ids) - 1] = torch.tensor(ids[:-1])
            y[i, len(q) - 1 : len(ids) - 1] = torch.tensor(ids[len(q) :])
        return x, y


def train_adder(name: str, *, seed: int = 0, steps: int | None = None, progress: bool = False):
    """Train one of :data:`ADDER_CONFIGS` from scratch (seeded; about a minute for the large one on 2 cores)."""

    if name not in ADDER_CONFIGS:
        raise ValueError(f"name must be one of {sorted(ADDER_CONFIGS)}, got {name!r}")
    cfg, default_steps = ADDER_CONFIGS[name]
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**cfg))
    config = TrainConfig(
        steps=steps or default_steps,
        lr=3e-3,
        warmup=50,
        batch_size=64,
        block_size=AdditionData.block_size,
        eval_every=10**9,
        eval_iters=1,
        weight_decay=0.0,
        seed=seed,
        progress=progress,
    )
    train(model, AdditionData(), config)
    return model.eval()


def build_adders(directory: str | Path = ASSETS, names=tuple(ADDER_CONFIGS)) -> dict:
    """Retrain the adders (seeded) and save ``serve_<name>.safetensors``; return their sha256 digests.

    ``python -c "from course_utils.adder import build_adders; print(build_adders())"`` rebuilds them.
    """

    digests = {}
    for name in names:
        path = save_checkpoint(
            train_adder(name, progress=True),
            Path(directory) / _checkpoint(name).name,
            meta={"task": "addition", "built_by": "course_utils.adder.build_adders"},
            sha256=True,
        )
        digests[name] = sha256_of(path)
    return digests


def load_adder(name: str, *, verify: bool = True) -> GPTBackend:
    """The committed adder checkpoint as a backend: weights and config checked against their sidecar sha256
    records (a changed ``rope_base`` is as wrong as a changed weight), safetensors, never pickle."""

    if name not in ADDER_CONFIGS:
        raise ValueError(f"name must be one of {sorted(ADDER_CONFIGS)}, got {name!r}")
    path = ASSETS / _checkpoint(name).name  # ASSETS read at call time: tests point it at a copy
    return GPTBackend(load_checkpoint(path, rebuild=REBUILD if verify else None), ByteTokenizer(), name=name)
