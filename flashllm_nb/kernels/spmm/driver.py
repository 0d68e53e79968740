"""Launching a planned SpMM kernel: compile once, ask the occupancy, keep the split-K workspaces, pack the
arguments in Numba's kernel ABI and call the driver (``cuLaunchKernel``, or ``cuLaunchKernelEx`` for a
configuration built for dependent launch: ``kernels.driver.launch_function``).

Numba's ``kernel[grid, block](*args)`` re-types every argument and converts every array through
``__cuda_array_interface__`` on each call (tens of microseconds with CuPy arrays). The signature never changes here
(``config.kernel_signature``), so each configuration is compiled once, and a call only writes the arrays and
scalars into a parameter block and calls the driver on it. A :class:`PreparedLaunch` packs once and launches again
with nothing but the driver call; :meth:`PreparedLaunch.set_pointers` retargets it at other activations and output.

Under Numba's simulator the same calls run the dispatcher on NumPy arrays with the faster block manager of
:mod:`flashllm_nb.kernels.sim_blocks`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import struct
import threading
from typing import Any, NamedTuple

import numpy as np

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.driver import launch_function, placeholder
from flashllm_nb.kernels.spmm.config import TILE_M, TIMELINE_FIELDS, SpmmConfig, kernel_signature
from flashllm_nb.kernels.spmm.plan import Plan
from flashllm_nb.kernels.spmm.tiled_csl import build_kernel

__all__ = ["Operands", "PreparedLaunch", "blocks_per_sm", "max_shared_bytes_per_block", "kernel_resources", "launch",
           "launch_timeline", "prepare", "timeline_plan", "timeline_tickets"]


class Operands(NamedTuple):
    """One product's checked arrays and sizes: A's ``words`` and ``tile_offsets``; X's bits (flat uint16 under the
    simulator, any C-contiguous CuPy array of 2-byte items on a GPU) with its row stride ``ldx``; the output's bits
    ``y_bits``; the bias bits or None; the logical sizes and A's k-tiles per tile row."""

    words: Any
    tile_offsets: Any
    x_bits: Any
    ldx: int
    y_bits: Any
    bias_bits: Any
    m: int
    n: int
    k: int
    n_tile_cols: int


def max_shared_bytes_per_block() -> int:
    """The most dynamic shared memory a block of the current device may opt in to (under the simulator, a
    Hopper's 227 KiB: the plan simulates sm_90)."""
    if ptx.SIMULATOR:
        return 227 * 1024
    from numba import cuda

    return cuda.get_current_device().MAX_SHARED_MEMORY_PER_BLOCK_OPTIN


def blocks_per_sm(config: SpmmConfig, shared_bytes: int) -> int:
    """Resident blocks per SM of ``config`` with ``shared_bytes`` of dynamic shared memory, from the driver's
    occupancy calculator (1 under the simulator)."""
    if ptx.SIMULATOR:
        return 1
    return _compiled(config).blocks_per_sm(shared_bytes)


def kernel_resources(config: SpmmConfig) -> tuple[int, int]:
    """(registers per thread, local memory bytes per thread) of ``config``'s compiled kernel, for development tools
    (``dev/kernel_dev.py``); a GPU is needed."""
    kernel = _compiled(config)
    return kernel.numba_kernel.regs_per_thread, kernel.numba_kernel._codelibrary.get_cufunc().attrs.local


def launch(p: Plan, operands: Operands, xp, stream_handle: int = 0) -> None:
    """Run the planned kernel on ``operands`` (only pointer, size and item size of each array are passed) with
    ``xp`` their array module. ``stream_handle`` is a raw CUDA stream handle (0: the legacy default stream)."""
    arrays, scalars = _arguments(p, operands, xp, stream_handle)
    if ptx.SIMULATOR:
        _simulate(p, arrays, scalars)
    else:
        _compiled(p.config).launch(p.grid, p.shared_bytes, stream_handle, arrays, scalars)


def timeline_tickets(p: Plan, xp):
    """A zeroed int32 array of ``xp`` for :func:`launch_timeline`: ``p``'s per-tile split-K tickets, then one record
    of ``TIMELINE_FIELDS`` per block. The kernel leaves the tickets zero, so one array serves launch after launch."""
    return xp.zeros(p.tickets + p.grid[0] * p.grid[1] * p.grid[2] * len(TIMELINE_FIELDS), dtype=np.int32)


def launch_timeline(p: Plan, operands: Operands, tickets, xp, stream_handle: int = 0):
    """Run ``p``'s kernel built with ``timeline=True`` on ``operands`` (as :func:`launch` runs ``p``, the product
    included), with ``tickets`` from :func:`timeline_tickets`, and return the view of ``tickets`` its blocks record
    into: shape (blocks, len(TIMELINE_FIELDS)), block ``(x, y, z)`` at row ``(z * grid_y + y) * grid_x + x``. For
    ``dev/block_timeline.py``."""
    n_tickets, blocks = p.tickets, p.grid[0] * p.grid[1] * p.grid[2]
    if tickets.dtype != np.int32 or tickets.size != n_tickets + blocks * len(TIMELINE_FIELDS):
        raise ValueError(f"Invalid tickets of launch_timeline: expected timeline_tickets(p)'s int32 array of "
                         f"{n_tickets + blocks * len(TIMELINE_FIELDS)}, got {tickets.dtype} of {tickets.size}")
    timed = timeline_plan(p)
    arrays, scalars = _arguments(timed, operands, xp, stream_handle)
    arrays = (*arrays[:-1], tickets)
    if ptx.SIMULATOR:
        _simulate(timed, arrays, scalars)
    else:
        _compiled(timed.config).launch(timed.grid, timed.shared_bytes, stream_handle, arrays, scalars)
    return tickets[n_tickets:].reshape(blocks, len(TIMELINE_FIELDS))


def timeline_plan(p: Plan) -> Plan:
    """``p`` with its kernel built to record a timeline (``SpmmConfig.timeline``), its grid and shared memory (the
    padding of ``Force.blocks_per_sm`` included) as planned."""
    return dataclasses.replace(p, config=dataclasses.replace(p.config, timeline=True))


def prepare(p: Plan, operands: Operands, xp, stream_handle: int = 0):
    """``launch``'s arguments packed once: returns a function of no arguments that launches the kernel again on
    the same arrays (their contents at that time) with nothing but the driver call."""
    arrays, scalars = _arguments(p, operands, xp, stream_handle)
    if ptx.SIMULATOR:
        return lambda: _simulate(p, arrays, scalars)
    return _compiled(p.config).prepare(p.grid, p.shared_bytes, stream_handle, arrays, scalars)


class _Workspaces:
    """Split-K scratch per (module, size, stream): the fp32 partials and the zeroed per-tile tickets.

    The kernel returns every ticket to zero, so one zeroed allocation serves every later launch in stream order.
    Launches on different streams must not share one (they would race on the tickets): the key includes the stream.
    """

    def __init__(self):
        self._cache = {}

    def get(self, xp, n_partials: int, n_tickets: int, stream_handle: int):
        key = (xp.__name__, n_partials, n_tickets, stream_handle)
        if key not in self._cache:
            self._cache[key] = (xp.empty(n_partials, dtype=np.float32), xp.zeros(n_tickets, dtype=np.int32))
        return self._cache[key]


_workspaces = _Workspaces()


def _arguments(p, operands, xp, stream_handle):
    """The kernel's seven arrays and seven scalars (``kernel_signature`` order, scalars apart)."""
    words, tile_offsets, x_bits, ldx, y_bits, bias_bits, m, n, k, n_tile_cols = operands
    if p.config.splits:
        n_partials = p.partial_tiles * TILE_M * p.config.tile_n
        workspace, tickets = _workspaces.get(xp, n_partials, p.tickets, stream_handle)
    else:
        workspace, tickets = placeholder(xp, np.float32), placeholder(xp, np.int32)
    has_bias = bias_bits is not None
    if bias_bits is None:
        bias_bits = placeholder(xp, np.uint16)
    arrays = (words, tile_offsets, x_bits, y_bits, bias_bits, workspace, tickets)
    scalars = (ldx, has_bias, m, n, k, n_tile_cols, p.k_tiles_per_split)
    return arrays, scalars


def _simulate(p: Plan, arrays, scalars) -> None:
    from flashllm_nb.kernels.sim_blocks import polite_blocks

    w, o, x, y, b, ws, t = arrays
    ldx, has_bias, m, n, k, cols, per = (np.int32(v) for v in scalars)
    with polite_blocks():  # the simulator's own block manager keeps the working threads from the lock
        build_kernel(p.config)[p.grid, p.config.threads, 0, p.shared_bytes](w, o, x, ldx, y, b, has_bias, ws, t, m, n,
                                                                            k, cols, per)


class _CompiledKernel:
    """One configuration compiled for ``kernel_signature()``, launched through ``launch_function``."""

    def __init__(self, config: SpmmConfig):
        signature = kernel_signature()
        dispatcher = build_kernel(config)
        dispatcher.compile(signature)
        self.numba_kernel = dispatcher.overloads[signature]
        cufunc = self.numba_kernel._codelibrary.get_cufunc()
        self._cufunc = cufunc
        self._function = int(cufunc.handle)  # the raw CUfunction, for the ctypes launch
        self._dependent = config.grid_dependency
        self._local = threading.local()
        self._threads = config.threads
        from numba.cuda.cudadrv.driver import binding, driver

        device = cufunc.device
        attributes = binding.CUfunction_attribute
        # A block may use more than 48 KiB of dynamic shared memory only after opting in, per kernel.
        driver.cuKernelSetAttribute(attributes.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                    device.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, cufunc.handle, device.id)
        # Left to itself the driver may size the L1/shared split for one resident block; the pipeline hides
        # latency only with several blocks per SM, and the kernel reads nothing through L1, so ask for all shared.
        driver.cuKernelSetAttribute(attributes.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100,
                                    cufunc.handle, device.id)

    def blocks_per_sm(self, shared_bytes: int) -> int:
        """Resident blocks per SM with ``shared_bytes`` of dynamic shared memory, from the driver's calculator."""
        from numba import cuda

        return cuda.current_context().get_active_blocks_per_multiprocessor(self._cufunc, self._threads, shared_bytes)

    def launch(self, grid, shared_bytes: int, stream_handle: int, arrays, scalars) -> None:
        """Pack the arguments into this thread's parameter block and launch it."""
        buffer, pointers, _ = self._parameter_block()
        _pack_parameters(buffer, arrays, scalars)
        self._launch(grid, shared_bytes, stream_handle, pointers)

    def prepare(self, grid, shared_bytes: int, stream_handle: int, arrays, scalars) -> "PreparedLaunch":
        """A parameter block of its own, packed now, and a function of no arguments that launches it."""
        buffer, pointers, keep = _new_parameter_block()
        _pack_parameters(buffer, arrays, scalars)
        return PreparedLaunch(functools.partial(self._launch, grid, shared_bytes, stream_handle, pointers), buffer,
                              keep, arrays)

    def _launch(self, grid, shared_bytes, stream_handle, pointers) -> None:
        error = launch_function(self._function, grid, self._threads, shared_bytes, stream_handle, pointers,
                                self._dependent)
        if error:
            raise RuntimeError(f"Launching the SpMM kernel failed with CUDA error {error}")

    def _parameter_block(self):
        """Per thread (two threads packing one block could launch each other's arguments)."""
        block = getattr(self._local, "block", None)
        if block is None:
            block = self._local.block = _new_parameter_block()
        return block


class PreparedLaunch:
    """A kernel launch packed once: calling it launches again. ``slots`` is its parameter block (8-byte slots,
    ``_pack_parameters``' layout); :meth:`set_pointers` points it at other activations, output and bias between
    calls. ``arrays`` keeps alive the arrays whose pointers were packed, until
    the first ``set_pointers`` hands that duty to the caller."""

    __slots__ = ("_launch", "_pointer_array", "slots", "arrays")

    def __init__(self, launch, slots, pointer_array, arrays):
        self._launch = launch
        self._pointer_array = pointer_array  # cuLaunchKernel reads the slots through it: it lives with the launch
        self.slots = slots
        self.arrays = arrays

    def set_pointers(self, x: int, y: int, bias: int | None = None) -> None:
        """Read X from address ``x``, write the output to ``y`` and, for a launch packed with a bias, read it from
        ``bias`` (None keeps the packed one). The arrays there must have the packed shapes, row-major, and X must
        start 16-byte aligned; the caller keeps them alive until the launch has run."""
        slots = self.slots
        slots[X_POINTER_SLOT] = x
        slots[Y_POINTER_SLOT] = y
        if bias is not None:
            slots[BIAS_POINTER_SLOT] = bias
        self.arrays = None

    def __call__(self) -> None:
        self._launch()


def _new_parameter_block():
    """The 8-byte argument slots, the address of the array of pointers to them that cuLaunchKernel takes, and
    that array (to be kept alive as long as the address is used)."""
    buffer = (ctypes.c_int64 * _N_PARAMETERS)()
    pointers = (ctypes.c_void_p * _N_PARAMETERS)(*[ctypes.addressof(buffer) + 8 * i for i in range(_N_PARAMETERS)])
    return buffer, ctypes.addressof(pointers), pointers


def _pack_parameters(buffer, arrays, scalars) -> None:
    """One ``struct.pack_into`` of the kernel's arguments. Numba's ABI for a 1-D array argument is seven 8-byte
    slots: meminfo, parent, nitems, itemsize, data, shape[0], strides[0]; an int32 scalar takes one slot (read as
    its low 4 bytes on this little-endian target). The order is ``kernel_signature()``'s: ldx follows x and
    has_bias follows bias."""
    words, offsets, x, y, bias, workspace, tickets = arrays
    ldx, has_bias, m, n, k, n_tile_cols, k_tiles_per_split = scalars
    _PARAMETERS.pack_into(
        buffer, 0,
        *_array_slots(words), *_array_slots(offsets), *_array_slots(x), ldx, *_array_slots(y),
        *_array_slots(bias), has_bias, *_array_slots(workspace), *_array_slots(tickets),
        m, n, k, n_tile_cols, k_tiles_per_split,
    )


def _array_slots(a) -> tuple:
    """Numba's seven kernel-argument slots for a 1-D C-contiguous CuPy array."""
    size, itemsize = a.size, a.itemsize
    return 0, 0, size, itemsize, a.data.ptr, size, itemsize


# kernel_signature(): 7 arrays (7 slots each) and 7 int32 scalars.
_N_PARAMETERS = 7 * 7 + 7
_PARAMETERS = struct.Struct(f"<{_N_PARAMETERS}q")
# The data-pointer slot (the fifth of an array's seven) of X, y and bias in that block: words and tile_offsets
# take slots 0-13, x 14-20, ldx 21, y 22-28, bias 29-35.
X_POINTER_SLOT = 14 + 4
Y_POINTER_SLOT = 22 + 4
BIAS_POINTER_SLOT = 29 + 4


@functools.cache
def _compiled(config: SpmmConfig) -> _CompiledKernel:
    return _CompiledKernel(config)
