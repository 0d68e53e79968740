"""Which kernel variant and grid a problem gets: policy only.

Everything is decided from the shape, the dtype, the device and A's mean density (its stored word vectors per
tile), never from a hand-made table:

* ``tile_n`` is the smallest of 8/16/32/64 that covers N (N > 64 is cut into 64-wide column blocks);
* the Tensor-Core instruction: ``wgmma`` on Hopper (compute capability 9.x) for ``linear`` ("nk" activations),
  ``mma.sync`` everywhere else (the simulator plays a Hopper GPU, so CI runs the kernels Hopper users get), and the
  warps per block from it and ``tile_n``;
* how A buffers are cleared, the word vectors prefetched per tile and the activation stages, from the matrix's
  mean stored vectors per tile;
* split-K: from the SM count and the blocks per SM the driver's occupancy calculator allows for this kernel's
  registers and shared memory, ``choose_splits`` picks the factor with the least estimated time, counting waves of
  blocks (a partly filled last wave almost as a full one), each block's fixed cost and its partial sums' traffic;
* dependent launch (``griddepcontrol``) wherever the device has it (sm_90 on, and the simulator);
* stream-K only where forced (``Force(stream_k=True)``): a block per resident slot, the k-tiles shared equally;
* the split-K ticket: one acquire-release add (``SpmmConfig.ticket``'s "acq_rel"; "fences" only when forced);
* for a Tiled-Bitmap A (``sparse="bitmap"``): zeroing by rows, and the smallest value-vector buffer that holds a
  tile of the matrix's mean with room to spare (``prefetch_for_bitmap``).

A :class:`Force` takes any of these choices as given: tests that must run one variant, A/B tools and benchmarks
force through it, never by replacing functions here. Each threshold below has its measurement in
``docs/kernel-design.md``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.driver import grid_dependency_supported
from flashllm_nb.kernels.spmm import stream_k
from flashllm_nb.kernels.spmm.config import (MMA_CHOICES, PREFETCH_CHOICES, TILE_K, TILE_M, TILE_N_CHOICES,
                                             TWO_STAGES_BUILT, SpmmConfig)

__all__ = ["Force", "Plan", "plan", "multiprocessors", "tile_n_for", "mma_for", "warps_for", "clear_for",
           "prefetch_for", "prefetch_for_bitmap", "stages_for", "split_cost", "choose_splits",
           "stream_k_blocks", "shared_bytes_for_at_most", "set_default_force"]

MIN_K_TILES_PER_SPLIT = 4  # a split shorter than this spends more on its prologue and partials than it saves
DEFAULT_WARPS = 4  # fewer warps repeat the per-tile bookkeeping less: faster than 8 wherever 8 is not needed
# wgmma blocks of 8 warps (two warpgroups, one per m64 half) from this tile_n on: half the accumulators and words
# per thread, so twice the warps per SM where 4 warps need 100+ registers; narrower blocks already fit 5 per SM.
WGMMA_8_WARPS_FROM_TILE_N = 32
# The split-K model (split_cost), fitted to forced-split timings of OPT-66B layers.
PROLOGUE_TILES = 1  # a block's fixed cost (offsets, zeroing, pipeline fill) in k-tiles' worth of time
# A wave that fills n of an SM's S block slots takes n/S of a full wave's time (the SM's throughput is shared), but
# no less than this fraction of it: a thin last wave runs its blocks faster, not proportionally so.
PARTIAL_WAVE_FLOOR = 0.8
# A split block writes its fp32 partial tile (128 x tile_n x 4 bytes) and the reducing block reads it back: that
# traffic counts with this weight against the same number of bytes of words (most of it stays in L2).
PARTIAL_SUM_WEIGHT = 0.5
TYPICAL_TILE_VECTORS = 410  # 16-byte word vectors of an 80 %-sparse tile, where the caller does not say
# Tiles denser on average than this many vectors (7/8 of 512) get the 640-vector register buffer, in 4-warp blocks
# up to this tile_n (wider blocks have no registers to spare).
PREFETCH_MORE_FROM = 448
PREFETCH_MORE_TILE_N = 16
# mma.sync blocks of 4 warps up to this tile_n clear by entries up to this mean (83.6 % sparse: 7/8 of the
# 384-vector buffer); above it the per-entry stores and the mbarrier cost more than zeroing rows.
CLEAR_ENTRIES_UPTO = 336
CLEAR_ENTRIES_TILE_N = 16
# wgmma blocks clear by entries up to this mean (~76.5 % sparse: 15/16 of the 512-vector buffer): they zero first,
# while the Tensor Cores work, which costs less than the mbarrier of the mma.sync path.
WGMMA_CLEAR_ENTRIES_UPTO = 480
# clear="entries" holds 256 vectors per tile in registers up to this mean (88 % sparse, few tiles over 256), 384
# up to the next (7/8 of 384), 512 above it: a buffer too small for most tiles loads them unhidden.
ENTRIES_SMALL_PREFETCH_UPTO = 248
ENTRIES_MID_PREFETCH_UPTO = 336
# Tiled-Bitmap: value vectors a buffer holds beyond the matrix's mean per tile, for the tiles above the mean (at 80 %
# a tile's value vectors vary by about 5).
BITMAP_PREFETCH_MARGIN = 16
# What the simulator pretends the device is, so that split-K and the Hopper path are exercised on small shapes.
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
    grid_dependency: bool | None = None
    ticket: str | None = None  # one of TICKET_CHOICES
    # At most this many resident blocks per SM: the block's dynamic shared memory is padded until the driver's
    # occupancy calculator allows no more (``shared_bytes_for_at_most``), and split-K counts that many slots.
    blocks_per_sm: int | None = None
    # Stream-K (``SpmmConfig.stream_k``) instead of split-K: one block per resident slot of the device
    # (``stream_k_blocks``), sharing the k-tiles equally. False: split-K as planned.
    stream_k: bool | None = None

    def __post_init__(self):
        if self.stream_k and self.split_k is not None:
            raise ValueError(f"Invalid Force: stream_k=True shares the k-tiles by blocks, not by a split-K factor, "
                             f"so split_k must be None, got split_k={self.split_k!r}")
        if self.mma is not None and self.mma not in MMA_CHOICES:
            raise ValueError(f"Invalid mma: expected one of {MMA_CHOICES} or None, got {self.mma!r}")
        if self.blocks_per_sm is not None and (isinstance(self.blocks_per_sm, bool)
                                               or not isinstance(self.blocks_per_sm, int) or self.blocks_per_sm < 1):
            raise ValueError(f"Invalid blocks_per_sm: expected an integer >= 1 or None, got {self.blocks_per_sm!r}")


@dataclass(frozen=True)
class Plan:
    """A configuration and grid for one problem shape; cheap to reuse for every call with the same shape."""

    config: SpmmConfig
    # Split-K: (tile rows of A, column blocks of N, splits of K). Stream-K: (blocks sharing the k-tiles of every tile
    # row, column blocks of N, 1).
    grid: tuple[int, int, int]
    k_tiles_per_split: int  # the most k-tiles of one tile row a block multiplies
    tile_rows: int  # 128-row tiles of A
    min_shared_bytes: int = 0  # dynamic shared memory asked for at least (Force.blocks_per_sm's padding)

    @property
    def shared_bytes(self) -> int:
        return max(self.config.shared_bytes(self.k_tiles_per_split), self.min_shared_bytes)

    @property
    def splits(self) -> int:
        return self.grid[2]

    @property
    def tickets(self) -> int:
        """The kernel's per-output-tile tickets (used when ``config.splits``)."""
        return self.tile_rows * self.grid[1]

    @property
    def partial_tiles(self) -> int:
        """Output tiles' worth of fp32 partials the workspace holds (used when ``config.splits``): split-K's
        every split of every output tile; stream-K's a slot per (block, tile row) pair a block's range can meet,
        ``block + tile row`` in each column block."""
        if self.config.stream_k:
            return (self.grid[0] + self.tile_rows) * self.grid[1]
        return self.grid[2] * self.tile_rows * self.grid[1]


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
    ``CLEAR_ENTRIES_UPTO`` (mma.sync) vectors per tile on average, else ``"rows"`` (8-warp blocks always: their
    positions buffers cost more than the stores they save)."""
    upto = WGMMA_CLEAR_ENTRIES_UPTO if mma == "wgmma" else CLEAR_ENTRIES_UPTO
    sparse = tile_vectors is not None and tile_vectors <= upto
    if warps == 4 and tile_n <= CLEAR_ENTRIES_TILE_N and sparse:
        return "entries"
    return "rows"


def prefetch_for(warps: int, tile_n: int, tile_vectors: int | None, clear: str = "rows") -> int:
    """Word vectors per tile to prefetch into registers (``SpmmConfig.prefetch_vectors``).

    With ``clear="rows"``: 640 where the matrix's tiles hold more than ``PREFETCH_MORE_FROM`` vectors on average,
    for 4-warp blocks up to ``PREFETCH_MORE_TILE_N``, else 512 (on sparser matrices the larger buffer is empty
    registers). With ``clear="entries"`` (two word buffers and the positions of one or two tiles): 256 up to
    ``ENTRIES_SMALL_PREFETCH_UPTO`` on average, 384 up to ``ENTRIES_MID_PREFETCH_UPTO``, else 512 (4 warps; 8
    warps: 256, a multiple of their threads)."""
    if clear == "entries":
        if warps != 4 or (tile_vectors is not None and tile_vectors <= ENTRIES_SMALL_PREFETCH_UPTO):
            return 256
        return 512 if tile_vectors is not None and tile_vectors > ENTRIES_MID_PREFETCH_UPTO else 384
    if warps == 4 and tile_n <= PREFETCH_MORE_TILE_N and tile_vectors is not None and tile_vectors > PREFETCH_MORE_FROM:
        return 640
    return 512


def prefetch_for_bitmap(warps: int, tile_vectors: int | None) -> int:
    """Value vectors per tile to prefetch into registers for a Tiled-Bitmap A: the smallest of
    ``PREFETCH_CHOICES`` (a multiple of the block's threads) that holds ``tile_vectors + BITMAP_PREFETCH_MARGIN``,
    else the largest; 512 when the mean is unknown."""
    choices = [c for c in PREFETCH_CHOICES if c % (32 * warps) == 0]
    if tile_vectors is None:
        return 512
    return next((c for c in choices if c >= tile_vectors + BITMAP_PREFETCH_MARGIN), choices[-1])


def stages_for(mma: str, warps: int, tile_n: int, clear: str, prefetch_vectors: int) -> int:
    """Activation stages (``SpmmConfig.stages``): 2 for the configuration ``config.TWO_STAGES_BUILT`` names,
    where the 4 KiB two stages fewer free fit a sixth block on an SM; else 4."""
    chosen = dict(mma=mma, warps=warps, tile_n=tile_n, clear=clear, prefetch_vectors=prefetch_vectors)
    return 2 if chosen == TWO_STAGES_BUILT else 4


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


def shared_bytes_for_at_most(blocks_per_sm: int, needed: int, resident: Callable[[int], int], limit: int) -> int:
    """The least dynamic shared memory, from ``needed`` bytes up to ``limit``, with which at most ``blocks_per_sm``
    blocks are resident on an SM, ``resident(bytes)`` being the occupancy calculator (non-increasing in bytes);
    ``limit`` if none is."""
    if resident(needed) <= blocks_per_sm:
        return needed
    low, high = needed, limit  # resident(low) > blocks_per_sm; the answer is in (low, high]
    while high - low > 1:
        middle = (low + high) // 2
        if resident(middle) <= blocks_per_sm:
            high = middle
        else:
            low = middle
    return high


def stream_k_blocks(k_tiles_total: int, column_blocks: int, sms: int, blocks_per_sm: int) -> int:
    """Blocks of a stream-K grid's x dimension: every resident slot of the device, shared among the ``column_blocks``
    of N, but no more than give each block ``MIN_K_TILES_PER_SPLIT`` of the ``k_tiles_total`` k-tiles (every tile
    row's); at least one. A grid that fills every slot exactly lands the same number of blocks on every SM, however
    the previous kernel's blocks leave."""
    slots = max(1, sms * blocks_per_sm // column_blocks)
    return max(1, min(slots, k_tiles_total // MIN_K_TILES_PER_SPLIT))


def choose_splits(blocks: int, k_tiles: int, sms: int, blocks_per_sm: int, tile_n: int,
                  tile_vectors: int | None = None) -> int:
    """The split-K factor with the least ``split_cost`` (the smaller one on a tie); splits below
    ``MIN_K_TILES_PER_SPLIT`` k-tiles are not considered."""
    allowed = range(1, max(1, k_tiles // MIN_K_TILES_PER_SPLIT) + 1)
    return min(allowed, key=lambda s: split_cost(blocks, k_tiles, sms, blocks_per_sm, s, tile_n, tile_vectors))


_DEFAULT_FORCE: dict[str, Force | None] = {"force": None}


def set_default_force(force: Force | None) -> Force | None:
    """The :class:`Force` that :func:`plan` takes where its caller gives none, for the whole process (None: the
    plan's own choices, the default); returns the previous one. For A/B runs of whole models, whose products are
    planned deep inside (``bench-e2e --stream-k``): set it before the first product, since a model keeps the plans
    and launches it prepared."""
    if force is not None and not isinstance(force, Force):
        raise TypeError(f"Invalid default force: expected a flashllm_nb.kernels.spmm.plan.Force or None, got "
                        f"{type(force).__name__}")
    previous = _DEFAULT_FORCE["force"]
    _DEFAULT_FORCE["force"] = force
    return previous


def plan(m: int, n: int, k: int, dtype: str, x_layout: str, split_k: int | None = None,
         tile_vectors: int | None = None, force: Force | None = None, relu: bool = False, sparse: str = "csl") -> Plan:
    """Pick the configuration and grid for an (m x k) @ (k x n) product whose A, in format ``sparse``
    (``SpmmConfig.sparse``), holds ``tile_vectors`` 16-byte word (or value) vectors per tile on average (None:
    unknown), with ReLU in the epilogue if ``relu``. ``split_k`` and ``force`` (a :class:`Force`; None: the
    process's default, :func:`set_default_force`) fix choices instead, for benchmarks and tests."""
    if force is None:
        force = _DEFAULT_FORCE["force"]
    return _plan(m, n, k, dtype, x_layout, split_k, tile_vectors, force, relu, sparse)


@functools.lru_cache(maxsize=1024)
def _plan(m: int, n: int, k: int, dtype: str, x_layout: str, split_k: int | None, tile_vectors: int | None,
          force: Force | None, relu: bool, sparse: str) -> Plan:
    force = force or _NO_FORCE
    tile_n = tile_n_for(n)
    tile_rows = -(-m // TILE_M)
    n_blocks = -(-n // tile_n)
    k_tiles = -(-k // TILE_K)
    mma = force.mma or mma_for(x_layout)
    warps = force.warps or warps_for(mma, tile_n)
    if sparse == "bitmap":
        clear = force.clear or "rows"
        prefetch = force.prefetch_vectors or prefetch_for_bitmap(warps, tile_vectors)
    else:
        clear = force.clear or clear_for(mma, warps, tile_n, tile_vectors)
        prefetch = force.prefetch_vectors or prefetch_for(warps, tile_n, tile_vectors, clear)
    stages = force.stages or stages_for(mma, warps, tile_n, clear, prefetch)
    if split_k is None:
        split_k = force.split_k
    elif force.stream_k:
        raise ValueError(f"Invalid split_k of plan: Force(stream_k=True) shares the k-tiles by blocks, so split_k "
                         f"must be None, got {split_k!r}")
    dependent = grid_dependency_supported() if force.grid_dependency is None else force.grid_dependency
    ticket = force.ticket or SpmmConfig.ticket
    config = SpmmConfig(tile_n=tile_n, dtype=dtype, x_layout=x_layout, warps=warps, mma=mma, prefetch_vectors=prefetch,
                        clear=clear, stages=stages, relu=relu, grid_dependency=dependent, ticket=ticket, sparse=sparse)
    if force.stream_k:
        return _stream_k_plan(dataclasses.replace(config, splits=True, stream_k=True), tile_rows, n_blocks, k_tiles,
                              force.blocks_per_sm)
    if split_k is None:
        from flashllm_nb.kernels.spmm.driver import blocks_per_sm

        resident = blocks_per_sm(config, config.shared_bytes(k_tiles))
        if force.blocks_per_sm is not None:
            resident = min(resident, force.blocks_per_sm)
        split_k = choose_splits(tile_rows * n_blocks, k_tiles, multiprocessors(), max(resident, 1), tile_n,
                                tile_vectors)
    split_k = max(1, min(split_k, k_tiles))
    per_split = -(-k_tiles // split_k)
    split_k = -(-k_tiles // per_split)  # no empty splits
    config = SpmmConfig(tile_n=tile_n, dtype=dtype, x_layout=x_layout, splits=split_k > 1, warps=warps, mma=mma,
                        prefetch_vectors=prefetch, clear=clear, stages=stages, relu=relu, grid_dependency=dependent,
                        ticket=ticket, sparse=sparse)
    min_shared = 0 if force.blocks_per_sm is None else _capped(config, config.shared_bytes(per_split),
                                                               force.blocks_per_sm)
    return Plan(config=config, grid=(tile_rows, n_blocks, split_k), k_tiles_per_split=per_split, tile_rows=tile_rows,
                min_shared_bytes=min_shared)


def _capped(config: SpmmConfig, needed: int, cap: int | None) -> int:
    """The dynamic shared memory of ``config`` from ``needed`` bytes up, padded so that the driver's occupancy
    calculator allows at most ``cap`` blocks an SM (``shared_bytes_for_at_most``; None: ``needed``)."""
    if cap is None:
        return needed
    from flashllm_nb.kernels.spmm.driver import blocks_per_sm, max_shared_bytes_per_block

    return shared_bytes_for_at_most(cap, needed, functools.partial(blocks_per_sm, config),
                                    max_shared_bytes_per_block())


def _stream_k_plan(config: SpmmConfig, tile_rows: int, n_blocks: int, k_tiles: int, cap: int | None) -> Plan:
    """The stream-K grid of ``config``: ``stream_k_blocks`` from the occupancy of this very kernel (its registers
    may differ from split-K's), whose shared memory is sized for a whole tile row of offsets, so that the launch
    asks for exactly the bytes the occupancy was computed with; and at least a block per tile row, so that no
    block's range is longer than a tile row (the kernel runs at most two passes)."""
    from flashllm_nb.kernels.spmm.driver import blocks_per_sm

    shared = _capped(config, config.shared_bytes(k_tiles), cap)
    resident = max(1, blocks_per_sm(config, shared))
    if cap is not None:
        resident = min(resident, cap)
    units = tile_rows * k_tiles
    blocks = max(stream_k_blocks(units, n_blocks, multiprocessors(), resident), tile_rows)
    if not stream_k.fits(units, blocks):
        raise ValueError(f"Invalid Force(stream_k=True) for this shape: its {units} k-tiles over {blocks} blocks "
                         f"exceed the kernel's 32-bit index arithmetic (units x blocks < 2**32); use split-K")
    per_block = min(k_tiles, -(-units // blocks))
    return Plan(config=config, grid=(blocks, n_blocks, 1), k_tiles_per_split=per_block, tile_rows=tile_rows,
                min_shared_bytes=shared)


_NO_FORCE = Force()
