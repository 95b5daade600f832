"""Checkpoints: a model's weights as safetensors plus its config as JSON (no pickle, so loading cannot run code),
and the ``sha256sum``-format sidecars that every shipped file (checkpoint, results, data) is checked against.

- :func:`save_checkpoint` / :func:`load_checkpoint` — a :class:`~course_utils.model.GPT` to files and back.
- :func:`sha256_of`, :func:`write_sha256`, :func:`read_sha256`, :func:`verify_sha256` — re-exported from
  :mod:`course_utils.checksums`, where the data modules import them without importing the model.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file

from .checksums import read_sha256, record_of, sha256_of, verify_sha256, write_sha256  # re-exported: old home
from .model import GPT, GPTConfig

__all__ = ["save_checkpoint", "load_checkpoint", "sha256_of", "write_sha256", "read_sha256", "verify_sha256"]


def save_checkpoint(model: GPT, path: str | Path, *, meta: dict | None = None, sha256: bool = False) -> Path:
    """Write ``path`` (safetensors weights) and ``path`` with ``.json`` (the config and ``meta``). No pickle.

    ``sha256=True`` also writes both files' sidecar ``.sha256`` records (:func:`write_sha256`), which
    ``load_checkpoint(path, rebuild=...)`` checks: shipped checkpoints are saved this way."""

    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"path must end in .safetensors, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # tied weights are one tensor: store it once (safetensors refuses shared storage)
    state = {
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if not (model.config.tie_embeddings and k == "lm_head.weight")
    }
    save_file(state, str(path), metadata={"format": "course_utils.GPT"})
    path.with_suffix(".json").write_text(json.dumps({"config": asdict(model.config), "meta": meta or {}}, indent=1))
    if sha256:
        write_sha256(path)
        write_sha256(path.with_suffix(".json"))
    return path


def load_checkpoint(
    path: str | Path, *, map_location: str = "cpu", rebuild: str | None = None, warn_unchecked: bool = False
) -> GPT:
    """Rebuild the :class:`GPT` saved by :func:`save_checkpoint` (config from the JSON, weights from safetensors).

    The weights *and* the JSON config are checked against their sidecar ``.sha256`` records whenever the records
    exist, on every path (a changed ``rope_base`` is as wrong as a changed weight). With ``rebuild`` (a shipped
    checkpoint: the command that rebuilds it, quoted in the error) the records must exist; without it a checkpoint
    saved without them (``save_checkpoint``'s default) loads, with one warning if ``warn_unchecked`` (what a
    server does: ``load_backend(name, checkpoint)``).
    """

    path = Path(path)
    side = path.with_suffix(".json")
    if rebuild is not None:  # first: a missing file's error then says how to rebuild it
        verify_sha256(path, rebuild=rebuild)
        verify_sha256(side, rebuild=rebuild)
    if not path.exists() or not side.exists():
        raise FileNotFoundError(f"expected {path} and {side} (written by save_checkpoint)")
    if rebuild is None:
        how = f"save_checkpoint({path.name!r}, sha256=True) again, or restore the original files"
        missing = [p.name for p in (path, side) if not record_of(p, None).exists()]
        for p in (path, side):
            if record_of(p, None).exists():
                verify_sha256(p, rebuild=how)
        if missing and warn_unchecked:
            warnings.warn(
                f"{', '.join(missing)}: no .sha256 sidecar, so the checkpoint is loaded unchecked "
                "(save_checkpoint(..., sha256=True) writes them)",
                UserWarning,
                stacklevel=2,
            )
    config = GPTConfig(**json.loads(side.read_text())["config"])
    model = GPT(config)
    state = load_file(str(path), device=map_location)
    if config.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    model.load_state_dict(state, strict=True)
    model.eval()
    return model
