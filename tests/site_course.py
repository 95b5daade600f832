"""Helpers for the site builder's tests: the builder module, a tiny course, and stand-in offline assets.

The stand-in assets are small npm-like tarballs (``package/...``) with the files a page loads, pinned by their own
sha256, so the builder's tests run without the real MathJax/widget manager and without network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import tarfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_utils.nbtools import BADGE_TAG, BOOTSTRAP_TAG

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("site_build", ROOT / "docs" / "site" / "build.py")
site_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(site_build)
site_assets = site_build.assets

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201ea2fb8c50000000049454e44ae426082"
)
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP4z8DwHwAFAAIB6i+4xQAAAABJRU5ErkJggg=="
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def fake_assets(folder: Path) -> tuple[list[Path], tuple]:
    """Stand-ins for :data:`site_assets.ASSETS` (same names, same files a page loads): (folders, assets)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for real in site_assets.ASSETS:
        files = {f"package/{k}": f"/* {real.package} stand-in */" for k in real.keep if not k.endswith("/")}
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, text in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(text.encode())
                tar.addfile(info, io.BytesIO(text.encode()))
        fake = site_assets.Asset(real.name, real.package, "0.0.0-test", "", real.keep, real.skip)
        (folder / fake.filename).write_bytes(buf.getvalue())
        digest = hashlib.sha256(buf.getvalue()).hexdigest()
        made.append(site_assets.Asset(real.name, real.package, "0.0.0-test", digest, real.keep, real.skip))
    return [folder], tuple(made)


def write(nb, path: Path) -> Path:
    nb.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(nb, str(path))
    return path


def tiny_course(root: Path) -> Path:
    """Two chapters (01 links to 02, a lab and a picture; 02 links back), the lab and its solution, a README and a
    picture."""
    (root / "notebooks").mkdir(parents=True)
    (root / "labs").mkdir()
    (root / "docs" / "img").mkdir(parents=True)
    (root / "docs" / "img" / "01_a.png").write_bytes(PNG)
    write(lab_notebook(), root / "labs" / "01_a_lab.ipynb")
    (root / "solutions").mkdir()
    write(lab_notebook(solved=True), root / "solutions" / "01_a_lab.ipynb")
    a = new_notebook(
        cells=[
            new_markdown_cell(
                "# 01 · A\n\nNext: [chapter B](02_b.ipynb#Part-two); "
                "the [lab](../labs/01_a_lab.ipynb); ![pic](../docs/img/01_a.png)"
            ),
            new_code_cell("print(6 * 7)"),
        ]
    )
    b = new_notebook(cells=[new_markdown_cell("# 02 · B"), new_markdown_cell("## Part two\n\nBack to [A](01_a.ipynb)")])
    write(a, root / "notebooks" / "01_a.ipynb")
    write(b, root / "notebooks" / "02_b.ipynb")
    (root / "README.md").write_text("# Tiny course\n\nStart with [A](notebooks/01_a.ipynb).\n")
    return root


SOLUTION_LINE = "return sorted(words, key=len)[-1]"


def lab_notebook(*, solved: bool = False):
    """A lab as labs/ holds it (the exercise text, a hint, a stub), or its solution (``solved``)."""
    body = (
        f"    ### BEGIN SOLUTION\n    # task: return the longest word\n    {SOLUTION_LINE}\n    ### END SOLUTION"
        if solved
        else '    # Exercise 1.1 — return the longest word\n    raise NotImplementedError("Exercise 1.1")'
    )
    return new_notebook(
        cells=[
            new_markdown_cell(
                "# 01 · Lab: the longest word\n\n## Exercise 1.1\n\n<details><summary>Hint 1</summary>Sort by length."
                "</details>"
            ),
            new_code_cell(f"def longest(words):\n{body}"),
        ]
    )


def stored_lesson(title: str, *, figure: bool = True):
    """A lesson as `make outputs` commits it: badge and Colab set-up cells (not run), math, stored outputs."""
    badge = new_markdown_cell("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](x)")
    badge.metadata["tags"] = [BADGE_TAG]
    boot = new_code_cell("# Colab set-up: installs the course\nimport sys")
    boot.metadata["tags"] = [BOOTSTRAP_TAG]
    run = new_code_cell("print('stored output')", execution_count=1)
    run.outputs = [nbformat.v4.new_output("stream", name="stdout", text="stored output, not a fresh run\n")]
    if figure:
        run.outputs.append(nbformat.v4.new_output("display_data", data={"image/png": PNG_B64, "text/plain": "<Fig>"}))
    return new_notebook(
        cells=[badge, new_markdown_cell(f"# {title}\n\nSoftmax: $e^{{x_i}} / \\sum_j e^{{x_j}}$"), boot, run]
    )
