"""A learner's path through chapter 4's lab, in the browser.

Open labs/04_*.ipynb (in the server's temporary copy), Run All Cells: the run stops at the first exercise with
its ``NotImplementedError("Exercise 4.1: <hint>")``. Type a correct answer into that cell through the editor,
run it and its check cell: the ✅ line shows. Type a plausible wrong answer: the check's explanation shows.
JupyterLab saves the file (Ctrl+S); the saved lab holds what was typed and every other cell is as it was.

The same walk runs today on a scratch lab in the labs/ format (built by course_utils.labs.make_lab from a tiny
solution notebook), so the driver is known to work before chapter 4's lab lands.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from jlab import ARTIFACTS, ROOT, open_notebook, run_all, save, wait_until_done
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_utils.labs import BEGIN, END, exercises, make_lab

CHAPTER = 4
# Plausible wrong answers for chapter 4's first exercise, keyed by a word the solution region contains.
# Each maps a code line of the correct answer to a wrong one (the mistake the instructor guide lists).
WRONG_ANSWERS = {
    "renorm": (
        "forgets to renormalise the top-k weights",
        lambda line: re.sub(r"\s*/\s*[\w.]+\.sum\([^()]*\)", "", line),
    ),
}


def _region_body(source: str) -> tuple[int, int, list[str]]:
    lines = source.split("\n")
    b = next(i for i, ln in enumerate(lines) if ln.strip() == BEGIN)
    e = next(i for i, ln in enumerate(lines) if ln.strip() == END)
    return b, e, lines


def wrong_answer(solution_source: str) -> tuple[str, str]:
    """(why it is wrong, the cell source with a plausible mistake) for an exercise cell's solution."""
    b, e, lines = _region_body(solution_source)
    body = lines[b + 1 : e]
    for key, (why, mutate) in WRONG_ANSWERS.items():
        if key in solution_source.lower():
            wrong = [ln if ln.lstrip().startswith("#") else mutate(ln) for ln in body]  # code lines only
            if wrong != body:
                return why, "\n".join(lines[: b + 1] + wrong + lines[e:])
    # Fallback: an answer that returns nothing (the check must say what it expected instead).
    indent = lines[b][: len(lines[b]) - len(lines[b].lstrip())]
    return "returns None", "\n".join(lines[: b + 1] + [f"{indent}return None"] + lines[e:])


def _type_into_cell(page, index: int, source: str) -> None:
    """Replace a cell's text through its editor, the way a person pastes code."""
    editor = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".cm-content")
    editor.scroll_into_view_if_needed()
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(source)  # like a paste: no auto-indent or auto-closed brackets


def _run_cell_and_check(page, index: int) -> str:
    """Shift+Enter twice (the exercise, then its check cell); return the check cell's output text."""
    page.keyboard.press("Shift+Enter")
    page.keyboard.press("Shift+Enter")
    page.wait_for_timeout(300)
    wait_until_done(page, 300)
    return page.locator(".jp-Notebook .jp-Cell").nth(index + 1).locator(".jp-OutputArea").inner_text()


def walk_learner_path(page, lab, lab_rel: str, solution) -> None:
    chapter = int(Path(lab_rel).name.split("_")[0])
    first = exercises(solution, chapter)[0]
    idx = first.cell_index
    original = json.loads((lab.root / lab_rel).read_text(encoding="utf-8"))
    check_src = "".join(original["cells"][idx + 1]["source"])
    check_name = re.search(r"\b(check_\w+)\s*\(", check_src)
    assert check_name, f"{lab_rel}: cell {idx + 1} after exercise {first.number} should call its check"

    open_notebook(page, lab, lab_rel)
    run_all(page)
    ran = save(page, lab, lab_rel)
    failing = [
        i for i, c in enumerate(ran["cells"]) if any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    # A function exercise raises when its check calls it, so the stop is in the exercise cell or its check cell.
    assert failing and failing[0] in (idx, idx + 1), (
        f"Run All should first stop at exercise {first.number} (cell {idx}); errors in cells {failing}"
    )
    shown = page.locator(".jp-Notebook .jp-Cell").nth(failing[0]).locator(".jp-OutputArea").inner_text()
    assert "NotImplementedError" in shown and f"Exercise {first.number}: {first.hint}" in shown, shown

    right = solution.cells[idx].source
    _type_into_cell(page, idx, right)
    checked = _run_cell_and_check(page, idx)
    assert "✅" in checked and check_name.group(1) in checked, f"the correct answer did not pass:\n{checked}"
    saved = save(page, lab, lab_rel)
    assert "".join(saved["cells"][idx]["source"]) == right

    why, wrong = wrong_answer(right)
    _type_into_cell(page, idx, wrong)
    checked = _run_cell_and_check(page, idx)
    (ARTIFACTS / "learner").mkdir(parents=True, exist_ok=True)
    page.locator(".jp-Notebook .jp-Cell").nth(idx + 1).screenshot(
        path=str(ARTIFACTS / "learner" / f"{Path(lab_rel).stem}_wrong.png")
    )
    assert "✅" not in checked, f"a wrong answer ({why}) passed the check:\n{checked}"
    assert check_name.group(1) in checked and "hint:" in checked, (
        f"no explanation for a wrong answer ({why}):\n{checked}"
    )

    saved = save(page, lab, lab_rel)
    assert "".join(saved["cells"][idx]["source"]) == wrong, "JupyterLab did not save what was typed"
    for i, (a, b) in enumerate(zip(original["cells"], saved["cells"])):
        if i != idx:
            assert "".join(a["source"]) == "".join(b["source"]), f"cell {i} changed though only cell {idx} was edited"


def test_learner_path_chapter_4(lab, page):
    labs = sorted((ROOT / "labs").glob(f"{CHAPTER:02d}_*.ipynb"))
    if not labs:
        pytest.skip(f"labs/{CHAPTER:02d}_*.ipynb does not exist yet; this walk activates when it lands")
    lab_rel = labs[0].relative_to(ROOT).as_posix()
    solution = nbformat.read(str(ROOT / "solutions" / labs[0].name), as_version=4)
    walk_learner_path(page, lab, lab_rel, solution)


SCRATCH_SOLUTION = [
    new_markdown_cell("# 99 · scratch lab"),
    new_code_cell(
        "import torch\nfrom course_utils.checks._core import call, compare, passed\n\n"
        "def check_renormalise(fn):\n"
        "    w = torch.tensor([[0.5, 0.3], [0.2, 0.2]])\n"
        "    compare('check_renormalise', call('check_renormalise', fn, w), w / w.sum(-1, keepdim=True),\n"
        "            inputs={'weights': w}, hint='divide by the sum of the kept weights')\n"
        "    passed('check_renormalise', 1)"
    ),
    new_code_cell(
        'def renormalise(weights):\n    """Top-k weights that sum to one per token."""\n'
        f"    {BEGIN}\n    # hint: divide each row by its sum\n"
        "    return weights / weights.sum(-1, keepdim=True)\n"
        f"    {END}"
    ),
    new_code_cell("check_renormalise(renormalise)"),
    new_code_cell("print('after the check')"),
]


def test_learner_path_on_a_scratch_lab(lab, page):
    solution = new_notebook(cells=SCRATCH_SOLUTION)
    solution.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nbformat.write(make_lab(solution, 99), str(lab.root / "labs" / "99_scratch_lab.ipynb"))
    walk_learner_path(page, lab, "labs/99_scratch_lab.ipynb", solution)
