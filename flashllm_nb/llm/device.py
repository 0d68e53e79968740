"""Where the engine's arrays live: CuPy on a GPU, NumPy under Numba's CUDA simulator (the kernels then run on the
CPU, thread by thread). Every module of :mod:`flashllm_nb.llm` allocates through here, so the same decoder code runs
in both modes.
"""

from __future__ import annotations

import numpy as np

from flashllm_nb import _runtime
from flashllm_nb.kernels import ptx

__all__ = ["SIMULATOR", "xp", "to_device", "to_host", "Stream", "use_device", "synchronize", "free_memory",
           "device_name", "made_apart"]

SIMULATOR = ptx.SIMULATOR


def xp():
    """``cupy`` on a GPU, ``numpy`` under the simulator (``flashllm_nb.xp``)."""
    return np if SIMULATOR else _runtime.array_module()


def to_device(a):
    """``a`` (NumPy) as an array of the engine's module."""
    return a if SIMULATOR else xp().asarray(a)


def to_host(a) -> np.ndarray:
    """``a`` as a NumPy array (a device-to-host copy on a GPU)."""
    return a if isinstance(a, np.ndarray) else a.get()  # synchronize!


def made_apart(make, copy):
    """``copy(make())``, where every allocation of ``make`` comes from a memory pool of its own, which goes back to
    the device before this returns, and the copy's from the default pool: for work whose temporaries dwarf its
    result (building a layer).

    Why: CuPy's default pool cuts a small allocation out of any larger free block it holds, and that whole block
    can then never go back to the device. Results made among large temporaries pin them so, layer after layer, and
    the memory a KV cache needs in one piece ends up in pieces the device reports as used. Under the simulator
    ``make()`` itself."""
    if SIMULATOR:
        return make()
    import cupy

    pool = cupy.cuda.MemoryPool()
    with cupy.cuda.using_allocator(pool.malloc):
        made = make()
    pool.free_all_blocks()  # the temporaries' blocks, before the copy needs room
    kept = copy(made)
    del made
    pool.free_all_blocks()
    if pool.used_bytes():  # something made inside outlives it (a cache): its memory must stay valid
        _POOLS_STILL_USED.append(pool)
    return kept


_POOLS_STILL_USED: list = []


class Stream:
    """The stream the engine launches on: a non-blocking CuPy stream (a CUDA graph can be captured from it, not
    from the legacy default stream), or nothing under the simulator. ``ptr`` is its raw handle; ``with stream:``
    makes it CuPy's current stream."""

    def __init__(self):
        if SIMULATOR:
            self.cupy_stream = None
            self.ptr = 0
        else:
            import cupy

            self.cupy_stream = cupy.cuda.Stream(non_blocking=True)
            self.ptr = self.cupy_stream.ptr

    def __enter__(self):
        if self.cupy_stream is not None:
            self.cupy_stream.__enter__()
        return self

    def __exit__(self, *exc):
        if self.cupy_stream is not None:
            self.cupy_stream.__exit__(*exc)

    def synchronize(self) -> None:
        if self.cupy_stream is not None:
            self.cupy_stream.synchronize()


def use_device(index: int) -> None:
    """Make GPU ``index`` current for CuPy and for Numba's kernels (one process per GPU under tensor parallelism);
    nothing under the simulator."""
    if SIMULATOR:
        return
    import cupy
    from numba import cuda

    cupy.cuda.Device(index).use()
    cuda.select_device(index)


def synchronize() -> None:
    """Wait for all work on the GPU: arrays made on CuPy's default stream are complete before the engine's own
    (non-blocking, so unordered with it) stream reads them."""
    if not SIMULATOR:
        xp().cuda.Device().synchronize()


def free_memory() -> tuple[int, int] | None:
    """(free, total) bytes of the current GPU, after returning CuPy's cached blocks; None under the simulator."""
    if SIMULATOR:
        return None
    import cupy

    cupy.get_default_memory_pool().free_all_blocks()
    free, total = cupy.cuda.runtime.memGetInfo()
    return int(free), int(total)


def device_name() -> str:
    """The GPU's name, or a note that the simulator runs."""
    if SIMULATOR:
        return "Numba CUDA simulator (no GPU)"
    import cupy

    return cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
