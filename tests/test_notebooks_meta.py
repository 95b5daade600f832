"""Every notebook: same Colab header, badge pointing at itself, exercises with checks; labs and solutions without
outputs, lessons with small stored outputs at most."""

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_utils import labs, nbtools

ROOT = Path(__file__).resolve().parents[1]
ALL = sorted(p for d in nbtools.NOTEBOOK_DIRS for p in (ROOT / d).glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def _ids(paths):
    return [p.relative_to(ROOT).as_posix() for p in paths]


@pytest.mark.parametrize("path", ALL, ids=_ids(ALL))
def test_header_badge_and_bootstrap(path):
    nb = nbformat.read(path, as_version=4)
    rel = path.relative_to(ROOT).as_posix()
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{rel}: notebooks are named NN_topic.ipynb"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source == nbtools.badge_source(rel)
    assert nbtools.colab_url(rel).endswith(f"/blob/{nbtools.BRANCH}/{rel}")
    assert nb.cells[1].cell_type == "code" and nb.cells[1].source == nbtools.BOOTSTRAP_SOURCE
    assert nb.metadata["kernelspec"]["name"] == "python3"


LABS_AND_SOLUTIONS = [p for p in ALL if p.parent.name != "notebooks"]
LESSONS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", LABS_AND_SOLUTIONS, ids=_ids(LABS_AND_SOLUTIONS))
def test_labs_and_solutions_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_lessons_ship_small_outputs(path):
    """Lessons may be stored executed (`make outputs`): then small, without widget state or error outputs."""
    nb = nbformat.read(path, as_version=4)
    assert "widgets" not in nb.metadata, f"{path.name}: widget state stored; run `make outputs`"
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"{path.name}: cell {i} stored an error"
            data = out.get("data", {})
            assert "application/vnd.jupyter.widget-view+json" not in data, f"{path.name}: cell {i} stores a widget"
            for mime, value in data.items():
                size = len(value) if isinstance(value, str) else len(str(value))
                assert size < 150_000, f"{path.name}: cell {i} stores {size // 1000} kB of {mime}"
    assert path.stat().st_size < 1_500_000, f"{path.name}: {path.stat().st_size // 1000} kB; keep lessons small"


def test_nbtools_sync_check_passes():
    result = subprocess.run(
        [sys.executable, "-m", "course_utils.nbtools", "sync", "--check", "--root", str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_lesson_chapter_has_a_lab_and_vice_versa():
    lessons = {p.name[:2] for p in (ROOT / "notebooks").glob("*.ipynb")} - {"00"}
    solved = {p.name[:2] for p in SOLUTIONS}
    assert solved <= lessons, f"solutions without a lesson: {sorted(solved - lessons)}"
    assert lessons <= solved, f"lessons without a solved lab: {sorted(lessons - solved)}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=_ids(SOLUTIONS))
def test_each_exercise_is_followed_by_its_check(path):
    nb = nbformat.read(path, as_version=4)
    found = labs.exercises(nb, labs.chapter_of(path), where=path.name)
    assert found, f"{path.name} has no exercises"
    starts = [e.cell_index for e in found] + [len(nb.cells)]
    for ex, nxt in zip(found, starts[1:]):
        between = nb.cells[ex.cell_index + 1 : nxt]
        assert any(c.cell_type == "code" and re.search(r"\bcheck_\w+\(", c.source) for c in between), (
            f"{path.name}: exercise {ex.number} has no check cell after it"
        )
        assert ex.cell_index > 1 and nb.cells[ex.cell_index].metadata["nbgrader"]["solution"] is True


def test_repository_url_is_written_in_exactly_one_source_file():
    hits = []
    for path in ROOT.rglob("*"):
        if (
            path.is_file()
            and path.suffix in {".py", ".md", ".txt", ".toml", ".cfg", ".yml", ".yaml"}
            and ".venv" not in path.parts
            and ".git" not in path.parts
        ):
            if nbtools.REPO_URL in path.read_text(encoding="utf-8", errors="ignore"):
                hits.append(path.relative_to(ROOT).as_posix())
    assert hits == ["course_utils/nbtools.py"], hits


LESSONS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LONGEST_CELL = 40  # "≲ 25 lines" is the aim; a few measured set-ups run longer, none beyond this


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=_ids(LESSONS + SOLUTIONS))
def test_notebooks_open_with_their_title_then_a_seeded_setup(path):
    cells = nbformat.read(str(path), as_version=4).cells[2:]  # after the badge and the bootstrap
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith(f"# {path.name[:2]} · "), cells[0].source
    firsts = [c.source for c in cells if c.cell_type == "code"][:2]
    assert any(re.search(r"\bsetup\(seed=0\b", s) for s in firsts), f"{path.name}: no course_utils.setup(seed=0)"


@pytest.mark.parametrize("path", ALL, ids=_ids(ALL))
def test_code_cells_stay_short(path):
    long = [
        (i, len(c.source.splitlines()))
        for i, c in enumerate(nbformat.read(str(path), as_version=4).cells)
        if c.cell_type == "code" and c.metadata.get("tags", []) != [nbtools.BOOTSTRAP_TAG]
        if len(c.source.splitlines()) > LONGEST_CELL
    ]
    assert not long, f"{path.name}: code cells over {LONGEST_CELL} lines (cell, lines): {long}"


def test_progress_bars_come_from_tqdm_auto():
    """tqdm.auto draws a widget in Jupyter and text elsewhere; plain tqdm prints a new line per update in a notebook."""
    plain = re.compile(r"^\s*(?:from tqdm import|import tqdm\s*$)|\btqdm\.tqdm\(", re.M)
    sources = [(p.name, c.source) for p in ALL for c in nbformat.read(str(p), as_version=4).cells]
    sources += [(p.name, p.read_text(encoding="utf-8")) for p in (ROOT / "course_utils").rglob("*.py")]
    assert not [name for name, source in sources if plain.search(source)]


def test_the_welcome_map_lists_every_lesson():
    welcome = nbformat.read(str(ROOT / "notebooks" / "00_welcome.ipynb"), as_version=4)
    table = next(c.source for c in welcome.cells if c.source.startswith("## The map"))
    rows = set(re.findall(r"^\| (\d\d) \|", table, re.M))
    assert rows == {p.name[:2] for p in LESSONS} - {"00"}
