"""Every notebook in notebooks/, opened in JupyterLab, Run All Cells, no error output; widgets respond.

One test per notebook (a fresh JupyterLab each). After the run the notebook is saved by JupyterLab in the
server's temporary copy and its outputs are read back: no ``error`` output, every code cell executed. A full-page
screenshot goes to test-artifacts/notebooks/. Then every widget in the page is poked like a person would: each
slider moved one step with ArrowRight, each text box typed into; the cell's displayed output must change.
Chapter 1 must have a token box and chapter 4 a slider (the routing explorer), so those two cannot silently
lose their widgets.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from jlab import (
    ARTIFACTS,
    ROOT,
    error_outputs,
    full_screenshot,
    open_notebook,
    output_fingerprint,
    run_all,
    save,
    unrun_code_cells,
)

NOTEBOOKS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb"))
# chapter -> (widget the chapter promises, its CSS selector inside the page)
REQUIRED_WIDGETS = {
    1: ("token box", ".widget-textarea textarea, .widget-text input"),
    4: ("routing-explorer slider", ".widget-slider .noUi-handle, .widget-slider input[type=range]"),
}
TEXT_BOX = ".jp-OutputArea .widget-textarea textarea, .jp-OutputArea .widget-text input"
SLIDER = ".jp-OutputArea .widget-slider .noUi-handle"
TYPED = " Mixture-of-Experts routing: ünïcödé"
# `COURSE_UPDATE_IMAGES=1 make e2e` refreshes the README's small pictures (docs/img/<notebook>.png) from this run.
UPDATE_IMAGES = os.environ.get("COURSE_UPDATE_IMAGES") == "1"
PICTURE_SIZE = (480, 300)
# A notebook should run in ≤ 3 minutes; the margin covers a CI machine that also runs nbval on both cores.
RUN_ALL_TIMEOUT_S = float(os.environ.get("COURSE_E2E_TIMEOUT", "900"))


def chapter(relpath: str) -> int | None:
    m = re.match(r"(\d+)_", Path(relpath).name)
    return int(m.group(1)) if m else None


def wait_for_change(page, cell, before: str, timeout_ms: int = 30_000) -> str:
    waited = 0
    while waited < timeout_ms:
        page.wait_for_timeout(250)
        waited += 250
        now = output_fingerprint(cell)
        if now != before:
            page.wait_for_timeout(500)  # let the rest of the update land
            return output_fingerprint(cell)
    return before


def poke_widgets(page, name: str) -> list[str]:
    """Move every slider and type into every text box; return a description of each that did not respond."""
    dead, poked = [], 0
    for selector, kind in ((SLIDER, "slider"), (TEXT_BOX, "text box")):
        for i in range(page.locator(selector).count()):
            control = page.locator(selector).nth(i)
            cell = control.locator("xpath=ancestor::div[contains(concat(' ', @class, ' '), ' jp-Cell ')][1]")
            control.scroll_into_view_if_needed()
            before = output_fingerprint(cell)
            if kind == "slider":
                control.focus()
                page.keyboard.press("ArrowRight")
            else:
                control.click()
                page.keyboard.press("End")
                page.keyboard.type(TYPED, delay=5)
                page.keyboard.press("Tab")  # a Text widget with continuous_update=False updates on blur
            after = wait_for_change(page, cell, before)
            if kind == "slider" and after == before:  # a slider that starts at its maximum can only move left
                control.focus()
                page.keyboard.press("ArrowLeft")
                page.keyboard.press("ArrowLeft")
                after = wait_for_change(page, cell, before)
            poked += 1
            if after == before:
                dead.append(f"{kind} #{i + 1}: the output of its cell did not change")
            elif poked == 1:  # a picture of the first widget that responded, for the README's chapter map
                (ARTIFACTS / "widgets").mkdir(parents=True, exist_ok=True)
                cell.locator(".jp-OutputArea").first.screenshot(path=str(ARTIFACTS / "widgets" / f"{name}.png"))
    return dead


def save_picture(page, name: str) -> Path | None:
    """The notebook's picture: its first responsive widget (saved by poke_widgets) or else its first plot."""
    shot = ARTIFACTS / "widgets" / f"{name}.png"
    if not shot.exists():
        plots = page.locator(".jp-OutputArea-output img")
        if plots.count() == 0:
            return None
        shot = ARTIFACTS / "plots" / f"{name}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        plots.first.scroll_into_view_if_needed()
        plots.first.screenshot(path=str(shot))
    if UPDATE_IMAGES:
        from PIL import Image  # a matplotlib dependency

        img = Image.open(shot).convert("RGB")
        img.thumbnail(PICTURE_SIZE)
        dest = ROOT / "docs" / "img" / f"{name}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        img.quantize(colors=128).save(dest, optimize=True)
    return shot


def record_time(name: str, seconds: float) -> None:
    """Browser Run All times, one JSON file per notebook (pytest-xdist workers write in parallel)."""
    out = ARTIFACTS / "times"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"notebook": name, "run_all_s": round(seconds, 1)}))


@pytest.mark.parametrize("relpath", NOTEBOOKS, ids=[Path(p).stem for p in NOTEBOOKS])
def test_notebook_runs_in_jupyterlab(lab, page, relpath):
    open_notebook(page, lab, relpath)
    seconds = run_all(page, RUN_ALL_TIMEOUT_S)
    nb = save(page, lab, relpath)
    name = Path(relpath).stem
    full_screenshot(page, ARTIFACTS / "notebooks" / f"{name}.png")
    (ARTIFACTS / "executed").mkdir(parents=True, exist_ok=True)  # `make site` reuses these outputs
    (ARTIFACTS / "executed" / Path(relpath).name).write_bytes((lab.root / relpath).read_bytes())
    errors = error_outputs(nb)
    assert not errors, f"{relpath}: error output after Run All Cells:\n" + "\n".join(errors)
    unrun = unrun_code_cells(nb)
    assert not unrun, f"{relpath}: code cells {unrun} never ran after Run All Cells"
    record_time(name, seconds)

    ch = chapter(relpath)
    if ch in REQUIRED_WIDGETS:
        what, selector = REQUIRED_WIDGETS[ch]
        assert page.locator(selector).count() > 0, f"{relpath}: chapter {ch} should show its {what}; none found"
    (ARTIFACTS / "widgets" / f"{name}.png").unlink(missing_ok=True)
    dead = poke_widgets(page, name)
    save_picture(page, name)
    assert not dead, f"{relpath}: widgets that did not respond:\n" + "\n".join(dead)


@pytest.mark.parametrize("ch", sorted(REQUIRED_WIDGETS))
def test_widget_chapter_exists(ch):
    """The widget checks above activate when the chapter's notebook lands; until then this says why they don't."""
    found = [p for p in NOTEBOOKS if chapter(p) == ch]
    if not found:
        pytest.skip(
            f"notebooks/{ch:02d}_*.ipynb does not exist yet; its {REQUIRED_WIDGETS[ch][0]} test activates when it lands"
        )
    assert len(found) == 1, f"more than one chapter-{ch} notebook: {found}"
