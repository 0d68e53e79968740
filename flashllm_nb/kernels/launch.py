"""Choosing a kernel configuration for a problem, and launching it.

Everything here is decided from the shape, the dtype, the device and A's mean density (its stored word vectors per
tile), never from a hand-made table:

* ``tile_n`` is the smallest of 8/16/32/64 that covers N (N > 64 is cut into 64-wide column blocks);
* the Tensor-Core instruction: ``wgmma`` on Hopper (compute capability 9.x) for ``linear`` ("nk" activations),
  ``mma.sync`` everywhere else (the simulator plays a Hopper GPU, so CI runs the kernels Hopper users get), and the
  warps per block from it and ``tile_n`` (``warps_for``);
* the word vectors prefetched per tile, from the matrix's mean stored vectors per tile (``prefetch_for``), and
  the activation stages from that (``stages_for``);
* split-K: from the SM count and the blocks per SM the driver's occupancy calculator allows for this kernel's
  registers and shared memory, ``choose_splits`` picks the factor with the least estimated time, counting waves of
  blocks (a partly filled last wave almost as a full one), each block's fixed cost and its partial sums' traffic.
"""

from __future__ import annotations

import ctypes
import functools
import struct
import threading
from dataclasses import dataclass

import numpy as np

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.driver import cu_launch_kernel
from flashllm_nb.kernels.spmm_tiled_csl import (
    MMA_CHOICES,
    TILE_M,
    TILE_N_CHOICES,
    SpmmConfig,
    build_kernel,
    kernel_signature,
    two_stages_built,
)

__all__ = ["Force", "Plan", "PreparedLaunch", "plan", "launch", "prepare"]

MIN_K_TILES_PER_SPLIT = 4
DEFAULT_WARPS = 4  # warps per block (SpmmConfig.warps): 4 measured 0.98x of cuBLAS against 8 warps' 0.91x (RESULTS.md)
# wgmma blocks of 8 warps (two warpgroups, one per m64 half) from this tile_n on: half the accumulators and words per
# thread (64 registers at tile_n 32 against 102-123, 80 at 64 against 133-165), so 32 or 24 warps per SM instead of
# 16 or 12. Same run on an H200: +3-5 % at N = 32, +8-12 % at N = 64 (H100: +4-8 %, +8-10 %), but -5-10 % at N = 8
# and 16, where 4 warps already fit 5 blocks per SM and twice the barrier participants cost more than they hide.
WGMMA_8_WARPS_FROM_TILE_N = 32
# The split-K model (split_cost). Its three constants were fitted to forced-split timings of 16 cases on an H100
# (OPT-66B layers, N = 8 to 64, 70 and 80 % sparsity; bench/split_k.py, RESULTS.md fifth session): with them it
# picks the fastest measured factor, or one within 1 %, in 14 cases, and ones 2 % and 4 % slower in the other two;
# the whole-wave model before it missed five by 6-23 %. Neighbouring values (floor 0.8-0.85, weight 0.3-0.75,
# fixed cost 0.5-1.5) do as well, within 4 %.
PROLOGUE_TILES = 1  # a block's fixed cost (offsets, zeroing, pipeline fill) in k-tiles' worth of time
# A wave that fills n of an SM's S block slots takes n/S of a full wave's time (the SM's throughput is shared), but
# no less than this fraction of it: a thin last wave runs its blocks faster, not proportionally so.
PARTIAL_WAVE_FLOOR = 0.8
# A split block writes its fp32 partial tile (128 x tile_n x 4 bytes) and the reducing block reads it back: that
# traffic counts with this weight against the same number of bytes of words (most of it stays in L2).
PARTIAL_SUM_WEIGHT = 0.5
TYPICAL_TILE_VECTORS = 410  # 16-byte word vectors of an 80 %-sparse tile, where the caller does not say
# Tiles denser on average than this many 16-byte word vectors get the larger register prefetch, in blocks up to
# this tile_n (prefetch_for).
PREFETCH_MORE_FROM = 448
PREFETCH_MORE_TILE_N = 16
# Tiles sparser on average than this many vectors (83.6 % sparse: 7/8 of the 384-vector register buffer) are
# cleared entry by entry (SpmmConfig.clear = "entries") in 4-warp mma.sync blocks up to this tile_n. Same run on an
# H200, N = 8 and 16 (RESULTS.md, ninth session): "entries" -6 % at 80 % sparsity (410 vectors), -11 % at 75 %,
# +7-9 % at 85 % (307), where the threshold of 288 (86 %) still cleared rows.
CLEAR_ENTRIES_UPTO = 336
CLEAR_ENTRIES_TILE_N = 16
# wgmma blocks clear by entries up to this mean (~76.5 % sparse; 15/16 of the 512-vector buffer they then get): they
# zero a tile's entries early in the step after its products, while the Tensor Cores work on the next tile
# (spmm_tiled_csl, "zero first"), which costs less than the mbarrier design the threshold above was measured with.
# Same run on an H100, against "rows" (RESULTS.md, eleventh session): +1.9 % (N = 16) and +0.7 % (N = 8) at 77 %
# (471 vectors), +2.3 % and +0.9 % at 80 %, +5.4 % at 83 % (N = 16), -3 % at 75 % (512 vectors, half the tiles over
# the buffer).
WGMMA_CLEAR_ENTRIES_UPTO = 480
# clear="entries" holds 256 vectors per tile in registers, not 384, up to this mean (88 % sparse: 246 vectors, ~8 %
# of tiles over 256). Same run on an H100 (RESULTS.md, tenth session): 256 +1.3 % (N = 16) and +3.5 % (N = 8) at 88 %,
# but -12 to -15 % at 84 % and 86 % (287 vectors), where most tiles overflow it.
ENTRIES_SMALL_PREFETCH_UPTO = 248
# ... and 384 up to this mean (7/8 of 384), 512 above it (wgmma blocks only: mma.sync clears rows beyond
# CLEAR_ENTRIES_UPTO). At 85 % (307 vectors) 512 measured 1-3 % slower than 384 (H100, eleventh session).
ENTRIES_MID_PREFETCH_UPTO = 336
# What the simulator pretends the device is, so that split-K is exercised on the small shapes tests use.
_SIMULATED_SMS = 4
_SIMULATED_CC = (9, 0)


@dataclass(frozen=True)
class Force:
    """Choices a :func:`plan` takes as given instead of deciding them: for tests that must run one variant, A/B
    tools and benchmarks. A field left None is decided as usual; the resulting configuration is checked by
    ``SpmmConfig`` (a variant the kernel is not built for is refused)."""

    mma: str | None = None  # one of MMA_CHOICES
    warps: int | None = None
    clear: str | None = None  # "rows" or "entries"
    prefetch_vectors: int | None = None
    stages: int | None = None
    split_k: int | None = None

    def __post_init__(self):
        if self.mma is not None and self.mma not in MMA_CHOICES:
            raise ValueError(f"Invalid mma: expected one of {MMA_CHOICES} or None, got {self.mma!r}")


@dataclass(frozen=True)
class Plan:
    """A configuration and grid for one problem shape; cheap to reuse for every call with the same shape."""

    config: SpmmConfig
    grid: tuple[int, int, int]  # (tile rows of A, column blocks of N, splits of K)
    k_tiles_per_split: int

    @property
    def shared_bytes(self) -> int:
        return self.config.shared_bytes(self.k_tiles_per_split)

    @property
    def splits(self) -> int:
        return self.grid[2]


def tile_n_for(n: int) -> int:
    """Smallest supported block width covering n columns (64 for n > 64: the grid then covers N in 64s)."""
    return next((t for t in TILE_N_CHOICES if n <= t), TILE_N_CHOICES[-1])


@functools.cache
def multiprocessors() -> int:
    """The current GPU's streaming multiprocessors (a small stand-in under the simulator)."""
    if ptx.SIMULATOR:
        return _SIMULATED_SMS
    from numba import cuda

    return cuda.get_current_device().MULTIPROCESSOR_COUNT


@functools.cache
def _compute_capability() -> tuple[int, int]:
    if ptx.SIMULATOR:
        return _SIMULATED_CC
    from numba import cuda

    return tuple(cuda.get_current_device().compute_capability)


def mma_for(x_layout: str) -> str:
    """The Tensor-Core instruction for this device: ``"wgmma"`` where it exists (sm_90) and the operands allow it
    ("nk": both K-major), else ``"sync"``."""
    return "wgmma" if x_layout == "nk" and _compute_capability()[0] == 9 else "sync"


def warps_for(mma: str, tile_n: int) -> int:
    """Warps per block: ``DEFAULT_WARPS``, or 8 for a wgmma block from ``WGMMA_8_WARPS_FROM_TILE_N`` on."""
    return 8 if mma == "wgmma" and tile_n >= WGMMA_8_WARPS_FROM_TILE_N else DEFAULT_WARPS


def clear_for(mma: str, warps: int, tile_n: int, tile_vectors: int | None) -> str:
    """How A buffers are zeroed (``SpmmConfig.clear``): ``"entries"`` for 4-warp blocks up to
    ``CLEAR_ENTRIES_TILE_N`` whose matrix has at most ``WGMMA_CLEAR_ENTRIES_UPTO`` (wgmma) or
    ``CLEAR_ENTRIES_UPTO`` (mma.sync) vectors per tile on average, else ``"rows"``. Same runs on an H100, N = 8 and
    16 (RESULTS.md): +9 % at 90 % sparsity and +4-7 % at 88 % against clearing rows, -12 % at 90 % with 8 warps
    (N = 32 and 64); on an H200 +7-9 % at 85 %, -6 % at 80 % (before wgmma blocks zeroed first, which made 77-83 %
    faster by entries too)."""
    upto = WGMMA_CLEAR_ENTRIES_UPTO if mma == "wgmma" else CLEAR_ENTRIES_UPTO
    sparse = tile_vectors is not None and tile_vectors <= upto
    if warps == 4 and tile_n <= CLEAR_ENTRIES_TILE_N and sparse:
        return "entries"
    return "rows"


def prefetch_for(warps: int, tile_n: int, tile_vectors: int | None, clear: str = "rows") -> int:
    """Word vectors per tile to prefetch into registers (``SpmmConfig.prefetch_vectors``).

    With ``clear="rows"``: 640 where the matrix's tiles hold more than ``PREFETCH_MORE_FROM`` vectors on average
    (denser than 22 %: 7/8 of 512, so that tiles somewhat denser than the mean still fit), for 4-warp blocks up to
    ``PREFETCH_MORE_TILE_N`` (8 warps keep 64 registers for 4 blocks per SM; wider 4-warp blocks have no registers
    to spare: tile_n 64 spills on sm_80), else 512. Same run on an H100, N = 8 and 16 (RESULTS.md): +5-6 % at 70 %
    sparsity, -0.4-1.2 % at 80-90 %, where the larger buffer is empty registers.

    With ``clear="entries"`` (two word buffers and the positions of one or two tiles): 256 up to
    ``ENTRIES_SMALL_PREFETCH_UPTO`` on average, 384 up to ``ENTRIES_MID_PREFETCH_UPTO``, else 512 (4 warps; 8
    warps: 256, a multiple of their threads)."""
    if clear == "entries":
        if warps != 4 or (tile_vectors is not None and tile_vectors <= ENTRIES_SMALL_PREFETCH_UPTO):
            return 256
        return 512 if tile_vectors is not None and tile_vectors > ENTRIES_MID_PREFETCH_UPTO else 384
    if warps == 4 and tile_n <= PREFETCH_MORE_TILE_N and tile_vectors is not None and tile_vectors > PREFETCH_MORE_FROM:
        return 640
    return 512


def stages_for(mma: str, tile_n: int, clear: str, prefetch_vectors: int) -> int:
    """Activation stages (``SpmmConfig.stages``): 2 for a wgmma block of tile_n 16 clearing by entries with the
    256-vector buffer, where the 4 KiB that two stages fewer free fit a sixth block on an SM (80 registers, 37 KB);
    else 4. Same run on an H100, N = 16, against 4 stages and 5 blocks (RESULTS.md, tenth session): +1.7 % at 88 %,
    +1.5 % at 90 %, +4.6 % at 95 %. At tile_n 8 the sixth block gained nothing (-0.3 to 0 % at 90-95 %)."""
    return 2 if two_stages_built(mma, warps_for(mma, tile_n), tile_n, clear, prefetch_vectors) else 4


def split_cost(blocks: int, k_tiles: int, sms: int, blocks_per_sm: int, s: int, tile_n: int,
               tile_vectors: int | None = None) -> float:
    """Estimated time of splitting K ``s`` ways, in k-tile steps of a block sharing its SM with a full complement.

    ``blocks * s`` blocks run in waves of ``sms * blocks_per_sm``. Each walks ``ceil(k_tiles / s)`` k-tiles plus a
    fixed cost of ``PROLOGUE_TILES``, plus, when split, its partial tile's traffic: ``2 * 128 * tile_n * 4`` bytes
    (written, read back by the reducing block) weighted by ``PARTIAL_SUM_WEIGHT`` against one k-tile's words,
    ``16 * tile_vectors`` bytes. A full wave costs ``blocks_per_sm`` block-lengths of SM time; the last, partial
    wave its blocks per SM, but at least ``PARTIAL_WAVE_FLOOR`` of a full wave."""
    slots = sms * blocks_per_sm
    full_waves, rest = divmod(blocks * s, slots)
    length = -(-k_tiles // s) + PROLOGUE_TILES
    if s > 1:
        vectors = TYPICAL_TILE_VECTORS if tile_vectors is None else max(tile_vectors, 1)  # an empty A: 0
        length += PARTIAL_SUM_WEIGHT * (2 * TILE_M * tile_n * 4) / (16 * vectors)
    cost = full_waves * blocks_per_sm * length
    if rest:
        per_sm = -(-rest // sms)
        cost += min(blocks_per_sm, max(per_sm, PARTIAL_WAVE_FLOOR * blocks_per_sm)) * length
    return cost


def choose_splits(blocks: int, k_tiles: int, sms: int, blocks_per_sm: int, tile_n: int,
                  tile_vectors: int | None = None) -> int:
    """The split-K factor with the least ``split_cost`` (the smaller one on a tie); splits below
    ``MIN_K_TILES_PER_SPLIT`` k-tiles are not considered."""
    allowed = range(1, max(1, k_tiles // MIN_K_TILES_PER_SPLIT) + 1)
    return min(allowed, key=lambda s: split_cost(blocks, k_tiles, sms, blocks_per_sm, s, tile_n, tile_vectors))


@functools.lru_cache(maxsize=1024)
def plan(m: int, n: int, k: int, dtype: str, x_layout: str, split_k: int | None = None,
         tile_vectors: int | None = None, force: Force | None = None) -> Plan:
    """Pick the configuration and grid for an (m x k) @ (k x n) product whose A holds ``tile_vectors`` 16-byte word
    vectors per tile on average (None: unknown, the small prefetch). ``split_k`` and ``force`` (a :class:`Force`)
    fix choices instead, for benchmarks and tests."""
    force = force or _NO_FORCE
    tile_n = tile_n_for(n)
    tile_rows = -(-m // TILE_M)
    n_blocks = -(-n // tile_n)
    k_tiles = -(-k // 64)
    mma = force.mma or mma_for(x_layout)
    warps = force.warps or warps_for(mma, tile_n)
    clear = force.clear or clear_for(mma, warps, tile_n, tile_vectors)
    prefetch = force.prefetch_vectors or prefetch_for(warps, tile_n, tile_vectors, clear)
    stages = force.stages or stages_for(mma, tile_n, clear, prefetch)
    if split_k is None:
        split_k = force.split_k
    config = SpmmConfig(tile_n=tile_n, dtype=dtype, x_layout=x_layout, warps=warps, mma=mma, prefetch_vectors=prefetch,
                        clear=clear, stages=stages)
    if split_k is None:
        resident = 1 if ptx.SIMULATOR else _compiled(config).blocks_per_sm(config.shared_bytes(k_tiles))
        split_k = choose_splits(tile_rows * n_blocks, k_tiles, multiprocessors(), max(resident, 1), tile_n,
                                tile_vectors)
    split_k = max(1, min(split_k, k_tiles))
    per_split = -(-k_tiles // split_k)
    split_k = -(-k_tiles // per_split)  # no empty splits
    config = SpmmConfig(tile_n=tile_n, dtype=dtype, x_layout=x_layout, splits=split_k > 1, warps=warps, mma=mma,
                        prefetch_vectors=prefetch, clear=clear, stages=stages)
    return Plan(config=config, grid=(tile_rows, n_blocks, split_k), k_tiles_per_split=per_split)


_NO_FORCE = Force()


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


def launch(p: Plan, words, tile_offsets, x_bits, ldx: int, y_bits, bias_bits, m: int, n: int, k: int, n_tile_cols: int,
           xp, stream_handle: int = 0) -> None:
    """Run the planned kernel on checked, C-contiguous arrays: flat uint16 views under the simulator; on the GPU
    any CuPy array of the right item size (only pointer, size and item size are passed). ``stream_handle`` is a raw
    CUDA stream handle (0: the legacy default stream)."""
    arrays, scalars = _arguments(p, words, tile_offsets, x_bits, ldx, y_bits, bias_bits, m, n, k, n_tile_cols, xp,
                                 stream_handle)
    if ptx.SIMULATOR:
        _simulate(p, arrays, scalars)
    else:
        _compiled(p.config).launch(p.grid, p.shared_bytes, stream_handle, arrays, scalars)


def prepare(p: Plan, words, tile_offsets, x_bits, ldx: int, y_bits, bias_bits, m: int, n: int, k: int,
            n_tile_cols: int, xp, stream_handle: int = 0):
    """``launch``'s arguments packed once: returns a function of no arguments that launches the kernel again on
    the same arrays (their contents at that time) with nothing but the driver call."""
    arrays, scalars = _arguments(p, words, tile_offsets, x_bits, ldx, y_bits, bias_bits, m, n, k, n_tile_cols, xp,
                                 stream_handle)
    if ptx.SIMULATOR:
        return lambda: _simulate(p, arrays, scalars)
    return _compiled(p.config).prepare(p.grid, p.shared_bytes, stream_handle, arrays, scalars)


def _arguments(p, words, tile_offsets, x_bits, ldx, y_bits, bias_bits, m, n, k, n_tile_cols, xp, stream_handle):
    """The kernel's seven arrays and seven scalars (``kernel_signature`` order, scalars apart)."""
    if p.splits > 1:
        n_partials = p.splits * p.grid[0] * p.grid[1] * TILE_M * p.config.tile_n
        workspace, tickets = _workspaces.get(xp, n_partials, p.grid[0] * p.grid[1], stream_handle)
    else:
        workspace, tickets = _dummy(xp, np.float32), _dummy(xp, np.int32)
    has_bias = bias_bits is not None
    if bias_bits is None:
        bias_bits = _dummy(xp, np.uint16)
    arrays = (words, tile_offsets, x_bits, y_bits, bias_bits, workspace, tickets)
    scalars = (ldx, has_bias, m, n, k, n_tile_cols, p.k_tiles_per_split)
    return arrays, scalars


def _simulate(p: Plan, arrays, scalars) -> None:
    from flashllm_nb.kernels.sim_blocks import polite_blocks

    w, o, x, y, b, ws, t = arrays
    ldx, has_bias, m, n, k, cols, per = (np.int32(v) for v in scalars)
    with polite_blocks():  # 5-7 times faster than the simulator's own block manager
        build_kernel(p.config)[p.grid, p.config.threads, 0, p.shared_bytes](w, o, x, ldx, y, b, has_bias, ws, t, m, n,
                                                                            k, cols, per)


class _CompiledKernel:
    """One configuration compiled for the one argument signature the launcher uses, launched without Numba's
    dispatcher.

    Numba's ``kernel[grid, block](*args)`` re-types every argument and converts every array through
    ``__cuda_array_interface__`` on each call (about 60 us with CuPy arrays). The signature never changes here, so it
    is compiled once, and each call only writes the arrays (in Numba's kernel ABI) and scalars into a preallocated
    parameter block and calls the driver's ``cuLaunchKernel`` on it.
    """

    def __init__(self, config: SpmmConfig):
        signature = kernel_signature()
        dispatcher = build_kernel(config)
        dispatcher.compile(signature)
        self.numba_kernel = dispatcher.overloads[signature]
        cufunc = self.numba_kernel._codelibrary.get_cufunc()
        self._cufunc = cufunc
        self._function = int(cufunc.handle)  # the raw CUfunction, for the ctypes launch
        self._cu_launch_kernel = cu_launch_kernel()
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
        """Pack the arguments into this thread's parameter block and launch it with the driver's
        ``cuLaunchKernel`` called through ctypes."""
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
        error = self._cu_launch_kernel(self._function, grid[0], grid[1], grid[2], self._threads, 1, 1, shared_bytes,
                                       stream_handle, pointers, None)
        if error:
            raise RuntimeError(f"cuLaunchKernel failed with CUDA error {error}")

    def _parameter_block(self):
        """Per thread (launches from several threads must not share one): see ``_new_parameter_block``."""
        block = getattr(self._local, "block", None)
        if block is None:
            block = self._local.block = _new_parameter_block()
        return block


class PreparedLaunch:
    """A kernel launch packed once: calling it launches again. ``slots`` is its parameter block (8-byte slots,
    ``_pack_parameters``' layout); :meth:`set_pointers` points it at other activations, output and bias between
    calls. ``arrays`` keeps alive the arrays whose pointers were packed, until the first ``set_pointers`` hands
    that duty to the caller."""

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


def _dummy(xp, dtype):
    """A one-element array for kernel arguments a configuration never reads (one per module and dtype)."""
    return _dummy_cached(xp, np.dtype(dtype))


@functools.cache
def _dummy_cached(xp, dtype):
    return xp.zeros(1, dtype=dtype)
