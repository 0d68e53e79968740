"""Which of the two execution modes this process runs in: a real CUDA GPU, or Numba's CUDA simulator.

Numba reads ``NUMBA_ENABLE_CUDASIM`` once, when ``numba.cuda`` is first imported, so the choice has to be made
before that import. ``import flashllm_nb`` makes it (:func:`choose_mode_at_import`): with the variable unset and no
usable GPU, the simulator. ``gpu_available()`` asks the CUDA driver directly through ctypes (no Numba, no CuPy), so
the choice costs a failed library load on a machine without a driver.

Public, as ``flashllm_nb.use_simulator``, ``flashllm_nb.simulator_enabled`` and ``flashllm_nb.xp``:
:func:`use_simulator`, :func:`simulator_enabled` and :func:`array_module`.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from types import ModuleType

__all__ = [
    "cuda_driver", "gpu_available", "gpu_unavailable_reason", "no_gpu_hint", "require_gpu", "simulator_enabled",
    "use_simulator", "use_simulator_if_no_gpu", "choose_mode_at_import", "array_module", "cupy",
]

_SWITCH = "NUMBA_ENABLE_CUDASIM"
# Imported by numba.cuda's __init__ only when it binds the simulator (numba.cuda.device_init otherwise).
_SIMULATOR_INIT = "numba.cuda.simulator_init"
_INSTALL_CUPY = "pip install 'flashllm_nb[cu13]' ('[cu12]' for a CUDA 12 driver)"


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
def gpu_unavailable_reason() -> str | None:
    """Why no CUDA GPU can be used here (the driver does not load, does not start, or sees no device), or None."""
    driver = cuda_driver()
    if driver is None:
        return "the CUDA driver library (libcuda) does not load"
    status = driver.cuInit(0)
    if status != 0:
        name = ctypes.c_char_p()
        known = driver.cuGetErrorName(status, ctypes.byref(name)) == 0 and name.value
        return f"the CUDA driver does not start: cuInit returned {name.value.decode() if known else status}"
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "the CUDA driver reports no device"
    return None


def gpu_available() -> bool:
    """True when the CUDA driver loads and reports at least one device."""
    return gpu_unavailable_reason() is None


def no_gpu_hint() -> str:
    """The sentence every no-GPU error ends with: why there is no GPU, and how to run in the simulator."""
    return (f"there is no usable CUDA GPU here ({gpu_unavailable_reason()}). Without one, flashllm_nb runs its "
            "kernels in Numba's CUDA simulator, on NumPy arrays (slowly: small sizes only). `import flashllm_nb` "
            "turns it on by itself unless NUMBA_ENABLE_CUDASIM=0 is set or numba.cuda was imported first; to turn "
            "it on yourself, call flashllm_nb.use_simulator() before anything imports numba.cuda, or set "
            "NUMBA_ENABLE_CUDASIM=1")


def require_gpu(what: str) -> ModuleType:
    """The ``cupy`` module, for ``what`` (named in the errors) to run on the GPU.

    Raises
    ------
    RuntimeError
        There is no usable GPU (the message ends with :func:`no_gpu_hint`).
    ImportError
        CuPy does not import (the message says how to install it).
    """
    if not gpu_available():
        raise RuntimeError(f"{what} needs a CUDA GPU, but {no_gpu_hint()}")
    return cupy()


def simulator_enabled() -> bool:
    """True when Numba's CUDA simulator is what ``numba.cuda`` means in this process (or will mean, when imported).

    Once ``numba.cuda`` is imported its mode is fixed, whatever ``NUMBA_ENABLE_CUDASIM`` says afterwards.
    """
    if "numba.cuda" in sys.modules:
        return _SIMULATOR_INIT in sys.modules
    return os.environ.get(_SWITCH, "0") not in ("", "0")


def use_simulator() -> None:
    """Run flashllm_nb's kernels in Numba's CUDA simulator, on NumPy arrays, for the rest of this process.

    ``import flashllm_nb`` already does this on a machine without a usable GPU (unless ``NUMBA_ENABLE_CUDASIM=0``
    is set); call it to use the simulator on a GPU machine too. It sets ``NUMBA_ENABLE_CUDASIM=1`` (which child
    processes inherit) and must come before anything imports ``numba.cuda``: Numba reads the switch at that import.

    Raises
    ------
    RuntimeError
        ``numba.cuda`` is already imported for the GPU.
    """
    if simulator_enabled():
        return
    if "numba.cuda" in sys.modules:
        raise RuntimeError("Numba's CUDA simulator cannot be turned on now: numba.cuda is already imported for the "
                           "GPU, and Numba reads NUMBA_ENABLE_CUDASIM only at that import. Call "
                           "flashllm_nb.use_simulator() before anything imports numba.cuda (flashllm_nb's kernels "
                           "import it), or start the process with NUMBA_ENABLE_CUDASIM=1")
    os.environ[_SWITCH] = "1"


def use_simulator_if_no_gpu() -> bool:
    """Turn the simulator on when there is no GPU, overriding ``NUMBA_ENABLE_CUDASIM=0``; returns whether it is on.

    For tools that must run everywhere (the command line, the test session). Must run before anything imports
    ``numba.cuda``.
    """
    if not simulator_enabled() and not gpu_available():
        use_simulator()
    return simulator_enabled()


def choose_mode_at_import() -> None:
    """What ``import flashllm_nb`` does: the simulator when ``NUMBA_ENABLE_CUDASIM`` is unset, ``numba.cuda`` not yet
    imported and there is no usable GPU. An explicit ``NUMBA_ENABLE_CUDASIM`` (0 included) is left as it is."""
    if os.environ.get(_SWITCH, "") == "" and "numba.cuda" not in sys.modules and not gpu_available():
        use_simulator()


def cupy() -> ModuleType:
    """The ``cupy`` module; an ImportError that says how to install it when it does not import."""
    try:
        import cupy as module
    except ImportError as exc:
        raise ImportError(f"flashllm_nb's GPU path needs CuPy, which does not import ({exc}): {_INSTALL_CUPY}") \
            from exc
    return module


def array_module() -> ModuleType:
    """The array module ``linear`` and ``spmm`` take in this process: ``numpy`` under the simulator, else ``cupy``.

    Raises
    ------
    RuntimeError
        The simulator is off and there is no usable GPU (see :func:`no_gpu_hint`).
    ImportError
        The simulator is off and CuPy does not import.
    """
    if simulator_enabled():
        import numpy

        return numpy
    return require_gpu("flashllm_nb.xp (CuPy)")
