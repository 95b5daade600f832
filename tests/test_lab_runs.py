"""Each generated lab, run as-is, stops at its first exercise with NotImplementedError and no error before it."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted((ROOT / "labs").glob("*.ipynb"))


def first_exercise_index(nb) -> int:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and 'raise NotImplementedError("Exercise ' in cell.source:
            return i
    raise AssertionError("lab has no exercise")


@pytest.mark.slow
@pytest.mark.parametrize("path", LABS, ids=[p.name for p in LABS])
def test_lab_stops_at_its_first_exercise(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    stop = first_exercise_index(nb)
    # run up to and including the cell that calls the first exercise: the exercise cell itself only defines a
    # function, so also run the following check cell, which must fail with the exercise's NotImplementedError
    check = next(
        (i for i in range(stop, len(nb.cells)) if "check_" in nb.cells[i].source and nb.cells[i].cell_type == "code"),
        stop,
    )
    nb.cells = nb.cells[: check + 1]
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    with pytest.raises(CellExecutionError) as info:
        client.execute()
    errors = [
        (i, o)
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert len(errors) == 1, f"expected exactly one error, got {[(i, o.ename) for i, o in errors]}"
    index, error = errors[0]
    assert index >= stop, f"cell {index} failed before the first exercise (cell {stop}): {error.ename}: {error.evalue}"
    # the check cell turns the NotImplementedError into a clear message naming the exercise
    assert "NotImplementedError" in error.ename + error.evalue, str(info.value)[-500:]
