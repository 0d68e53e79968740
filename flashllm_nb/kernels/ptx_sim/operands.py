"""What every simulator twin of :mod:`flashllm_nb.kernels.ptx_sim` does with its arguments: check them as the
typing of :mod:`flashllm_nb.kernels.ptx_asm` does (every message names the instruction), and reach the bytes an
address names, refusing what would be undefined on the GPU (the wrong memory space, a misaligned or out-of-bounds
access).
"""

from __future__ import annotations

import numpy as np
from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray, FakeWithinKernelCUDAArray


def as_integer(instruction: str, name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{instruction}: {name} must be an integer, got {type(value).__name__}")
    return int(value)


def as_float32(instruction: str, name: str, value) -> np.float32:
    if not isinstance(value, np.float32):
        raise TypeError(
            f"{instruction}: {name} must be a float32 (write np.float32(x); a Python float is float64), "
            f"got {type(value).__name__}"
        )
    return value


def device_array(value) -> np.ndarray | None:
    """The NumPy array behind a kernel argument as the simulator passes it, or None if ``value`` is not one."""
    if isinstance(value, FakeWithinKernelCUDAArray):
        value = value.__dict__["_item"]
    return value._ary if isinstance(value, FakeCUDAArray) else None


def raw_bytes(instruction: str, name: str, value, space: str) -> np.ndarray:
    """The bytes of a ``space`` array ("shared": a NumPy array, "global": a kernel argument), as a flat uint8 view."""
    device = device_array(value)
    if space == "global" and device is None:
        raise TypeError(f"{instruction}: {name} must be a device array (a kernel argument), got {type(value).__name__}")
    if space == "shared" and (device is not None or not isinstance(value, np.ndarray)):
        raise TypeError(f"{instruction}: {name} must be a cuda.shared.array, got a device array (kernel argument)")
    array = value if device is None else device
    if not array.flags.c_contiguous:
        raise TypeError(f"{instruction}: {name} must be C-contiguous, got strides {array.strides}")
    return array.reshape(-1).view(np.uint8)


def span(instruction: str, name: str, raw: np.ndarray, itemsize: int, index, nbytes: int, align: int = 16):
    """The byte offset of flat element ``index``, checked to be ``align``-aligned with ``nbytes`` bytes in bounds."""
    offset = as_integer(instruction, f"{name} index", index) * itemsize
    if offset % align or offset < 0 or offset + nbytes > raw.size:
        raise IndexError(
            f"{instruction}: {name} must address {nbytes} bytes, {align}-byte aligned, inside its {raw.size} bytes; "
            f"got byte offset {offset}"
        )
    return offset


def element_size(value) -> int:
    device = device_array(value)
    return (value if device is None else device).dtype.itemsize
