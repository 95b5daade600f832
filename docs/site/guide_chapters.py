"""Print the per-chapter part of docs/instructor_guide.md from what the course contains right now.

    python docs/site/guide_chapters.py [--measure] --write    (rewrites the guide's chapter part in place)

For each notebook in notebooks/: its title and learning goals (the "What you will build" list of its first
markdown cells), its measured run time (``--measure`` runs it in a fresh kernel; otherwise the browser times in
test-artifacts/times/ from `make e2e` are used), and its lab's exercises with an expected difficulty (from the
length of the reference answer) and the common mistakes, which are the failure messages the chapter's checks give
for the wrong implementations in tests/test_checks_chNN.py. ``--write`` replaces what lies between the guide's
``<!-- chapters:begin -->`` / ``<!-- chapters:end -->`` markers; the prose around them is written by hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from course_utils.labs import BEGIN, END, HEADING_RE, exercise_markdown, exercises  # noqa: E402


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


def run_time(path: Path, measure: bool) -> str:
    if measure:
        from nbclient import NotebookClient

        nb = nbformat.read(str(path), as_version=4)
        t0 = time.perf_counter()
        NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
        return f"{time.perf_counter() - t0:.0f} s (fresh kernel, 2-core CPU)"
    rec = ROOT / "test-artifacts" / "times" / f"{path.stem}.json"
    if rec.exists():
        data = json.loads(rec.read_text())
        source = data.get("source", "Run All in JupyterLab, `make e2e`, on a shared 2-core CPU")
        return f"{data['run_all_s']:.0f} s ({source})"
    return "not measured yet"


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


def chapter_section(path: Path, measure: bool) -> str:
    nb = nbformat.read(str(path), as_version=4)
    ch = int(path.name.split("_")[0])
    name = re.sub(r"^(?:Chapter\s+)?\d+\s*[·:—–-]\s*", "", title(nb, path.stem))  # "04 · X", "Chapter 4 — X"
    out = [
        f"### {ch:02d} · {name}",
        "",
        f"*Notebook* `notebooks/{path.name}` · *measured run time* {run_time(path, measure)}",
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/site/guide_chapters.py")
    parser.add_argument("--measure", action="store_true", help="run each notebook to time it")
    parser.add_argument("--write", action="store_true", help="replace the chapter part of docs/instructor_guide.md")
    args = parser.parse_args(argv)
    text = "\n".join(chapter_section(p, args.measure) for p in sorted((ROOT / "notebooks").glob("[0-9]*_*.ipynb")))
    if not args.write:
        print(text)
        return 0
    guide = GUIDE.read_text(encoding="utf-8")
    if BEGIN_MARK not in guide or END_MARK not in guide:
        print(f"{GUIDE}: the markers {BEGIN_MARK} / {END_MARK} are missing", file=sys.stderr)
        return 1
    head, rest = guide.split(BEGIN_MARK, 1)
    GUIDE.write_text(f"{head}{BEGIN_MARK}\n{text}{END_MARK}{rest.split(END_MARK, 1)[1]}", encoding="utf-8")
    print(f"updated {GUIDE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
