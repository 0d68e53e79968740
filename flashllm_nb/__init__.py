"""flashllm_nb: unstructured-sparse LLM weights on NVIDIA Tensor Cores, in Python.

Flash-LLM's "load as sparse, compute as dense": weights travel from device memory compressed (Tiled-CSL) and are
expanded tile by tile in shared memory for ``mma.sync``. Kernels are Numba-CUDA with inline PTX; without a GPU they
run in Numba's CUDA simulator.

>>> import numpy as np, flashllm_nb as fl
>>> W = fl.prune.random(np.random.default_rng(0).standard_normal((256, 128)).astype(np.float16), 0.8, seed=0)
>>> A = fl.TiledCSL.from_dense(W)
>>> A.shape, A.nnz
((256, 128), 6554)

Without a GPU: ``import flashllm_nb`` on a machine with no usable CUDA GPU switches Numba's CUDA simulator on
(unless ``NUMBA_ENABLE_CUDASIM`` is set either way), and the kernels then take NumPy arrays and run on the CPU,
slowly: small sizes only. ``use_simulator()`` forces the simulator on a GPU machine too, ``simulator_enabled()``
says which mode this process runs in, and ``xp`` is the array module the kernels take in it (``numpy`` under the
simulator, ``cupy`` on a GPU), so the same code runs in both.

Names are imported lazily so that ``import flashllm_nb`` is cheap and needs neither a GPU nor CuPy.
"""

from __future__ import annotations

import importlib

from flashllm_nb import _runtime
from flashllm_nb._runtime import simulator_enabled, use_simulator

# First: Numba reads NUMBA_ENABLE_CUDASIM once, when numba.cuda is first imported (by the kernels, or the user).
_runtime.choose_mode_at_import()

__version__ = "0.1.0"

_LAZY = {
    "TiledCSL": "flashllm_nb.formats.tiled_csl",
    "TiledBitmap": "flashllm_nb.formats.tiled_bitmap",
    "save": "flashllm_nb.formats.io",
    "load": "flashllm_nb.formats.io",
    "spmm": "flashllm_nb.kernels.api",
    "linear": "flashllm_nb.kernels.api",
    "prepare_spmm": "flashllm_nb.kernels.api",
    "prepare_linear": "flashllm_nb.kernels.api",
    "Prepared": "flashllm_nb.kernels.api",
    "prune": None,
    "llm": None,
    "reference": None,
    "formats": None,
    "kernels": None,
}

__all__ = sorted([*_LAZY, "simulator_enabled", "use_simulator", "xp"]) + ["__version__"]


def __getattr__(name: str):
    if name == "xp":  # not cached: use_simulator() may still change the mode
        return _runtime.array_module()
    if name not in _LAZY:
        raise AttributeError(f"module 'flashllm_nb' has no attribute {name!r}")
    module = _LAZY[name]
    value = importlib.import_module(f"flashllm_nb.{name}") if module is None else getattr(
        importlib.import_module(module), name
    )
    globals()[name] = value
    return value


def __dir__():
    return __all__
