"""`make site`: the site builder rewrites links for the site, and its link check catches a broken link or image.

A small course (two tiny notebooks, a README, a picture) is built into a temporary folder. The builder's link
check must pass on it and must report a broken link and a missing image once they are added; a browser then opens
the built pages and every image must have loaded.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import nbformat
from jlab import ROOT
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

spec = importlib.util.spec_from_file_location("site_build", ROOT / "docs" / "site" / "build.py")
site_build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(site_build)

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201ea2fb8c50000000049454e44ae426082"
)


def tiny_course(root: Path) -> Path:
    (root / "notebooks").mkdir(parents=True)
    (root / "labs").mkdir()
    (root / "docs" / "img").mkdir(parents=True)
    (root / "docs" / "img" / "01_a.png").write_bytes(PNG)
    (root / "labs" / "01_a_lab.ipynb").write_text("{}")
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
    for nb, name in ((a, "01_a"), (b, "02_b")):
        nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
        nbformat.write(nb, str(root / "notebooks" / f"{name}.ipynb"))
    (root / "README.md").write_text("# Tiny course\n\nStart with [A](notebooks/01_a.ipynb).\n")
    return root


def test_site_links_are_rewritten_and_checked(tmp_path):
    root = tiny_course(tmp_path / "course")
    out = tmp_path / "site"
    assert site_build.build(root, out, cache=tmp_path / "cache") == []
    a = (out / "01_a.html").read_text()
    assert 'href="02_b.html#Part-two"' in a and 'src="_static/docs/img/01_a.png"' in a
    assert f'href="{site_build.repo_url()[0]}/blob/' in a, "a link to a lab goes to the repository"
    assert "42" in a, "the page shows the executed output"
    assert 'href="01_a.html"' in (out / "index.html").read_text()

    # Break things: a link to a page that does not exist, an anchor that does not exist, a missing image.
    (out / "02_b.html").write_text((out / "02_b.html").read_text().replace('href="01_a.html"', 'href="01_x.html"'))
    (out / "01_a.html").write_text(a.replace("#Part-two", "#Part-nine"))
    (out / "_static" / "docs" / "img" / "01_a.png").unlink()
    broken = "\n".join(site_build.check_links(out))
    assert "02_b.html: <a href='01_x.html'> -> missing file" in broken
    assert "no element with id 'Part-nine'" in broken
    assert "01_a.html: <img src='_static/docs/img/01_a.png'> -> missing file" in broken


def test_site_reuses_what_the_browser_run_executed(tmp_path):
    root = tiny_course(tmp_path / "course")
    ran = tmp_path / "executed"
    ran.mkdir()
    nb = nbformat.read(str(root / "notebooks" / "01_a.ipynb"), as_version=4)
    nb.cells[1].execution_count = 1
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="from the browser run\n")]
    nbformat.write(nb, str(ran / "01_a.ipynb"))
    assert site_build.build(root, tmp_path / "site", cache=tmp_path / "cache", executed=ran) == []
    assert "from the browser run" in (tmp_path / "site" / "01_a.html").read_text()


def test_site_pages_load_their_images_in_a_browser(tmp_path, page):
    root = tiny_course(tmp_path / "course")
    out = tmp_path / "site"
    assert site_build.build(root, out, cache=tmp_path / "cache") == []
    for html in sorted(out.glob("*.html")):
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        bad = page.evaluate(
            "() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
            ".map(i => i.getAttribute('src'))"
        )
        assert not bad, f"{html.name}: images that did not load: {bad}"
    shutil.rmtree(out)
