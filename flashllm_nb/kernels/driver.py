"""Launching a Numba kernel compiled once for one signature, without Numba's dispatcher.

``kernel[grid, block](*args)`` re-types every argument and converts every array through
``__cuda_array_interface__`` on each call: tens of microseconds with CuPy arrays, and a synchronisation on the
array's stream where the interface names one, which breaks CUDA-graph capture. A :class:`Kernel` compiles its
dispatcher once for a fixed signature of flat (1-D, C-contiguous) arrays and int32 / float32 scalars, packs each
call's arguments into a parameter block in Numba's kernel ABI and calls the driver's ``cuLaunchKernel`` through
ctypes: one foreign call, on the stream it is given, so it is captured like any other launch.

Under Numba's CUDA simulator the same object launches the dispatcher on NumPy arrays (with the faster block
manager of :mod:`flashllm_nb.kernels.sim_blocks`), so kernel code and launch code are the same in both modes.

Numba's ABI for an argument: a 1-D array is seven 8-byte parameters (meminfo, parent, nitems, itemsize, data,
shape[0], strides[0]); a scalar is one parameter, read at its own width (the low bytes of its 8-byte slot on this
little-endian target).

Dependent launches (programmatic dependent launch, sm_90 on) happen only inside :func:`dependent_launch_scope`,
which the LLM engine enters around each pass, and only while :func:`set_dependent_launches` has them on (the
default). There a kernel built with ``griddepcontrol`` (it waits with ``griddepcontrol.wait`` before it reads its
inputs or writes anything; the SpMM kernel also lets the next kernel start with ``griddepcontrol.launch_dependents``)
is launched through ``cuLaunchKernelEx`` with programmatic stream serialization, a programmatic edge once captured
in a CUDA graph. Its blocks may start on the SMs the previous kernel's last wave leaves idle and do their input-free
work while that kernel drains. The SpMM kernel's input-free work is loading its first weight tiles, so it reads its
weights before it waits: a caller that enters the scope promises that no kernel still in flight writes them (the
engine's weights are built and synchronised before its first pass; the public ``linear`` may come right after the
kernel that encoded its matrix, so it launches ordinarily). The SpMM kernel lets its successor start from its own
start; the decoder's norm and attention kernels only once their work is done but for the last stores
(``llm.kernel_support.kernel_release``), the other small kernels not at all. A small kernel releasing at its start
would let a chain of successors sit resident and waiting through a long kernel, which made a whole OPT-66B step
slower (``docs/e2e-results.md``). Launched ordinarily, the same kernels run as ever and their ``griddepcontrol``
returns at once; :mod:`dev.profile_e2e` times every part both ways.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import struct
import threading
from typing import Any, Sequence

import numpy as np

from flashllm_nb._runtime import cuda_driver
from flashllm_nb.kernels import ptx

__all__ = ["Kernel", "cu_launch_kernel", "launch_function", "placeholder", "grid_dependency_supported",
           "set_dependent_launches", "dependent_launches", "dependent_launch_scope", "launching_dependents"]

_ARRAY_SLOTS = 7  # meminfo, parent, nitems, itemsize, data, shape[0], strides[0]


class Kernel:
    """A ``@cuda.jit`` dispatcher bound to one signature, launched as ``kernel(grid, block, args, stream, shared)``.

    Parameters
    ----------
    dispatcher
        The ``numba.cuda.jit`` kernel.
    signature : tuple of numba types
        ``types.Array(dtype, 1, "C")``, ``types.int32`` or ``types.float32`` per argument, in order.
    name : str
        For error messages.
    dependent : bool
        The kernel begins with ``griddepcontrol`` (see the module's docstring): launch it as a programmatic
        dependent of the previous kernel in its stream.
    """

    def __init__(self, dispatcher, signature: Sequence[Any], name: str, dependent: bool = False):
        from numba import types

        self.name = name
        self._dependent = dependent
        self._dispatcher = dispatcher
        self._signature = tuple(signature)
        self._kinds = []
        for ty in self._signature:
            if isinstance(ty, types.Array) and ty.ndim == 1:
                self._kinds.append("array")
            elif ty == types.int32:
                self._kinds.append("int32")
            elif ty == types.float32:
                self._kinds.append("float32")
            else:
                raise TypeError(f"Invalid signature of {name}: expected 1-D arrays, int32 or float32, got {ty}")
        self._n_slots = sum(_ARRAY_SLOTS if k == "array" else 1 for k in self._kinds)
        self._format = struct.Struct(f"<{self._n_slots}q")
        self._local = threading.local()
        self._function = None
        self._cufunc = None

    @property
    def dispatcher(self):
        """The ``cuda.jit`` kernel (for PTX inspection)."""
        return self._dispatcher

    @property
    def signature(self) -> tuple:
        return self._signature

    # ------------------------------------------------------------------------------------------------- launching

    def __call__(self, grid: tuple[int, ...], block: int, args: Sequence[Any], stream: int = 0,
                 shared: int = 0) -> None:
        """Launch on ``grid`` (1 to 3 ints) with ``block`` threads; ``stream`` a raw CUDA stream handle (ignored by
        the simulator), ``shared`` bytes of dynamic shared memory."""
        grid = tuple(grid) + (1,) * (3 - len(grid))
        if any(g == 0 for g in grid):
            return
        if ptx.SIMULATOR:
            self._simulate(grid, block, args, shared)
            return
        if self._function is None:
            self.compile()
        block_slots = self._parameter_block()
        buffer, pointers = block_slots
        self._format.pack_into(buffer, 0, *self._slots(args))
        error = launch_function(self._function, grid, block, shared, stream, pointers, self._dependent)
        if error:
            raise RuntimeError(f"cuLaunchKernel of {self.name} failed with CUDA error {error}")

    def _slots(self, args: Sequence[Any]) -> list[int]:
        slots: list[int] = []
        for kind, value in zip(self._kinds, args, strict=True):
            if kind == "array":
                size, itemsize = value.size, value.itemsize
                slots += (0, 0, size, itemsize, value.data.ptr, size, itemsize)
            elif kind == "int32":
                slots.append(int(value))
            else:
                slots.append(struct.unpack("<i", struct.pack("<f", value))[0])
        return slots

    def _simulate(self, grid, block, args, shared) -> None:
        from flashllm_nb.kernels.sim_blocks import polite_blocks

        converted = []
        for kind, value in zip(self._kinds, args, strict=True):
            converted.append(value if kind == "array" else np.int32(value) if kind == "int32" else np.float32(value))
        with polite_blocks():
            self._dispatcher[grid, block, 0, shared](*converted)

    def compile(self) -> None:
        """Compile for the signature now (a launch compiles on first use): for callers that must not compile in
        the middle of timed or captured work. Nothing to do under the simulator or once compiled."""
        if ptx.SIMULATOR or self._function is not None:
            return
        self._dispatcher.compile(self._signature)
        self._cufunc = self._dispatcher.overloads[self._signature]._codelibrary.get_cufunc()
        self._function = int(self._cufunc.handle)

    def _parameter_block(self):
        """This thread's parameter block: the 8-byte slots and the address of the array of pointers to them that
        ``cuLaunchKernel`` takes (kept alive with the block). Per thread: two threads packing one block could
        launch each other's arguments."""
        block = getattr(self._local, "block", None)
        if block is None:
            buffer = (ctypes.c_int64 * self._n_slots)()
            pointers = (ctypes.c_void_p * self._n_slots)(*[ctypes.addressof(buffer) + 8 * i
                                                            for i in range(self._n_slots)])
            self._local.keep = pointers
            block = self._local.block = (buffer, ctypes.addressof(pointers))
        return block

    def __repr__(self) -> str:
        return f"<flashllm_nb.kernels.driver.Kernel {self.name}>"


@functools.cache
def cu_launch_kernel():
    """``cuLaunchKernel`` of the driver library through ctypes: the one foreign call of a launch (through
    cuda-bindings' wrapper a call also builds a stream object and an enum result). Shared with the SpMM
    launcher."""
    function = cuda_driver().cuLaunchKernel
    function.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
    function.restype = ctypes.c_int
    return function


def placeholder(xp, dtype):
    """A one-element array of module ``xp`` (NumPy or CuPy) and ``dtype``, for a kernel argument that this launch
    never reads (one per module and dtype, kept)."""
    return _placeholder(xp, np.dtype(dtype))


@functools.cache
def _placeholder(xp, dtype):
    return xp.zeros(1, dtype=dtype)


def launch_function(function: int, grid: tuple[int, int, int], threads: int, shared: int, stream: int,
                    pointers: int, dependent: bool) -> int:
    """Launch the raw CUfunction ``function`` on its parameter block (``pointers``: the address of the array of
    pointers to the argument slots) and return the driver's error code. ``dependent``: the kernel is built with
    ``griddepcontrol`` (which only :func:`grid_dependency_supported` devices are), so inside
    :func:`dependent_launch_scope`, while :func:`set_dependent_launches` has them on, it is launched as a
    programmatic dependent of the previous kernel in ``stream``."""
    if dependent and launching_dependents():
        return cu_launch_kernel_ex()(_dependent_launch_config(grid, threads, shared, stream), function, pointers,
                                     None)
    return cu_launch_kernel()(function, grid[0], grid[1], grid[2], threads, 1, 1, shared, stream, pointers, None)


@functools.cache
def grid_dependency_supported() -> bool:
    """Whether kernels built for this device may use ``griddepcontrol`` (compute capability 9.0 on). True under
    the simulator, whose twins of it do nothing, so that CI runs the code a Hopper GPU runs."""
    if ptx.SIMULATOR:
        return True
    from numba import cuda

    return cuda.get_current_device().compute_capability >= (9, 0)


_DEPENDENT_LAUNCHES = {"enabled": True, "scopes": 0}


@contextlib.contextmanager
def dependent_launch_scope():
    """Within it, kernels built with ``griddepcontrol`` launch as programmatic dependents (while
    :func:`set_dependent_launches` has them on). The caller promises that no kernel still in flight in the stream
    writes the weights (Tiled-CSL words and tile offsets) of a product launched here: the SpMM kernel reads them
    before it waits for the previous kernel. Nests; usable as a decorator."""
    _DEPENDENT_LAUNCHES["scopes"] += 1
    try:
        yield
    finally:
        _DEPENDENT_LAUNCHES["scopes"] -= 1


def set_dependent_launches(enabled: bool) -> bool:
    """Whether :func:`dependent_launch_scope` launches kernels as programmatic dependents (the default) or
    ordinarily, for the whole process; returns the previous setting. A captured CUDA graph keeps what was set when
    it was captured."""
    previous = _DEPENDENT_LAUNCHES["enabled"]
    _DEPENDENT_LAUNCHES["enabled"] = bool(enabled)
    return previous


def launching_dependents() -> bool:
    """Whether a kernel built with ``griddepcontrol`` launched now goes as a programmatic dependent: inside a
    :func:`dependent_launch_scope`, with :func:`set_dependent_launches` on."""
    return bool(_DEPENDENT_LAUNCHES["scopes"]) and _DEPENDENT_LAUNCHES["enabled"]


def dependent_launches() -> bool:
    """Whether kernels built with ``griddepcontrol`` are launched as programmatic dependents inside
    :func:`dependent_launch_scope` (on this device, with the current setting)."""
    return _DEPENDENT_LAUNCHES["enabled"] and grid_dependency_supported()


class _LaunchAttributeValue(ctypes.Union):
    _fields_ = [("pad", ctypes.c_char * 64), ("programmatic_stream_serialization_allowed", ctypes.c_int)]


class _LaunchAttribute(ctypes.Structure):
    """``CUlaunchAttribute`` (cuda.h): a 4-byte id, padding to 8, a 64-byte value union."""

    _fields_ = [("id", ctypes.c_uint), ("pad", ctypes.c_char * 4), ("value", _LaunchAttributeValue)]


class _LaunchConfig(ctypes.Structure):
    """``CUlaunchConfig`` (cuda.h)."""

    _fields_ = [("grid_x", ctypes.c_uint), ("grid_y", ctypes.c_uint), ("grid_z", ctypes.c_uint),
                ("block_x", ctypes.c_uint), ("block_y", ctypes.c_uint), ("block_z", ctypes.c_uint),
                ("shared_bytes", ctypes.c_uint), ("stream", ctypes.c_void_p),
                ("attributes", ctypes.POINTER(_LaunchAttribute)), ("n_attributes", ctypes.c_uint)]


_CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID (cuda.h)
_PROGRAMMATIC = _LaunchAttribute(id=_CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION)
_PROGRAMMATIC.value.programmatic_stream_serialization_allowed = 1


@functools.lru_cache(maxsize=4096)
def _dependent_launch_config(grid, threads: int, shared: int, stream: int) -> _LaunchConfig:
    """The launch configuration of one (grid, block, shared bytes, stream), built once: a decode step launches the
    same few dozen every time."""
    return _LaunchConfig(grid[0], grid[1], grid[2], threads, 1, 1, shared, stream, ctypes.pointer(_PROGRAMMATIC), 1)


@functools.cache
def cu_launch_kernel_ex():
    """``cuLaunchKernelEx`` of the driver library through ctypes (launches with attributes)."""
    function = cuda_driver().cuLaunchKernelEx
    function.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function
