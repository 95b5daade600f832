"""Driving JupyterLab the way a person does: open a notebook, Run → Run All Cells, read what the page shows.

Only the page is read (prompts, outputs, the status bar); files are saved through JupyterLab (Ctrl+S) and then
read back from the server's folder, which is a temporary copy of the course.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"  # git-ignored: screenshots, times, failure pictures
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "chromium not found (apt-get install chromium)"

IDLE = "(ipykernel) | Idle"
# A cell is still queued or running while its prompt shows [*].
BUSY_PROMPTS = (
    "() => [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]"
    ".filter(p => p.textContent.includes('*')).length"
)


def open_notebook(page, lab, relpath: str, timeout_s: float = 120) -> None:
    """Open ``relpath`` in a fresh JupyterLab tab and wait until its kernel is idle."""
    page.goto(lab.url(relpath))
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=timeout_s * 1000)
    wait_idle(page, timeout_s)


def wait_idle(page, timeout_s: float = 120) -> None:
    """Wait until the status bar says the kernel is idle."""
    page.get_by_text(IDLE).first.wait_for(timeout=timeout_s * 1000)


def menu(page, *path: str) -> None:
    """Click through the menu bar, e.g. ``menu(page, "Run", "Run All Cells")``."""
    page.locator(".lm-MenuBar-itemLabel", has_text=path[0]).first.click()
    for label in path[1:]:
        page.locator(".lm-Menu-itemLabel", has_text=label).first.click()


def wait_until_done(page, timeout_s: float) -> float:
    """Wait until no cell is queued or running and the kernel is idle; return the seconds it took."""
    start = time.monotonic()
    deadline = start + timeout_s
    quiet = 0
    while time.monotonic() < deadline:
        busy = page.evaluate(BUSY_PROMPTS)
        idle = page.get_by_text(IDLE).count() > 0
        quiet = quiet + 1 if (busy == 0 and idle) else 0
        if quiet >= 3:  # three quiet polls in a row: nothing more is coming
            return time.monotonic() - start
        page.wait_for_timeout(500)
    raise TimeoutError(f"cells still running after {timeout_s:.0f} s")


def run_all(page, timeout_s: float = 600) -> float:
    """Run → Run All Cells, then wait until every cell that will run has run. Returns the seconds it took."""
    menu(page, "Run", "Run All Cells")
    page.wait_for_timeout(500)  # let the first cells show [*]
    return wait_until_done(page, timeout_s)


def save(page, lab, relpath: str, timeout_s: float = 30) -> dict:
    """Save with Ctrl+S (JupyterLab writes the file) and return the saved notebook as JSON."""
    path = Path(lab.root) / relpath
    before = path.stat().st_mtime_ns
    page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + timeout_s
    while path.stat().st_mtime_ns == before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"JupyterLab did not save {relpath} within {timeout_s} s")
        page.wait_for_timeout(200)
    page.wait_for_timeout(300)  # the write may land in two steps
    return json.loads(path.read_text(encoding="utf-8"))


def error_outputs(nb: dict) -> list[str]:
    """``"cell N: Ename: evalue"`` for every error output in a saved notebook."""
    found = []
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
    return found


def unrun_code_cells(nb: dict) -> list[int]:
    return [
        i
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and c["source"] and c.get("execution_count") is None
    ]


def full_screenshot(page, path: Path) -> None:
    """A screenshot of the whole notebook: the window is made as tall as the notebook (capped), then captured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height = page.evaluate(
        "() => { const n = document.querySelector('.jp-WindowedPanel-outer') || "
        "document.querySelector('.jp-Notebook'); return n ? n.scrollHeight : 900 }"
    )
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": int(min(max(height + 200, 900), 16000))})
    page.evaluate(
        "() => document.querySelectorAll('.jp-WindowedPanel-outer, .jp-Notebook').forEach(n => { n.scrollTop = 0 })"
    )
    page.wait_for_timeout(500)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)


def output_fingerprint(cell) -> str:
    """What a widget's cell displays besides its controls: Output widgets, HTML/Label widgets, images, plain outputs."""
    return cell.evaluate("""c => {
        const parts = [];
        c.querySelectorAll('.jp-OutputArea-output').forEach(o => {
            const clone = o.cloneNode(true);
            clone.querySelectorAll('.widget-slider, .widget-readout, .widget-text, .widget-textarea, input, textarea')
                 .forEach(e => e.remove());
            parts.push(clone.innerHTML);
        });
        return parts.join('\\n');
    }""")
