"""README.md says what is true: its tour of the API runs as written, and its links point at files of this repository.

The tour is taken from README.md itself (the first ``python`` block under "A tour of the API"), so an edit to the
README that breaks it fails here. It runs in the session's mode: on the GPU where there is one, in Numba's CUDA
simulator otherwise, which is the README's promise to a new user without a GPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from flashllm_nb.reference import linear_reference
from flashllm_nb.reference.spmm import abs_product
from flashllm_nb.reference.tolerance import assert_close_to_reference

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    """The text of the ``## title`` section of README.md, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def _host(array) -> np.ndarray:
    return array.get() if hasattr(array, "get") else array  # CuPy on a GPU, NumPy in the simulator


def test_tour_runs_as_written(tmp_path, monkeypatch):
    """The tour's code runs unchanged and its last line's claim holds: Y = X @ W.T + b for X's current contents."""
    code = re.search(r"```python\n(.*?)```", _section("A tour of the API"), re.S).group(1)
    monkeypatch.chdir(tmp_path)  # the tour saves a file in the working directory
    tour: dict = {}
    exec(compile(code, "README.md (A tour of the API)", "exec"), tour)

    W, A = tour["W"], tour["A"]
    X, b, Y = _host(tour["X"]), _host(tour["b"]), _host(tour["Y"])
    ref = linear_reference(X, A.to_host(), b)
    assert_close_to_reference(Y, ref, abs_product(X, W.T), W.shape[1], np.float16, what="the tour's Y")
    assert tour["Z"].shape == (W.shape[0], X.shape[0])


def test_links_point_inside_the_repository():
    """Every relative link of README.md names a file of this repository (a reader of a clone can follow it)."""
    targets = re.findall(r"\]\(([^)#]+)\)", README) + re.findall(r"`(\.\./[^`]+)`", README)
    relative = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert relative, "README.md links no file; this test would check nothing"
    for target in relative:
        path = (ROOT / target).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"README.md links {target}, not a file of this repository"
