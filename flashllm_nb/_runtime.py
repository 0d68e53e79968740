"""Which of the two execution modes this process runs in: a real CUDA GPU, or Numba's CUDA simulator.

Numba reads ``NUMBA_ENABLE_CUDASIM`` once, when ``numba.cuda`` is first imported, so the choice has to be made
before that import. ``gpu_available()`` therefore asks the CUDA driver directly through ctypes (no Numba, no CuPy):
it is safe to call first thing in a command-line tool or a test session.
"""

from __future__ import annotations

import ctypes
import functools
import os

__all__ = ["cuda_driver", "gpu_available", "simulator_enabled", "use_simulator_if_no_gpu"]


@functools.cache
def cuda_driver() -> ctypes.CDLL | None:
    """The CUDA driver library through ctypes, or None when it does not load."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


@functools.cache
def gpu_available() -> bool:
    """True when the CUDA driver loads and reports at least one device."""
    driver = cuda_driver()
    if driver is None or driver.cuInit(0) != 0:
        return False
    count = ctypes.c_int(0)
    return driver.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def simulator_enabled() -> bool:
    """True when Numba's CUDA simulator is (or will be) what ``numba.cuda`` means in this process."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def use_simulator_if_no_gpu() -> bool:
    """Turn the simulator on when there is no GPU; returns whether it is on.

    Must run before anything imports ``numba.cuda``; afterwards the environment variable no longer matters.
    """
    if not simulator_enabled() and not gpu_available():
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    return simulator_enabled()
