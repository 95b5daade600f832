import os
import sys
from pathlib import Path

import pytest

# Tests never touch the network, even when run without `make` (see the Makefile's exports).
os.environ.setdefault("COURSE_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # so tests can `from helpers import ...`


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: a second thread only adds synchronisation (and an HTTP server under test needs the other core).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
