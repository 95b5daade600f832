"""`make site` in a real browser, with no network: figures, math and a widget work from the site's own files.

The course's site is built once per session from the committed outputs (only chapter 2 runs, for its widgets'
state; the run is cached in .cache/site/ like `make site`'s) and served from a local HTTP server. Every request to
another host is aborted, as in a room without internet. The pinned assets (MathJax, the widget manager) come from
.cache/site-assets/ or wheelhouse/site-assets/; when neither holds them they are fetched once from the npm registry
(`python docs/site/site_assets.py fetch`), and without it the test fails saying how to get them.
"""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from jlab import ARTIFACTS, ROOT
from site_course import site_assets, site_build, tiny_course

from course_utils.net import free_port

WIDGET_LESSON = "02_attention"  # figures, math and two sliders; ~20 s to run for the widgets' state
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
LOADED_IMAGES = (
    "() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))"
)


def _assets_or_fail() -> None:
    if all(site_assets.locate(a, site_assets.search_dirs()) for a in site_assets.ASSETS):
        return
    try:
        site_assets.fetch(site_assets.search_dirs()[0])
    except site_assets.AssetError as err:
        pytest.fail(f"the site's offline assets are missing: {err}", pytrace=False)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def course_site(tmp_path_factory):
    """The course's site, built once and served on 127.0.0.1: its base URL."""
    _assets_or_fail()
    out = tmp_path_factory.mktemp("site")
    problems = site_build.build(ROOT, out, widgets={WIDGET_LESSON})
    assert problems == [], "\n".join(problems)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), functools.partial(_Quiet, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def offline(page):
    """The page with every request to another host aborted; what was aborted or failed locally is recorded."""
    seen = {"aborted": [], "failed": []}

    def route(r):
        if urlsplit(r.request.url).hostname in LOCAL_HOSTS or r.request.url.startswith("data:"):
            r.continue_()
        else:
            seen["aborted"].append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("response", lambda resp: resp.status >= 400 and seen["failed"].append(f"{resp.status} {resp.url}"))
    page.on("requestfailed", lambda req: seen["failed"].append(f"failed {req.url}"))
    return page, seen


def test_course_site_works_offline(course_site, offline):
    page, seen = offline
    page.goto(f"{course_site}/{WIDGET_LESSON}.html")
    assert page.title() == "02 · Attention from scratch"
    assert page.locator(".course-map li.current").inner_text() == "02 · Attention from scratch"
    # a figure from the stored outputs, decoded by the browser
    figures = page.locator(".jp-RenderedImage img")
    figures.first.wait_for()
    assert figures.count() >= 1 and figures.first.evaluate("i => i.complete && i.naturalWidth > 0")
    # math typeset by the bundled MathJax (CommonHTML output)
    page.locator(".MathJax_CHTML").first.wait_for(timeout=30_000)
    assert page.locator(".MathJax_CHTML").count() > 5
    # a widget drawn by the bundled widget manager from the stored state, and it responds on the page
    slider = page.locator(".widget-slider").first
    slider.wait_for(timeout=30_000)
    readout = slider.locator(".widget-readout")
    before = readout.inner_text()
    slider.locator(".noUi-handle").focus()
    page.keyboard.press("ArrowLeft")
    if readout.inner_text() == before:  # it started at its minimum
        page.keyboard.press("ArrowRight")
    assert readout.inner_text() != before, f"the slider did not move from {before}"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "site-offline.png"))
    # the second page, through the "next" link: a chapter shown from its stored outputs
    page.locator('.course-pager a[rel="next"]').first.click()
    page.wait_for_load_state("load")
    assert page.url.endswith("/03_tiny_gpt.html") and page.title().startswith("03 · ")
    page.locator(".MathJax_CHTML").first.wait_for(timeout=30_000)
    assert page.locator(".jp-RenderedImage img").count() >= 1 and page.evaluate(LOADED_IMAGES) == []
    assert seen == {"aborted": [], "failed": []}, "the pages asked for something the site does not hold"


def test_site_pages_load_their_images_in_a_browser(tmp_path, page):
    _assets_or_fail()
    root = tiny_course(tmp_path / "course")
    out = tmp_path / "site"
    assert site_build.build(root, out, cache=tmp_path / "cache") == []
    for html in sorted(out.glob("*.html")):
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        bad = page.evaluate(LOADED_IMAGES)
        assert not bad, f"{html.name}: images that did not load: {bad}"
    shutil.rmtree(out)
