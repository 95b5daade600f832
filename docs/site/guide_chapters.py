"""Print the per-chapter part of docs/instructor_guide.md from what the course contains right now.

    python docs/site/guide_chapters.py --write    (rewrites the guide's chapter part and README's chapter map times)
    python docs/site/guide_chapters.py --write --times    (only the run times, in both: what `make outputs` runs)

``--write`` also rewrites the guide's one-day workshop plan (between ``<!-- one-day:begin -->`` and
``<!-- one-day:end -->``) from :data:`ONE_DAY` and the measured run times of its lessons and solved labs, so that
its clock times, its sums and its machine minutes add up.

For each notebook in notebooks/: its title and learning goals (the "What you will build" list of its first
markdown cells), its measured run time (from docs/chapter_times.json, which `make outputs` writes: a fresh kernel,
one thread), and its lab's exercises with an expected difficulty (from the length of the reference answer) and the
common mistakes, which are the failure messages the chapter's checks give for the wrong implementations in
tests/test_checks_chNN.py. ``--write`` replaces what lies between the guide's
``<!-- chapters:begin -->`` / ``<!-- chapters:end -->`` markers (the prose around them is written by hand) and the
run-time column of README's chapter map, from the same file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from course_utils.labs import BEGIN, END, HEADING_RE, exercise_markdown, exercises  # noqa: E402
from course_utils.outputs import TIMES_FILE, run_time_text, run_times  # noqa: E402


def goals(nb) -> list[str]:
    for cell in nb.cells[:6]:
        if cell.cell_type == "markdown" and re.search(r"what you will (build|learn)", cell.source, re.I):
            after = re.split(r"what you will (?:build|learn)[^\n]*\n", cell.source, flags=re.I)[-1]
            # a bullet runs on over indented continuation lines; keep all of it, on one line
            items = re.findall(r"^\s*[-*]\s+(.+(?:\n[ \t]+(?![-*]\s).+)*)", after, re.M)
            if items:
                return [re.sub(r"\s*\n\s*", " ", i).rstrip(";.") for i in items]
    return []


def title(nb, fallback: str) -> str:
    for cell in nb.cells:
        m = re.search(r"^#\s+(.+)$", cell.source, re.M) if cell.cell_type == "markdown" else None
        if m:
            return m.group(1).strip()
    return fallback


def run_time(path: Path, times: dict[str, dict] | None = None) -> str:
    record = (run_times() if times is None else times).get(path.stem)
    return run_time_text(record) if record else "not measured yet (`make outputs`)"


RUN_TIME_LINE = re.compile(r"^(\*Notebook\* `notebooks/(\w+)\.ipynb` · \*measured run time\* ).*$", re.M)


def guide_run_times(guide: str, times: dict[str, dict]) -> str:
    """The guide's text with each chapter's "measured run time" written from ``times`` (the rest left as it is)."""
    return RUN_TIME_LINE.sub(lambda m: m.group(1) + run_time(Path(f"{m.group(2)}.ipynb"), times), guide)


README = ROOT / "README.md"
MAP_START, MAP_END = "<!-- chapter-map:start -->", "<!-- chapter-map:end -->"
TOTAL_ROW = "| | **all lessons** | |"


def readme_chapter_map(readme: str, times: dict[str, dict]) -> str:
    """README's text with each chapter-map row's last cell (and the total row) written from ``times``."""
    head, rest = readme.split(MAP_START, 1)
    table, tail = rest.split(MAP_END, 1)
    rows = [row for row in table.strip("\n").splitlines() if not row.startswith(TOTAL_ROW)]
    for i, row in enumerate(rows):
        m = re.search(r"\(notebooks/(\d\d_\w+)\.ipynb\)", row)
        if m:
            rec = times.get(m.group(1))
            cell = f"{rec['seconds']:.0f} s" if rec else "not measured yet"
            rows[i] = row.rsplit("|", 2)[0] + f"| {cell} |"
    total = sum(round(r["seconds"]) for r in times.values())
    rows.append(f"{TOTAL_ROW} {total} s ({total / 60:.1f} min) |")
    return f"{head}{MAP_START}\n" + "\n".join(rows) + f"\n{MAP_END}{tail}"


def mistakes(chapter: int) -> dict[str, list[str]]:
    """check name -> failure messages for the wrong implementations its tests feed it."""
    path = ROOT / "tests" / f"test_checks_ch{chapter:02d}.py"
    if not path.exists():
        return {}
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    found: dict[str, list[str]] = {}

    def record(check, wrong, match=None):
        try:
            check(wrong)
        except AssertionError as err:
            lines = str(err).splitlines()
            problem = lines[0].split(": ", 1)[-1]
            hint = next((ln.strip()[len("hint: ") :] for ln in lines if ln.strip().startswith("hint: ")), "")
            if "NotImplementedError" not in problem:  # an untouched stub is not a mistake
                found.setdefault(check.__name__, []).append(problem)
                if hint:
                    found.setdefault(f"hint:{check.__name__}", []).append(hint)
        return ""

    mod.assert_check_rejects = record
    mod.assert_check_accepts = lambda *args, **kwargs: None  # only the rejections are listed
    for name, fn in vars(mod).items():
        if not (name.startswith("test_") and callable(fn) and hasattr(fn, "__code__")):
            continue
        params = fn.__code__.co_varnames[: fn.__code__.co_argcount]
        if set(params) <= {"capsys"}:  # capsys is only read by assert_check_accepts, replaced above
            try:
                fn(*[None] * len(params))
            except Exception:  # a test that needs other fixtures or data; its messages are simply not listed
                pass
    return found


def difficulty(n_lines: int) -> str:
    return "★ (≤ 3 lines)" if n_lines <= 3 else "★★ (4–10 lines)" if n_lines <= 10 else "★★★ (> 10 lines)"


def chapter_section(path: Path) -> str:
    nb = nbformat.read(str(path), as_version=4)
    ch = int(path.name.split("_")[0])
    name = re.sub(r"^(?:Chapter\s+)?\d+\s*[·:—–-]\s*", "", title(nb, path.stem))  # "04 · X", "Chapter 4 — X"
    out = [
        f"### {ch:02d} · {name}",
        "",
        f"*Notebook* `notebooks/{path.name}` · *measured run time* {run_time(path)}",
        "",
    ]
    g = goals(nb)
    if g:
        out += ["Learning goals — what the learner builds and measures:", *[f"- {x}" for x in g], ""]
    sol = next(iter(sorted((ROOT / "solutions").glob(f"{ch:02d}_*.ipynb"))), None)
    if sol is None:
        out += ["This chapter has no lab.", ""]
        return "\n".join(out)
    snb = nbformat.read(str(sol), as_version=4)
    msgs = mistakes(ch)
    out += [
        f"Lab `labs/{sol.name}`:",
        "",
        "| exercise | check | difficulty | common mistakes (what the check says) |",
        "|---|---|---|---|",
    ]
    for ex in exercises(snb, ch):
        src = snb.cells[ex.cell_index].source.split("\n")
        b = next(i for i, ln in enumerate(src) if ln.strip() == BEGIN)
        e = next(i for i, ln in enumerate(src) if ln.strip() == END)
        n = sum(1 for ln in src[b + 2 : e] if ln.strip() and not ln.strip().startswith("#"))
        nxt = snb.cells[ex.cell_index + 1].source if ex.cell_index + 1 < len(snb.cells) else ""
        check = (re.findall(r"\b(check_\w+)\s*\(", nxt) or ["—"])[-1]
        said = "<br>".join(f"“{m}”" for m in msgs.get(check, []))
        hints = list(dict.fromkeys(msgs.get(f"hint:{check}", [])))
        said = (said + "".join(f"<br>*hint given:* {h}" for h in hints)).replace("|", "\\|") or "—"
        md_at = exercise_markdown(snb, ex)
        heading = HEADING_RE.search(snb.cells[md_at].source) if md_at is not None else None
        # the lab's own title for the exercise ("## Exercise 1.3 — training"), else its task line
        line = snb.cells[md_at].source[heading.end() :].split("\n", 1)[0] if heading else ""
        tag = re.match(r"\s*(\(\w+\))?\s*[—–:-]?\s*(.*)", line)  # "(open) — title" -> "(open) title"
        what = (
            " ".join(t for t in tag.groups() if t).strip() if heading and heading.group("number") == ex.number else ""
        ) or ex.task
        out.append(f"| {ex.number} {what.replace('|', '/')} | `{check}` | {difficulty(n)} | {said} |")
    out.append("")
    return "\n".join(out)


GUIDE = ROOT / "docs" / "instructor_guide.md"
BEGIN_MARK, END_MARK = "<!-- chapters:begin -->", "<!-- chapters:end -->"
PLAN_BEGIN, PLAN_END = "<!-- one-day:begin -->", "<!-- one-day:end -->"

# The one-day workshop: (what, teaching minutes, exercise minutes, notebooks that run in it). A block without
# notebooks and without teaching is a break. Minutes are the instructor's plan; the machine minutes next to them
# are measured (docs/chapter_times.json: lessons by `make outputs`, solved labs by benchmarks/notebook_times.py).
ONE_DAY = [
    (
        "setup check: the welcome notebook's environment check (or `python -m course_utils.doctor`) on every machine",
        5,
        15,
        ["00_welcome"],
    ),
    (
        "01 tokens: lesson sections 1–3 together; lab 1.1–1.4, then 1.7–1.8 (GPT-4 pre-split, special tokens) in pairs",
        30,
        40,
        ["01_tokenization", "01_tokenization_lab"],
    ),
    ("break", 0, 15, []),
    (
        "02 attention: lesson; lab up to grouped-query attention, checked against PyTorch's "
        "`scaled_dot_product_attention`",
        30,
        45,
        ["02_attention", "02_attention_lab"],
    ),
    ("lunch", 0, 45, []),
    (
        "03 a tiny GPT: RMSNorm, RoPE, SwiGLU, the KV cache; learners write the block, the model and the train step, "
        "and start their training run while you explain sampling",
        35,
        55,
        ["03_tiny_gpt", "03_tiny_gpt_lab"],
    ),
    ("break", 0, 15, []),
    (
        "04 Mixture-of-Experts: the routing explorer, top-k routing and the balancing losses; lab up to the check "
        "against transformers' Mixtral block",
        25,
        35,
        ["04_moe_layer", "04_moe_layer_lab"],
    ),
    (
        "`python -m course_utils.progress`, the common mistakes of the day (the chapter tables below), what 05–08 add",
        15,
        0,
        [],
    ),
]


def all_times(path: Path = TIMES_FILE) -> dict[str, dict]:
    """Lessons' and solved labs' measured run times, by notebook stem (``01_tokenization_lab`` for a lab)."""
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {**data.get("lessons", {}), **data.get("labs", {})}


def _clock(minutes: int) -> str:
    return f"{minutes // 60}:{minutes % 60:02d}"


def one_day_plan(plan=ONE_DAY, times: dict[str, dict] | None = None) -> str:
    """The one-day plan as markdown: clock times from the minutes, the measured machine time of each block's
    notebooks, and totals that are the sums of the rows."""
    times = all_times() if times is None else times
    rows, start, teach, practice, breaks, machine = [], 0, 0, 0, 0, 0.0
    for what, t, e, notebooks in plan:
        missing = [n for n in notebooks if n not in times]
        if missing:
            raise ValueError(f"no measured run time for {missing} in {TIMES_FILE.name}")
        run_s = sum(times[n]["seconds"] for n in notebooks)
        if run_s / 60 > e:
            raise ValueError(f"{what[:40]!r}: its notebooks run {run_s / 60:.1f} min, more than its {e} exercise min")
        is_break = not notebooks and not t
        rows.append(
            f"| {_clock(start)}–{_clock(start + t + e)} | {what} | {'' if is_break else t} | "
            f"{'' if is_break else e or ''} | {f'{run_s / 60:.1f}' if notebooks else ''} |"
        )
        start += t + e
        breaks += e if is_break else 0
        teach += t
        practice += 0 if is_break else e
        machine += run_s
    work = teach + practice
    head = (
        f"**One day ({work / 60:g} hours of teaching and exercises, {_clock(start)} with breaks) — tokens to a "
        "Mixture-of-Experts layer**"
    )
    table = [
        "| time | what | teaching (min) | exercises (min) | notebooks run, measured (min) |",
        "|---|---|---:|---:|---:|",
        *rows,
        f"| | **total** | **{teach}** | **{practice}** | **{machine / 60:.1f}** |",
    ]
    tail = (
        f"Teaching {teach} minutes and exercises {practice} ({work} minutes, {work / 60:g} hours), breaks {breaks}: "
        f"{start} minutes in all. The last column is how long the block's lesson and solved lab take to run top to "
        "bottom on one thread (`docs/chapter_times.json`), already inside the exercise minutes: the rest is reading "
        "and typing. The open exercises at the end of each lab (checked by outcome) are homework."
    )
    used = [times[n] for _, _, _, notebooks in plan for n in notebooks]
    if any("upper bound" in rec.get("how", "") for rec in used):
        tail += (
            " Some of these times were measured on a busy machine (`docs/chapter_times.json` says which): upper bounds."
        )
    return "\n".join([head, *table, "", tail])


def with_one_day_plan(guide: str, times: dict[str, dict] | None = None) -> str:
    """The guide with its one-day plan (between the one-day markers) generated by :func:`one_day_plan`."""
    head, rest = guide.split(PLAN_BEGIN, 1)
    return f"{head}{PLAN_BEGIN}\n{one_day_plan(times=times)}\n{PLAN_END}{rest.split(PLAN_END, 1)[1]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/site/guide_chapters.py")
    parser.add_argument(
        "--write", action="store_true", help="replace the guide's chapter part and README's chapter map times"
    )
    parser.add_argument("--times", action="store_true", help="with --write: rewrite only the run times (seconds)")
    args = parser.parse_args(argv)
    if args.write and args.times:
        guide = guide_run_times(GUIDE.read_text(encoding="utf-8"), run_times())
        GUIDE.write_text(with_one_day_plan(guide), encoding="utf-8")
        README.write_text(readme_chapter_map(README.read_text(encoding="utf-8"), run_times()), encoding="utf-8")
        print(f"updated the run times in {GUIDE.relative_to(ROOT)} and {README.relative_to(ROOT)}")
        return 0
    text = "\n".join(chapter_section(p) for p in sorted((ROOT / "notebooks").glob("[0-9]*_*.ipynb")))
    if not args.write:
        print(text)
        return 0
    guide = GUIDE.read_text(encoding="utf-8")
    if BEGIN_MARK not in guide or END_MARK not in guide:
        print(f"{GUIDE}: the markers {BEGIN_MARK} / {END_MARK} are missing", file=sys.stderr)
        return 1
    head, rest = guide.split(BEGIN_MARK, 1)
    guide = with_one_day_plan(f"{head}{BEGIN_MARK}\n{text}{END_MARK}{rest.split(END_MARK, 1)[1]}")
    GUIDE.write_text(guide, encoding="utf-8")
    README.write_text(readme_chapter_map(README.read_text(encoding="utf-8"), run_times()), encoding="utf-8")
    print(f"updated {GUIDE.relative_to(ROOT)} and the chapter map of {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
