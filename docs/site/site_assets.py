"""The site's JavaScript, bundled so that pages work with no network: MathJax, require.js and the widget manager.

    python docs/site/site_assets.py fetch                         (what `make site` runs first: a no-op once cached)
    python docs/site/site_assets.py fetch --dest wheelhouse/site-assets     (what `make wheelhouse` runs)

Each asset is one npm package tarball at a pinned version, fetched from the npm registry (a package registry, so it
is reachable wherever pip is) and checked against its sha256 before it is kept or used. The tarballs are kept in
``.cache/site-assets/``; the builder also looks in ``wheelhouse/site-assets/``, the folder an instructor carries to
a room without internet. Only the files a page loads are copied into the site's ``_static/`` (about 5 MB).

Standard library only: `make wheelhouse` runs this with the system Python, before any venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "https://registry.npmjs.org"
HOW_TO_GET = (
    "run `python docs/site/site_assets.py fetch` (or `make wheelhouse`) on a machine that reaches the npm registry, "
    "or copy its site-assets/ folder into .cache/site-assets/ or wheelhouse/site-assets/"
)


@dataclass(frozen=True)
class Asset:
    """One npm tarball: which files of it the site needs (``keep``: paths or folders inside ``package/``)."""

    name: str  # the folder under _static/
    package: str
    version: str
    sha256: str
    keep: tuple[str, ...]
    skip: tuple[str, ...] = ()  # inside what ``keep`` names, left out (loaded only on a menu choice, and big)

    @property
    def filename(self) -> str:
        return f"{self.package.rsplit('/', 1)[-1]}-{self.version}.tgz"

    @property
    def url(self) -> str:
        return f"{REGISTRY}/{self.package}/-/{self.filename}"


ASSETS = (
    # MathJax 2: nbconvert's lab template configures MathJax 2 (MathJax.Hub). Only what TeX-AMS_CHTML-full loads.
    Asset(
        "mathjax",
        "mathjax",
        "2.7.9",
        "7131e739848edc14aa661a5516995866b81a477fab8b039d7cc324930e71f786",
        (
            "LICENSE",
            "MathJax.js",
            "config/TeX-AMS_CHTML-full.js",
            "config/Safe.js",
            "extensions/",
            "jax/input/TeX/",
            "jax/element/",
            "jax/output/CommonHTML/",
            "jax/output/PreviewHTML/",
            "fonts/HTML-CSS/TeX/woff/",
        ),
        ("extensions/a11y/mathjax-sre.js", "extensions/a11y/mathmaps/"),  # the speech explorer: 3.6 MB
    ),
    Asset(
        "requirejs",
        "requirejs",
        "2.3.8",
        "777158e89275e16bd51aec3ef714fbcb5dc45789e7078659933bc814916d7dec",
        ("require.js",),
    ),
    # The Jupyter widget manager for static pages (the one nbconvert's template loads; ipywidgets 8 state).
    Asset(
        "widgets",
        "@jupyter-widgets/html-manager",
        "1.0.15",
        "2b9d65cb7913e1c7d671757a10008b32c9c2448d4429513371e55c07d6107638",
        ("dist/embed-amd.js", "dist/embed.js.LICENSE.txt"),
    ),
)
# What a page loads, relative to the site root (the template's script tags).
MATHJAX_URL = "_static/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe"
REQUIRE_URL = "_static/requirejs/require.js"
WIDGETS_URL = "_static/widgets/dist/embed-amd.js"


class AssetError(RuntimeError):
    """A bundled asset is missing or corrupt; the message says how to get it."""


def search_dirs(root: Path = ROOT) -> list[Path]:
    """Where tarballs are looked for, in order: the course's cache, then the wheelhouse."""
    return [Path(root) / ".cache" / "site-assets", Path(root) / "wheelhouse" / "site-assets"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def locate(asset: Asset, dirs: list[Path]) -> Path | None:
    """The first tarball of ``asset`` in ``dirs`` whose sha256 is the pinned one; ``None`` when there is none."""
    for d in dirs:
        path = Path(d) / asset.filename
        if path.is_file() and _sha256(path) == asset.sha256:
            return path
    return None


def fetch(dest: Path, *, assets=ASSETS, timeout: float = 60, known: list[Path] = ()) -> list[Path]:
    """Put every asset in ``dest``: copied from ``known`` folders that hold it (a wheelhouse), else downloaded;
    sha256-checked either way. The tarballs' paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for asset in assets:
        path = locate(asset, [dest])
        elsewhere = locate(asset, [Path(k) for k in known]) if path is None else None
        if elsewhere is not None:
            path = Path(shutil.copyfile(elsewhere, dest / asset.filename))
        if path is None:
            part = dest / (asset.filename + ".part")
            try:
                with urllib.request.urlopen(asset.url, timeout=timeout) as r, open(part, "wb") as f:
                    shutil.copyfileobj(r, f)
            except OSError as err:
                part.unlink(missing_ok=True)
                raise AssetError(f"could not download {asset.url} ({err}); {HOW_TO_GET}") from None
            got = _sha256(part)
            if got != asset.sha256:
                part.unlink()
                raise AssetError(
                    f"{asset.url}: sha256 {got}, expected {asset.sha256} (pinned in docs/site/site_assets.py)"
                )
            path = part.replace(dest / asset.filename)
        paths.append(path)
    return paths


def _matches(rel: str, paths: tuple[str, ...]) -> bool:
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in paths)


def install(static: Path, dirs: list[Path], *, assets=ASSETS) -> int:
    """Copy the files each page needs from the cached tarballs into ``static`` (the site's _static/); bytes copied.
    A missing tarball is an :class:`AssetError` that says how to get it (the build never downloads)."""
    missing = [a for a in assets if locate(a, dirs) is None]
    if missing:
        names = ", ".join(f"{a.package}@{a.version}" for a in missing)
        where = " or ".join(str(d) for d in dirs)
        raise AssetError(f"the site's offline assets ({names}) are not in {where}: {HOW_TO_GET}")
    total = 0
    for asset in assets:
        with tarfile.open(locate(asset, dirs), "r:gz") as tar:
            for member in tar.getmembers():
                rel = member.name.split("/", 1)[-1]  # npm tarballs hold one top folder, "package/"
                if not member.isfile() or not _matches(rel, asset.keep) or _matches(rel, asset.skip):
                    continue
                target = Path(static) / asset.name / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                total += member.size
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/site/site_assets.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download the pinned tarballs (sha256-checked) unless already there")
    f.add_argument("--dest", default=str(search_dirs()[0]), help="where the tarballs are kept")
    args = parser.parse_args(argv)
    try:
        for path in fetch(Path(args.dest), known=search_dirs()):
            print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, sha256 checked)")
    except AssetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
