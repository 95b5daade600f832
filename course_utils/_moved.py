"""Old module paths of modules that moved into folders, kept importable.

The package is laid out by kind of code (chapters at the top, the course's tooling in :mod:`course_utils.course`,
the service in :mod:`course_utils.serving` and :mod:`course_utils.gateway`). Notebooks, labs, learners' own code
and commands such as ``python -m course_utils.doctor`` name the old paths: each old name resolves to the *same*
module object as the new one (so a monkeypatch or ``isinstance`` through either name sees one module), and
``python -m <old name>`` runs the new module as a script.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: old dotted name → new dotted name
MOVED = {
    "course_utils.labs": "course_utils.course.labs",
    "course_utils.outputs": "course_utils.course.outputs",
    "course_utils.progress": "course_utils.course.progress",
    "course_utils.doctor": "course_utils.course.doctor",
    "course_utils.widgets": "course_utils.course.widgets",
    "course_utils.caches": "course_utils.gateway.caches",
    "course_utils.resilience": "course_utils.gateway.resilience",
    "course_utils.ratelimit": "course_utils.gateway.ratelimit",
    "course_utils.cascade": "course_utils.gateway.cascade",
    "course_utils.batching": "course_utils.serving.engine",
    "course_utils.sampling": "course_utils.serving.sampling",
    "course_utils.served_models": "course_utils.serving.models",
    "course_utils.adder": "course_utils.serving.adder",
}


class _OldPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name and loads it as the module at its new path."""

    def __init__(self):
        self._specs = {}  # new name -> its real spec, put back after import machinery set the alias spec

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=MOVED[fullname])

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # the import system set the alias spec on the shared module object: give it back its own
        module.__spec__ = self._specs.pop(module.__spec__.name, module.__spec__)

    def get_code(self, fullname):
        # `python -m <old name>`: runpy asks for code to run as __main__; run the new module the same way
        source = f"import runpy\nrunpy.run_module({MOVED[fullname]!r}, run_name='__main__', alter_sys=True)\n"
        return compile(source, f"<{fullname} → {MOVED[fullname]}>", "exec")

    def is_package(self, fullname):
        return False


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (after the standard finders: real modules win)."""
    if not any(isinstance(f, _OldPathFinder) for f in sys.meta_path):
        sys.meta_path.append(_OldPathFinder())
