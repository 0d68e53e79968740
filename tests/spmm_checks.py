"""Random operands and the element-by-element check of one SpMM product, shared by the simulator, GPU and tiered
tests of the kernel (``test_spmm*.py``, ``test_prepared.py``).

Operands are made on the host with NumPy, in their 16-bit dtype, and moved to the kernels' arrays of the session's
tier (``tier.device``). The reference is the float64 product of the same 16-bit values, with the bound of
``flashllm_nb.reference.tolerance``: under the simulator from the library's references (dense arithmetic for
non-finite values), on the GPU from CuPy (the matrices there are too large for a quick host product).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

import flashllm_nb as fl
from flashllm_nb.reference import linear_reference
from flashllm_nb.reference.spmm import abs_product
from flashllm_nb.reference.tolerance import assert_close_to_reference
from tier import SIMULATOR, device, host

F16, BF16 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)


def random_sparse(rng, m: int, k: int, sparsity: float, dtype) -> np.ndarray:
    """An M x K matrix of standard normal values, each zero with probability ``sparsity``, rounded to dtype."""
    W = rng.standard_normal((m, k), dtype=np.float32)
    W[rng.random((m, k)) < sparsity] = 0
    return W.astype(dtype)


def random_activations(rng, n: int, k: int, dtype) -> np.ndarray:
    """N x K standard normal activations rounded to dtype."""
    return rng.standard_normal((n, k), dtype=np.float32).astype(dtype)


def reference(W: np.ndarray, X: np.ndarray, bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``X @ W.T + bias`` and ``|X| @ |W|.T`` in float64, as host arrays, for host W (M x K), X (N x K), bias (M)."""
    if SIMULATOR:
        return linear_reference(X, W, bias), abs_product(X, W.T)
    import cupy

    W64, X64 = (cupy.asarray(a.astype(np.float32)).astype(np.float64) for a in (W, X))
    ref = X64 @ W64.T
    if bias is not None:
        ref += cupy.asarray(bias.astype(np.float32)).astype(np.float64)[None, :]
    return ref.get(), (cupy.abs(X64) @ cupy.abs(W64).T).get()


def check_product(W: np.ndarray, X: np.ndarray, *, layout: str = "nk", bias: np.ndarray | None = None,
                  split_k: int | None = None, force=None, poisoned_out: bool = True, relu: bool = False,
                  matrix_format=None) -> np.ndarray:
    """Run ``linear(X, A)`` (layout "nk") or ``spmm(A, X.T)`` ("kn", the transposed-load path; no bias) in this
    tier, A = W in Tiled-CSL, on host W (M x K), X (N x K) and bias (M) of one dtype, and compare with the float64
    reference within the fp32-accumulation bound. With ``poisoned_out`` the call writes into an output filled with
    NaN (and returns it), so that an element the kernel never writes cannot pass; without, it allocates its own.
    ``relu``: ``linear(..., activation="relu")``, against the reference's ReLU (NaN stays NaN). ``matrix_format``:
    the class A is encoded in (``fl.TiledCSL`` when None, or ``fl.TiledBitmap``). Returns the result as a host
    array."""
    dtype, (m, k), n = W.dtype, W.shape, X.shape[0]
    A = (matrix_format or fl.TiledCSL).from_dense(device(W))
    shape = (n, m) if layout == "nk" else (m, n)
    out = device(np.full(shape, np.nan, dtype)) if poisoned_out else None
    if layout == "nk":
        Y = fl.linear(device(X), A, bias=None if bias is None else device(bias), out=out, split_k=split_k,
                      force=force, activation="relu" if relu else None)
    else:
        assert bias is None, "spmm takes no bias"
        Y = fl.spmm(A, device(np.ascontiguousarray(X.T)), out=out, split_k=split_k, force=force)
    if poisoned_out:
        assert Y is out
    got = host(Y)
    assert got.dtype == dtype and got.shape == shape
    ref, scale = reference(W, X, bias)
    if relu:
        ref = np.where(ref < 0, 0.0, ref)
    if layout == "kn":
        ref, scale = ref.T, scale.T
    assert_close_to_reference(got, ref, scale, k, dtype,
                              what=f"{type(A).__name__} {layout} {m}x{k} N={n} {dtype.name} split={split_k} "
                                   f"force={force} relu={relu}")
    return got
