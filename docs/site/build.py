"""Build the course site: every lesson in notebooks/ rendered to HTML with its outputs, plus README and guides.

    python docs/site/build.py --out _build/site      (what `make site` runs, after `docs/site/site_assets.py fetch`)

Lessons are committed with their outputs (`make outputs`): a page shows those stored outputs, figures included,
and nothing runs. A lesson runs (nbclient, a fresh kernel, one thread, figures drawn inline) only when its outputs
are missing, or when it shows a live widget: the widget's state is not stored with the lesson, and a page needs it
to draw the widget. What ran is cached in .cache/site/ by a hash of the notebook, so a second build runs nothing;
a notebook that `make e2e` already ran in the browser (test-artifacts/executed/) with the same cells is taken from
there instead.

Every page has its chapter's title, the chapter map (chapters, then labs) with a search box, previous/next links, a
link to download its notebook (the committed .ipynb, copied to _downloads/) and a link to open it in Colab; the
Colab set-up cell and the Colab badge are left out. Lab pages are built from labs/ (exercise text, hints and the
stubs a learner fills in), never from solutions/: a solution line found on a lab page fails the build. Search runs
in the page with no server: every section of every page is in _static/search_index.js (built here), which
_static/search.js (a few lines, no library) reads on search.html.

MathJax, require.js and the widget manager are copied into _static/ from pinned, sha256-checked npm tarballs
(docs/site/site_assets.py), so the site works with no network.

Links are rewritten for the site: a link to another lesson notebook or to a lab goes to its page, an image is copied
next to the pages, a link to any other file of the repository (a solution, a module) goes to that file on GitHub.
Finally every page is checked, and a problem fails the build (exit 1) with the page and target: a broken internal
link, anchor or image; a script or stylesheet from another host (a CDN) or missing from _static/; fewer figures
than the lesson's stored outputs hold; a lesson output that is a warning or went to stderr (a library's warning
belongs fixed in the lesson, not shown to every reader). The number of figures per page is printed.

Only packages from requirements.txt are used (nbclient, nbconvert, mistune come with nbconvert). Jupyter Book 2
was tried and does not build offline: its HTML theme is fetched from the network at build time.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Collection
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # course_utils, also when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))  # site_assets.py next to this file
import site_assets as assets  # noqa: E402

from course_utils.nbtools import BADGE_TAG, BOOTSTRAP_TAG, chapter_number, colab_url  # noqa: E402

PAGES = ("README.md", "docs/instructor_guide.md")  # markdown pages next to the notebooks, when present
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
TEMPLATES = Path(__file__).resolve().parent / "templates"  # the "course" nbconvert template (extends "lab")
CACHE_SALT = b"site-v2"  # change to re-run every cached notebook (v2: inline figures, widget state)
FIGURE = "data:image/"  # nbconvert writes a figure output as an <img> with its PNG inline
# The chapter map, the previous/next links, and the markdown pages' look (the lesson pages bring JupyterLab's CSS).
COURSE_CSS = """.course-map{font:14px/1.4 system-ui,sans-serif;margin:0 0 1rem}
.course-map ul{list-style:none;padding-left:0}
.course-map li{margin:.3rem 0}.course-note{font:14px system-ui,sans-serif;background:#fff8e1;padding:.5rem .8rem}
.course-map a[aria-current]{font-weight:bold;color:inherit;text-decoration:none}
.course-links{font:14px system-ui,sans-serif;display:flex;gap:1.2rem;flex-wrap:wrap;margin:.5rem 0}
.course-search input{width:100%;box-sizing:border-box;padding:.3rem;font:inherit}
.course-map-head{font-weight:bold;margin:.8rem 0 .2rem}.course-hit{margin:0 0 1rem}.course-hit p{margin:.2rem 0}
.course-pager{display:flex;justify-content:space-between;gap:1rem;font:15px system-ui,sans-serif;margin:1rem 0}
@media (min-width:75rem){body{padding-left:17rem!important}.course-map{position:fixed;left:0;top:0;bottom:0;
width:15rem;overflow:auto;padding:1rem;border-right:1px solid #ddd;background:#fafafa}}"""
WIDGET_NOTE = (
    '<p class="course-note">The widgets on this page were saved when the site was built: they move, but what they '
    "show is recomputed only by a running notebook (open the chapter in Colab or in JupyterLab).</p>"
)
STYLE = f"""<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
line-height:1.5}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem}}
img{{max-width:100%}}code,pre{{background:#f5f5f5}}{COURSE_CSS}</style>"""


DOWNLOADS = "_downloads"  # the notebooks as committed, for the pages' download links
SEARCH_PAGE = "search.html"
SEARCH_INDEX = "_static/search_index.js"  # window.COURSE_SEARCH = [[page, anchor, page title, heading, text], ...]
SEARCH_JS = Path(__file__).resolve().parent / "search.js"
# A stored output that is a library's warning: Python's "...Warning: message" and logging's "WARNING".
WARNING_TEXT = re.compile(r"\b\w*Warning: |\bWARNING\b")
# A solution line worth looking for on a lab page: code, long enough not to be shared boilerplate.
SOLUTION_REGION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)
MIN_SOLUTION_LINE = 20


def repo_url() -> tuple[str, str]:
    from course_utils.nbtools import BRANCH, REPO_URL

    return REPO_URL, BRANCH


class BuildError(RuntimeError):
    """A notebook could not be executed for the site, or the site's offline assets are missing."""


def _sources(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def _code_cells(nb) -> list:
    """The code cells that run on the site's pages: not empty, not the Colab set-up cell (hidden on the site)."""
    return [
        c
        for c in nb.cells
        if c.cell_type == "code" and c.source.strip() and BOOTSTRAP_TAG not in c.metadata.get("tags", [])
    ]


def has_stored_outputs(nb) -> bool:
    """Whether every code cell was executed (as `make outputs` stores lessons) and none ended in an error."""
    code = _code_cells(nb)
    return all(c.get("execution_count") for c in code) and not any(
        o.get("output_type") == "error" for c in code for o in c.get("outputs", [])
    )


def has_live_widgets(nb) -> bool:
    """Whether a code cell shows a live widget (its state is not stored with the lesson's outputs)."""
    from course_utils.outputs import LIVE_WIDGET

    return any(
        LIVE_WIDGET.search("\n".join(ln.split("#", 1)[0] for ln in c.source.splitlines())) for c in _code_cells(nb)
    )


def kernel_env() -> dict[str, str]:
    """The environment of a kernel run for the site: one thread, figures drawn inline as `make outputs` does."""
    from course_utils.outputs import FIGURE_DPI

    return dict(
        os.environ,
        COURSE_THREADS="1",
        COURSE_FIGURE_DPI=os.environ.get("COURSE_FIGURE_DPI", str(FIGURE_DPI)),
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )


def _reusable(ran: Path | None, nb, widgets: bool):
    """What `make e2e` saved after Run All (``ran``), when its cells are ``nb``'s and it ran to the end."""
    if ran is None or not ran.is_file():
        return None
    other = nbformat.read(str(ran), as_version=4)
    if _sources(other) != _sources(nb) or not has_stored_outputs(other):
        return None
    if widgets and "widgets" not in other.metadata:
        return None
    return other


def execute(path: Path, cache: Path, timeout: int = 600, executed: Path | None = None, *, widgets: bool = False):
    """The notebook with outputs: from the cache when the notebook has not changed since it was last run, else
    from ``executed/<name>.ipynb`` (what `make e2e` saved after Run All) when its cells are the same, else run
    (one thread, inline figures; with ``widgets`` the widgets' state is stored for the page)."""
    digest = hashlib.sha256(CACHE_SALT + path.read_bytes()).hexdigest()[:16]
    cached = cache / f"{path.stem}.{digest}{'.widgets' if widgets else ''}.ipynb"
    if cached.exists():
        return nbformat.read(str(cached), as_version=4)
    nb = nbformat.read(str(path), as_version=4)
    reused = _reusable(executed / path.name if executed else None, nb, widgets)
    if reused is not None:
        nb = reused
    else:
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, CellTimeoutError

        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"executing {rel}{' (for its widgets)' if widgets else ''} ...", flush=True)
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            store_widget_state=widgets,
            resources={"metadata": {"path": str(path.parent)}},
        )
        try:
            client.execute(env=kernel_env())
        except (CellExecutionError, CellTimeoutError) as err:
            raise BuildError(f"{rel} did not run to the end: {str(err).splitlines()[0]}") from None
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob(f"{path.stem}.*.ipynb"):
        old.unlink()
    nbformat.write(nb, str(cached))
    return nb


def lesson(path: Path, cache: Path, timeout: int = 600, executed: Path | None = None, *, widgets=True):
    """The notebook a page shows and how it was obtained: its stored outputs as committed ("stored", nothing runs),
    else executed (see :func:`execute`). A lesson with a live widget runs when ``widgets`` is True or names it (a
    collection of notebook stems): the widget's state is not stored with the lesson, and a page needs it to draw
    the widget."""
    nb = nbformat.read(str(path), as_version=4)
    wanted = widgets if isinstance(widgets, bool) else path.stem in widgets
    live = wanted and has_live_widgets(nb)
    if has_stored_outputs(nb) and not live:
        return nb, "stored"
    return execute(path, cache, timeout, executed, widgets=live), "executed for its widgets" if live else "executed"


class Site:
    """Rewrites the links of one page (its source lives at ``src`` in the repository) for the site in ``out``."""

    def __init__(self, root: Path, out: Path, pages: dict[str, str]):
        self.root, self.out, self.pages = root, out, pages  # pages: repo path -> site file name
        self.repo, self.branch = repo_url()

    def rewrite(self, body: str, src: str) -> str:
        base = Path(src).parent

        def fix(m):
            attr, url = m.group(1), html.unescape(m.group(2))
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith(("#", "data:", "mailto:")) or not parts.path:
                return m.group(0)
            target = (base / unquote(parts.path)).as_posix()
            target = str(Path(target)).replace("\\", "/")
            target = "/".join(p for p in _normpath(target).split("/") if p)
            frag = f"#{parts.fragment}" if parts.fragment else ""
            if target in self.pages:
                new = self.pages[target] + frag
            elif (self.root / target).is_file() and Path(target).suffix.lower() in IMAGE_EXT:
                dest = self.out / "_static" / target
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.root / target, dest)
                new = f"_static/{target}"
            elif (self.root / target).exists():
                kind = "tree" if (self.root / target).is_dir() else "blob"
                new = f"{self.repo}/{kind}/{self.branch}/{target}{frag}"
            else:
                new = url  # left as written: the link check below reports it
            return f'{attr}="{html.escape(new, quote=True)}"'

        return re.sub(r'\b(href|src)="([^"]*)"', fix, body)


def _normpath(p: str) -> str:
    out = []
    for part in p.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return "/".join(out)


def site_cells(nb):
    """A copy of ``nb`` without the cells a site reader has no use for: the Colab set-up cell and the badge."""
    page = nbformat.from_dict(nb)
    page.cells = [c for c in page.cells if not {BOOTSTRAP_TAG, BADGE_TAG} & set(c.metadata.get("tags", []))]
    return page


def notebook_html(nb, course: dict[str, str] | None = None, title: str | None = None) -> str:
    """A lesson page: nbconvert's lab page (the "course" template) with the chapter map and previous/next links in
    ``course`` (css, map, pager), scripts from _static/."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="course",
        extra_template_basedirs=[str(TEMPLATES)],
        mathjax_url=assets.MATHJAX_URL,
        require_js_url=assets.REQUIRE_URL,
        widget_renderer_url=assets.WIDGETS_URL,
    )
    exporter.exclude_input_prompt = exporter.exclude_output_prompt = True
    page = site_cells(nb)
    if title:
        page.metadata["title"] = title
    course = course or {"css": COURSE_CSS, "map": "", "pager": "", "note": "", "links": ""}
    body, _ = exporter.from_notebook_node(page, resources={"course": course})
    return body


def markdown_html(text: str, title: str, course: dict[str, str] | None = None) -> str:
    import mistune

    body = mistune.html(text)
    body = re.sub(
        r"<h([1-3])>(.*?)</h\1>",
        lambda m: f'<h{m.group(1)} id="{_slug(m.group(2))}">{m.group(2)}</h{m.group(1)}>',
        body,
    )
    course = course or {"map": ""}
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}"
    return f"<!DOCTYPE html><html><head>{head}</head><body>{course['map']}<main>{body}</main></body></html>"


def _slug(text: str) -> str:
    text = re.sub(r"<[^>]+>", "", html.unescape(text)).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def title_of(nb, fallback: str) -> str:
    """The notebook's first markdown heading (its chapter title), else ``fallback``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#+\s+(.+?)\s*#*$", cell.source, re.M)
            if m:
                return m.group(1).strip()
    return fallback


def chapter_order(notebooks) -> list[Path]:
    """Lessons in chapter order (the ``NN_`` of their names, :func:`course_utils.nbtools.chapter_number`); a
    notebook without a number comes after the chapters, by name."""
    return sorted(notebooks, key=lambda p: (chapter_number(p) is None, chapter_number(p) or 0, Path(p).name))


SEARCH_BOX = (
    f'<form class="course-search" role="search" action="{SEARCH_PAGE}"><input type="search" name="q" '
    'placeholder="Search the course" aria-label="Search the course"></form>'
)


def course_chrome(
    chapters: list[tuple[str, str]],
    current: int | None,
    extra: list[tuple[str, str]] = (),
    labs: list[tuple[str, str]] = (),
) -> dict:
    """The chapter map and the previous/next links of page ``current`` (an index into ``chapters``, a list of
    (page file, title) in chapter order; ``None`` for a page that is not a chapter). ``extra``: more (file, title)
    links under the map (the guides); ``labs``: the lab pages (file, title), listed under the chapters."""
    e = html.escape
    items = []
    for i, (href, title) in enumerate(chapters):
        here = ' class="current"' if i == current else ""
        aria = ' aria-current="page"' if i == current else ""
        items.append(f'<li{here}><a href="{e(href)}"{aria}>{e(title)}</a></li>')
    lab_items = "".join(f'<li><a href="{e(href)}">{e(title)}</a></li>' for href, title in labs)
    lab_list = f'<p class="course-map-head">Labs</p><ul>{lab_items}</ul>' if labs else ""
    more = "".join(f'<p><a href="{e(href)}">{e(title)}</a></p>' for href, title in extra)
    nav = (
        f'<nav class="course-map" aria-label="Chapters">{SEARCH_BOX}<p><a href="index.html">Course home</a></p>'
        f"<ul>{''.join(items)}</ul>{lab_list}{more}</nav>"
    )
    pager = ""
    if current is not None:
        prev = chapters[current - 1] if current > 0 else ("index.html", "Course home")
        links = [f'<a rel="prev" href="{e(prev[0])}">← {e(prev[1])}</a>']
        if current + 1 < len(chapters):
            nxt = chapters[current + 1]
            links.append(f'<a rel="next" href="{e(nxt[0])}">{e(nxt[1])} →</a>')
        pager = f'<nav class="course-pager" aria-label="Previous and next chapter">{"".join(links)}</nav>'
    return {"css": COURSE_CSS, "map": nav, "pager": pager, "note": "", "links": ""}


def _mark_current(chrome: dict, href: str) -> dict:
    """The chapter map of a page that is not a chapter (the home page, a guide), with that page marked."""
    chrome["map"] = chrome["map"].replace(f'href="{href}"', f'href="{href}" aria-current="page"', 1)
    return chrome


def notebook_links(rel: str) -> str:
    """The links above a notebook's page: download the notebook as committed (``rel``, copied by :func:`build`
    to _downloads/) and open it in Colab."""
    e = html.escape
    return (
        '<nav class="course-links" aria-label="This notebook">'
        f'<a class="course-download" href="{e(DOWNLOADS)}/{e(rel)}" download>Download this notebook (.ipynb)</a>'
        f'<a class="course-colab" href="{e(colab_url(rel))}">Open in Colab</a></nav>'
    )


def stored_warnings(nb) -> list[str]:
    """The code cells whose outputs print a warning or write to stderr: "cell N: first line" (N counts code
    cells from 1, as a reader of the notebook does)."""
    found = []
    for n, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), 1):
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.get("output_type") == "stream" else out.get("data", {}).get("text/plain")
            text = "".join(text) if isinstance(text, list) else text or ""
            if (out.get("output_type") == "stream" and out.get("name") == "stderr") or WARNING_TEXT.search(text):
                first = next((ln for ln in text.splitlines() if ln.strip()), "(empty)")
                found.append(f"cell {n}: {first[:160]}")
    return found


def solution_lines(nb) -> set[str]:
    """The code lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` of a solution notebook that a lab
    page must not show: code (an inline comment cut off), at least :data:`MIN_SOLUTION_LINE` characters, and
    found nowhere else in the notebook (a line the lab gives, or a hint quotes, is no leak)."""
    inside, outside = set(), []
    for cell in nb.cells:
        regions = SOLUTION_REGION.findall(cell.source) if cell.cell_type == "code" else []
        for region in regions:
            inside |= {ln.split("  #", 1)[0].strip() for ln in region.splitlines()}
        outside.append(SOLUTION_REGION.sub("", cell.source))
    given = " ".join(" ".join(outside).split())
    code = {ln for ln in inside if len(ln) >= MIN_SOLUTION_LINE and not ln.startswith("#")}
    return {ln for ln in code if " ".join(ln.split()) not in given}


class _Text(HTMLParser):
    """A page's sections as a reader sees them: (heading id, heading, text), leaving out scripts, styles, the
    chapter map and pagers, and the math's MathJax source."""

    SKIP = {"script", "style", "nav", "form", "head"}
    HEADINGS = {"h1", "h2", "h3"}
    BLOCKS = {"p", "div", "li", "td", "th", "summary", "pre", "br", "tr", "h4", "h5", "h6"}  # a word ends there

    def __init__(self):
        super().__init__()
        self.sections = [["", "", []]]  # [anchor, heading, text parts]
        self._skip, self._heading = 0, None

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCKS:
            self.handle_data(" ")
        if tag in self.SKIP:
            self._skip += 1
        elif tag in self.HEADINGS and not self._skip:
            self._heading = [dict(attrs).get("id") or "", []]

    def handle_endtag(self, tag):
        if tag in self.BLOCKS:
            self.handle_data(" ")
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self.HEADINGS and self._heading is not None:
            anchor, parts = self._heading
            self.sections.append([anchor, " ".join("".join(parts).replace("¶", "").split()), []])
            self._heading = None

    def handle_data(self, data):
        if self._skip:
            return
        (self._heading[1] if self._heading is not None else self.sections[-1][2]).append(data)


def page_text(text: str) -> list[tuple[str, str, str]]:
    """A page's sections: (anchor, heading, text with whitespace collapsed)."""
    p = _Text()
    p.feed(text)
    return [(a, h, " ".join("".join(parts).split())) for a, h, parts in p.sections if h or "".join(parts).strip()]


def search_index(out: Path, titles: dict[str, str]) -> list[list[str]]:
    """Every section of every page named in ``titles`` (page file -> page title): [page, anchor, page title,
    heading, text]."""
    rows = []
    for page, title in titles.items():
        for anchor, heading, text in page_text((out / page).read_text(encoding="utf-8")):
            rows.append([page, anchor, title, heading or title, text])
    return rows


def search_page(index_rows: list, chrome: dict) -> tuple[str, str]:
    """(the index script, search.html): the search box's results are computed in the page by _static/search.js
    from the prebuilt index."""
    index = "window.COURSE_SEARCH = " + json.dumps(index_rows, ensure_ascii=False, separators=(",", ":")) + ";\n"
    body = (
        '<h1>Search</h1><form role="search" action="search.html"><input type="search" name="q" id="course-q" '
        'aria-label="Search the course"> <button>Search</button></form><p id="course-count"></p>'
        '<div id="course-results"></div>'
        f'<script src="{SEARCH_INDEX}"></script><script src="_static/search.js"></script>'
    )
    head = f"<meta charset='utf-8'><title>Search</title>{STYLE}"
    return index, f"<!DOCTYPE html><html><head>{head}</head><body>{chrome['map']}<main>{body}</main></body></html>"


def figures_in(nb) -> int:
    """How many figures (PNG outputs) a notebook's outputs hold."""
    return sum(
        "image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )


def build(
    root: Path,
    out: Path,
    *,
    cache: Path | None = None,
    timeout: int = 600,
    executed: Path | None = None,
    widgets: bool | Collection[str] = True,
    asset_dirs: list[Path] | None = None,
    asset_list=assets.ASSETS,
) -> list[str]:
    """Build the site into ``out``; return the problems found (empty when the site is sound). ``widgets``: which
    lessons with live widgets run for their widgets' state (True: all, False: none, else the notebook stems named);
    the others are shown as stored. The offline assets come from ``asset_dirs`` (default: the course's
    .cache/site-assets and wheelhouse/site-assets, then this repository's); missing ones are a :class:`BuildError`
    that says how to get them."""
    root, out = Path(root).resolve(), Path(out).resolve()
    cache = cache or root / ".cache" / "site"
    executed = executed if executed is not None else root / "test-artifacts" / "executed"
    dirs = (
        asset_dirs if asset_dirs is not None else list(dict.fromkeys(assets.search_dirs(root) + assets.search_dirs()))
    )
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        assets.install(out / "_static", dirs, assets=asset_list)
    except assets.AssetError as err:
        raise BuildError(str(err)) from None
    notebooks = chapter_order((root / "notebooks").glob("*.ipynb"))
    lab_paths = chapter_order((root / "labs").glob("*.ipynb"))
    pages = {nb.relative_to(root).as_posix(): f"{nb.stem}.html" for nb in [*notebooks, *lab_paths]}
    md_pages = [p for p in PAGES if (root / p).is_file()]
    pages.update({p: ("index.html" if p == "README.md" else Path(p).stem + ".html") for p in md_pages})
    site = Site(root, out, pages)
    sources = [nbformat.read(str(p), as_version=4) for p in notebooks]
    lab_sources = [nbformat.read(str(p), as_version=4) for p in lab_paths]
    chapters = [(f"{p.stem}.html", title_of(nb, p.stem)) for p, nb in zip(notebooks, sources)]
    labs = [(f"{p.stem}.html", title_of(nb, p.stem)) for p, nb in zip(lab_paths, lab_sources)]
    guides = [(pages[p], title_of_markdown(root / p)) for p in md_pages if p != "README.md"]
    problems, rows = [], []
    for path in [*notebooks, *lab_paths]:  # the notebooks as committed, for the download links
        rel = path.relative_to(root).as_posix()
        (out / DOWNLOADS / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / DOWNLOADS / rel)
    lab_of = {chapter_number(p): p.relative_to(root).as_posix() for p in lab_paths}  # the index links a lab
    for i, (path, source) in enumerate(zip(notebooks, sources)):
        nb, how = lesson(path, cache, timeout, executed, widgets=widgets)
        rel = path.relative_to(root).as_posix()
        chrome = course_chrome(chapters, i, guides, labs)
        chrome["links"] = notebook_links(rel)
        if "widgets" in nb.metadata:
            chrome["note"] = WIDGET_NOTE
        text = site.rewrite(notebook_html(nb, chrome, chapters[i][1]), rel)
        (out / pages[rel]).write_text(text, encoding="utf-8")
        shown, stored = _parsed(text).figures, figures_in(source)
        print(f"{pages[rel]}: {shown} figure(s), {how}", flush=True)
        if shown < stored:
            problems.append(f"{pages[rel]}: {shown} figure(s) on the page, {stored} in the lesson's stored outputs")
        problems += [f"{rel}: {w} (a warning or stderr in a stored output)" for w in stored_warnings(nb)]
        picture = f"docs/img/{path.stem}.png" if (root / f"docs/img/{path.stem}.png").is_file() else None
        img = f'<img src="{picture}" alt="" width="160">' if picture else ""
        lab_cell = f"[lab]({lab_of[chapter_number(path)]})" if chapter_number(path) in lab_of else ""
        rows.append(f"| [{chapters[i][1]}]({rel}) | {lab_cell} | {img} |")
    for path, source, (href, title) in zip(lab_paths, lab_sources, labs):
        rel = path.relative_to(root).as_posix()
        chrome = _mark_current(course_chrome(chapters, None, guides, labs), href)
        chrome["links"] = notebook_links(rel)
        text = site.rewrite(notebook_html(source, chrome, title), rel)
        (out / href).write_text(text, encoding="utf-8")
        problems += leaked_solutions(root / "solutions" / path.name, text, href)
        print(f"{href}: lab, from {rel}", flush=True)
    table = "\n".join(["## Chapters", "", "| chapter | lab | picture |", "|---|---|---|", *rows])
    readme = (root / "README.md").read_text(encoding="utf-8") if (root / "README.md").is_file() else "# The course\n"
    index = f"{readme}\n\n{table}\n"
    home = _mark_current(course_chrome(chapters, None, guides, labs), "index.html")
    (out / "index.html").write_text(
        site.rewrite(markdown_html(index, title_of_markdown(root / "README.md"), home), "README.md"), encoding="utf-8"
    )
    for p, (href, title) in zip([p for p in md_pages if p != "README.md"], guides):
        text = (root / p).read_text(encoding="utf-8")
        chrome = _mark_current(course_chrome(chapters, None, guides, labs), href)
        (out / href).write_text(site.rewrite(markdown_html(text, title, chrome), p), encoding="utf-8")
    titles = {"index.html": "Course home", **dict(chapters), **dict(labs), **dict(guides)}
    script, page = search_page(search_index(out, titles), course_chrome(chapters, None, guides, labs))
    (out / SEARCH_INDEX).write_text(script, encoding="utf-8")
    shutil.copyfile(SEARCH_JS, out / "_static" / "search.js")
    (out / SEARCH_PAGE).write_text(page, encoding="utf-8")
    return problems + check_links(out)


def leaked_solutions(solution: Path, text: str, href: str) -> list[str]:
    """A lab page (``text``) must show none of its solution notebook's solution lines: one problem per line found."""
    if not solution.is_file():
        return []
    shown = "\n".join(t for _, _, t in page_text(text))
    shown = " ".join(shown.split())
    leaked = sorted(
        ln for ln in solution_lines(nbformat.read(str(solution), as_version=4)) if " ".join(ln.split()) in shown
    )
    return [f"{href}: shows a line of its solution: {ln!r}" for ln in leaked]


def title_of_markdown(path: Path) -> str:
    """A markdown page's first heading, else its file name."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    m = re.search(r"^#+\s+(.+?)\s*#*$", text, re.M)
    return m.group(1).strip() if m else path.stem.replace("_", " ")


SCRIPT_TYPES = {"", "text/javascript", "application/javascript", "module", "text/x-mathjax-config"}
# A script's code naming a file to load: a quoted path ending in .js/.mjs/.css (a query string allowed).
LOADED_FILE = re.compile(r"""['"]([^'"\s]+\.(?:m?js|css))(?:\?[^'"\s]*)?['"]""")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids, self.assets, self.figures = [], set(), [], 0
        self._script = None  # the type of the inline script being read, else None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "img" and (a.get("src") or "").startswith(FIGURE):
            self.figures += 1
        for key in ("href", "src"):
            if a.get(key) and not (tag == "link" and key == "href" and "stylesheet" not in (a.get("rel") or "")):
                self.links.append((tag, key, a[key]))
        if tag == "script" and a.get("src"):
            self.assets.append(("script", a["src"]))
        elif tag == "link" and "stylesheet" in (a.get("rel") or "") and a.get("href"):
            self.assets.append(("stylesheet", a["href"]))
        elif tag == "script":
            self._script = (a.get("type") or "").strip().lower()

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is None or self._script not in SCRIPT_TYPES:
            return
        self.assets += [("script code", u) for u in re.findall(r"https?://[^\s'\"`)]+", data)]
        self.assets += [("script code", m.group(1)) for m in LOADED_FILE.finditer(data)]


def _check_assets(page: Path, out: Path, p: _Links) -> list[str]:
    """Scripts and stylesheets must come from the site's _static/ (no CDN: the site works offline)."""
    static, problems = (out / "_static").resolve(), []
    for kind, url in p.assets:
        parts = urlsplit(url)
        where = f"{page.relative_to(out)}: {kind} {url!r}"
        if parts.scheme or parts.netloc:
            if parts.scheme not in ("data",):
                problems.append(f"{where} -> loaded from another host (the site must work offline)")
            continue
        target = (page.parent / unquote(parts.path)).resolve()
        if not (target.is_relative_to(static) and target.is_file()):
            problems.append(f"{where} -> not in _static/")
    return problems


def _parsed(text: str) -> _Links:
    p = _Links()
    p.feed(text)
    return p


def figure_counts(out: Path) -> dict[str, int]:
    """Page -> how many figures (inline images) it shows."""
    return {page.name: _parsed(page.read_text(encoding="utf-8")).figures for page in sorted(Path(out).glob("*.html"))}


def check_links(out: Path) -> list[str]:
    """Every relative href/src of every page in ``out`` must name an existing file (and anchor, if given), and
    every script and stylesheet must be a file in ``out/_static`` (see :func:`_check_assets`)."""
    out = Path(out).resolve()
    parsed = {}
    for page in sorted(out.rglob("*.html")):
        if (out / "_static") in page.parents:
            continue  # the bundled libraries' own pages (none today) are theirs
        parsed[page.resolve()] = _parsed(page.read_text(encoding="utf-8"))
    broken = []
    for page, p in parsed.items():
        broken += _check_assets(page, out, p)
        for tag, key, url in p.links:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith(("data:", "mailto:", "javascript:")):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            where = f"{page.relative_to(out)}: <{tag} {key}={url!r}>"
            if not target.is_file():
                broken.append(f"{where} -> missing file")
            elif (
                parts.fragment
                and target in parsed
                and not {parts.fragment, unquote(parts.fragment)} & parsed[target].ids
            ):
                # browsers match the fragment as written or percent-decoded (nbconvert writes encoded ids)
                broken.append(f"{where} -> no element with id {parts.fragment!r}")
    return broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/site/build.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="_build/site", help="where the site is written")
    parser.add_argument("--root", default=str(ROOT), help="the course folder")
    parser.add_argument("--timeout", type=int, default=600, help="seconds a single cell may run")
    parser.add_argument("--no-widgets", action="store_true", help="run no lesson for its widgets' state")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        broken = build(Path(args.root), Path(args.out), timeout=args.timeout, widgets=not args.no_widgets)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if broken:
        print(f"{len(broken)} problem(s):", *broken, sep="\n  ", file=sys.stderr)
        return 1
    out = Path(args.out).resolve()
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    print(
        f"site written to {out / 'index.html'} in {time.perf_counter() - t0:.0f} s ({size:.1f} MB, "
        f"{sum(figure_counts(out).values())} figures); every internal link, image, script and stylesheet resolves "
        "locally"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
