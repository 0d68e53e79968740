"""Tile rows as units, in either format (Tiled-CSL or Tiled-Bitmap): several matrices of one width stacked into one
(:func:`stack_tile_rows`), and a run of tile rows seen as a matrix of its own (:func:`tile_row_block`).

A tile's words do not depend on where its tile row sits or on the matrix's logical height: positions (Tiled-CSL's
words, Tiled-Bitmap's bitmaps and first positions) count from the tile's corner, and a Tiled-CSL tile's padding sits
on its first free positions, counted over all 8192 whether inside the logical shape or not. So the tile rows of
matrices of one width, one after the other, are the encoding of the matrices stacked, each but the last padded with
zero rows to a multiple of ``TILE_M``; and a run of tile rows is the encoding of those rows. Both operations only
move tile offsets: no word is decoded or encoded again.

This is how sibling projections that read one input (q, k and v) become one product: one launch streams all their
words, and each sibling's rows are still a matrix of its own.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .._checks import check_int_in_range, invalid
from ._xp import array_module, to_host
from .tiled_bitmap import BITMAP_VECTORS, TiledBitmap
from .tiled_csl import TILE_M, TiledCSL
from .tiled_csl.geometry import VECTOR_WORDS, tile_grid

_MAX_VECTORS = int(np.iinfo(np.int32).max)  # tile_offsets are int32
_FORMATS = (TiledCSL, TiledBitmap)


def padded_rows(rows: int) -> int:
    """``rows`` rounded up to whole tile rows."""
    return -(-rows // TILE_M) * TILE_M


def stack_tile_rows(matrices: Sequence[Any]) -> tuple[Any, list[int]]:
    """One matrix holding ``matrices`` (all of one format, width, dtype and array module: TiledCSL or TiledBitmap)
    one below the other, each but the last padded with zero rows to a multiple of ``TILE_M``; and the first row of
    each in it. New arrays; the inputs are left as they are."""
    if isinstance(matrices, _FORMATS) or not isinstance(matrices, Sequence):
        raise invalid("type", "matrices", "a sequence of TiledCSL or TiledBitmap", type(matrices).__name__,
                      TypeError)
    if not matrices:
        raise invalid("length", "matrices", "at least one matrix", 0)
    fmt = type(matrices[0])
    for i, m in enumerate(matrices):
        if not isinstance(m, _FORMATS if i == 0 else fmt):
            expected = "a TiledCSL or TiledBitmap" if i == 0 else f"a {fmt.__name__} (matrices[0]'s format)"
            raise invalid("type", f"matrices[{i}]", expected, type(m).__name__, TypeError)
    first = matrices[0]
    xp = array_module(first.words, "matrices[0].words")
    for i, m in enumerate(matrices[1:], 1):
        if m.shape[1] != first.shape[1]:
            raise invalid("width", f"matrices[{i}]", f"{first.shape[1]} columns (matrices[0]'s)", m.shape[1])
        if m.dtype != first.dtype:
            raise invalid("dtype", f"matrices[{i}]", f"{first.dtype} (matrices[0]'s)", m.dtype, TypeError)
        if array_module(m.words, f"matrices[{i}].words") is not xp:
            raise invalid("array module", f"matrices[{i}]", f"that of matrices[0] ({xp.__name__})",
                          type(m.words).__module__, TypeError)
    starts, row = [], 0
    for m in matrices:
        starts.append(row)
        row += padded_rows(m.shape[0])
    shape = (starts[-1] + matrices[-1].shape[0], first.shape[1])
    if shape[1] == 0:  # no columns, no tiles: the empty matrix of that height
        return fmt._from_parts(xp.zeros(0, np.uint32), xp.zeros(2, np.int32), shape, first.dtype, 0), starts
    vectors = [m.words.size // VECTOR_WORDS for m in matrices]
    if sum(vectors) > _MAX_VECTORS:
        raise ValueError(f"int32 tile_offsets address at most {_MAX_VECTORS} 16-byte vectors; the stacked matrices "
                         f"hold {sum(vectors)}")
    # Each matrix's tile offsets but its last two (the end, repeated), moved past the matrices above it; then the
    # end, repeated. A matrix of no rows has no tiles: it adds nothing but its start.
    parts, base = [], 0
    for m, n in zip(matrices, vectors):
        parts.append(m.tile_offsets[: m.n_tiles] + np.int32(base))
        base += n
    end = xp.full(2, base, np.int32)
    tile_offsets = xp.concatenate([*parts, end]).astype(np.int32, copy=False)
    words = xp.concatenate([m.words for m in matrices])
    nnz = None if any(m._nnz is None for m in matrices) else sum(m._nnz for m in matrices)
    return fmt._from_parts(words, tile_offsets, shape, first.dtype, nnz), starts


def tile_row_span(matrix: Any, first_row: int, rows: int) -> tuple[int, int]:
    """The 16-byte vectors ``begin .. end - 1`` of ``matrix.words`` that hold rows ``first_row .. first_row + rows
    - 1`` (``first_row`` a multiple of ``TILE_M``): those of the tile rows they cover. Reads two tile offsets back
    from the device."""
    if not isinstance(matrix, _FORMATS):
        raise invalid("type", "matrix", "a TiledCSL or TiledBitmap", type(matrix).__name__, TypeError)
    height = matrix.shape[0]
    check_int_in_range(first_row, "first_row", 0, height)
    if first_row % TILE_M:
        raise invalid("value", "first_row", f"a multiple of {TILE_M} (a tile row's first row)", first_row)
    check_int_in_range(rows, "rows", 0, height - first_row)
    n_tile_cols = matrix.n_tile_cols
    first_tile = first_row // TILE_M * n_tile_cols
    stop_tile = first_tile + -(-rows // TILE_M) * n_tile_cols
    if first_tile == stop_tile:
        return 0, 0
    begin, end = (int(v) for v in to_host(matrix.tile_offsets[[first_tile, stop_tile]]))  # synchronize!
    return begin, end


def tile_row_block(matrix: Any, first_row: int, rows: int) -> Any:
    """Rows ``first_row .. first_row + rows - 1`` of ``matrix`` as a matrix of its own, of its format:
    ``first_row`` a multiple of ``TILE_M``. Its words are a view of ``matrix``'s (no copy), its tile offsets new
    (n_tiles + 2 integers). Where ``rows`` ends inside a tile row, the rows of that tile row below it must hold no
    entry (a stacked matrix's padding): checked, a ValueError otherwise."""
    begin, end = tile_row_span(matrix, first_row, rows)
    fmt = type(matrix)
    shape = (rows, matrix.shape[1])
    xp = array_module(matrix.words, "matrix.words")
    n_tile_rows, n_tile_cols = tile_grid(shape)
    if n_tile_rows * n_tile_cols == 0:
        return fmt._from_parts(xp.zeros(0, np.uint32), xp.zeros(2, np.int32), shape, matrix.dtype, 0)
    first_tile = first_row // TILE_M * n_tile_cols
    stop_tile = first_tile + n_tile_rows * n_tile_cols
    words = matrix.words[VECTOR_WORDS * begin : VECTOR_WORDS * end]
    tile_offsets = xp.empty(n_tile_rows * n_tile_cols + 2, np.int32)
    tile_offsets[:-1] = matrix.tile_offsets[first_tile : stop_tile + 1] - np.int32(begin)
    tile_offsets[-1] = end - begin
    if rows % TILE_M:
        check_below = _check_no_bit_below if fmt is TiledBitmap else _check_no_entry_below
        check_below(xp, matrix.words, matrix.tile_offsets, stop_tile - n_tile_cols, stop_tile, rows % TILE_M)
    return fmt._from_parts(words, tile_offsets, shape, matrix.dtype, None)


def _check_no_bit_below(xp: Any, words: Any, tile_offsets: Any, first_tile: int, stop_tile: int, row: int) -> None:
    """Tiled-Bitmap's ``_check_no_entry_below``: no bitmap of the tile row's non-empty tiles marks a row >= ``row``
    (bitmap words ``2 * row`` on)."""
    offsets = to_host(tile_offsets[first_tile : stop_tile + 1]).astype(np.int64)  # synchronize!
    for t in np.flatnonzero(np.diff(offsets) > 0):
        first_word = VECTOR_WORDS * int(offsets[t])
        below = words[first_word + 2 * row : first_word + VECTOR_WORDS * BITMAP_VECTORS]
        if bool(below.any()):  # synchronize!
            i = int(xp.flatnonzero(below)[0])
            raise ValueError(f"the block's last tile row is cut at row {row} of {TILE_M}, but tile "
                             f"{first_tile + int(t)}'s bitmap marks an entry in tile row {row + i // 2}: a block "
                             f"ends inside a tile row only where the rows below it hold nothing")


def _check_no_entry_below(xp: Any, words: Any, tile_offsets: Any, first_tile: int, stop_tile: int, row: int) -> None:
    """Raise unless tiles ``first_tile .. stop_tile - 1`` (one tile row) hold no entry in tile rows >= ``row``
    (a position's tile row is its bits 6 and up: the swizzle moves only columns)."""
    begin, end = (int(v) for v in to_host(tile_offsets[[first_tile, stop_tile]]))  # synchronize!
    last = words[VECTOR_WORDS * begin : VECTOR_WORDS * end]
    below = ((last & 0xFFFF) != 0) & ((last >> 22) >= row)  # an entry (not padding) at tile row >= row
    if bool(below.any()):  # synchronize!
        i = int(xp.flatnonzero(below)[0])
        raise ValueError(f"the block's last tile row is cut at row {row} of {TILE_M}, but its word "
                         f"{VECTOR_WORDS * begin + i} holds an entry at tile row {int(last[i]) >> 22}: a block "
                         f"ends inside a tile row only where the rows below it hold nothing")
