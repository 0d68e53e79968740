"""Every notebook in notebooks/ runs top to bottom without error, on this interpreter, with no GPU needed.

Notebooks are found by globbing, so a new notebook is tested as soon as it is added. The kernel is Jupyter's
``python3``, which jupyter_client starts with ``sys.executable`` (its spec says plain ``python``), i.e. this
environment; ``test_kernel_runs_this_interpreter`` checks that. The kernel inherits the session's environment,
``NUMBA_ENABLE_CUDASIM`` included, and gets this checkout on ``PYTHONPATH`` so it imports this ``flashllm_nb``
whether or not it is installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 300  # per cell


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
    nb = nbformat.read(path, as_version=4)
    _execute(nb, path.parent)  # raises CellExecutionError, with the failing cell and its traceback
