"""The kernel benchmark: every peer beside flashllm_nb's kernels, in one process, as tables and a plot.

``python -m flashllm_nb.bench`` (or ``flashllm-nb bench``) runs a declared sweep, in the manner of Triton's
``perf_report``:

- x: weight shapes (:mod:`.shapes`: OPT-30B/66B/175B and Llama-2 presets, or ``--shape M,K``) and sparsities;
- lines: providers (:mod:`.providers`: cuBLAS dense, cuSPARSE CSR through CuPy and PyTorch, PyTorch 2:4, and
  flashllm_nb's Tiled-CSL kernel), a declared registry where a new format or kernel is one entry;
- y: speedup over cuBLAS (same shape, N and sparsity, same process), beside the time, the dense-equivalent
  TFLOP/s, GB/s and the fraction of the bandwidth bound; one plot panel per token count N.

In pseudo-code::

    copy_bw = device-to-device copy bandwidth
    for shape, sparsity:       W = prune(random normal), reference = cuBLAS(X @ W.T), checked against float64
        for provider, N:       encode W (once per rotation slot), check Y elementwise, time with CUDA events
    report: per-case table, geometric mean over shapes (the headline), CSV, JSON, PNG

Timing (:mod:`.timing`), the correctness rule (the "Probable" rule of :mod:`flashllm_nb.reference.tolerance`) and
the bound are explained in those modules and in bench/README.md. Without a GPU the command checks flashllm_nb's
kernels in Numba's CUDA simulator instead, and times nothing.
"""

from __future__ import annotations

from .command import build_parser, main

__all__ = ["main", "build_parser"]
