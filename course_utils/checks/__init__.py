"""Lab checks: ``check_<exercise>(your_function)``, one per exercise, gathered from the chapter modules.

Each chapter adds a module ``chNN.py`` here; every public ``check_*`` function in it is exported from this
package, so a lab only ever writes ``from course_utils.checks import check_get_stats``.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from ._core import CheckFailed

__all__ = ["CheckFailed", "all_checks"]


def _gather() -> dict:
    found = {}
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not mod.name.startswith("ch"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for name in getattr(module, "__all__", dir(module)):
            if name.startswith("check_"):
                if name in found:
                    raise ImportError(
                        f"{name} is defined in two chapters ({found[name].__module__}, {module.__name__})"
                    )
                found[name] = getattr(module, name)
    return found


def _home_of(name: str) -> str | None:
    """The chapter module whose ``__all__`` lists ``name``, found by reading the sources (no chapter is imported)."""
    for path in sorted(Path(__file__).parent.glob("ch*.py")):
        if f'"{name}"' in path.read_text(encoding="utf-8"):
            return path.stem
    return None


def __getattr__(name: str):
    # Lazy: importing one check imports its chapter's module only, not every chapter's dependencies.
    home = _home_of(name) if name.startswith("check_") else None
    if home is not None:
        module = importlib.import_module(f"{__name__}.{home}")
        if name in getattr(module, "__all__", ()):
            globals()[name] = getattr(module, name)
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def all_checks() -> dict:
    """Every ``check_*`` function of every chapter, by name."""
    return _gather()
