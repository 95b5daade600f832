"""Lessons ship executed: store a notebook's outputs, tag its run-dependent cells, and check the stored outputs.

Three pieces, one per job:

- ``python -m course_utils.outputs store notebooks/*.ipynb`` (``make outputs``) runs each notebook top to bottom
  in a fresh kernel (seeded by the notebook, one thread, inline figures at a modest dpi) and writes the outputs
  back in place, kept small: figures re-encoded as 256-colour PNG, widget views and widget state dropped (they
  render as nothing without a live kernel), execution counts numbered from 1. A lesson's run time goes to
  ``docs/chapter_times.json`` (:func:`record_run_time`), the one source of the chapter times that README and the
  instructor guide show.
- ``python -m course_utils.outputs tag notebooks/*.ipynb`` tags the cells whose output depends on the run (they
  time something, or show a live widget) ``nbval-ignore-output``, by the rules in :data:`RUN_DEPENDENT`;
  ``--check`` only reports. Tags are metadata: other cells stay byte-identical.
- The pytest plugin :func:`pytest_configure` (loaded with ``-p course_utils.outputs``, next to strict ``--nbval``)
  makes nbval's comparison tolerant where it must be and nowhere else: progress-bar widgets are left out on both
  sides, and two texts match when they are equal except for decimal numbers and percentages that agree within
  :data:`RTOL` (or one unit of the last printed digit); integers must be equal, and so must everything else
  (words, number of outputs, the order of lines). A cell whose numbers come from training inside the lesson declares
  its own tolerance with a tag ``rtol-<fraction>`` (:func:`cell_rtol`; e.g. ``rtol-0.05``), so the allowance is
  written where the reader sees the number, not hidden in a sanitizer. Run-dependent text (temp paths, addresses,
  PIDs, ports, durations) is replaced first, on both sides, by the sanitizer file ``tests/nbval_sanitize.cfg``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import nbformat
from PIL import Image

from ..nbtools import notebook_client

__all__ = [
    "RUN_DEPENDENT",
    "LIVE_WIDGET",
    "IGNORE_TAG",
    "RTOL",
    "RTOL_TAG",
    "cell_rtol",
    "is_run_dependent",
    "tag_notebook",
    "texts_match",
    "compress_outputs",
    "store_outputs",
    "record_run_time",
    "run_times",
    "run_time_text",
    "TIMES_FILE",
    "main",
]

IGNORE_TAG = "nbval-ignore-output"
# Two printed numbers agree when they differ by at most this fraction (or one unit of their last printed digit):
# float sums differ in the last bits across CPUs, and a few hundred training steps grow that to ~0.1%.
RTOL = 0.02
# A cell tag "rtol-0.05" declares that cell's tolerance (numbers from training inside the lesson; see cell_rtol).
RTOL_TAG = re.compile(r"^rtol-(0?\.\d+|1(?:\.0*)?)$")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
FIGURE_DPI = 72

# Source patterns of a cell that shows a live widget (ipywidgets, interact, the course's explorers); the site
# builder executes the lessons that have one, to store the widgets' state in the page.
LIVE_WIDGET = re.compile(r"\binteract(?:ive)?\(|\bwidgets\.|\b\w+_explorer\(")
# Source patterns of a cell whose printed output changes from run to run: wall-clock timings (any course timer,
# perf_counter, %timeit, "benchmark" helpers) and live widgets (:data:`LIVE_WIDGET`).
RUN_DEPENDENT = re.compile(
    r"(?:perf_counter|process_time|monotonic|time\.time)\(\)\s*-|%%?timeit|%%?time\b|\btimeit\b|\btimer\b"
    r"|\btimed\(|\bTimer\(|\bbest_of\(|\bbenchmark\w*\(|\bbench_\w+\(|\bthroughput\w*\(|\blatency\w*\("
    r"|\battention_cost\(|\brun_expert_parallel\(|\bstart_server\(|\bseconds\b|\[\"(?:eval_)?time\"\]"
    r"|\bms\b|\b(?:it|tok|tokens|req|requests)/s\b"
    rf"|{LIVE_WIDGET.pattern}|tracemalloc|os\.getpid|\bid\(",
)


# Cells whose output is text decoded from a model trained *in the notebook*: a CPU with other float rounding trains
# slightly different weights, and one flipped token changes the whole sample. Matched by a piece of their source.
TRAINED_SAMPLES = {
    "03_tiny_gpt.ipynb": ("def show(prompt", 'sample = show("12 + 7 = 19'),
}


def is_run_dependent(source: str) -> bool:
    """Whether a code cell's source matches one of the :data:`RUN_DEPENDENT` rules."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())  # rules read code, not comments
    return bool(RUN_DEPENDENT.search(code))


def tag_notebook(nb, extra: set[int] | None = None, name: str = "") -> list[int]:
    """Add ``nbval-ignore-output`` to run-dependent code cells (by :data:`RUN_DEPENDENT`, by
    :data:`TRAINED_SAMPLES` for the notebook file ``name``, and cells ``extra`` by index); return the new ones."""
    added, samples = [], TRAINED_SAMPLES.get(name, ())
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if is_run_dependent(cell.source) or (extra and i in extra) or any(s in cell.source for s in samples):
            tags = cell.metadata.get("tags", [])
            if IGNORE_TAG not in tags:
                cell.metadata["tags"] = list(tags) + [IGNORE_TAG]
                added.append(i)
    return added


# ---- comparison with a tolerance ---------------------------------------------------------------------------
_SPLIT = re.compile(r"([-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)")


def _unit(token: str) -> float:
    """One unit of the last printed digit of a number: 0.001 for '0.915', 1 for '3745', 1e-5 for '1.2e-4'."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.split(".", 1)[1]) if "." in mantissa else 0
    return 10.0 ** (int(exponent or 0) - decimals)


def _numbers_match(a: str, b: str, rtol: float, percent: bool = False) -> bool:
    if a == b:
        return True
    if not percent and not any(ch in a + b for ch in ".eE"):
        return False  # integers (token ids, counts, merge numbers) are exact; "92%" is a rounded float
    x, y = float(a), float(b)
    return abs(x - y) <= max(rtol * max(abs(x), abs(y)), 1.01 * max(_unit(a), _unit(b)))


def cell_rtol(cell) -> float:
    """The tolerance of a cell: its ``rtol-<fraction>`` tag (at most one, a fraction in (0, 1]), else :data:`RTOL`.

    A tag that looks like a tolerance but is malformed (``rtol-5%``, ``rtol-2``) or a second one raises ValueError,
    so a typo cannot silently fall back to the default."""
    tags = [t for t in (cell.get("metadata", {}).get("tags") or []) if isinstance(t, str) and t.startswith("rtol-")]
    if not tags:
        return RTOL
    if len(tags) > 1 or not RTOL_TAG.match(tags[0]) or float(tags[0][5:]) <= 0:
        raise ValueError(f"cell tags must hold one tolerance 'rtol-<fraction in (0, 1]>', got {tags}")
    return float(tags[0][5:])


def texts_match(ref: str, test: str, rtol: float = RTOL) -> bool:
    """Equal texts, except that decimal numbers (and percentages) may differ by ``rtol`` (relative) or one unit of
    their last printed digit; integers must be equal."""
    if not isinstance(ref, str) or not isinstance(test, str):
        raise TypeError("ref and test must be str")
    if ref == test:
        return True
    a, b = _SPLIT.split(ref), _SPLIT.split(test)
    if len(a) != len(b):
        return False
    for i, (p, q) in enumerate(zip(a, b)):
        if i % 2 == 0:
            if p != q:
                return False
        elif not _numbers_match(p, q, rtol, percent=a[i + 1].startswith("%") and b[i + 1].startswith("%")):
            return False
    return True


# The text a figure or a matplotlib object shows in place of itself (`<Figure size 504x288 with 1 Axes>`, the value
# of a plotting call on a cell's last line): whether it appears depends on how the kernel was asked to run the cell
# (nbval runs cells without storing history, which defeats IPython's trailing-semicolon check), and images are not
# compared anyway.
MPL_REPR = re.compile(r"^(?:<(?:Figure size|Axes|matplotlib\.)[^\n]*>|\[<matplotlib\.[^\n]*\]|Text\(.*\))$")


def _comparable(outputs) -> list:
    """Outputs without live widgets (progress bars: they show timings and have no state outside the kernel) and
    without matplotlib's placeholder texts (:data:`MPL_REPR`)."""
    keep = []
    for o in outputs:
        data = o.get("data", {})
        text = data.get("text/plain")
        if WIDGET_VIEW in data or (isinstance(text, str) and MPL_REPR.match(text.strip())):
            continue
        keep.append(o)
    return keep


def _nbval_plugin():
    """nbval's plugin module, or None when nbval is not installed."""
    try:
        import nbval.plugin  # noqa: PLC0415 — nbval loads jupyter_client (seconds): `outputs tag` never needs it
    except ImportError:
        return None
    return nbval.plugin


def pytest_configure(config):
    """Make strict nbval compare numbers with a tolerance and leave progress-bar widgets out (see module doc)."""
    plugin = _nbval_plugin()
    if plugin is None:  # nbval not installed: nothing to patch
        return
    IPyNbCell = plugin.IPyNbCell
    if getattr(IPyNbCell.compare_outputs, "_course_tolerant", False):
        return
    original = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        test, ref = _comparable(test), _comparable(ref)
        if original(self, test, ref, skip_compare):
            return True
        saved = list(getattr(self, "comparison_traceback", []))
        # Retry with every text value replaced by the reference when the two agree within the tolerance.
        ref_texts = _flat_texts(self, ref, skip_compare)
        test_texts = _flat_texts(self, test, skip_compare)
        if ref_texts.keys() != test_texts.keys() or any(len(ref_texts[k]) != len(test_texts[k]) for k in ref_texts):
            self.comparison_traceback = saved
            return False
        rtol = cell_rtol(self.cell)
        ok = all(
            texts_match(r, t, rtol) if isinstance(r, str) and isinstance(t, str) else r == t
            for k in ref_texts
            for r, t in zip(ref_texts[k], test_texts[k])
        )
        self.comparison_traceback = [] if ok else saved
        return ok

    compare_outputs._course_tolerant = True
    IPyNbCell.compare_outputs = compare_outputs


def _flat_texts(cell, outputs, skip_compare) -> dict:
    skip = skip_compare or cell.parent.skip_compare
    flat: dict[str, list] = {}
    for out in _nbval_plugin().transform_streams_for_comparison(outputs):
        for key, value in out.items():
            if key in skip:
                continue
            if key == "data":
                for mime, v in value.items():
                    if mime not in skip:
                        flat.setdefault(mime, []).append(cell.sanitize(v))
            else:
                flat.setdefault(key, []).append(cell.sanitize(value))
    return flat


# ---- storing outputs -------------------------------------------------------------------------------------------
def _recompress_png(b64: str) -> str:
    """A matplotlib PNG as a 256-colour palette PNG: about 3x smaller, indistinguishable for line plots."""

    raw = base64.b64decode(b64)
    img = Image.open(io.BytesIO(raw))
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        img = background
    buf = io.BytesIO()
    img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
    small = buf.getvalue()
    return base64.b64encode(small if len(small) < len(raw) else raw).decode("ascii")


def compress_outputs(nb) -> None:
    """Shrink a freshly executed notebook in place: palette PNGs, no widget views or widget state."""
    nb.metadata.pop("widgets", None)
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data:
                continue
            if "image/png" in data:
                data["image/png"] = _recompress_png(data["image/png"])
            if out.get("output_type") == "execute_result":
                out["execution_count"] = None
            kept.append(out)
        cell.outputs = kept
        cell.metadata.pop("execution", None)
        if "colab-bootstrap" in cell.metadata.get("tags", []):  # the shared header cell stays as nbtools writes it
            cell.execution_count = None
            continue
        count += 1
        cell.execution_count = count
        for out in cell.outputs:
            if out.get("output_type") == "execute_result":
                out["execution_count"] = count


ROOT = Path(__file__).resolve().parents[2]
# Each lesson's run time, committed: the only source of the README's chapter map times and the instructor guide's
# (`python docs/site/guide_chapters.py --write` writes both from it; tests/test_chapter_times.py compares them).
TIMES_FILE = ROOT / "docs" / "chapter_times.json"
TIMES_HOW = "`make outputs`: fresh kernel, one thread, caches warm"


def run_times(path: Path = TIMES_FILE) -> dict[str, dict]:
    """{lesson stem: {"seconds", "date", "machine", "how"}} from the committed file (empty when there is none)."""
    return json.loads(path.read_text(encoding="utf-8"))["lessons"] if path.exists() else {}


def run_time_text(record: dict) -> str:
    """One record as the guide prints it: ``165 s (`make outputs`: ...; 2 cores x86_64, 2026-12-01)``."""
    return f"{record['seconds']:.0f} s ({record['how']}; {record['machine']}, {record['date']})"


def record_run_time(path: Path, seconds: float, times_file: Path = TIMES_FILE) -> Path:
    """Keep how long a lesson of notebooks/ took top to bottom (one thread, fresh kernel) in ``times_file``, with
    the date and the machine; any other notebook (a scratch copy, a lab) is not a lesson and is not recorded."""
    if Path(path).resolve().parent != ROOT / "notebooks":
        return times_file
    lessons = run_times(times_file)
    lessons[Path(path).stem] = {
        "seconds": round(seconds, 1),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{os.cpu_count()} cores {platform.machine()}, Python {platform.python_version()}",
        "how": TIMES_HOW,
    }
    data = json.loads(times_file.read_text(encoding="utf-8")) if times_file.exists() else {}  # keeps "labs"
    data.setdefault("about", "Each lesson's run time; written by `make outputs`, read by README and the guide.")
    data["lessons"] = dict(sorted(lessons.items()))
    times_file.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return times_file


def store_outputs(path: str | Path, *, timeout: int = 600) -> Path:
    """Execute ``path`` in a fresh kernel (its own folder as working directory) and store its outputs in place."""
    path = Path(path)
    if path.suffix != ".ipynb" or not path.is_file():
        raise ValueError(f"path must be an existing .ipynb file, got {str(path)!r}")
    os.environ.setdefault("COURSE_THREADS", "1")
    os.environ.setdefault("COURSE_FIGURE_DPI", str(FIGURE_DPI))
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    t0 = time.perf_counter()
    notebook_client(nb, path.parent.resolve(), timeout).execute()
    record_run_time(path, time.perf_counter() - t0)
    compress_outputs(nb)
    # The same metadata as `nbtools.sync` writes, so that `nbtools sync --check` still passes.
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        cell.pop("id", None)
    nb.nbformat, nb.nbformat_minor = 4, 4
    path.write_text(nbformat.writes(nb, version=4) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.outputs")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("store", help="execute notebooks in place and store their (compressed) outputs")
    s.add_argument("paths", nargs="+")
    s.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    t = sub.add_parser("tag", help=f"tag run-dependent cells {IGNORE_TAG}")
    t.add_argument("paths", nargs="+")
    t.add_argument("--check", action="store_true", help="only report; exit 1 when a cell lacks its tag")
    args = parser.parse_args(argv)
    bad = 0
    for p in map(Path, args.paths):
        if args.command == "store":
            store_outputs(p, timeout=args.timeout)
            print(f"stored outputs of {p} ({p.stat().st_size / 1024:.0f} KiB)")
            continue
        old = p.read_text(encoding="utf-8")
        nb = nbformat.reads(old, as_version=4)
        added = tag_notebook(nb, name=p.name)
        if added and args.check:
            print(f"{p}: cells {added} print run-dependent output; run `python -m course_utils.outputs tag {p}`")
            bad += 1
        elif added:
            p.write_text(nbformat.writes(nb, version=4) + "\n", encoding="utf-8")
            print(f"{p}: tagged cells {added} {IGNORE_TAG}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
