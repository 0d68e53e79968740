"""Argument validation for the public boundary, with one message shape for every library entry point.

Every message names the argument, what was expected and what was given, e.g.
``Invalid shape of X: expected (4096, N), got (4095, 16)``. Validation happens only here, at the public
boundary: kernels and internal helpers trust their inputs.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

__all__ = ["invalid", "wrong_device", "check_ndim", "check_shape", "check_dtype", "check_c_contiguous", "check_int_in_range"]


def invalid(what: str, name: str, expected: Any, got: Any, exc: type[Exception] = ValueError) -> Exception:
    """Build (not raise) the library's standard error: ``Invalid {what} of {name}: expected {expected}, got {got}``."""
    return exc(f"Invalid {what} of {name}: expected {expected}, got {got}")


def wrong_device(name: str, expected: str, got: Any, advice: str = "") -> ValueError:
    """The error for an argument on the wrong side of the bus, with ``advice`` on how to move it; on a machine
    without a usable GPU (simulator off) it says so, and how to run in the simulator, instead of the advice."""
    from flashllm_nb._runtime import gpu_available, no_gpu_hint
    from flashllm_nb.kernels import ptx  # deferred: importing it fixes Numba's mode, which the package sets first

    if ptx.SIMULATOR or gpu_available():
        return invalid("device", name, expected + advice, got)
    return ValueError(f"{invalid('device', name, expected, got)}; but {no_gpu_hint()}")


def check_ndim(x: Any, name: str, ndim: int) -> None:
    if getattr(x, "ndim", None) != ndim:
        raise invalid("number of dimensions", name, ndim, getattr(x, "ndim", type(x).__name__))


def check_shape(x: Any, name: str, shape: Iterable[int | None]) -> None:
    """``shape`` may hold ``None`` for a free dimension; it is printed as ``*``."""
    shape = tuple(shape)
    got = tuple(getattr(x, "shape", ()))
    if len(got) != len(shape) or any(e is not None and e != g for e, g in zip(shape, got)):
        shown = "(" + ", ".join("*" if e is None else str(e) for e in shape) + (",)" if len(shape) == 1 else ")")
        raise invalid("shape", name, shown, got)


def check_dtype(x: Any, name: str, allowed: Iterable[Any]) -> None:
    allowed = [np.dtype(d) for d in allowed]
    got = np.dtype(x.dtype) if hasattr(x, "dtype") else type(x).__name__
    if got not in allowed:
        raise invalid("dtype", name, " or ".join(str(d) for d in allowed), got, TypeError)


def check_c_contiguous(x: Any, name: str) -> None:
    flags = getattr(x, "flags", None)
    if flags is None or not flags["C_CONTIGUOUS"]:
        raise invalid("memory layout", name, "a C-contiguous (row-major) array", f"strides {getattr(x, 'strides', None)}")


def check_int_in_range(value: Any, name: str, low: int, high: int | None = None) -> int:
    """An integer ``low <= value`` (``<= high`` when given); bools are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise invalid("type", name, "an integer", type(value).__name__, TypeError)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise invalid("value", name, bound, value)
    return int(value)
