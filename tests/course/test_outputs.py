"""course_utils.outputs: stored lesson outputs are compared with a tolerance for floats only, run-dependent cells
are tagged by rule, stored figures are compressed, and strict nbval with the plugin fails on a stale output."""

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from course_utils import outputs

ROOT = Path(__file__).resolve().parents[2]


def test_texts_match_tolerates_float_noise_but_not_changes():
    assert outputs.texts_match("loss 2.3456 after 300 steps", "loss 2.3461 after 300 steps")
    assert outputs.texts_match("recall@5 0.915", "recall@5 0.916")  # one unit of the last digit
    assert outputs.texts_match("accuracy 92%", "accuracy 91%")  # a rounded float
    assert outputs.texts_match("p = 1.00e-04", "p = 1.01e-04")
    assert not outputs.texts_match("loss 2.3456", "loss 2.61")  # 11% off
    assert not outputs.texts_match("merge #3745", "merge #3746")  # integers are exact
    assert not outputs.texts_match("[44, 13025, 8838]", "[44, 13099, 8838]")
    assert not outputs.texts_match("dense wins", "hybrid wins")
    assert not outputs.texts_match("a 1.0 b", "a 1.0 b 2.0")
    with pytest.raises(TypeError):
        outputs.texts_match(None, "x")


def test_a_cell_declares_its_own_tolerance_with_a_tag():
    trained = new_code_cell("print(score)")
    assert outputs.cell_rtol(trained) == outputs.RTOL  # no tag: the default
    trained.metadata["tags"] = ["nbval-ignore-output", "rtol-0.05"]
    assert outputs.cell_rtol(trained) == 0.05
    assert outputs.texts_match("induction 0.85", "induction 0.81", outputs.cell_rtol(trained))
    assert not outputs.texts_match("induction 0.85", "induction 0.81")  # 5% off: only with the declared tolerance
    for bad in (["rtol-5%"], ["rtol-2"], ["rtol-0"], ["rtol-0.05", "rtol-0.1"]):
        trained.metadata["tags"] = bad
        with pytest.raises(ValueError, match="tolerance"):
            outputs.cell_rtol(trained)


def test_lesson_tolerance_tags_are_well_formed_and_modest():
    declared = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code" and outputs.cell_rtol(cell) != outputs.RTOL:
                declared[(path.name, i)] = outputs.cell_rtol(cell)
    assert declared, "chapter 2's trained-heads table declares its tolerance"
    assert all(r <= 0.1 for r in declared.values()), declared  # a wider one would hide real changes


def test_run_dependent_rules_tag_timings_and_widgets_only():
    assert outputs.is_run_dependent("t0 = time.perf_counter()\nf()\nprint(time.perf_counter() - t0)")
    assert outputs.is_run_dependent("interact(update, n=widgets.IntSlider(3))")
    assert outputs.is_run_dependent("%timeit f()")
    assert not outputs.is_run_dependent("T0 = time.perf_counter()  # starts the notebook clock")
    assert not outputs.is_run_dependent("print(loss)  # time.perf_counter() - t0 in a comment")
    assert not outputs.is_run_dependent('packages = ["ipywidgets", "torch"]')
    with pytest.raises(TypeError, match="source"):
        outputs.is_run_dependent(3)


def test_tag_notebook_adds_the_tag_once_and_leaves_other_cells_alone():
    nb = new_notebook(
        cells=[new_code_cell("x = 1"), new_code_cell("t=time.perf_counter()\nprint(time.perf_counter() - t)")]
    )
    nb.cells[1].metadata["tags"] = ["keep-me"]
    assert outputs.tag_notebook(nb) == [1]
    assert nb.cells[1].metadata["tags"] == ["keep-me", outputs.IGNORE_TAG]
    assert "tags" not in nb.cells[0].metadata
    assert outputs.tag_notebook(nb) == []  # idempotent
    assert outputs.tag_notebook(nb, extra={0}) == [0]


def test_every_lesson_cell_that_prints_timings_is_tagged():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert outputs.tag_notebook(nb, name=path.name) == [], (
            f"{path.name}: run `python -m course_utils.outputs tag {path}`"
        )
    for name, pieces in outputs.TRAINED_SAMPLES.items():  # each listed piece still names a cell
        sources = [c.source for c in nbformat.read(ROOT / "notebooks" / name, as_version=4).cells]
        assert all(any(p in s for s in sources) for p in pieces), name


def _png(size=(300, 200)) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    ax.plot(range(50), [i * i for i in range(50)])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def test_compress_outputs_shrinks_figures_and_drops_widgets():
    png = _png()
    cell = new_code_cell("plot()")
    cell.outputs = [
        new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
        new_output("display_data", data={outputs.WIDGET_VIEW: {"model_id": "abc"}, "text/plain": "HBox"}),
        new_output("stream", name="stdout", text="done\n"),
    ]
    nb = new_notebook(cells=[cell], metadata={"widgets": {"state": {}}})
    outputs.compress_outputs(nb)
    assert "widgets" not in nb.metadata and len(cell.outputs) == 2
    assert len(cell.outputs[0].data["image/png"]) < len(png) and cell.execution_count == 1
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(cell.outputs[0].data["image/png"])))
    assert img.size == (300, 200)


def test_store_outputs_rejects_a_missing_notebook(tmp_path):
    with pytest.raises(ValueError, match="path"):
        outputs.store_outputs(tmp_path / "nope.ipynb")


@pytest.mark.slow
def test_strict_nbval_with_the_plugin_passes_on_noise_and_fails_on_a_stale_output(tmp_path):
    src = 'import random\nprint(f"loss {2.3456 + random.random() * 1e-4:.4f}")\nprint("tokens", [44, 13025])'
    path = tmp_path / "nb.ipynb"
    nbformat.write(
        new_notebook(
            cells=[new_code_cell(src)],
            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        ),
        path,
    )
    env = dict(os.environ, MPLBACKEND="Agg")
    outputs.store_outputs(path)
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-n",
        "0",
        "-p",
        "no:cacheprovider",
        "--nbval",
        "--nbval-sanitize-with",
        str(ROOT / "tests" / "nbval_sanitize.cfg"),
        "-p",
        "course_utils.outputs",
        "--rootdir",
        str(tmp_path),
        str(path),
    ]
    ok = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout[-2000:]
    nb = nbformat.read(path, as_version=4)
    out = nb.cells[0].outputs[-1]
    out.text = out.text.replace("13025", "13099")  # the stored output no longer matches the code
    nbformat.write(nb, path)
    stale = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert stale.returncode != 0 and "13099" in stale.stdout


def test_matplotlib_placeholders_are_left_out_of_the_comparison_but_not_other_text():
    from course_utils.outputs import _comparable

    def result(text):
        return {"output_type": "execute_result", "data": {"text/plain": text}}

    placeholders = [
        "<Figure size 504x288 with 1 Axes>",
        "<matplotlib.legend.Legend at 0x7f00>",
        "<Axes: title={'center': 'Loss'}, xlabel='step'>",
        "[<matplotlib.lines.Line2D at 0x1>]",
        "Text(0.5, 1.0, 'Loss')",
    ]
    kept = [result("0.9150"), result("<html>not a figure</html>"), result("Figure size 3")]
    assert _comparable([result(t) for t in placeholders] + kept) == kept
