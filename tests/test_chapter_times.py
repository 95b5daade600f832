"""Chapter run times have one measured source, docs/chapter_times.json (written by `make outputs`); README's chapter
map and the instructor guide show the same numbers, generated from it (`python docs/site/guide_chapters.py
--write --times`)."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from course_utils import outputs

ROOT = Path(__file__).resolve().parents[1]
FIX = "run `python docs/site/guide_chapters.py --write --times` (docs/chapter_times.json is the source)"


@pytest.fixture(scope="module")
def guide_chapters():
    spec = importlib.util.spec_from_file_location("guide_chapters", ROOT / "docs" / "site" / "guide_chapters.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def lessons() -> list[str]:
    return sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9]*_*.ipynb"))


def test_every_lesson_has_one_recorded_run_time():
    times = outputs.run_times()
    assert sorted(times) == lessons(), "docs/chapter_times.json must hold exactly the lessons in notebooks/"
    for name, rec in times.items():
        assert isinstance(rec["seconds"], (int, float)) and rec["seconds"] > 0, name
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", rec["date"]), name
        assert rec["machine"] and "make outputs" in rec["how"], name


def test_readme_chapter_map_shows_the_recorded_times(guide_chapters):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert guide_chapters.readme_chapter_map(readme, outputs.run_times()) == readme, FIX


def test_instructor_guide_shows_the_recorded_times(guide_chapters):
    guide = (ROOT / "docs" / "instructor_guide.md").read_text(encoding="utf-8")
    shown = dict(re.findall(r"`notebooks/(\w+)\.ipynb` · \*measured run time\* (.+)$", guide, re.M))
    assert sorted(shown) == lessons(), "every chapter of the guide states its measured run time"
    assert shown == {k: outputs.run_time_text(v) for k, v in outputs.run_times().items()}, FIX
    assert guide_chapters.guide_run_times(guide, outputs.run_times()) == guide, FIX


def test_a_time_that_disagrees_with_the_file_is_caught(guide_chapters):
    times = outputs.run_times()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    guide = (ROOT / "docs" / "instructor_guide.md").read_text(encoding="utf-8")
    stale = {**times, "06_rag": {**times["06_rag"], "seconds": times["06_rag"]["seconds"] + 45}}
    assert guide_chapters.readme_chapter_map(readme, stale) != readme
    assert guide_chapters.guide_run_times(guide, stale) != guide
    new_readme = guide_chapters.readme_chapter_map(readme, stale)
    assert f"| {stale['06_rag']['seconds']:.0f} s |" in new_readme
    total = sum(round(r["seconds"]) for r in stale.values())
    assert f"| | **all lessons** | | {total} s" in new_readme


def test_record_run_time_keeps_lessons_only_with_date_and_machine(tmp_path):
    times_file = tmp_path / "chapter_times.json"
    times_file.write_text(outputs.TIMES_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    before = outputs.run_times(times_file)
    outputs.record_run_time(tmp_path / "nb.ipynb", 1.0, times_file=times_file)  # a scratch notebook: not a lesson
    assert outputs.run_times(times_file) == before
    outputs.record_run_time(ROOT / "notebooks" / "06_rag.ipynb", 170.04, times_file=times_file)
    after = outputs.run_times(times_file)
    assert after["06_rag"]["seconds"] == 170.0 and after["06_rag"]["how"] == outputs.TIMES_HOW
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", after["06_rag"]["date"]) and "cores" in after["06_rag"]["machine"]
    assert {k: v for k, v in after.items() if k != "06_rag"} == {k: v for k, v in before.items() if k != "06_rag"}
    assert json.loads(times_file.read_text(encoding="utf-8"))["about"]


def test_every_solved_lab_has_a_recorded_run_time():
    labs = json.loads(outputs.TIMES_FILE.read_text(encoding="utf-8"))["labs"]
    assert sorted(labs) == sorted(p.stem for p in (ROOT / "solutions").glob("[0-9]*_*.ipynb"))
    for name, rec in labs.items():
        assert rec["seconds"] > 0 and re.fullmatch(r"\d{4}-\d\d-\d\d", rec["date"]) and rec["machine"], name


def test_one_day_plan_is_generated_from_the_measured_times_and_adds_up(guide_chapters):
    guide = (ROOT / "docs" / "instructor_guide.md").read_text(encoding="utf-8")
    assert guide_chapters.with_one_day_plan(guide) == guide, FIX
    plan = guide.split(guide_chapters.PLAN_BEGIN, 1)[1].split(guide_chapters.PLAN_END, 1)[0]
    rows = [r.split("|")[1:-1] for r in plan.splitlines() if re.match(r"\| \d+:\d\d–", r)]
    minutes = lambda clock: int(clock.split(":")[0]) * 60 + int(clock.split(":")[1])
    spans = [[minutes(c) for c in row[0].strip().split("–")] for row in rows]
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), "each block starts when the last one ends"
    teach = sum(int(r[2]) for r in rows if r[2].strip())
    practice = sum(int(r[3]) for r in rows if r[3].strip())
    machine = sum(float(r[4]) for r in rows if r[4].strip())
    total = re.search(r"\| \| \*\*total\*\* \| \*\*(\d+)\*\* \| \*\*(\d+)\*\* \| \*\*([\d.]+)\*\* \|", plan)
    assert total and (int(total[1]), int(total[2])) == (teach, practice), "the total row is the sum of the rows"
    assert abs(float(total[3]) - machine) < 0.05 * len(rows)
    hours = re.search(r"One day \(([\d.]+) hours of teaching and exercises, (\d+:\d\d) with breaks\)", plan)
    assert hours and float(hours[1]) * 60 == teach + practice, hours and hours.group(0)
    assert minutes(hours[2]) == spans[-1][1] - spans[0][0]
    for row in rows:  # the machine time of a block's notebooks fits in its exercise minutes
        assert not row[4].strip() or float(row[4]) <= int(row[3]), row


def test_a_plan_whose_notebooks_outrun_its_minutes_is_refused(guide_chapters):
    slow = {**guide_chapters.all_times(), "03_tiny_gpt_lab": {"seconds": 60 * 60}}
    with pytest.raises(ValueError, match="more than its"):
        guide_chapters.one_day_plan(times=slow)
    missing = {k: v for k, v in guide_chapters.all_times().items() if k != "02_attention_lab"}
    with pytest.raises(ValueError, match="no measured run time"):
        guide_chapters.one_day_plan(times=missing)
    changed = {**guide_chapters.all_times(), "04_moe_layer_lab": {"seconds": 600}}
    guide = (ROOT / "docs" / "instructor_guide.md").read_text(encoding="utf-8")
    assert guide_chapters.with_one_day_plan(guide, changed) != guide
