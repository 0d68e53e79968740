"""The invariants of the Tiled-Bitmap format, checked by :meth:`TiledBitmap.check_format
<.matrix.TiledBitmap.check_format>`: :func:`check_arrays`, the cheap checks of the arrays and their tile offsets
(O(n_tiles)), and :func:`check_tiles`, the full scan of every bitmap and value slot (O(size)). Every error names the
first broken invariant with its numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tiled import check_tile_arrays
from ..tiled_csl.geometry import MAGNITUDE, TILE_K, TILE_M, tile_grid
from .codec import BITMAP_VECTORS, VALUES_PER_VECTOR, VECTOR_SLOTS, bitmap_counts, tile_entries, tile_sizes


def check_arrays(words: Any, tile_offsets: Any, shape: tuple[int, int]) -> tuple[Any, np.ndarray]:
    """The O(n_tiles) checks (invariants 1-4 of :meth:`TiledBitmap.check_format`); returns the array module and
    ``tile_offsets`` on the host as int64."""
    xp, offsets, capacity = check_tile_arrays(words, tile_offsets, shape)
    sizes = np.diff(offsets)
    n_tiles = capacity.size
    sizes = sizes[:n_tiles]
    most = tile_sizes(np, capacity)
    bad = np.flatnonzero(((sizes > 0) & (sizes <= BITMAP_VECTORS)) | (sizes > most))
    if bad.size:
        t = int(bad[0])
        raise ValueError(f"tile {t} has {sizes[t]} vectors; expected 0 (no entries) or the {BITMAP_VECTORS} of its "
                         f"bitmap and 1 to {most[t] - BITMAP_VECTORS} value vectors (its part of the matrix holds "
                         f"at most {capacity[t]} entries)")
    return xp, offsets


def check_tiles(xp: Any, words: Any, offsets: np.ndarray, shape: tuple[int, int]) -> int:
    """The O(size) checks (invariants 5-9); returns nnz."""
    n_tile_rows, n_tile_cols = tile_grid(shape)
    offsets_xp = xp.asarray(offsets)
    nonempty, counts = bitmap_counts(xp, words, offsets_xp)
    sizes = offsets_xp[nonempty + 1] - offsets_xp[nonempty]
    wrong = xp.flatnonzero(sizes != BITMAP_VECTORS + (counts + VALUES_PER_VECTOR - 1) // VALUES_PER_VECTOR)
    if wrong.size:
        i = int(wrong[0])
        t, count, size = int(nonempty[i]), int(counts[i]), int(sizes[i])
        if count == 0:
            raise ValueError(f"tile {t} has {size} vectors but its bitmap is empty; an empty tile has none")
        raise ValueError(f"tile {t}'s bitmap has {count} entries, which need {-(-count // VALUES_PER_VECTOR)} "
                         f"value vectors; the tile has {size - BITMAP_VECTORS}")
    tiles, index, values = tile_entries(xp, words, offsets_xp)
    rows = (tiles // n_tile_cols) * TILE_M + index // TILE_K
    cols = (tiles % n_tile_cols) * TILE_K + index % TILE_K
    outside = xp.flatnonzero((rows >= shape[0]) | (cols >= shape[1]))
    if outside.size:
        e = int(outside[0])
        raise ValueError(f"tile {int(tiles[e])}'s bitmap marks row {int(index[e]) // TILE_K}, column "
                         f"{int(index[e]) % TILE_K}, which is matrix element ({int(rows[e])}, {int(cols[e])}) outside "
                         f"the shape {shape[0]} x {shape[1]}")
    zeros = xp.flatnonzero((values & MAGNITUDE) == 0)
    if zeros.size:
        e = int(zeros[0])
        raise ValueError(f"the entry of tile {int(tiles[e])} at row {int(index[e]) // TILE_K}, column "
                         f"{int(index[e]) % TILE_K} holds a zero (bits {int(values[e]):#06x}); zeros are not stored")
    _check_vector_slots(xp, words, offsets_xp, nonempty, counts, tiles, index)
    return int(values.size)


def _check_vector_slots(xp, words, offsets, nonempty, counts, tiles, index) -> None:
    """Slot 0 of each value vector is the position of its first entry; slots past a tile's last entry are 0."""
    slots = words.view(np.uint16)
    if nonempty.size == 0:
        return
    before = xp.cumsum(counts) - counts
    position_in = xp.searchsorted(nonempty, tiles)
    rank = xp.arange(tiles.size, dtype=np.int64) - before[position_in]
    leads = xp.flatnonzero(rank % VALUES_PER_VECTOR == 0)
    vector = offsets[tiles[leads]] + BITMAP_VECTORS + rank[leads] // VALUES_PER_VECTOR
    starts = slots[vector * VECTOR_SLOTS].astype(np.int64)
    wrong = xp.flatnonzero(starts != index[leads])
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(f"value vector {int(vector[i])} (tile {int(tiles[leads[i]])}) starts at position "
                         f"{int(starts[i])}; its first entry is at {int(index[leads[i]])} (row * 64 + column)")
    # Padding: the unused slots of each tile's last vector.
    last = offsets[nonempty + 1] - 1
    used = counts - (-(-counts // VALUES_PER_VECTOR) - 1) * VALUES_PER_VECTOR  # entries in the last vector, 1..7
    slot = xp.arange(1, VECTOR_SLOTS)
    unused = slot[None, :] > used[:, None]
    padding = slots[last[:, None] * VECTOR_SLOTS + slot[None, :]]
    bad = xp.flatnonzero(((padding != 0) & unused).any(axis=1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"tile {int(nonempty[i])}'s last value vector holds {int(used[i])} entries; its other value "
                         f"slots must be 0")

