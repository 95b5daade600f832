"""`make site`: the builder shows stored outputs without running them, titles each page by its chapter, links the
chapters (map, previous/next), hides the Colab cells, bundles its scripts, and fails on what would break offline.

Tiny courses are built into temporary folders with stand-in assets (tests/site_course.py), so no test here needs
the network or the real MathJax; the browser tests in tests/e2e/test_site.py open the real site.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from site_course import (
    ROOT,
    SOLUTION_LINE,
    fake_assets,
    lab_notebook,
    site_assets,
    site_build,
    stored_lesson,
    tiny_course,
    write,
)

from course_utils.nbtools import colab_url


@pytest.fixture
def no_kernel(monkeypatch):
    """Any attempt to run a notebook fails the test: stored outputs must be shown as they are."""

    class NoKernel:
        def __init__(self, *a, **k):
            raise AssertionError("a notebook with stored outputs was executed")

    monkeypatch.setattr("nbclient.NotebookClient", NoKernel)


def stored_course(root):
    (root / "notebooks").mkdir(parents=True)
    for name, title in (("00_intro", "00 · Intro"), ("01_b", "01 · Bee & co"), ("02_c", "02 · Sea")):
        write(stored_lesson(title), root / "notebooks" / f"{name}.ipynb")
    (root / "README.md").write_text("# Tiny course\n\nStart with [the intro](notebooks/00_intro.ipynb).\n")
    (root / "docs").mkdir()
    (root / "docs" / "instructor_guide.md").write_text("# Instructor guide\n\nRun [B](../notebooks/01_b.ipynb).\n")
    return root


def build(tmp_path, root, **kw):
    dirs, made = fake_assets(tmp_path / "assets")
    out = tmp_path / "site"
    problems = site_build.build(root, out, cache=tmp_path / "cache", asset_dirs=dirs, asset_list=made, **kw)
    return out, problems


def test_pages_show_stored_outputs_with_chapter_titles_map_and_pager(tmp_path, no_kernel):
    out, problems = build(tmp_path, stored_course(tmp_path / "course"))
    assert problems == []
    page = (out / "01_b.html").read_text()
    assert "<title>01 · Bee &amp; co</title>" in page
    assert "stored output, not a fresh run" in page, "the committed output is shown"
    assert page.count('src="data:image/png') == 1, "the stored figure is on the page"
    # previous/next in chapter order, the map with every chapter and the current one marked
    assert re.search(r'<a (?=[^>]*rel="prev")(?=[^>]*href="00_intro.html")[^>]*>← 00 · Intro</a>', page)
    assert re.search(r'<a (?=[^>]*rel="next")(?=[^>]*href="02_c.html")[^>]*>02 · Sea →</a>', page)
    chapters = re.findall(r'<li[^>]*><a[^>]*href="(\d\d_\w+\.html)"', page)
    assert chapters == ["00_intro.html", "01_b.html", "02_c.html"]
    assert re.search(r'<li class="current"><a[^>]*href="01_b.html"', page)
    assert 'href="instructor_guide.html"' in page and 'href="index.html"' in page
    # the first chapter goes back to the course home; the last has no next
    first, last = (out / "00_intro.html").read_text(), (out / "02_c.html").read_text()
    assert re.search(r'rel="prev"[^>]*>← Course home', first) and 'rel="next"' not in last
    # the Colab cells are hidden; the page links to Colab instead of showing the (external) badge image
    assert "Colab set-up" not in page and "colab-badge.svg" not in page
    assert colab_url("notebooks/01_b.ipynb") in page
    # scripts come from _static (MathJax, require.js), none from another host
    scripts = re.findall(r'<script[^>]*\ssrc="([^"]*)"', page)
    assert scripts and all(s.startswith("_static/") for s in scripts), scripts
    assert "MathJax.js" in " ".join(scripts) and "cdnjs" not in page and "unpkg" not in page
    assert site_build.figure_counts(out)["01_b.html"] == 1
    assert site_build.WIDGET_NOTE not in page, "no widget, no note about widgets"
    guide, index = (out / "instructor_guide.html").read_text(), (out / "index.html").read_text()
    assert "<title>Instructor guide</title>" in guide
    assert re.findall(r'href="([^"]+)" aria-current="page"', guide) == ["instructor_guide.html"]
    assert re.findall(r'href="([^"]+)" aria-current="page"', index) == ["index.html"]
    assert re.findall(r'<li><a href="(\d\d_\w+\.html)"', index) == ["00_intro.html", "01_b.html", "02_c.html"]


def test_check_rejects_cdn_scripts_and_assets_missing_from_static(tmp_path, no_kernel):
    out, problems = build(tmp_path, stored_course(tmp_path / "course"))
    assert problems == []
    page = out / "02_c.html"
    html = page.read_text()
    page.write_text(
        html.replace(
            "</head>",
            '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>'
            '<link rel="stylesheet" href="//fonts.example.org/font.css">'
            '<link rel="stylesheet" href="_static/missing.css">'
            "<script>var s = document.createElement('script'); s.src = 'https://unpkg.com/x/embed-amd.js';</script>"
            "<script>var w = '_static/widgets/dist/gone.js';</script></head>",
        )
    )
    found = "\n".join(site_build.check_links(out))
    assert (
        "02_c.html: script 'https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js' -> loaded from another host"
        in found
    )
    assert "stylesheet '//fonts.example.org/font.css' -> loaded from another host" in found
    assert "stylesheet '_static/missing.css' -> not in _static/" in found
    assert "script code 'https://unpkg.com/x/embed-amd.js' -> loaded from another host" in found
    assert "script code '_static/widgets/dist/gone.js' -> not in _static/" in found
    # a bundled file that went missing is caught too
    (out / "_static" / "requirejs" / "require.js").unlink()
    assert any("'_static/requirejs/require.js' -> not in _static/" in p for p in site_build.check_links(out))


def test_lost_figures_fail_the_build(tmp_path, monkeypatch, no_kernel):
    """A page that shows fewer figures than the lesson stores (e.g. run with MPLBACKEND=Agg) is a problem."""
    real = site_build.lesson

    def without_figures(*a, **k):
        nb, how = real(*a, **k)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if "image/png" not in o.get("data", {})]
        return nb, how

    monkeypatch.setattr(site_build, "lesson", without_figures)
    _, problems = build(tmp_path, stored_course(tmp_path / "course"))
    assert "01_b.html: 0 figure(s) on the page, 1 in the lesson's stored outputs" in problems


def test_only_missing_outputs_or_live_widgets_make_a_lesson_run(tmp_path, monkeypatch):
    stored = stored_lesson("01 · A")
    assert site_build.has_stored_outputs(stored), "the Colab set-up cell is never run and does not count"
    assert not site_build.has_live_widgets(stored)
    unrun = stored_lesson("01 · A")
    unrun.cells.append(new_code_cell("print(1)"))
    assert not site_build.has_stored_outputs(unrun)
    failed = stored_lesson("01 · A")
    failed.cells[-1].outputs.append(nbformat.v4.new_output("error", ename="E", evalue="x", traceback=[]))
    assert not site_build.has_stored_outputs(failed)
    live = stored_lesson("01 · A")
    live.cells.append(new_code_cell("import ipywidgets as widgets\nwidgets.IntSlider()", execution_count=2))
    assert site_build.has_live_widgets(live) and site_build.has_stored_outputs(live)
    commented = stored_lesson("01 · A")
    commented.cells.append(new_code_cell("x = 1  # widgets.IntSlider() would need a kernel", execution_count=2))
    assert not site_build.has_live_widgets(commented)

    calls = []
    monkeypatch.setattr(site_build, "execute", lambda path, *a, widgets: calls.append((path.name, widgets)) or live)
    for name, nb in (("01_stored", stored), ("02_unrun", unrun), ("03_live", live)):
        write(nb, tmp_path / f"{name}.ipynb")
    hows = [site_build.lesson(tmp_path / f"{n}.ipynb", tmp_path / "c")[1] for n in ("01_stored", "02_unrun", "03_live")]
    assert hows == ["stored", "executed", "executed for its widgets"]
    assert calls == [("02_unrun.ipynb", False), ("03_live.ipynb", True)]
    assert site_build.lesson(tmp_path / "03_live.ipynb", tmp_path / "c", widgets=False)[1] == "stored"

    env = site_build.kernel_env()
    assert env["MPLBACKEND"] == "module://matplotlib_inline.backend_inline" and env["COURSE_THREADS"] == "1"


def test_missing_assets_fail_with_how_to_get_them(tmp_path):
    root = stored_course(tmp_path / "course")
    with pytest.raises(site_build.BuildError, match=r"not in .*: run `python docs/site/site_assets.py fetch`"):
        site_build.build(root, tmp_path / "site", asset_dirs=[tmp_path / "empty"])
    assert "make wheelhouse" in site_assets.HOW_TO_GET


def test_fetch_checks_sha256_and_says_how_to_get_assets_offline(tmp_path, monkeypatch):
    dirs, made = fake_assets(tmp_path / "registry-files")
    # a registry laid out as npm's (<package>/-/<file>), served from disk
    registry = tmp_path / "registry"
    for a in made:
        (registry / a.package / "-").mkdir(parents=True, exist_ok=True)
        (registry / a.package / "-" / a.filename).write_bytes((dirs[0] / a.filename).read_bytes())
    monkeypatch.setattr(site_assets, "REGISTRY", registry.as_uri())
    got = site_assets.fetch(tmp_path / "cache", assets=made)
    assert [p.name for p in got] == [a.filename for a in made]
    assert site_assets.install(tmp_path / "static", [tmp_path / "cache"], assets=made) > 0
    assert (tmp_path / "static" / "mathjax" / "MathJax.js").is_file()
    # an offline room: what a wheelhouse holds is copied, nothing is downloaded
    monkeypatch.setattr(site_assets, "REGISTRY", "http://127.0.0.1:9")
    copied = site_assets.fetch(tmp_path / "room", assets=made, known=[tmp_path / "cache"])
    assert [p.read_bytes() for p in copied] == [p.read_bytes() for p in got]
    monkeypatch.setattr(site_assets, "REGISTRY", registry.as_uri())

    tampered = made[0].__class__(**{**made[0].__dict__, "sha256": "0" * 64})
    with pytest.raises(site_assets.AssetError, match="sha256 .* expected 0{64}"):
        site_assets.fetch(tmp_path / "cache2", assets=(tampered,))
    assert not list((tmp_path / "cache2").iterdir()), "a tarball that fails its check is not kept"
    monkeypatch.setattr(site_assets, "REGISTRY", "http://127.0.0.1:9")
    with pytest.raises(site_assets.AssetError, match=r"could not download .*site_assets.py fetch.*make wheelhouse"):
        site_assets.fetch(tmp_path / "cache3", assets=made, timeout=5)


def test_pinned_assets_are_what_the_template_loads():
    names = {a.name: a for a in site_assets.ASSETS}
    for url in (site_assets.MATHJAX_URL, site_assets.REQUIRE_URL, site_assets.WIDGETS_URL):
        name, rel = url.split("?")[0].removeprefix("_static/").split("/", 1)
        assert site_assets._matches(rel, names[name].keep), url
    assert all(
        re.fullmatch(r"[0-9a-f]{64}", a.sha256) and re.fullmatch(r"\d+\.\d+\.\d+", a.version) for a in names.values()
    )


def test_site_links_are_rewritten_and_checked(tmp_path):
    root = tiny_course(tmp_path / "course")
    out, problems = build(tmp_path, root)
    assert problems == []
    a = (out / "01_a.html").read_text()
    assert 'href="02_b.html#Part-two"' in a and 'src="_static/docs/img/01_a.png"' in a
    assert 'href="01_a_lab.html"' in a, "a link to a lab goes to its lab page"
    assert "42" in a, "a notebook without stored outputs is executed"
    assert 'href="01_a.html"' in (out / "index.html").read_text()

    # Break things: a link to a page that does not exist, an anchor that does not exist, a missing image.
    (out / "02_b.html").write_text(
        (out / "02_b.html").read_text().replace('<a href="01_a.html">A</a>', '<a href="01_x.html">A</a>')
    )
    (out / "01_a.html").write_text(a.replace("#Part-two", "#Part-nine"))
    (out / "_static" / "docs" / "img" / "01_a.png").unlink()
    broken = "\n".join(site_build.check_links(out))
    assert "02_b.html: <a href='01_x.html'> -> missing file" in broken
    assert "no element with id 'Part-nine'" in broken
    assert "01_a.html: <img src='_static/docs/img/01_a.png'> -> missing file" in broken


def test_site_reuses_what_the_browser_run_executed(tmp_path, no_kernel):
    root = tiny_course(tmp_path / "course")
    ran = tmp_path / "executed"
    ran.mkdir()
    nb = nbformat.read(str(root / "notebooks" / "01_a.ipynb"), as_version=4)
    nb.cells[1].execution_count = 1
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="from the browser run\n")]
    nbformat.write(nb, str(ran / "01_a.ipynb"))
    out, problems = build(tmp_path, root, executed=ran)
    assert problems == []
    assert "from the browser run" in (out / "01_a.html").read_text()


@pytest.mark.slow
def test_a_live_widget_runs_once_and_its_state_is_on_the_page(tmp_path):
    """A real kernel: the widget's state is stored in the page with the local widget manager; the run is cached."""
    root = tmp_path / "course"
    (root / "notebooks").mkdir(parents=True)
    nb = new_notebook(
        cells=[
            new_markdown_cell("# 01 · Slider"),
            new_code_cell(
                "import ipywidgets as widgets\nwidgets.IntSlider(value=7, description='k')", execution_count=1
            ),
        ]
    )
    write(nb, root / "notebooks" / "01_slider.ipynb")
    out, problems = build(tmp_path, root)
    assert problems == []
    page = (out / "01_slider.html").read_text()
    state = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', page, re.S)
    assert state and '"IntSliderModel"' in state.group(1) and '"value": 7' in state.group(1)
    assert "'_static/widgets/dist/embed-amd.js'" in page and "unpkg.com" not in page
    assert site_build.WIDGET_NOTE in page, "the reader is told the widget shows what was saved"
    assert list((tmp_path / "cache").glob("01_slider.*.widgets.ipynb")), "the run is cached"


def _index_rows(out):
    script = (out / site_build.SEARCH_INDEX).read_text()
    assert script.startswith("window.COURSE_SEARCH = ") and script.rstrip().endswith(";")
    return json.loads(script.removeprefix("window.COURSE_SEARCH = ").rstrip().rstrip(";"))


def test_lab_pages_show_the_exercise_and_hints_never_the_solution(tmp_path, no_kernel):
    root = tiny_course(tmp_path / "course")
    (root / "notebooks" / "01_a.ipynb").write_text(nbformat.writes(stored_lesson("01 · A")))
    out, problems = build(tmp_path, root)
    assert problems == []
    lab = (out / "01_a_lab.html").read_text()
    shown = " ".join(t for _, _, t in site_build.page_text(lab))
    assert "Exercise 1.1" in shown and "Hint 1" in shown and "NotImplementedError" in shown
    assert "sorted(words" not in shown, "the solution's code is not on the lab page"
    assert 'href="01_a_lab.html"' in (out / "index.html").read_text(), "the home page's table links the lab"
    assert '<a href="01_a_lab.html">' in (out / "02_b.html").read_text(), "every page's map lists the labs"

    # a lab that shows its solution (say labs/ was rebuilt from the wrong notebook) fails the build
    write(lab_notebook(solved=True), root / "labs" / "01_a_lab.ipynb")
    out, problems = build(tmp_path, root)
    assert problems == [f"01_a_lab.html: shows a line of its solution: {SOLUTION_LINE!r}"]


def built_with_a_lab(tmp_path):
    """The stored course plus chapter 1's lab, built with no problem: (course folder, site folder)."""
    root = stored_course(tmp_path / "course")
    (root / "labs").mkdir()
    write(lab_notebook(), root / "labs" / "01_b_lab.ipynb")
    out, problems = build(tmp_path, root)
    assert problems == []
    return root, out


def test_every_page_links_its_notebook_for_download_and_colab(tmp_path, no_kernel):
    root, out = built_with_a_lab(tmp_path)
    for rel in ("notebooks/00_intro.ipynb", "notebooks/01_b.ipynb", "labs/01_b_lab.ipynb"):
        page = (out / f"{Path(rel).stem}.html").read_text()
        download = re.search(r'<a class="course-download"[^>]* href="([^"]+)"', page)
        assert download, f"{rel}: no download link"
        assert (out / download.group(1)).read_bytes() == (root / rel).read_bytes(), "the notebook as committed"
        assert f'<a class="course-colab" href="{colab_url(rel)}">Open in Colab</a>' in page
    # the link check covers the download links: a missing copy is a broken link
    (out / "_downloads" / "labs" / "01_b_lab.ipynb").unlink()
    assert site_build.check_links(out) == ["01_b_lab.html: <a href='_downloads/labs/01_b_lab.ipynb'> -> missing file"]


def test_search_index_covers_every_page_and_search_page_loads_it(tmp_path, no_kernel):
    root, out = built_with_a_lab(tmp_path)
    rows = _index_rows(out)
    pages = {p.name for p in out.glob("*.html")} - {site_build.SEARCH_PAGE}
    assert {r[0] for r in rows} == pages, "every page is in the index"
    by_heading = {(r[0], r[3]): r for r in rows}
    assert "Sort by length." in by_heading[("01_b_lab.html", "Exercise 1.1")][4], "hints are searchable"
    assert "stored output, not a fresh run" in " ".join(r[4] for r in rows if r[0] == "01_b.html"), "outputs too"
    assert not any("Download this notebook" in r[4] for r in rows), "the page's chrome is not indexed"
    anchors = {r[1] for r in rows if r[0] == "01_b_lab.html" and r[1]}
    assert anchors and all(f'id="{a}"' in (out / "01_b_lab.html").read_text() for a in anchors)
    search = (out / site_build.SEARCH_PAGE).read_text()
    assert f'<script src="{site_build.SEARCH_INDEX}"></script>' in search and "_static/search.js" in search
    assert 'action="search.html"' in (out / "00_intro.html").read_text(), "every page has the search box"


def test_a_stored_warning_or_stderr_output_fails_the_build(tmp_path, no_kernel):
    root = stored_course(tmp_path / "course")
    nb = stored_lesson("02 · Sea")
    nb.cells[3].outputs.append(
        nbformat.v4.new_output("stream", name="stderr", text="[transformers] You tried to access ...\n")
    )
    write(nb, root / "notebooks" / "02_c.ipynb")
    nb = stored_lesson("01 · Bee")
    nb.cells[3].outputs[0].text = "x.py:3: FutureWarning: `foo` is deprecated\n"
    write(nb, root / "notebooks" / "01_b.ipynb")
    out, problems = build(tmp_path, root)
    assert problems == [
        "notebooks/01_b.ipynb: cell 2: x.py:3: FutureWarning: `foo` is deprecated (a warning or stderr in a stored "
        "output)",
        "notebooks/02_c.ipynb: cell 2: [transformers] You tried to access ... (a warning or stderr in a stored output)",
    ]


@pytest.mark.slow
def test_the_course_site_has_lab_pages_search_and_downloads_and_no_problems(tmp_path, no_kernel):
    """The real course with stand-in assets, every lesson as stored (no kernel): no broken link, no stored warning,
    no solution line on a lab page; every lab has a page, every page is in the search index."""
    out, problems = build(tmp_path, ROOT, widgets=False)
    assert problems == [], "\n".join(problems)
    labs = sorted(p.stem for p in (ROOT / "labs").glob("*.ipynb"))
    assert labs and all((out / f"{lab}.html").is_file() for lab in labs)
    assert {r[0] for r in _index_rows(out)} == {p.name for p in out.glob("*.html")} - {site_build.SEARCH_PAGE}
    for lab in labs:
        solution = ROOT / "solutions" / f"{lab}.ipynb"
        assert site_build.solution_lines(nbformat.read(str(solution), as_version=4)), f"{lab}: nothing to look for"
