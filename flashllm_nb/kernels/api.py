"""The public products: ``spmm(A, X)`` and ``linear(X, A, bias)`` for a Tiled-CSL ``A``.

Both run the same kernel (``spmm_tiled_csl``); they differ only in where the activations and the output live:
``linear`` reads X as (N, K) row-major and writes (N, M) - the memory of a K x N column-major operand - while ``spmm``
reads X as (K, N) row-major and writes (M, N).

Arrays come back in the module they came from: CuPy in, CuPy out; a PyTorch tensor in, a PyTorch tensor out;
NumPy in and out under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), where the same kernel source runs
thread by thread on the CPU. Validation happens here, once; the launch path below it trusts its inputs.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from flashllm_nb._checks import check_ndim, check_shape, invalid
from flashllm_nb.formats import _xp
from flashllm_nb.formats.tiled_csl import TiledCSL
from flashllm_nb.kernels import launch as _launch
from flashllm_nb.kernels import ptx

__all__ = ["spmm", "linear"]

_CHUNK = 8  # the kernel moves activations in 16-byte chunks of 8 values: rows must start 16-byte aligned


def spmm(A: TiledCSL, X: Any, out: Any = None, stream: Any = None, *, split_k: int | None = None) -> Any:
    """Sparse times dense: ``A @ X``.

    Parameters
    ----------
    A : TiledCSL
        (M, K) sparse weights, on the device (``A.to_device()``), or on the host under the simulator.
    X : array
        (K, N) activations, row-major, same dtype as ``A`` (float16 or bfloat16). CuPy, PyTorch or any object
        with ``__cuda_array_interface__`` / DLPack; NumPy under the simulator.
    out : array, optional
        (M, N) row-major output of the same dtype and module as ``X``; allocated when omitted.
    stream : optional
        A Numba or CuPy stream to launch on; the default stream when omitted.
    split_k : int, optional
        Force the number of K splits (1 = none); chosen from the shape and the device when omitted.

    Returns
    -------
    array
        (M, N) = A @ X, fp32-accumulated and rounded once to ``A.dtype``; ``out`` when given.

    Examples
    --------
    >>> Y = fl.spmm(A, X)                                          # doctest: +SKIP
    >>> np.allclose(Y.astype(np.float32), A.to_dense().astype(np.float32) @ X.astype(np.float32), rtol=1e-2)  # doctest: +SKIP
    """
    return _run(A, X, None, out, stream, split_k, x_layout="kn")


def linear(X: Any, A: TiledCSL, bias: Any = None, out: Any = None, stream: Any = None, *,
           split_k: int | None = None) -> Any:
    """A sparse linear layer: ``X @ A.T + bias``.

    Parameters
    ----------
    X : array
        (N, K) activations (N tokens of K features), row-major, same dtype as ``A``.
    A : TiledCSL
        (M, K) = (out_features, in_features) sparse weights, on the device (host under the simulator).
    bias : array, optional
        (M,) added before the single rounding of the output.
    out : array, optional
        (N, M) row-major output; allocated when omitted.
    stream, split_k
        As for :func:`spmm`.

    Returns
    -------
    array
        (N, M) = X @ A.T + bias; ``out`` when given.
    """
    return _run(A, X, bias, out, stream, split_k, x_layout="nk")


def _run(A, X, bias, out, stream, split_k, x_layout):
    if not isinstance(A, TiledCSL):
        raise invalid("type", "A", "a flashllm_nb.TiledCSL", type(A).__name__, TypeError)
    if A.on_device == ptx.SIMULATOR:
        where = "on the host (NumPy) under the simulator" if ptx.SIMULATOR else "on the device (A.to_device())"
        raise invalid("device", "A", where, "device" if A.on_device else "host")
    m, k = A.shape
    x_bits, dtype = _xp.as_bits(X, "X")
    check_ndim(x_bits, "X", 2)
    n = x_bits.shape[0] if x_layout == "nk" else x_bits.shape[1]
    check_shape(x_bits, "X", (None, k) if x_layout == "nk" else (k, None))
    if dtype != A.dtype:
        raise invalid("dtype", "X", f"A's dtype {A.dtype}", dtype, TypeError)
    xp = _xp.array_module(x_bits, "X")
    if (xp is np) != (not A.on_device):
        raise invalid("device", "X", "the same device as A", "host" if xp is np else "device")
    if not x_bits.flags["C_CONTIGUOUS"]:
        raise invalid("memory layout", "X", "a C-contiguous (row-major) array", f"strides {x_bits.strides}")
    if split_k is not None and (isinstance(split_k, bool) or not isinstance(split_k, (int, np.integer)) or split_k < 1):
        raise invalid("value", "split_k", "None or an integer >= 1", split_k)

    out_shape = (n, m) if x_layout == "nk" else (m, n)
    if out is None:
        out = _empty_like_input(X, out_shape, dtype, xp)
    y_bits = _checked_output(out, out_shape, dtype, xp)
    bias_bits = None if bias is None else _checked_bias(bias, m, dtype, xp)
    if n == 0 or m == 0:
        return out
    if k == 0:
        y_bits[...] = 0 if bias_bits is None else bias_bits[None, :] if x_layout == "nk" else bias_bits[:, None]
        return out

    x_flat, ldx = _aligned_rows(x_bits, xp)
    p = _launch.plan(m, n, k, "bfloat16" if dtype == _xp.BFLOAT16 else "float16", x_layout, _max_tile_vectors(A),
                     None if split_k is None else int(split_k))
    _launch.launch(p, A.words, A.tile_offsets, x_flat, ldx, y_bits.reshape(-1), bias_bits, m, n, k, A.n_tile_cols,
                   xp, 0 if xp is np else _stream_handle(stream, X))
    return out


_MAX_TILE_VECTORS: "weakref.WeakKeyDictionary[TiledCSL, int]" = weakref.WeakKeyDictionary()


def _max_tile_vectors(A: TiledCSL) -> int:
    """The densest tile's 16-byte word vectors: sizes the kernel's word stages. Computed once per matrix (one
    device-to-host read), since a TiledCSL never changes."""
    value = _MAX_TILE_VECTORS.get(A)
    if value is None:
        offsets = A.tile_offsets
        value = int((offsets[1:] - offsets[:-1]).max())  # synchronize!
        _MAX_TILE_VECTORS[A] = value
    return value


def _stream_handle(stream, X) -> int:
    """The raw CUDA stream to launch on. ``None`` means the current stream of the library X came from (PyTorch's
    for a tensor, CuPy's otherwise: the legacy default stream unless the caller made another one current)."""
    if stream is None:
        if type(X).__module__.split(".", 1)[0] == "torch":
            import torch

            return torch.cuda.current_stream(X.device).cuda_stream
        import cupy

        return cupy.cuda.get_current_stream().ptr
    if isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
        return int(stream)
    for attribute in ("ptr", "cuda_stream", "handle"):  # CuPy, PyTorch, Numba
        handle = getattr(stream, attribute, None)
        if handle is not None:
            return int(getattr(handle, "value", handle) or 0)
    raise invalid("type", "stream", "None, a raw handle, or a CuPy, PyTorch or Numba stream", type(stream).__name__,
                  TypeError)


def _aligned_rows(x_bits, xp):
    """X as a flat array whose rows start 16-byte aligned: itself when its row length is a multiple of 8 values and
    its base is 16-byte aligned, else a zero-padded copy (a rare shape pays one extra copy instead of a slow path)."""
    rows, cols = x_bits.shape
    base = x_bits.ctypes.data if xp is np else x_bits.data.ptr
    if cols % _CHUNK == 0 and base % 16 == 0:
        return x_bits.reshape(-1), cols
    ld = -(-cols // _CHUNK) * _CHUNK
    padded = xp.zeros((rows, ld), dtype=np.uint16)
    padded[:, :cols] = x_bits
    return padded.reshape(-1), ld


def _empty_like_input(X, shape, dtype, xp):
    """A new output in X's module: torch for torch, CuPy (uint16 bits for bfloat16) for CuPy, NumPy for NumPy."""
    if type(X).__module__.split(".", 1)[0] == "torch":
        import torch

        return torch.empty(shape, dtype=X.dtype, device=X.device)
    if xp is np:
        return np.empty(shape, dtype=dtype)
    return xp.empty(shape, dtype=np.float16 if dtype == _xp.FLOAT16 else np.uint16)


def _checked_output(out, shape, dtype, xp):
    bits, out_dtype = _xp.as_bits(out, "out", None if _is_float(out) else dtype)
    check_shape(bits, "out", shape)
    if out_dtype != dtype:
        raise invalid("dtype", "out", dtype, out_dtype, TypeError)
    if _xp.array_module(bits, "out") is not xp:
        raise invalid("device", "out", "the same device as X", "host" if xp is not np else "device")
    if not bits.flags["C_CONTIGUOUS"]:
        raise invalid("memory layout", "out", "a C-contiguous (row-major) array", f"strides {bits.strides}")
    return bits


def _checked_bias(bias, m, dtype, xp):
    bits, bias_dtype = _xp.as_bits(bias, "bias", None if _is_float(bias) else dtype)
    check_shape(bits, "bias", (m,))
    if bias_dtype != dtype:
        raise invalid("dtype", "bias", dtype, bias_dtype, TypeError)
    if _xp.array_module(bits, "bias") is not xp:
        raise invalid("device", "bias", "the same device as X", "host" if xp is not np else "device")
    return xp.ascontiguousarray(bits)


def _is_float(x) -> bool:
    """Whether x carries its own floating-point type (so no ``dtype`` should be passed to ``as_bits``)."""
    return "int" not in str(getattr(x, "dtype", ""))
