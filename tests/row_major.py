"""A Tiled-CSL matrix's words with each tile's entries in row-major order (Flash-LLM's encoder order, and this
library's file format version 1): the input ``from_raw(..., reorder=True)`` and ``load`` must re-lay out."""

from __future__ import annotations

import numpy as np


def row_major_words(A) -> tuple[np.ndarray, np.ndarray]:
    """(words, tile_offsets) of host matrix A with the entries of every tile in ascending (row, col) order."""
    words, vectors = [], [0]
    for t in range(A.n_tiles):
        tile_words = A.words[4 * A.tile_offsets[t] : 4 * A.tile_offsets[t + 1]]
        entries = tile_words[(tile_words & 0xFFFF) != 0]
        entries = entries[np.argsort(entries >> 16 ^ ((entries >> 19) & 0x38))]  # unswizzled: row * 64 + col
        words += list(entries) + [0] * (-len(entries) % 4)
        vectors.append(len(words) // 4)
    vectors.append(vectors[-1])
    return np.array(words, np.uint32), np.array(vectors, np.int32)
