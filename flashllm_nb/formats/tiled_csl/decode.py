"""The Tiled-CSL decoder: which tile each word belongs to, and the entries (tile, in-tile index, value bits) with
their matrix coordinates, from which :class:`~.matrix.TiledCSL` builds dense and SciPy matrices.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .geometry import MAGNITUDE, TILE_K, TILE_M, TILE_SIZE, VECTOR_WORDS, swizzle, tile_grid


def word_tiles(xp: Any, tile_offsets: Any, n_words: int) -> Any:
    """The tile (int32) of every word: a running sum of +steps placed at the first word of each non-empty tile."""
    n_tiles = tile_offsets.size - 2
    nonempty = xp.flatnonzero(tile_offsets[1 : n_tiles + 1] - tile_offsets[:n_tiles]).astype(np.int32)
    step = xp.zeros(n_words, np.int32)
    step[VECTOR_WORDS * tile_offsets[nonempty].astype(np.int64)] = xp.diff(nonempty, prepend=np.int32(0))
    return xp.cumsum(step, dtype=np.int32)


def entries(xp: Any, words: Any, tile_offsets: Any) -> tuple[Any, Any, Any]:
    """(tile, row * 64 + col inside the tile, uint16 value bits) of every entry: padding (value bits 0) writes
    nothing, and neither does a -0.0 word (refused by the full check, dropped by ``from_raw(..., reorder=True)``)."""
    values = (words & 0xFFFF).astype(np.uint16)
    keep = xp.flatnonzero((values & MAGNITUDE) != 0)  # a bool mask: see encode._is_entry
    tiles = word_tiles(xp, tile_offsets, words.size)[keep]
    return tiles, swizzle(words[keep] >> 16), values[keep]


def matrix_coordinates(tiles: Any, index: Any, n_tile_cols: int) -> tuple[Any, Any]:
    """(row, column) in the matrix, int64, of the in-tile indices ``index`` (row * 64 + col) of tiles ``tiles``."""
    rows = (tiles // n_tile_cols).astype(np.int64) * TILE_M + (index >> 6)
    cols = (tiles % n_tile_cols).astype(np.int64) * TILE_K + (index & (TILE_K - 1))
    return rows, cols


def dense_bits(xp: Any, words: Any, tile_offsets: Any, shape: tuple[int, int]) -> Any:
    """The dense (M, K) uint16 bit matrix of ``words`` and ``tile_offsets`` (C-contiguous, in their module)."""
    n_tile_rows, n_tile_cols = tile_grid(shape)
    tiles, index, values = entries(xp, words, tile_offsets)
    flat = xp.zeros(n_tile_rows * n_tile_cols * TILE_SIZE, np.uint16)
    flat[tiles.astype(np.int64) * TILE_SIZE + index] = values
    dense = flat.reshape(n_tile_rows, n_tile_cols, TILE_M, TILE_K).transpose(0, 2, 1, 3)
    return xp.ascontiguousarray(dense.reshape(n_tile_rows * TILE_M, n_tile_cols * TILE_K)[: shape[0], : shape[1]])
