"""Shared, tested helpers for the course "How modern LLMs work: from tokens to Mixture-of-Experts routing".

Each chapter's reference implementation lives in a module here (``tokenization``, ``attention``, ``model``,
``moe``, ...). Notebooks import it instead of pasting code again; solution notebooks may re-derive a piece for
teaching, and a test proves the two agree. The folders hold the rest: :mod:`course_utils.course` (the course's
own tooling: labs, stored outputs, progress, doctor, widgets), :mod:`course_utils.serving` (chapter 8's server and
engine) and :mod:`course_utils.gateway` (the client side of serving). Modules that moved into a folder keep their
old import path (:mod:`course_utils._moved`).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sys

from . import _moved
from .plotting import apply_figure_dpi
from .validate import positive_int

_moved.install()

# transformers imports torchao when it is installed; torchao then logs that its CUDA-only kernels cannot load on a
# CPU machine, and registers enums that torch's pytree warns about. Harmless, but it floods every notebook's stderr
# (and nbgrader scores a graded cell with stderr output as failed).
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

__version__ = "0.1.0"

__all__ = ["setup", "seed_everything", "in_colab", "is_online"]


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules


def is_online(host: str = "pypi.org", port: int = 443, timeout: float = 1.0) -> bool:
    """Whether a package registry answers. The course never needs the network; this is only reported."""
    if os.environ.get("COURSE_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _torch_and_numpy():
    """torch and numpy, imported on first use: ``course_utils`` runs before every submodule, the course's tooling
    (labs, outputs, progress) included, which needs neither (torch costs ~1 s)."""
    import numpy  # noqa: PLC0415 — the tooling never needs it (see the docstring)
    import torch  # noqa: PLC0415 — the tooling never needs it (see the docstring)

    return torch, numpy


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch so that a notebook gives the same numbers on every run."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    torch, np = _torch_and_numpy()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(seed: int = 0, *, threads: int | None = None, quiet: bool = False):
    """Seed everything, pick a sensible thread count, print one line about the environment, return the device.

    ``threads`` defaults to ``$COURSE_THREADS`` when set, else the number of cores (at most 8). The test suite
    runs two notebooks at once on two cores and sets ``COURSE_THREADS=1``: two kernels with two threads each
    oversubscribe the cores, and small-tensor training then runs many times slower.
    """
    torch, _ = _torch_and_numpy()
    seed_everything(seed)
    if threads is None:
        env = os.environ.get("COURSE_THREADS", "")
        threads = int(env) if env.isdigit() else max(1, min(os.cpu_count() or 1, 8))
    positive_int("threads", threads)
    torch.set_num_threads(threads)
    if os.environ.get("COURSE_FIGURE_DPI"):  # `make outputs`: figures stored in the notebooks stay small
        apply_figure_dpi()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not quiet:
        where = "Colab" if in_colab() else "local"
        net = "online" if is_online() else "offline"
        print(
            f"Python {sys.version.split()[0]} | torch {torch.__version__} | device {device} "
            f"| {threads} threads | {where} | {net} | seed {seed}"
        )
    return device
