"""Build the course notebooks from their sources and run them (run from the repository root):

    python notebooks/build.py                 # every notebook
    python notebooks/build.py 02_classroom    # one (the source's name without .py)

Each notebook is written as a plain Python file, ``notebooks/src/<name>.py``, in the
"percent" format that Jupytext, VS Code and Spyder read: a line ``# %%`` starts a code cell,
``# %% [markdown]`` a text cell whose lines are comments (``# `` is stripped). The source is
what a reviewer reads and diffs; ``notebooks/<name>.ipynb`` is made from it here, executed
top to bottom in a fresh kernel (nbclient) with its working directory ``notebooks/``, and
saved with its outputs and figures, so that it reads on GitHub without running anything.
tests/test_notebooks.py runs the committed notebooks again and checks that they still match
their sources.

Needs ``pip install ".[notebooks]"``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
TIMEOUT = 600  # seconds per cell


def cells_of(source: str) -> list[tuple[str, str]]:
    """``(kind, text)`` for each cell of a percent-format source; kind is "code" or "markdown"."""
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip() and not line.startswith("#"):
            raise ValueError("a notebook source must start with a '# %%' cell marker")
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        text = "\n".join(lines).strip("\n")
        if text:
            out.append((kind, text))
    return out


def notebook_of(source: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    make = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell}
    nb.cells = [make[kind](text) for kind, text in cells_of(source)]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # stable ids: a rebuild changes only what changed
    return nb


def run(nb: nbformat.NotebookNode, timeout: int = TIMEOUT) -> nbformat.NotebookNode:
    """Execute ``nb`` in a fresh python3 kernel whose working directory is notebooks/."""
    # The kernel inherits the environment but starts in notebooks/: a relative PYTHONPATH
    # (PYTHONPATH=. from a checkout) would point there, and the kernel import another jaxmlm.
    paths = os.environ.get("PYTHONPATH")
    if paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in paths.split(os.pathsep) if p)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    return nb


def build(name: str) -> float:
    nb = notebook_of((SRC / f"{name}.py").read_text())
    t0 = time.perf_counter()
    run(nb)
    seconds = time.perf_counter() - t0
    for cell in nb.cells:  # execution metadata holds wall-clock stamps: keep the files stable
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(nb, HERE / f"{name}.ipynb")
    return seconds


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(p.stem for p in SRC.glob("*.py"))
    for name in names:
        print(f"{name}: {build(name):.1f} s")
