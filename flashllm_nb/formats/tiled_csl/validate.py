"""The invariants of the Tiled-CSL format, checked by :meth:`TiledCSL.check_format <.matrix.TiledCSL.check_format>`:
:func:`check_arrays`, the cheap checks of the arrays and their tile offsets (O(n_tiles)), and :func:`check_words`,
the full scan of every word (O(nnz)) against the canonical layout. Every error names the first broken invariant
with its numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tiled import check_tile_arrays
from .decode import matrix_coordinates, word_tiles
from .geometry import NEGATIVE_ZERO, TILE_K, TILE_M, TILE_SHIFT, TILE_SIZE, VECTOR_WORDS, swizzle, tile_grid
from .layout import place_words


def check_arrays(words: Any, tile_offsets: Any, shape: tuple[int, int]) -> tuple[Any, np.ndarray]:
    """The O(n_tiles) checks (invariants 1-4 of :meth:`TiledCSL.check_format`); returns the array module and
    ``tile_offsets`` on the host as int64."""
    xp, offsets, capacity = check_tile_arrays(words, tile_offsets, shape)
    counts = np.diff(offsets)[: capacity.size]
    over = np.flatnonzero(counts > -(-capacity // VECTOR_WORDS))
    if over.size:
        t = int(over[0])
        tile_row, tile_col = divmod(t, tile_grid(shape)[1])
        rows, cols = min(TILE_M, shape[0] - TILE_M * tile_row), min(TILE_K, shape[1] - TILE_K * tile_col)
        raise ValueError(f"tile {t} has {counts[t]} vectors ({VECTOR_WORDS * counts[t]} words); its {rows} x {cols} "
                         f"part of the matrix holds at most {capacity[t]} entries, which need "
                         f"{-(-capacity[t] // VECTOR_WORDS)} vectors")
    return xp, offsets


def _where(i: int, tile: int, tile_offsets: np.ndarray) -> str:
    return f"word {i} (word {i - VECTOR_WORDS * int(tile_offsets[tile])} of tile {tile})"


def check_words(xp: Any, words: Any, tile_offsets: Any, offsets: np.ndarray, shape: tuple[int, int]) -> int:
    """The O(nnz) scan of :meth:`TiledCSL.check_format`; returns nnz. The cheap checks have passed; ``offsets`` is
    ``tile_offsets`` on the host."""
    n_tiles = offsets.size - 2
    tiles = word_tiles(xp, tile_offsets, words.size)

    def first(bad: Any) -> int | None:
        return int(xp.flatnonzero(bad)[0]) if bool(bad.any()) else None  # synchronize!

    values, positions = words & 0xFFFF, words >> 16
    i = first(positions >= TILE_SIZE)
    if i is not None:
        raise ValueError(f"{_where(i, int(tiles[i]), offsets)} has position {int(positions[i])}; "
                         f"positions in a {TILE_M} x {TILE_K} tile are < {TILE_SIZE}")
    i = first(values == NEGATIVE_ZERO)
    if i is not None:
        raise ValueError(f"{_where(i, int(tiles[i]), offsets)} holds -0.0 (value bits 0x8000); -0.0 is a zero, "
                         f"which Tiled-CSL does not store (TiledCSL.from_raw(..., reorder=True) drops it)")
    padding = values == 0
    i = first(padding[:-1] & ~padding[1:] & (tiles[:-1] == tiles[1:]))
    if i is not None:
        raise ValueError(f"{_where(i, int(tiles[i]), offsets)} is padding but the entry after it is in the same "
                         f"tile; padding goes only at the end of a tile")
    # Padding is a suffix now, so a tile has 4 or more padding words exactly when its last vector starts with one.
    nonempty = np.flatnonzero(np.diff(offsets[: n_tiles + 1]))
    last_vectors = VECTOR_WORDS * (offsets[nonempty + 1].astype(np.int64) - 1)
    j = first(padding[xp.asarray(last_vectors)])
    if j is not None:
        t = int(nonempty[j])
        n_pad = int(padding[VECTOR_WORDS * int(offsets[t]) : VECTOR_WORDS * int(offsets[t + 1])].sum())
        raise ValueError(f"tile {t} ends with {n_pad} padding words; at most {VECTOR_WORDS - 1} are needed to "
                         f"fill its last 16-byte vector")

    entries = xp.flatnonzero(~padding)
    entry_tiles, index = tiles[entries], swizzle(positions[entries])
    n_tile_cols = tile_grid(shape)[1]
    if shape[0] % TILE_M or shape[1] % TILE_K:  # only edge tiles can reach past the logical shape
        row, col = matrix_coordinates(entry_tiles, index, n_tile_cols)
        j = first((row >= shape[0]) | (col >= shape[1]))
        if j is not None:
            i = int(entries[j])
            raise ValueError(f"{_where(i, int(tiles[i]), offsets)} is at row {int(row[j])}, column {int(col[j])} of "
                             f"the matrix, outside its {shape[0]} x {shape[1]} shape")
    # Canonical layout: no position twice, every entry where place_words puts it and every padding word on the
    # position it gives (one matrix, one encoding).
    keys = entry_tiles.astype(np.int64) * TILE_SIZE + index.astype(np.int64)
    by_key = xp.argsort(keys, kind="stable")
    sorted_keys = keys[by_key]
    j = first(sorted_keys[1:] == sorted_keys[:-1])
    if j is not None:
        i, k = sorted(int(entries[by_key[j + q]]) for q in (0, 1))
        t, (row, col) = int(sorted_keys[j]) >> TILE_SHIFT, divmod(int(sorted_keys[j]) & (TILE_SIZE - 1), TILE_K)
        raise ValueError(f"tile {t} holds tile row {row}, column {col} (position {int(positions[i])}) twice, "
                         f"in words {i} and {k}")
    starts = xp.searchsorted(sorted_keys >> TILE_SHIFT, xp.arange(n_tiles + 1, dtype=np.int64))
    expected = place_words(xp, sorted_keys, words[entries[by_key]], starts, xp.asarray(offsets.astype(np.int32)),
                           words.size)
    i = first(expected != words)
    if i is not None:
        t, word = int(tiles[i]), int(words[i])

        def cell(word: int) -> str:
            row, col = divmod(int(swizzle(word >> 16)), TILE_K)
            return f"tile row {row}, column {col}"

        if word & 0xFFFF:
            raise ValueError(f"{_where(i, t, offsets)} holds {cell(word)} where the canonical layout has "
                             f"{cell(int(expected[i]))}: entries go in the format's bank-interleaved order "
                             f"(TiledCSL.from_raw(..., reorder=True) lays out entries given in any order)")
        key = t * TILE_SIZE + int(swizzle(word >> 16))
        k = int(xp.searchsorted(sorted_keys, xp.asarray([key]))[0])
        on_entry = k < sorted_keys.size and int(sorted_keys[k]) == key  # synchronize!
        why = (f", which holds an entry (word {int(entries[by_key[k]])}): a kernel that scatters padding, as "
               f"Flash-LLM's does, would erase it" if on_entry else "")
        raise ValueError(f"{_where(i, t, offsets)} is padding on {cell(word)}{why}; a tile's padding goes on its "
                         f"first positions without an entry in row-major order, here {cell(int(expected[i]))}")
    return int(entries.size)
