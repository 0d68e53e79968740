"""The sparse side: a tile's 16-byte word vectors travel by ``ld.global.nc`` loads into registers two k-tiles
ahead, are scattered from there into one of two dense shared A buffers, and the buffer is zeroed again after its
products ("load as sparse, compute as dense").

A Tiled-CSL word is (position << 16) | value bits, the position already the swizzled element of the 128 x 64 tile
in shared memory (``r * 64 + ((c // 8) ^ (r % 8)) * 8 + c % 8``), so a scatter is one 2-byte store per entry. Slot
j of a thread's register buffer holds vector ``v0 + tid + j * threads`` of its tile; a tile with more vectors than
the buffer holds loads the rest during its scatter.

Zeroing comes in two kinds (``SpmmConfig.clear``): a warp zeroes the rows it read (``clear_own_rows``, the same
stores at every sparsity, ordered by the step's one barrier), or a thread zeroes the positions it scattered
(``unscatter_tile``, a store per entry, which needs its own cross-warp ordering: see ``tiled_csl``).
"""

from __future__ import annotations

from types import SimpleNamespace

from numba import cuda, int32, int64, uint16, uint32, uint64

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.ptx import inlined
from flashllm_nb.kernels.spmm.config import TILE_ELEMS, TILE_K
from flashllm_nb.kernels.spmm.geometry import Geometry

__all__ = ["word_stage"]


def word_stage(g: Geometry) -> SimpleNamespace:
    """Device functions of the sparse side of one variant: ``stage_offsets``, ``tile_offset``, ``load``,
    ``scatter``, ``zero_buffer``, ``clear_own_rows``, ``unscatter`` and ``keep_positions`` (each documented where
    it is defined below)."""
    zero_buffer = _zero_buffer(g)
    return SimpleNamespace(stage_offsets=_stage_offsets(g), tile_offset=_tile_offset(g), load=_load(g),
                           scatter=_scatter(g), zero_buffer=zero_buffer, clear_own_rows=_clear_own_rows(g),
                           unscatter=_unscatter(g, zero_buffer), keep_positions=_keep_positions(g))


def _stage_offsets(g: Geometry):
    THREADS, OFFSETS_BASE32 = g.threads, g.offsets_base32

    @inlined
    def stage_offsets(tid, smem32, tile_offsets, first_tile, n_tiles_block):
        """Copy the block's tile offsets (its tiles' first vectors and one past the last) into shared memory, once
        and coalesced, instead of a dependent global load in front of every tile."""
        j = tid
        while j <= n_tiles_block:
            smem32[uint64(OFFSETS_BASE32) + uint64(j)] = uint32(tile_offsets[first_tile + j])
            j += THREADS

    return stage_offsets


def _tile_offset(g: Geometry):
    OFFSETS_BASE32 = g.offsets_base32

    @inlined
    def tile_offset(smem32, t):
        """The first 16-byte word vector of the block's t-th tile, which is one past the last of tile t-1 (from the
        block's offsets in shared memory, t = 0 .. n_tiles_block)."""
        return int64(smem32[uint64(OFFSETS_BASE32) + uint64(t)])

    return tile_offset


def _load(g: Geometry):
    THREADS, R = g.threads, g.vectors_per_thread

    @inlined
    def load(words, v0, v1, wbuf):
        """Issue this thread's 16-byte ``ld.global.nc`` loads of the first R * THREADS vectors of the tile whose
        vectors are ``v0 .. v1 - 1`` into registers. Slots past the tile are left unloaded; the scatter skips them
        by the same test. Nothing waits for the data here: it is consumed two k-tiles later."""
        v = v0 + cuda.threadIdx.x
        left = int32(v1 - v)  # vectors of the tile from this thread's first one on (32-bit compares)
        for j in range(R):
            if j * THREADS < left:
                w0, w1, w2, w3 = ptx.ld_global_nc_v4_u32(words, (v + j * THREADS) * 4)
                wbuf[4 * j] = w0
                wbuf[4 * j + 1] = w1
                wbuf[4 * j + 2] = w2
                wbuf[4 * j + 3] = w3

    return load


@inlined
def scatter_vector(a_s, a_base, w0, w1, w2, w3, last):
    """Write four entries' values to their swizzled slots of the A buffer at ``a_base``.

    Padding (value bits 0, on a position without an entry) exists only in the tile's last vector, after at
    least one entry (the format's rule 7), so only that vector tests values: writing a padding word would be
    harmless in a checked matrix, and skipping it keeps any matrix built without the checks safe too. Every
    other vector stores all four words unconditionally, three instructions each."""
    a_s[a_base + uint64(w0 >> uint32(16))] = uint16(w0 & uint32(0xFFFF))
    if last:
        if (w1 & uint32(0xFFFF)) != uint32(0):
            a_s[a_base + uint64(w1 >> uint32(16))] = uint16(w1 & uint32(0xFFFF))
        if (w2 & uint32(0xFFFF)) != uint32(0):
            a_s[a_base + uint64(w2 >> uint32(16))] = uint16(w2 & uint32(0xFFFF))
        if (w3 & uint32(0xFFFF)) != uint32(0):
            a_s[a_base + uint64(w3 >> uint32(16))] = uint16(w3 & uint32(0xFFFF))
    else:
        a_s[a_base + uint64(w1 >> uint32(16))] = uint16(w1 & uint32(0xFFFF))
        a_s[a_base + uint64(w2 >> uint32(16))] = uint16(w2 & uint32(0xFFFF))
        a_s[a_base + uint64(w3 >> uint32(16))] = uint16(w3 & uint32(0xFFFF))


def _scatter(g: Geometry):
    THREADS, R = g.threads, g.vectors_per_thread

    @inlined
    def scatter(words, smem16, v0, v1, a_stage, wbuf):
        """Scatter the registered words of the tile whose vectors are ``v0 .. v1 - 1`` into A buffer ``a_stage``;
        vectors beyond the register budget are loaded and scattered here, their latency not hidden."""
        a_base = uint64(a_stage * TILE_ELEMS)
        v = v0 + cuda.threadIdx.x
        left = int32(v1 - v)
        for j in range(R):
            if j * THREADS < left:
                scatter_vector(smem16, a_base, wbuf[4 * j], wbuf[4 * j + 1], wbuf[4 * j + 2], wbuf[4 * j + 3],
                               left == j * THREADS + 1)
        v += R * THREADS
        while v < v1:
            w0, w1, w2, w3 = ptx.ld_global_nc_v4_u32(words, v * 4)
            scatter_vector(smem16, a_base, w0, w1, w2, w3, v == v1 - 1)
            v += THREADS

    return scatter


def _zero_buffer(g: Geometry):
    THREADS = g.threads

    @inlined
    def zero_buffer(a_s, a_stage):
        """Zero a whole A buffer (the prologue's two, or after a tile over the register budget with
        clear="entries"): 16-byte stores at fixed offsets."""
        first = a_stage * TILE_ELEMS + cuda.threadIdx.x * 8
        for j in range(TILE_ELEMS // 8 // THREADS):
            ptx.st_shared_v4_u32(a_s, first + j * THREADS * 8, 0, 0, 0, 0)

    return zero_buffer


def _clear_own_rows(g: Geometry):
    CLEAR_STORES, CLEAR_BAND_STRIDE = g.clear_stores, g.clear_band_stride

    @inlined
    def clear_own_rows(a_s, a_stage, clear_first):
        """Zero the A rows whose products this warp has just finished, in buffer ``a_stage``: 4 whole 128-byte rows
        per warp-wide 16-byte store, conflict-free. ``clear_first`` is the lane's element offset in its warp's
        first rows; store j is ``4 * (j % 4) + CLEAR_BAND_STRIDE * (j // 4)`` rows further.

        Why per warp: a warp that has waited for its own products (mma.sync returned; ``wgmma.wait_group``) knows
        nothing about the other warps, but the rows feeding its accumulators are read by nobody else, so it may
        clear them at once, and the step's single barrier then orders every warp's clearing before the scatter
        into that buffer."""
        first = a_stage * TILE_ELEMS + clear_first
        for j in range(CLEAR_STORES):
            rows = 4 * (j & 3) + CLEAR_BAND_STRIDE * (j >> 2)
            ptx.st_shared_v4_u32(a_s, first + rows * TILE_K, 0, 0, 0, 0)

    return clear_own_rows


def _unscatter(g: Geometry, zero_buffer):
    THREADS, R = g.threads, g.vectors_per_thread

    @inlined
    def unscatter(a_s, v0, v1, a_stage, positions):
        """clear="entries": zero A buffer ``a_stage`` where this thread scattered the registered words of the tile
        whose vectors are ``v0 .. v1 - 1``, once every warp has read it (the caller orders that); ``positions``
        holds their positions (``keep_positions``). Padding words zero positions without an entry, which are zero
        anyway; a tile with more vectors than the registers hold is zeroed whole, by all threads.

        Why: on a sparse tile the 2-byte stores of its entries take fewer shared-memory wavefronts than zeroing
        16 KiB of rows."""
        if v1 - v0 > R * THREADS:
            zero_buffer(a_s, a_stage)
            return
        a_base = uint64(a_stage * TILE_ELEMS)
        left = int32(v1 - (v0 + cuda.threadIdx.x))
        for j in range(R):
            if j * THREADS < left:
                for h in range(2):
                    pair = positions[2 * j + h]
                    a_s[a_base + uint64(pair & uint32(0xFFFF))] = uint16(0)
                    a_s[a_base + uint64(pair >> uint32(16))] = uint16(0)

    return unscatter


def _keep_positions(g: Geometry):
    THREADS, R = g.threads, g.vectors_per_thread

    @inlined
    def keep_positions(v0, v1, wbuf, positions):
        """clear="entries": copy the positions (high halves) of this thread's registered words of the tile
        ``v0 .. v1 - 1`` into ``positions``, two per register, as ``unscatter`` reads them. Keeping only this half
        of the words frees the word buffer for the next load at once."""
        left = int32(v1 - (v0 + cuda.threadIdx.x))
        for j in range(R):
            if j * THREADS < left:
                positions[2 * j] = (wbuf[4 * j] >> uint32(16)) | (wbuf[4 * j + 1] & uint32(0xFFFF0000))
                positions[2 * j + 1] = (wbuf[4 * j + 2] >> uint32(16)) | (wbuf[4 * j + 3] & uint32(0xFFFF0000))

    return keep_positions
