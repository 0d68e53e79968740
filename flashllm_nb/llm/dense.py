"""Dense products of the decoder: ``y = x @ W.T`` for the layers that stay dense (embedding projections, the LM
head, matrices too dense to gain from Tiled-CSL, the dense baseline) and for prefill through an expanded scratch.

On a GPU this is cuBLAS ``cublasGemmEx`` called through ctypes on a handle of the engine's own (CuPy's ``matmul``
has no bfloat16, and CuPy's cuBLAS bindings refuse to run during CUDA-graph capture), float16 or bfloat16 in and
out, fp32 accumulation: the same arithmetic as PyTorch's ``F.linear``. The handle has a workspace of its own, so
that a product captured in a CUDA graph never asks cuBLAS to allocate. Under the simulator it is a float32 NumPy
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
            product = (bits_to_float32(x[: n * k].reshape(n, k), dtype)
                       @ bits_to_float32(w[: m * k].reshape(m, k), dtype).T)
            y[: n * m] = float32_to_bits(product, dtype).reshape(-1)
        return
    if k == 0:
        y[: n * m] = 0
        return
    kind = _CUDA_R_16F if np.dtype(dtype) == np.float16 else _CUDA_R_16BF
    _cublas().gemm_t(x.data.ptr, w.data.ptr, y.data.ptr, n, m, k, kind, stream)


class _Cublas:
    """A cuBLAS handle of the engine's own, called through ctypes.

    CuPy's cuBLAS bindings refuse to run while a stream is being captured; the library itself supports capture
    (given a workspace, so that it never allocates then). One handle, one workspace, and the two calls a product
    needs: ``cublasSetStream_v2`` and ``cublasGemmEx``."""

    def __init__(self):
        import cupy
        from cupy_backends.cuda.libs import cublas  # loads libcublas into the process

        del cublas
        self._lib = _load_cublas()
        handle = ctypes.c_void_p()
        self._check(self._lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate_v2")
        self._handle = handle
        self._workspace = cupy.empty(_WORKSPACE_BYTES, np.uint8)
        self._check(self._lib.cublasSetWorkspace_v2(handle, ctypes.c_void_p(self._workspace.data.ptr),
                                                    ctypes.c_size_t(_WORKSPACE_BYTES)), "cublasSetWorkspace_v2")
        self._gemm = self._lib.cublasGemmEx
        self._gemm.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                               ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                               ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._gemm.restype = ctypes.c_int
        self._set_stream = self._lib.cublasSetStream_v2
        self._set_stream.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._set_stream.restype = ctypes.c_int
        self._one, self._zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
        self._stream = None

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def gemm_t(self, x: int, w: int, y: int, n: int, m: int, k: int, kind: int, stream: int) -> None:
        """``y = x @ w.T`` for row-major device pointers; column-major: y.T (m x n) = op_T(W) (k x m stored)
        @ x.T (k x n)."""
        if stream != self._stream:
            # cublasSetStream resets the handle to cuBLAS's own workspace pool: set ours again after it
            self._check(self._set_stream(self._handle, stream), "cublasSetStream_v2")
            self._check(self._lib.cublasSetWorkspace_v2(self._handle, ctypes.c_void_p(self._workspace.data.ptr),
                                                        ctypes.c_size_t(_WORKSPACE_BYTES)), "cublasSetWorkspace_v2")
            self._stream = stream
        self._check(self._gemm(self._handle, _CUBLAS_OP_T, _CUBLAS_OP_N, m, n, k, ctypes.byref(self._one), w, kind,
                               k, x, kind, k, ctypes.byref(self._zero), y, kind, m, _CUBLAS_COMPUTE_32F,
                               _CUBLAS_GEMM_DEFAULT), "cublasGemmEx")


@functools.cache
def _cublas() -> _Cublas:
    return _Cublas()


def _load_cublas() -> ctypes.CDLL:
    """The cuBLAS library CuPy has loaded, by its soname."""
    for name in ("libcublas.so.13", "libcublas.so.12", "libcublas.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise RuntimeError("cuBLAS (libcublas.so.13 or .12) could not be loaded")
