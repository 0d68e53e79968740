"""Every notebook in notebooks/ runs top to bottom without error, on this interpreter, with no GPU needed, and is
committed executed, with its outputs and figures, so that a reader browsing the repository sees them.

Notebooks are found by globbing, so a new notebook is tested as soon as it is added. Execution happens in memory:
the committed files are never written (to refresh them, execute them with ``jupyter nbconvert --execute --inplace``
or nbclient and commit the result). The kernel is Jupyter's
``python3``, which jupyter_client starts with ``sys.executable`` (its spec says plain ``python``), i.e. this
environment; ``test_kernel_runs_this_interpreter`` checks that. The kernel inherits the session's environment,
``NUMBA_ENABLE_CUDASIM`` included, and gets this checkout on ``PYTHONPATH`` so it imports this ``flashllm_nb``
whether or not it is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 300  # per cell
MAX_BYTES = 400_000  # a committed notebook with its figures; larger ones bloat every clone


@pytest.fixture(autouse=True)
def _kernel_environment(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _execute(nb, cwd: Path) -> None:
    NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()


def test_kernel_runs_this_interpreter(tmp_path):
    cell = new_code_cell("import sys, flashllm_nb\nprint(sys.executable)\nprint(flashllm_nb.__file__)")
    nb = new_notebook(cells=[cell])
    _execute(nb, tmp_path)
    executable, package = nb.cells[0].outputs[0]["text"].split()
    assert os.path.realpath(executable) == os.path.realpath(sys.executable)
    assert Path(package).resolve().parent == ROOT / "flashllm_nb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    committed = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    _execute(nb, path.parent)  # raises CellExecutionError, with the failing cell and its traceback
    assert path.read_bytes() == committed, f"executing {path.name} changed the committed file"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_executed_with_its_figures(path):
    """Every code cell ran, once, in order, without error; at least one figure is stored; the file stays small."""
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "not executed top to bottom"
    outputs = [output for cell in code for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"], "committed with an error output"
    assert any("image/png" in o.get("data", {}) for o in outputs), "committed without its figures"
    assert path.stat().st_size <= MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_notebooks_are_not_ignored_by_git():
    """A notebook git ignores would silently stay out of commits; --no-index asks the ignore rules themselves."""
    paths = [str(p.relative_to(ROOT)) for p in NOTEBOOKS]
    done = subprocess.run(["git", "check-ignore", "--no-index", "-v", *paths], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == "", f"ignored: {done.stdout}"
