"""The numbers a kernel variant is compiled with, derived once from its :class:`SpmmConfig`.

Every stage factory reads what it needs from one :class:`Geometry` and binds it to local names before defining its
device functions, so that Numba freezes them into the code as constants: loops over them unroll, branches on them
vanish, and the register arrays they size stay in registers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from flashllm_nb.kernels.ptx import SHARED_ALIGN, WGMMA_SHARED_ALIGN
from flashllm_nb.kernels.spmm.config import BITMAP_WORDS, MBARRIER_BYTES, TILE_ELEMS, TILE_K, TILE_M, SpmmConfig

__all__ = ["Geometry", "geometry"]


@dataclass(frozen=True)
class Geometry:
    """Derived constants of one variant; see :func:`geometry` for what each one is."""

    cfg: SpmmConfig
    tile_n: int
    threads: int
    stages: int
    nk: bool
    wgmma: bool
    entries: bool
    splits: bool
    # Products
    n_frags: int
    b_loads: int
    k_steps: int
    warp_rows: int
    m_frags: int
    frag_registers: int
    accumulators: int
    half_accumulators: int
    halves_per_warpgroup: int
    # Shared memory
    smem_align: int
    b_row: int
    b_elems: int
    b_base: int
    mbarrier_base32: int
    bitmap_base32: int
    offsets_base32: int
    # Activation copies
    pending_in_loop: int
    copy_rounds: int
    last_round_chunks: int
    round_rows: int
    chunks_per_row: int
    kn_div: int
    kn_mask: int
    # Words
    vectors_per_thread: int
    word_registers: int
    position_registers: int
    fence_before_loads: bool
    clear_stores: int
    clear_band_stride: int
    clear_warp_rows: int
    # Bitmaps ("bitmap")
    bitmap: bool
    bitmap_share: int
    # Epilogue
    out_rounds: int
    acc_stride: int
    reduce_group: int


@functools.cache
def geometry(cfg: SpmmConfig) -> Geometry:
    """The derived constants of ``cfg``."""
    tile_n, threads = cfg.tile_n, cfg.threads
    nk, wgmma, entries = cfg.x_layout == "nk", cfg.mma == "wgmma", cfg.clear == "entries"
    n_frags = tile_n // 8  # n8 fragments per warp
    b_loads = max(n_frags // 2, 1)  # ldmatrix.x4 loads of B per k16 step (x2 when tile_n == 8)
    warp_rows = TILE_M // cfg.warps  # 32 rows (two m16 fragments) with 4 warps, 16 (one) with 8
    m_frags = warp_rows // 16
    accumulators = m_frags * n_frags * 4  # fp32 per thread: tile_n = 64 with 4 warps holds 64
    # The activation tile in shared memory: "nk" keeps one row per token (64 k-values, padded for ldmatrix, or
    # 128-byte swizzled for wgmma), "kn" one row per k (tile_n values, chunks XOR-swizzled).
    b_row = cfg.nk_row if nk else tile_n
    b_elems = (tile_n if nk else TILE_K) * b_row
    b_base = 2 * TILE_ELEMS  # uint16 index of the first activation stage, after the two A tiles
    mbarrier_base32 = (b_base + cfg.stages * b_elems) // 2  # uint32 index of A buffer 0's mbarrier (1's: + 2)
    chunks = TILE_K * tile_n // 8  # 16-byte cp.async chunks per activation tile
    copy_rounds = -(-chunks // threads)
    chunks_per_row = tile_n // 8  # "kn": 16-byte chunks per activation row
    kn_div, kn_mask = _kn_chunk_xor(tile_n)
    vectors_per_thread = cfg.prefetch_vectors // threads  # per register buffer: 2 .. 5 (8 warps: 1 or 2)
    bitmap = cfg.sparse == "bitmap"
    bitmap_base32 = mbarrier_base32 + MBARRIER_BYTES // 4  # "bitmap": two buffers of BITMAP_WORDS, then the offsets
    acc_stride = accumulators + 1  # the epilogue's staging: a thread's accumulators one float of padding apart
    assert threads * acc_stride * 4 <= cfg.shared_bytes(0), "the epilogue's staging must fit the shared memory"
    return Geometry(
        cfg=cfg, tile_n=tile_n, threads=threads, stages=cfg.stages, nk=nk, wgmma=wgmma, entries=entries,
        splits=cfg.splits,
        n_frags=n_frags, b_loads=b_loads, k_steps=TILE_K // 16, warp_rows=warp_rows, m_frags=m_frags,
        frag_registers=4 * m_frags + 4 * b_loads, accumulators=accumulators, half_accumulators=tile_n // 2,
        halves_per_warpgroup=2 if cfg.warps == 4 else 1,
        # wgmma descriptors assume 1024-byte aligned swizzle atoms: the A tiles (16 KiB each) and activation
        # stages (tile_n * 128 bytes) all start at multiples of 1024 from the base.
        smem_align=WGMMA_SHARED_ALIGN if wgmma else SHARED_ALIGN,
        b_row=b_row, b_elems=b_elems, b_base=b_base, mbarrier_base32=mbarrier_base32, bitmap_base32=bitmap_base32,
        offsets_base32=bitmap_base32 + (2 * BITMAP_WORDS if bitmap else 0),
        # cp.async.wait_group's immediate: at step i activation tiles 0 .. i+STAGES-2 have been issued; tile i
        # must have landed.
        pending_in_loop=cfg.stages - 2,
        copy_rounds=copy_rounds, last_round_chunks=chunks - (copy_rounds - 1) * threads,
        # Activation rows one copy round advances: a whole number of swizzle periods, so a round moves by a
        # constant offset.
        round_rows=threads // 8 if nk else threads // chunks_per_row,
        chunks_per_row=chunks_per_row, kn_div=kn_div, kn_mask=kn_mask,
        vectors_per_thread=vectors_per_thread, word_registers=4 * vectors_per_thread,
        # "entries": a tile's positions, two a register; "bitmap": a tile's bitmap share (two sets: even, odd tiles)
        position_registers=2 * vectors_per_thread if entries else BITMAP_WORDS // threads if bitmap else 1,
        # Where a wgmma block waits for the next activation tile and fences its shared writes: in front of the
        # step's word loads (zero-first blocks with the 512-vector buffer) or at the top of the next step.
        fence_before_loads=wgmma and entries and cfg.prefetch_vectors == 512,
        # The A rows a warp's products read, cleared by that warp: its warp_rows rows for mma.sync and 8-warp wgmma;
        # with 4-warp wgmma the 16-row band 16w.. of each m64 half. A warp-wide 16-byte store covers 4 rows.
        clear_stores=warp_rows // 4, clear_band_stride=64 if wgmma and cfg.warps == 4 else 16,
        clear_warp_rows=16 if wgmma else warp_rows,
        # "bitmap": each thread loads and stores words tid + j * threads of a tile's bitmap, j < bitmap_share.
        bitmap=bitmap, bitmap_share=BITMAP_WORDS // threads,
        out_rounds=TILE_M * tile_n // threads, acc_stride=acc_stride,
        # Split-K: the reducing block's partial sums loaded per round trip, in splits: 32 registers' worth.
        reduce_group=max(1, 32 // accumulators),
    )


def _kn_chunk_xor(tile_n: int) -> tuple[int, int]:
    """(divisor, mask) of the XOR applied to a "kn" activation row's 16-byte chunk index: ``(k // div) & mask``.

    A row holds ``cpr = tile_n / 8`` chunks. ``ldmatrix`` reads one chunk from each of eight consecutive rows; they
    are conflict-free when their chunks land in eight different 16-byte bank groups, ``(k * cpr + chunk) % 8``.
    With cpr >= 8 XORing the chunk with k % 8 does that; with fewer chunks per row, consecutive rows already differ
    by cpr groups and rows ``8 / cpr`` apart collide, so XOR with ``(k // (8 / cpr)) % cpr``.
    """
    cpr = tile_n // 8
    if cpr >= 8:
        return 1, 7
    return 8 // cpr, cpr - 1
