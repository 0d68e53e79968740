"""The sparse side for Tiled-Bitmap matrices (``SpmmConfig.sparse == "bitmap"``): a tile's value vectors travel by
16-byte loads into registers two k-tiles ahead, as Tiled-CSL's words do (:mod:`.words`' ``load``); its bitmap
(1 KiB) by 4-byte loads four k-tiles ahead into registers (one set for even tiles, one for odd), from where each
thread stores its share into one of two shared bitmap buffers two k-tiles later, a step before the tile is
expanded: the loads have two steps to land, as the values' have. The scatter places each value by walking the
bitmap.

A value vector (``formats.tiled_bitmap``) is slot 0, the position ``p = row * 64 + col`` of its first entry, and the
bits of up to 7 entries in the tile's row-major order. Its thread walks the bitmap's 32-bit half-rows from half
``h = p >> 5`` with the bits below ``p`` masked off: each value goes to the lowest set bit ``t`` left, then that bit
is cleared; an exhausted half moves the walk to the next, whose bits were loaded when the walk entered the half
before (so a crossing waits for no load). The A buffer's swizzled slot of (row, 32 * (h & 1) + t) is ``key ^ t``,
with ``key`` computed once per half::

    key = a_base + row * 64 + (((row & 7) << 3) ^ ((h & 1) << 5))

The shared bitmap buffer of tile t is ``t & 1``, as its A buffer. Tile t's bitmap is stored at step t - 2 (after
that step's barrier, when tile t - 2's expansion, the buffer's last reader, is over) and read at step t - 1.
Zeroing is by rows (``words.clear_own_rows``): the positions of a tile's entries are not kept.
"""

from __future__ import annotations

from types import SimpleNamespace

from numba import cuda, int32, uint16, uint32, uint64

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.ptx import inlined
from flashllm_nb.kernels.spmm.config import BITMAP_WORDS, TILE_ELEMS
from flashllm_nb.kernels.spmm.geometry import Geometry

__all__ = ["bitmap_stage"]

BITMAP_VECTORS = BITMAP_WORDS // 4  # the first 16-byte vectors of a non-empty tile: its bitmap


def bitmap_stage(g: Geometry) -> SimpleNamespace:
    """Device functions of the sparse side of a Tiled-Bitmap variant: ``load_bitmap``, ``store_bitmap`` and
    ``scatter`` (documented where defined below); the value vectors load with :mod:`.words`' ``load`` from
    ``v0 + BITMAP_VECTORS``."""
    return SimpleNamespace(load_bitmap=_load_bitmap(g), store_bitmap=_store_bitmap(g), scatter=_scatter(g))


def _load_bitmap(g: Geometry):
    THREADS, SHARE = g.threads, g.bitmap_share

    @inlined
    def load_bitmap(words, v0, v1, bitmap):
        """Start this thread's share of the bitmap of the tile whose vectors are ``v0 .. v1 - 1`` into registers
        ``bitmap``: words ``tid + j * THREADS`` (coalesced). Nothing for an empty tile."""
        if v1 > v0:
            first = v0 * 4 + cuda.threadIdx.x
            for j in range(SHARE):
                bitmap[j] = words[first + j * THREADS]

    return load_bitmap


def _store_bitmap(g: Geometry):
    THREADS, SHARE, BASE32 = g.threads, g.bitmap_share, g.bitmap_base32

    @inlined
    def store_bitmap(smem32, buffer, v0, v1, bitmap):
        """Store this thread's share of the bitmap of the tile ``v0 .. v1 - 1``, registered in ``bitmap``, into
        shared bitmap buffer ``buffer``; nothing for an empty tile (whose scatter reads nothing)."""
        if v1 > v0:
            first = uint64(BASE32 + buffer * BITMAP_WORDS) + uint64(cuda.threadIdx.x)
            for j in range(SHARE):
                smem32[first + uint64(j * THREADS)] = bitmap[j]

    return store_bitmap


# Numba widens arithmetic on 32-bit integers to 64 bits; every step of the walk is cast back to uint32 so that the
# compiled walk stays in 32-bit instructions (``ffs`` a brev and a bfind).
@inlined
def _half_key(a_base, h):
    """``key`` of half-row ``h`` of A buffer ``a_base`` (the module docstring)."""
    row = uint32(h >> uint32(1))
    swizzle = uint32(uint32(uint32(row & uint32(7)) << uint32(3)) ^ uint32(uint32(h & uint32(1)) << uint32(5)))
    return uint32(uint32(a_base + uint32(row << uint32(6))) + swizzle)


def _place():
    @inlined
    def place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, value):
        """Store ``value`` on the next set bit of the walk: half ``h``, its bits left ``m``, the next half's bits
        ``next_m`` (loaded a half ahead), its ``key``; return the walk after it.

        A half runs out about once a vector at 80 %. The step to the next one waits for no load: its bits are in
        ``next_m`` already, and the half after it starts loading there, to be used at the next crossing. A matrix
        built without the checks stays inside shared memory and ends: the half index wraps inside the bitmap
        buffer, the search gives up after a whole bitmap of empty halves (then ``m`` is 0 and the store goes to
        slot ``key ^ 31`` of the current half: a wrong value, never a wrong address)."""
        searched = uint32(0)
        while m == uint32(0) and searched < uint32(BITMAP_WORDS):
            h = uint32(uint32(h + uint32(1)) & uint32(BITMAP_WORDS - 1))
            m = next_m
            next_m = uint32(smem32[bitmap_base + uint64(uint32(uint32(h + uint32(1)) & uint32(BITMAP_WORDS - 1)))])
            key = _half_key(a_base, h)
            searched = uint32(searched + uint32(1))
        t = uint32(uint32(uint32(cuda.ffs(m)) - uint32(1)) & uint32(31))
        smem16[uint64(uint32(key ^ t))] = uint16(value & uint32(0xFFFF))
        return h, uint32(m & uint32(m - uint32(1))), next_m, key

    return place


def _scatter(g: Geometry):
    THREADS, R, BASE32 = g.threads, g.vectors_per_thread, g.bitmap_base32
    place = _place()

    @inlined
    def scatter_vector(smem16, smem32, bitmap_base, a_base, w0, w1, w2, w3, last):
        """Place the up to 7 values of one vector. Only a tile's last vector may end in zero slots (no entry is a
        zero); only it tests them. The first position is read modulo the tile's 8192, so that a matrix built
        without the checks stays inside the buffers."""
        p = uint32(w0 & uint32(TILE_ELEMS - 1))
        h = uint32(p >> uint32(5))
        key = _half_key(a_base, h)
        m = uint32(smem32[bitmap_base + uint64(h)] & uint32(uint32(0xFFFFFFFF) << uint32(p & uint32(31))))
        next_m = uint32(smem32[bitmap_base + uint64(uint32(uint32(h + uint32(1)) & uint32(BITMAP_WORDS - 1)))])
        h, m, next_m, key = place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, w0 >> uint32(16))
        if last:
            if (w1 & uint32(0xFFFF)) != uint32(0):
                h, m, next_m, key = place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, w1)
            if (w1 >> uint32(16)) != uint32(0):
                h, m, next_m, key = place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, w1 >> uint32(16))
            if (w2 & uint32(0xFFFF)) != uint32(0):
                h, m, next_m, key = place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, w2)
            if (w2 >> uint32(16)) != uint32(0):
                h, m, next_m, key = place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, w2 >> uint32(16))
            if (w3 & uint32(0xFFFF)) != uint32(0):
                h, m, next_m, key = place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, w3)
            if (w3 >> uint32(16)) != uint32(0):
                h, m, next_m, key = place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, w3 >> uint32(16))
        else:
            h, m, next_m, key = place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, w1)
            h, m, next_m, key = place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, w1 >> uint32(16))
            h, m, next_m, key = place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, w2)
            h, m, next_m, key = place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, w2 >> uint32(16))
            h, m, next_m, key = place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, w3)
            h, m, next_m, key = place(smem16, smem32, bitmap_base, a_base, h, m, next_m, key, w3 >> uint32(16))

    @inlined
    def scatter(words, smem16, smem32, v0, v1, a_stage, wbuf):
        """Expand the tile whose vectors are ``v0 .. v1 - 1`` into A buffer ``a_stage``, its bitmap in shared
        bitmap buffer ``a_stage`` and its first value vectors in ``wbuf``; value vectors beyond the register
        budget are loaded here, their latency not hidden."""
        a_base = uint32(a_stage * TILE_ELEMS)
        bitmap_base = uint64(BASE32 + a_stage * BITMAP_WORDS)
        v = v0 + BITMAP_VECTORS + cuda.threadIdx.x
        left = int32(v1 - v)
        for j in range(R):
            if j * THREADS < left:
                scatter_vector(smem16, smem32, bitmap_base, a_base, wbuf[4 * j], wbuf[4 * j + 1], wbuf[4 * j + 2],
                               wbuf[4 * j + 3], left == j * THREADS + 1)
        v += R * THREADS
        while v < v1:
            w0, w1, w2, w3 = ptx.ld_global_nc_v4_u32(words, v * 4)
            scatter_vector(smem16, smem32, bitmap_base, a_base, w0, w1, w2, w3, v == v1 - 1)
            v += THREADS

    return scatter
