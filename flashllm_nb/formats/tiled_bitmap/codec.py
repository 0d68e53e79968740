"""The Tiled-Bitmap layout both ways: :func:`encode_dense` lays a dense bit matrix out, :func:`dense_bits` and
:func:`tile_entries` read it back. Written once over an array module ``xp`` (numpy or cupy): the same lines are the
CPU and the GPU codec.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tiled import tile_major
from ..tiled_csl.geometry import MAGNITUDE, TILE_K, TILE_M, TILE_SIZE

__all__ = ["BITMAP_VECTORS", "VALUES_PER_VECTOR", "VECTOR_SLOTS", "encode_dense", "dense_bits", "tile_entries",
           "tile_sizes", "bitmap_counts"]

VECTOR_SLOTS = 8  # 16-bit slots of a 16-byte vector
VALUES_PER_VECTOR = VECTOR_SLOTS - 1  # slot 0 holds the position of the vector's first entry
BITMAP_WORDS = TILE_M * TILE_K // 32  # 256 uint32: word 2 * row + half holds columns 32 * half .. + 31
BITMAP_VECTORS = BITMAP_WORDS // 4  # 64 vectors, the first of every non-empty tile
_MAX_VECTORS = int(np.iinfo(np.int32).max)  # tile_offsets are int32


def tile_sizes(xp: Any, counts: Any) -> Any:
    """16-byte vectors of tiles holding ``counts`` entries: none for an empty tile, else the bitmap and
    ``ceil(count / 7)`` value vectors."""
    return xp.where(counts > 0, BITMAP_VECTORS + (counts + VALUES_PER_VECTOR - 1) // VALUES_PER_VECTOR, 0)


def encode_dense(xp: Any, bits: Any, grid: tuple[int, int]) -> tuple[Any, Any, int]:
    """Words, tile offsets and nnz of the (M, K) uint16 bit matrix ``bits``."""
    n_tiles = grid[0] * grid[1]
    tiled = tile_major(xp, bits, grid)  # the entries in tile order, row-major inside each: the values' order
    entry = (tiled & MAGNITUDE) != 0  # (n_tile_rows, n_tile_cols, 128, 64); -0.0 is a zero
    counts = entry.reshape(n_tiles, TILE_SIZE).sum(axis=1, dtype=np.int64)
    sizes = tile_sizes(xp, counts)
    ends = xp.cumsum(sizes)
    total = int(ends[-1]) if n_tiles else 0  # synchronize!
    if total > _MAX_VECTORS:
        raise ValueError(f"Tiled-Bitmap's int32 tile_offsets address at most {_MAX_VECTORS} 16-byte vectors; this "
                         f"matrix needs {total}")
    tile_offsets = xp.zeros(n_tiles + 2, np.int32)
    tile_offsets[1:-1] = ends
    tile_offsets[-1] = total
    slots = xp.zeros(total * VECTOR_SLOTS, np.uint16)
    if total == 0:
        return slots.view(np.uint32), tile_offsets, 0
    first_vector = tile_offsets[:-2].astype(np.int64)

    # The bitmaps: 16 columns per uint16, bit b = column 16 * q + b, so that uint32 word h of a row holds columns
    # 32 * h .. 32 * h + 31 in little-endian order.
    weights = (xp.ones(16, np.uint16) << xp.arange(16, dtype=np.uint16)).astype(np.uint16)
    halves = (entry.reshape(n_tiles, TILE_M, 4, 16).astype(np.uint16) * weights).sum(axis=-1, dtype=np.uint16)
    nonempty = xp.flatnonzero(counts > 0)
    bitmap_slots = first_vector[nonempty][:, None] * VECTOR_SLOTS + xp.arange(2 * BITMAP_WORDS)
    slots[bitmap_slots] = halves.reshape(n_tiles, 2 * BITMAP_WORDS)[nonempty]

    # The values: entry q of tile t (row-major) is value q % 7 of value vector q // 7; the vector's slot 0 holds
    # the position of its first entry.
    keys = xp.flatnonzero(entry.reshape(-1))
    nnz = int(keys.size)
    tile = keys >> 13
    before = xp.cumsum(counts) - counts  # entries of the tiles before each tile
    rank = xp.arange(nnz, dtype=np.int64) - before[tile]
    vector = first_vector[tile] + BITMAP_VECTORS + rank // VALUES_PER_VECTOR
    slots[vector * VECTOR_SLOTS + 1 + rank % VALUES_PER_VECTOR] = tiled.reshape(-1)[keys]
    leads = rank % VALUES_PER_VECTOR == 0
    slots[vector[leads] * VECTOR_SLOTS] = (keys[leads] & (TILE_SIZE - 1)).astype(np.uint16)
    return slots.view(np.uint32), tile_offsets, nnz


def bitmap_counts(xp: Any, words: Any, offsets: Any) -> tuple[Any, Any]:
    """(indices of the non-empty tiles, their entries as their bitmaps count them); ``offsets`` is tile_offsets as
    int64 in ``xp``."""
    nonempty = xp.flatnonzero(offsets[1:-1] > offsets[:-2])
    if nonempty.size == 0:
        return nonempty, xp.zeros(0, np.int64)
    bytes_ = _bitmaps(xp, words, offsets, nonempty).view(np.uint8)
    return nonempty, xp.asarray(_BYTE_POPCOUNT)[bytes_].sum(axis=1, dtype=np.int64)


def tile_entries(xp: Any, words: Any, offsets: Any) -> tuple[Any, Any, Any]:
    """Every entry as (tile, index row * 64 + col inside the tile, value bits), read from the bitmaps and the value
    slots of a layout whose tiles' sizes match their bitmaps (``validate.check_sizes``)."""
    nonempty = xp.flatnonzero(offsets[1:-1] > offsets[:-2])
    if nonempty.size == 0:
        empty = xp.zeros(0, np.int64)
        return empty, empty, xp.zeros(0, np.uint16)
    mask = _unpack(xp, _bitmaps(xp, words, offsets, nonempty)).reshape(nonempty.size, TILE_SIZE)
    flat = xp.flatnonzero(mask.reshape(-1))
    which, index = flat // TILE_SIZE, flat % TILE_SIZE
    counts = mask.sum(axis=1, dtype=np.int64)
    rank = xp.arange(flat.size, dtype=np.int64) - (xp.cumsum(counts) - counts)[which]
    vector = offsets[nonempty][which] + BITMAP_VECTORS + rank // VALUES_PER_VECTOR
    values = words.view(np.uint16)[vector * VECTOR_SLOTS + 1 + rank % VALUES_PER_VECTOR]
    return nonempty[which], index, values


def dense_bits(xp: Any, words: Any, offsets: Any, shape: tuple[int, int], grid: tuple[int, int]) -> Any:
    """The (M, K) uint16 bit matrix of a layout whose tiles' sizes match their bitmaps."""
    n_tile_rows, n_tile_cols = grid
    tiles, index, values = tile_entries(xp, words, offsets)
    padded = xp.zeros((n_tile_rows * TILE_M, n_tile_cols * TILE_K), np.uint16)
    rows = (tiles // n_tile_cols) * TILE_M + index // TILE_K
    cols = (tiles % n_tile_cols) * TILE_K + index % TILE_K
    padded[rows, cols] = values
    return xp.ascontiguousarray(padded[: shape[0], : shape[1]])


def _bitmaps(xp: Any, words: Any, offsets: Any, tiles: Any) -> Any:
    """The uint32 bitmap words of ``tiles`` (non-empty), (len(tiles), 256)."""
    return words[(offsets[tiles] * 4)[:, None] + xp.arange(BITMAP_WORDS)]


def _unpack(xp: Any, bitmaps: Any) -> Any:
    """Bool (tiles, 128, 64) entry masks of (tiles, 256) bitmap words, unpacked byte by byte (bit b of a word's
    little-endian byte q is column 8 * q + b of its half-row), a byte per element of temporaries."""
    shifts = xp.arange(8, dtype=np.uint8)
    bits = (bitmaps.view(np.uint8)[:, :, None] >> shifts) & np.uint8(1)
    return bits.view(bool).reshape(bitmaps.shape[0], TILE_M, TILE_K)


_BYTE_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], np.uint8)
