"""Build the course site: every notebook in notebooks/ executed and rendered to HTML, plus README and guides.

    python docs/site/build.py --out _build/site      (what `make site` runs)

Notebooks are executed in a fresh kernel (nbclient, the engine nbconvert and nbval use) and cached in
.cache/site/ by a hash of the notebook, so a second build only re-runs what changed; a notebook that `make e2e`
already ran in the browser (test-artifacts/executed/) with the same cells is taken from there instead. Links are
rewritten for the site: a link to another lesson notebook goes to its page, an image is copied next to the pages, a
link to any other file of the repository (a lab, a solution, a module) goes to that file on GitHub. Finally every page's
internal links, anchors and images are checked; a broken one fails the build (exit 1) with the page and target.

Only packages from requirements.txt are used (nbclient, nbconvert, mistune come with nbconvert). Jupyter Book 2
was tried and does not build offline: its HTML theme is fetched from the network at build time.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("README.md", "docs/instructor_guide.md")  # markdown pages next to the notebooks, when present
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
STYLE = """<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .6rem}img{max-width:100%}
code,pre{background:#f5f5f5}nav{margin-bottom:1.5rem}</style>"""


def repo_url() -> tuple[str, str]:
    sys.path.insert(0, str(ROOT))
    from course_utils.nbtools import BRANCH, REPO_URL

    return REPO_URL, BRANCH


class BuildError(RuntimeError):
    """A notebook could not be executed for the site."""


def _sources(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def execute(path: Path, cache: Path, timeout: int = 600, executed: Path | None = None):
    """The notebook with outputs: from the cache when the notebook has not changed since it was last run, else
    from ``executed/<name>.ipynb`` (what `make e2e` saved after Run All) when its cells are the same, else run."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cached = cache / f"{path.stem}.{digest}.ipynb"
    if cached.exists():
        return nbformat.read(str(cached), as_version=4)
    nb = nbformat.read(str(path), as_version=4)
    ran = executed / path.name if executed else None
    if ran is not None and ran.is_file():
        other = nbformat.read(str(ran), as_version=4)
        code = [c for c in other.cells if c.cell_type == "code" and c.source.strip()]
        if (
            _sources(other) == _sources(nb)
            and all(c.get("execution_count") for c in code)
            and not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
        ):
            nb = other
            ran = "reused"
    if ran != "reused":
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, CellTimeoutError

        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"executing {rel} ...", flush=True)
        try:
            NotebookClient(
                nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
            ).execute()
        except (CellExecutionError, CellTimeoutError) as err:
            raise BuildError(f"{rel} did not run to the end: {str(err).splitlines()[0]}") from None
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob(f"{path.stem}.*.ipynb"):
        old.unlink()
    nbformat.write(nb, str(cached))
    return nb


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


def notebook_html(nb) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input_prompt = exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb)
    return body


def markdown_html(text: str, title: str) -> str:
    import mistune

    body = mistune.html(text)
    body = re.sub(
        r"<h([1-3])>(.*?)</h\1>",
        lambda m: f'<h{m.group(1)} id="{_slug(m.group(2))}">{m.group(2)}</h{m.group(1)}>',
        body,
    )
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}"
    return f"<!DOCTYPE html><html><head>{head}</head><body>{body}</body></html>"


def _slug(text: str) -> str:
    text = re.sub(r"<[^>]+>", "", html.unescape(text)).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def title_of(nb, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if m:
                return m.group(1).strip()
    return fallback


def build(
    root: Path, out: Path, *, cache: Path | None = None, timeout: int = 600, executed: Path | None = None
) -> list[str]:
    """Build the site into ``out``; return the broken links found (empty when the site is sound)."""
    root, out = Path(root).resolve(), Path(out).resolve()
    cache = cache or root / ".cache" / "site"
    executed = executed if executed is not None else root / "test-artifacts" / "executed"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    notebooks = sorted((root / "notebooks").glob("*.ipynb"))
    pages = {nb.relative_to(root).as_posix(): f"{nb.stem}.html" for nb in notebooks}
    md_pages = [p for p in PAGES if (root / p).is_file()]
    pages.update({p: ("index.html" if p == "README.md" else Path(p).stem + ".html") for p in md_pages})
    site = Site(root, out, pages)
    rows = []
    for path in notebooks:
        nb = execute(path, cache, timeout, executed)
        rel = path.relative_to(root).as_posix()
        (out / pages[rel]).write_text(site.rewrite(notebook_html(nb), rel), encoding="utf-8")
        picture = next(
            (f"docs/img/{path.stem}.png" for _ in [0] if (root / f"docs/img/{path.stem}.png").is_file()), None
        )
        img = f'<img src="{picture}" alt="" width="160">' if picture else ""
        rows.append(f"| [{title_of(nb, path.stem)}]({rel}) | {img} |")
    chapters = "\n".join(["## Chapters", "", "| notebook | picture |", "|---|---|", *rows])
    readme = (root / "README.md").read_text(encoding="utf-8") if (root / "README.md").is_file() else "# The course\n"
    nav = " · ".join(f"[{Path(p).stem.replace('_', ' ')}]({p})" for p in md_pages if p != "README.md")
    index = f"{readme}\n\n{nav}\n\n{chapters}\n"
    (out / "index.html").write_text(site.rewrite(markdown_html(index, "Course"), "README.md"), encoding="utf-8")
    for p in md_pages:
        if p != "README.md":
            text = (root / p).read_text(encoding="utf-8")
            (out / pages[p]).write_text(site.rewrite(markdown_html(text, Path(p).stem), p), encoding="utf-8")
    return check_links(out)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        for key in ("href", "src"):
            if a.get(key) and not (tag == "link" and key == "href" and "stylesheet" not in (a.get("rel") or "")):
                self.links.append((tag, key, a[key]))


def check_links(out: Path) -> list[str]:
    """Every relative href/src of every page in ``out`` must name an existing file (and anchor, if given)."""
    parsed = {}
    for page in sorted(Path(out).rglob("*.html")):
        p = _Links()
        p.feed(page.read_text(encoding="utf-8"))
        parsed[page.resolve()] = p
    broken = []
    for page, p in parsed.items():
        for tag, key, url in p.links:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith(("data:", "mailto:", "javascript:")):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            where = f"{page.relative_to(Path(out).resolve())}: <{tag} {key}={url!r}>"
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
    args = parser.parse_args(argv)
    try:
        broken = build(Path(args.root), Path(args.out), timeout=args.timeout)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if broken:
        print(f"{len(broken)} broken link(s):", *broken, sep="\n  ", file=sys.stderr)
        return 1
    print(f"site written to {Path(args.out).resolve() / 'index.html'}; every internal link and image resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
