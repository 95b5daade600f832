"""The browser driver itself can fail: it sees an error output, cells that never ran, a dead widget and a live one.

A scratch notebook is written into the server's temporary copy (never into the course) and run like any other.
"""

from __future__ import annotations

import nbformat
from jlab import error_outputs, open_notebook, run_all, save, unrun_code_cells
from nbformat.v4 import new_code_cell, new_notebook
from test_notebooks_in_browser import poke_widgets

CELLS = [
    "import ipywidgets as w\nfrom IPython.display import display\n"
    "live = w.interactive(lambda k: print('k =', k), k=w.IntSlider(value=2, min=1, max=8))\ndisplay(live)",
    "dead = w.IntSlider(value=1, min=0, max=5)  # nothing listens to this one\ndisplay(dead)",
    "box = w.Textarea(value='hi')\nout = w.Output()\n"
    "box.observe(lambda ch: (out.clear_output(), out.append_stdout(f\"{len(ch['new'])} chars\")), 'value')\n"
    "display(box, out)",
    "raise ValueError('boom from the scratch notebook')",
    "print('never reached')",
]


def test_driver_sees_errors_unrun_cells_and_widgets(lab, page):
    nb = new_notebook(cells=[new_code_cell(src) for src in CELLS])
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nbformat.write(nb, str(lab.root / "scratch.ipynb"))
    open_notebook(page, lab, "scratch.ipynb")
    run_all(page)
    saved = save(page, lab, "scratch.ipynb")
    assert error_outputs(saved) == ["cell 3: ValueError: boom from the scratch notebook"]
    assert unrun_code_cells(saved) == [4]
    dead = poke_widgets(page, "scratch")
    assert dead == ["slider #2: the output of its cell did not change"], dead
