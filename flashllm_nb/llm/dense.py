"""Dense products of the decoder: ``y = x @ W.T`` for the layers that stay dense (embedding projections, the LM
head, matrices too dense to gain from Tiled-CSL, the dense baseline) and for prefill through an expanded scratch.

On a GPU this is cuBLAS ``gemmEx`` called directly (CuPy's ``matmul`` has no bfloat16), float16 or bfloat16 in and
out, fp32 accumulation: the same arithmetic as PyTorch's ``F.linear``. The handle gets a workspace of its own once,
so that a product captured in a CUDA graph never asks cuBLAS to allocate. Under the simulator it is a float32 NumPy
product rounded once, the same bound.
"""

from __future__ import annotations

import ctypes
import functools

import ml_dtypes
import numpy as np

from flashllm_nb.kernels import ptx

__all__ = ["matmul_t", "bits_to_float32", "float32_to_bits"]

_CUDA_R_16F, _CUDA_R_16BF = 2, 14  # cudaDataType
_CUBLAS_COMPUTE_32F = 68
_CUBLAS_GEMM_DEFAULT = -1
_CUBLAS_OP_N, _CUBLAS_OP_T = 0, 1
_WORKSPACE_BYTES = 32 << 20  # cuBLAS's recommendation for Hopper
_ONE = np.ones(1, np.float32)
_ZERO = np.zeros(1, np.float32)


def bits_to_float32(bits, dtype):
    """float32 values of float16 / bfloat16 bit patterns (NumPy or CuPy uint16 array of any shape)."""
    if np.dtype(dtype) == np.float16:
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bits(values, dtype):
    """Bit patterns of float32 ``values`` rounded to nearest-even float16 / bfloat16 (NumPy arrays)."""
    return values.astype(np.float16 if np.dtype(dtype) == np.float16 else ml_dtypes.bfloat16).view(np.uint16)


def matmul_t(x, w, y, n: int, m: int, k: int, dtype, stream: int = 0) -> None:
    """``y (n, m) = x (n, k) @ w (m, k).T`` on flat row-major uint16 bit arrays of ``dtype``."""
    if n == 0 or m == 0:
        return
    if ptx.SIMULATOR:
        with np.errstate(over="ignore", invalid="ignore"):
            product = bits_to_float32(x[: n * k].reshape(n, k), dtype) @ bits_to_float32(w[: m * k].reshape(m, k), dtype).T
            y[: n * m] = float32_to_bits(product, dtype).reshape(-1)
        return
    if k == 0:
        y[: n * m] = 0
        return
    from cupy_backends.cuda.libs import cublas

    handle = _handle()
    cublas.setStream(handle, stream)
    kind = _CUDA_R_16F if np.dtype(dtype) == np.float16 else _CUDA_R_16BF
    # Column-major view: y.T (m x n) = W (m x k, stored as k x m column-major, hence op T) @ x.T (k x n).
    cublas.gemmEx(handle, _CUBLAS_OP_T, _CUBLAS_OP_N, m, n, k, _ONE.ctypes.data, w.data.ptr, kind, k, x.data.ptr,
                  kind, k, _ZERO.ctypes.data, y.data.ptr, kind, m, _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT)


_WORKSPACES: dict = {}


def _handle() -> int:
    """CuPy's cuBLAS handle of the current device, with a workspace of its own set once."""
    import cupy
    from cupy.cuda import device

    handle = device.get_cublas_handle()
    if handle not in _WORKSPACES:
        workspace = cupy.empty(_WORKSPACE_BYTES, np.uint8)
        status = _set_workspace()(ctypes.c_void_p(handle), ctypes.c_void_p(workspace.data.ptr),
                                  ctypes.c_size_t(_WORKSPACE_BYTES))
        if status:
            raise RuntimeError(f"cublasSetWorkspace failed with status {status}")
        _WORKSPACES[handle] = workspace
    return handle


@functools.cache
def _set_workspace():
    """``cublasSetWorkspace_v2`` of the cuBLAS library CuPy has loaded (CuPy does not wrap it)."""
    from cupy_backends.cuda.libs import cublas  # loads libcublas into the process

    del cublas
    for name in ("libcublas.so.13", "libcublas.so.12", "libcublas.so"):
        try:
            function = ctypes.CDLL(name).cublasSetWorkspace_v2
        except (OSError, AttributeError):
            continue
        function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        function.restype = ctypes.c_int
        return function
    raise RuntimeError("cuBLAS (libcublas.so.13 or .12) could not be loaded for cublasSetWorkspace_v2")
