"""The invariants of the Tiled-Bitmap format, checked by :meth:`TiledBitmap.check_format
<.matrix.TiledBitmap.check_format>`: :func:`check_arrays`, the cheap checks of the arrays and their tile offsets
(O(n_tiles)), and :func:`check_tiles`, the full scan of every bitmap and value slot (O(size)). Every error names the
first broken invariant with its numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..._checks import check_ndim, invalid
from .._xp import array_module, to_host
from ..tiled_csl.geometry import MAGNITUDE, TILE_K, TILE_M, tile_grid
from .codec import BITMAP_VECTORS, VALUES_PER_VECTOR, VECTOR_SLOTS, bitmap_counts, tile_entries, tile_sizes


def check_arrays(words: Any, tile_offsets: Any, shape: tuple[int, int]) -> tuple[Any, np.ndarray]:
    """The O(n_tiles) checks (invariants 1-4 of :meth:`TiledBitmap.check_format`); returns the array module and
    ``tile_offsets`` on the host as int64."""
    xp = array_module(words, "words")
    if array_module(tile_offsets, "tile_offsets") is not xp:
        raise invalid("array module", "tile_offsets", f"that of words ({xp.__name__})",
                      type(tile_offsets).__module__, TypeError)
    for array, name, dtype in ((words, "words", np.uint32), (tile_offsets, "tile_offsets", np.int32)):
        check_ndim(array, name, 1)
        if array.dtype != dtype:
            raise invalid("dtype", name, np.dtype(dtype), array.dtype, TypeError)
    n_tile_rows, n_tile_cols = tile_grid(shape)
    n_tiles = n_tile_rows * n_tile_cols
    if tile_offsets.size != n_tiles + 2:
        raise ValueError(f"tile_offsets has {tile_offsets.size} entries; expected n_tiles + 2 = {n_tiles + 2} "
                         f"for shape {shape[0]} x {shape[1]} ({n_tile_rows} x {n_tile_cols} tiles)")
    offsets = to_host(tile_offsets).astype(np.int64)  # synchronize! (n_tiles + 2 integers)
    if offsets[0] != 0:
        raise ValueError(f"tile_offsets[0] is {offsets[0]}; expected 0")
    sizes = np.diff(offsets)
    if (sizes < 0).any():
        t = int(np.flatnonzero(sizes < 0)[0])
        raise ValueError(f"tile_offsets decrease: tile_offsets[{t + 1}] = {offsets[t + 1]} < "
                         f"tile_offsets[{t}] = {offsets[t]}")
    if sizes[-1] != 0:
        raise ValueError(f"tile_offsets[-1] is {offsets[-1]}; expected a repeat of tile_offsets[-2] = {offsets[-2]}")
    if words.size != 4 * offsets[-1]:
        raise ValueError(f"words has {words.size} entries; expected 4 * tile_offsets[-1] = {4 * offsets[-1]}")
    tile_rows = np.minimum(TILE_M, shape[0] - TILE_M * np.arange(n_tile_rows))
    tile_cols = np.minimum(TILE_K, shape[1] - TILE_K * np.arange(n_tile_cols))
    capacity = np.outer(tile_rows, tile_cols).reshape(-1)
    sizes = sizes[:n_tiles]
    most = tile_sizes(np, capacity)
    bad = np.flatnonzero(((sizes > 0) & (sizes <= BITMAP_VECTORS)) | (sizes > most))
    if bad.size:
        t = int(bad[0])
        raise ValueError(f"tile {t} has {sizes[t]} vectors; expected 0 (no entries) or the {BITMAP_VECTORS} of its "
                         f"bitmap and 1 to {most[t] - BITMAP_VECTORS} value vectors (its {tile_rows[t // n_tile_cols]}"
                         f" x {tile_cols[t % n_tile_cols]} part of the matrix holds at most {capacity[t]} entries)")
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

