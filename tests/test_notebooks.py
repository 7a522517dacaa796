"""The course notebooks (notebooks/*.ipynb) run top to bottom and still say what their sources say.

Each notebook asserts the course notes' printed numbers in its own cells, so running it is the
test: a number that drifts raises in the kernel and nbclient reports the cell. Executed in a
fresh kernel, as notebooks/build.py made them; the committed outputs are not compared (they hold
timings and figures), the code is: a notebook edited by hand and not rebuilt from
notebooks/src/ fails here.
"""

import importlib.util
from pathlib import Path

import nbformat  # the test extra holds the notebooks extra
import pytest

ROOT = Path(__file__).resolve().parents[1] / "notebooks"
_spec = importlib.util.spec_from_file_location("notebook_build", ROOT / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

NAMES = sorted(p.stem for p in (ROOT / "src").glob("*.py"))


def test_one_notebook_per_lecture_note():
    assert len(NAMES) == 5
    assert sorted(p.stem for p in ROOT.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_built_from_its_source(name):
    committed = nbformat.read(ROOT / f"{name}.ipynb", as_version=4)
    fresh = build.notebook_of((ROOT / "src" / f"{name}.py").read_text())
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in fresh.cells]
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "saved without running: rebuild it"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_and_its_asserts_hold(name):
    nb = build.notebook_of((ROOT / "src" / f"{name}.py").read_text())
    build.run(nb)  # raises CellExecutionError naming the cell whose assert failed
    asserts = sum(c.source.count("assert ") for c in nb.cells if c.cell_type == "code")
    assert asserts >= 5, "a course notebook checks the notes' numbers"


def test_cells_of_reads_the_percent_format():
    src = "# %% [markdown]\n# # Title\n# text\n\n# %%\nx = 1\n\n# %%\n\n# %%\nprint(x)\n"
    assert build.cells_of(src) == [("markdown", "# Title\ntext"), ("code", "x = 1"), ("code", "print(x)")]
    with pytest.raises(ValueError):
        build.cells_of("x = 1\n# %%\n")
