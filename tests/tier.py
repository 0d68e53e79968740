"""The tier a test session runs in, for the test bodies that both tiers share.

``conftest.py`` fixes the mode before anything imports ``numba.cuda``: Numba's CUDA simulator without a GPU, the GPU
with one. A test with neither the ``sim`` nor the ``gpu`` marker runs in whichever tier the session has, so that one
body checks the simulator on CI and the GPU on a GPU machine:

- ``by_tier`` picks what the body runs on: small sizes and few seeds under the simulator (one Python thread per CUDA
  thread), real sizes and more seeds on the GPU;
- ``device`` gives a host array as the kernels take it in this tier, and ``host`` brings any result back to NumPy
  for the comparisons.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from flashllm_nb import simulator_enabled

SIMULATOR = simulator_enabled()

BF16 = np.dtype(ml_dtypes.bfloat16)


def by_tier(*, sim, gpu):
    """``sim`` in a simulator session, ``gpu`` in a GPU one."""
    return sim if SIMULATOR else gpu


def device(a: np.ndarray):
    """Host array ``a`` as the kernels take it in this tier: ``a`` itself under the simulator; on the GPU a CuPy
    copy, or a PyTorch CUDA tensor for bfloat16 (CuPy has no bfloat16)."""
    if SIMULATOR:
        return a
    if a.dtype == BF16:
        torch = pytest.importorskip("torch")
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).cuda().view(torch.bfloat16)
    import cupy

    return cupy.asarray(a)


def host(a) -> np.ndarray:
    """A NumPy copy of an array of either tier (NumPy, CuPy, or a PyTorch CUDA tensor of bfloat16)."""
    if isinstance(a, np.ndarray):
        return a
    if type(a).__module__.startswith("torch"):
        import torch

        assert a.dtype == torch.bfloat16, f"device() makes PyTorch tensors for bfloat16 only, not {a.dtype}"
        return a.view(torch.int16).cpu().numpy().view(BF16)
    return a.get()
