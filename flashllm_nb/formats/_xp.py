"""Array-module plumbing for the format layer: NumPy on the host, CuPy on the device, 16-bit patterns for both.

The encoder and decoder are written once over an array module ``xp`` (``numpy`` or ``cupy``), so the same code is
the CPU and the GPU implementation. CuPy has no bfloat16 dtype, so a matrix travels as its uint16 bit patterns and
its floating-point type (``float16`` or ``bfloat16``, as a NumPy dtype) is carried beside it.

CuPy is imported only when a device array actually arrives: ``import flashllm_nb`` and every NumPy path work on a
machine without CuPy.

Inputs accepted by :func:`as_bits`:

- NumPy arrays of ``float16`` or ``ml_dtypes.bfloat16``;
- CuPy arrays of ``float16``;
- PyTorch tensors of ``float16`` or ``bfloat16`` on the CPU or a CUDA device (their bits are viewed as int16 before
  the DLPack exchange, because neither NumPy nor CuPy imports a bfloat16 DLPack tensor);
- any other object with ``__cuda_array_interface__`` or ``__dlpack__`` whose dtype is float16;
- uint16 bit patterns (for torch also int16, as torch has little uint16 support) of any of the above, when the
  caller names the type they encode.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np

from .._checks import invalid

__all__ = [
    "FLOAT16",
    "BFLOAT16",
    "VALUE_DTYPES",
    "value_dtype",
    "is_device_array",
    "array_module",
    "as_bits",
    "to_host",
    "to_device",
]

FLOAT16 = np.dtype(np.float16)
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
VALUE_DTYPES = (FLOAT16, BFLOAT16)

_UINT16 = np.dtype(np.uint16)
_DLPACK_CPU = 1  # DLDeviceType kDLCPU; every other device type is taken to be CUDA memory (kDLCUDA, managed, ...)
_ACCEPTED = "a NumPy or CuPy array, or a tensor with __cuda_array_interface__ or DLPack (e.g. torch)"


def _cupy() -> ModuleType:
    import cupy  # deferred: a host-only installation has no CuPy

    return cupy


def _module_root(x: Any) -> str:
    return type(x).__module__.split(".", 1)[0]


def value_dtype(dtype: Any, name: str = "dtype") -> np.dtype:
    """Normalise ``dtype`` to ``np.dtype(float16)`` or ``np.dtype(bfloat16)``; anything else is a TypeError.

    Examples
    --------
    >>> value_dtype("float16")
    dtype('float16')
    """
    try:
        got = np.dtype(dtype)
    except TypeError:
        got = None
    if got not in VALUE_DTYPES:
        raise invalid("dtype", name, "float16 or bfloat16", dtype if got is None else got, TypeError)
    return got


def is_device_array(x: Any) -> bool:
    """True for a CuPy array (checked without importing CuPy)."""
    return _module_root(x) == "cupy" and hasattr(x, "__cuda_array_interface__")


def array_module(x: Any, name: str = "x") -> ModuleType:
    """``numpy`` for a NumPy array, ``cupy`` for a CuPy array; anything else is a TypeError naming ``name``."""
    if isinstance(x, np.ndarray):
        return np
    if is_device_array(x):
        return _cupy()
    raise invalid("type", name, "a NumPy or CuPy array", type(x).__name__, TypeError)


def _to_ndarray(x: Any, name: str) -> Any:
    """A NumPy or CuPy array sharing memory with ``x``; torch bfloat16 comes back as int16 bits."""
    if isinstance(x, np.ndarray) or is_device_array(x):
        return x
    if _module_root(x) == "torch":
        # torch exports bfloat16 through DLPack, but NumPy and CuPy refuse to import it: view the bits as int16
        # first. detach() because DLPack refuses tensors that require grad.
        t = x.detach()
        if str(t.dtype) in ("torch.float16", "torch.bfloat16"):
            import torch  # present, since x is a torch tensor

            t = t.view(torch.int16)
        return _cupy().from_dlpack(t) if t.is_cuda else np.from_dlpack(t)
    if hasattr(x, "__cuda_array_interface__"):
        return _cupy().asarray(x)
    if hasattr(x, "__dlpack__"):
        on_cpu = x.__dlpack_device__()[0] == _DLPACK_CPU
        return np.from_dlpack(x) if on_cpu else _cupy().from_dlpack(x)
    raise invalid("type", name, _ACCEPTED, type(x).__name__, TypeError)


def as_bits(x: Any, name: str, dtype: Any = None) -> tuple[Any, np.dtype]:
    """The uint16 bit patterns of a float16/bfloat16 array, in NumPy or CuPy, and the type they encode.

    Parameters
    ----------
    x : array-like
        See the module docstring for what is accepted. Memory is shared with ``x`` where possible.
    name : str
        The argument's name, used in error messages.
    dtype : float16 or bfloat16, optional
        Only for ``x`` holding uint16 bit patterns: the type those bits encode. For a floating-point ``x`` it must
        be omitted or equal to ``x``'s own type (nothing is cast).

    Returns
    -------
    bits : numpy.ndarray or cupy.ndarray
        uint16, same shape as ``x``.
    dtype : numpy.dtype
        ``float16`` or ``bfloat16``.

    Examples
    --------
    >>> bits, dt = as_bits(np.array([1.0, -0.0], np.float16), "W")
    >>> bits, dt
    (array([15360, 32768], dtype=uint16), dtype('float16'))
    """
    torch_dtype = str(getattr(x, "dtype", "")) if _module_root(x) == "torch" else ""
    arr = _to_ndarray(x, name)
    if torch_dtype in ("torch.float16", "torch.bfloat16"):
        got = FLOAT16 if torch_dtype == "torch.float16" else BFLOAT16
    else:
        got = np.dtype(arr.dtype)
    wanted = None if dtype is None else value_dtype(dtype)
    if got == _UINT16 or (got == np.dtype(np.int16) and torch_dtype):
        if wanted is None:
            raise invalid("dtype", "dtype", f"float16 or bfloat16 to say what the uint16 bits of {name} encode",
                          None, TypeError)
        return arr.view(_UINT16), wanted
    if got not in VALUE_DTYPES:
        raise invalid("dtype", name, "float16 or bfloat16", torch_dtype or got, TypeError)
    if wanted is not None and wanted != got:
        raise invalid("dtype", "dtype", f"None or {name}'s own dtype {got} (nothing is cast)", wanted, TypeError)
    return arr.view(_UINT16), got


def to_host(x: Any) -> np.ndarray:
    """A NumPy array with the contents of NumPy or CuPy array ``x`` (``x`` itself when it already is one)."""
    return x if array_module(x) is np else x.get()  # synchronize!


def to_device(x: Any) -> Any:
    """A CuPy array with ``x``'s contents (``x`` itself when it already is one)."""
    return x if is_device_array(x) else _cupy().asarray(x)
