"""Google Colab's package set, simulated: ``install()`` (run by ``sitecustomize``) filters every import finder.

Read from ``colab_image.json`` next to this file (written by tests/test_colab.py):

- ``hidden_modules`` / ``hidden_dists``: what Colab does not have. They can be neither imported nor found by
  ``importlib.metadata``, exactly as if they were not installed.
- ``clone``: the folder standing for ``/content/course``. ``course_utils`` is importable only from there (this
  environment also has it installed from the checkout under test, which a fresh Colab VM does not).
- ``colab_versions``: packages Colab ships at another version (``{"transformers": "4.57.1"}``):
  ``importlib.metadata`` reports that version until the fake pip has installed the package.
- ``lacks``: ``{module: distribution}`` of what Colab does not ship but the bootstrap installs (faiss, torchao, ...):
  neither importable nor found until the fake pip has installed the distribution.
- ``log``: a JSON-lines file where the fake pip and ``google.colab.output`` record what they were asked to do.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata
from pathlib import Path

CONFIG = json.loads(Path(__file__).with_name("colab_image.json").read_text())
HIDDEN_MODULES = frozenset(CONFIG["hidden_modules"])
CLONE = Path(CONFIG["clone"]).resolve()
LOG = Path(CONFIG["log"])


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


HIDDEN_DISTS = frozenset(normalize(n) for n in CONFIG["hidden_dists"])
COLAB_VERSIONS = {normalize(k): v for k, v in CONFIG["colab_versions"].items()}
LACKS = {module: normalize(dist) for module, dist in CONFIG.get("lacks", {}).items()}
_REAL_FINDERS: list = []  # the finders as they were before install(): what this environment really has


def record(tool: str, argv: list[str]) -> None:
    with LOG.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"tool": tool, "argv": argv}) + "\n")


def installed() -> set[str]:
    """Packages the fake pip has installed (upgraded) in this VM."""
    names = set()
    if LOG.exists():
        for line in LOG.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            if entry["tool"] == "pip-installed":
                names.update(normalize(n) for n in entry["argv"])
    return names


def real_version(name: str) -> str | None:
    """The version this environment really has (ignoring the simulation), or None."""
    context = metadata.DistributionFinder.Context(name=name)
    for finder in _REAL_FINDERS:
        for dist in getattr(finder, "find_distributions", lambda _c: [])(context):
            return dist.version
    return None


def _in_clone(spec) -> bool:
    places = [spec.origin] if spec.origin else []
    places += list(spec.submodule_search_locations or [])
    return any(p and Path(p).resolve().is_relative_to(CLONE) for p in places)


class ColabVersion(metadata.Distribution):
    """Metadata of a package at the version Colab ships (only the fields version lookups read)."""

    def __init__(self, name: str, version: str):
        self._meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"

    def read_text(self, filename):
        return self._meta if filename in ("METADATA", "PKG-INFO") else None

    def locate_file(self, path):
        return Path(path)


class ColabImage:
    """Wraps one import finder: what Colab lacks is not found, what Colab ships older reports Colab's version."""

    def __init__(self, inner):
        self.inner = inner

    def __repr__(self):
        return f"ColabImage({self.inner!r})"

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if path is None and (top in HIDDEN_MODULES or (top in LACKS and LACKS[top] not in installed())):
            return None
        find = getattr(self.inner, "find_spec", None)
        spec = find(fullname, path, target) if find else None
        if spec is not None and fullname == "course_utils" and not _in_clone(spec):
            return None  # installed from the checkout under test: a fresh Colab VM has no course_utils
        return spec

    def find_distributions(self, context=None):
        context = context or metadata.DistributionFinder.Context()
        find = getattr(self.inner, "find_distributions", None)
        for dist in find(context) if find else []:
            name = normalize(dist.metadata["Name"] or "")
            if name in HIDDEN_DISTS or (name in LACKS.values() and name not in installed()):
                continue
            if name in COLAB_VERSIONS and name not in installed():
                yield ColabVersion(dist.metadata["Name"], COLAB_VERSIONS[name])
            else:
                yield dist

    def invalidate_caches(self):
        if hasattr(self.inner, "invalidate_caches"):
            self.inner.invalidate_caches()


def install() -> None:
    if _REAL_FINDERS:
        return
    _REAL_FINDERS.extend(sys.meta_path)
    sys.meta_path[:] = [ColabImage(f) for f in _REAL_FINDERS]
