"""flashllm_nb: unstructured-sparse LLM weights on NVIDIA Tensor Cores, in Python.

Flash-LLM's "load as sparse, compute as dense": weights travel from device memory compressed (Tiled-CSL) and are
expanded tile by tile in shared memory for ``mma.sync``. Kernels are Numba-CUDA with inline PTX; without a GPU they
run in Numba's CUDA simulator.

>>> import numpy as np, flashllm_nb as fl
>>> W = fl.prune.random(np.random.default_rng(0).standard_normal((256, 128)).astype(np.float16), 0.8, seed=0)
>>> A = fl.TiledCSL.from_dense(W)
>>> A.shape, A.nnz
((256, 128), 6554)

Names are imported lazily so that ``import flashllm_nb`` is cheap and needs neither a GPU nor CuPy.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "TiledCSL": "flashllm_nb.formats.tiled_csl",
    "save": "flashllm_nb.formats.io",
    "load": "flashllm_nb.formats.io",
    "spmm": "flashllm_nb.kernels.api",
    "linear": "flashllm_nb.kernels.api",
    "prepare_spmm": "flashllm_nb.kernels.api",
    "prepare_linear": "flashllm_nb.kernels.api",
    "Prepared": "flashllm_nb.kernels.api",
    "prune": None,
    "reference": None,
    "formats": None,
    "kernels": None,
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
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
