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
EXPLORER_LESSON = "04_moe_layer"  # the routing explorer: five sliders and a checkbox beside a wide figure
# Each control of a widget box of controls (a VBox of sliders/checkboxes): is the element drawn at its centre the
# control itself (or a part of it)? A control hidden under or over a figure answers False.
CONTROLS_ON_TOP = """() => [...document.querySelectorAll(
    '.widget-vbox > .widget-slider, .widget-vbox > .widget-checkbox')].map(c => {
  c.scrollIntoView({block: 'center'});
  const r = c.getBoundingClientRect();
  const hit = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
  return [c.textContent.trim() || c.className, r.width > 0 && hit !== null && c.contains(hit)];
})"""
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
    problems = site_build.build(ROOT, out, widgets={WIDGET_LESSON, EXPLORER_LESSON})
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
    # search from the page's search box: the prebuilt index answers in the browser, with links to the sections
    page.locator(".course-map .course-search input").first.fill("expert capacity")
    page.keyboard.press("Enter")
    page.wait_for_load_state("load")
    hits = page.locator("#course-results .course-hit a")
    hits.first.wait_for()
    assert hits.count() >= 3 and "04_moe_layer.html#" in hits.evaluate_all("as => as.map(a => a.href).join(' ')")
    assert seen == {"aborted": [], "failed": []}, "the pages asked for something the site does not hold"


def test_explorer_controls_are_not_covered_by_its_figure(course_site, page):
    """Chapter 4's routing explorer at 1280 and 1600 px: every slider and the checkbox is the element at its own
    centre (its column once shrank to 0 px and the figure was drawn over the controls)."""
    page.goto(f"{course_site}/{EXPLORER_LESSON}.html")
    page.locator(".widget-vbox > .widget-checkbox").first.wait_for(timeout=30_000)
    for width in (1280, 1600):
        page.set_viewport_size({"width": width, "height": 900})
        controls = page.evaluate(CONTROLS_ON_TOP)
        assert len(controls) >= 6, f"expected the explorer's 5 sliders and checkbox, found {controls}"
        covered = [name for name, visible in controls if not visible]
        assert not covered, f"at {width} px these controls are covered by something else: {covered}"


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
