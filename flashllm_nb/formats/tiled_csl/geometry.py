"""The Tiled-CSL geometry every part of the format shares: the tile (and its grid, from :mod:`..tiled`, as
Tiled-Bitmap's), the vector size, the fields of a word and the swizzle of a position (the package docstring,
:mod:`flashllm_nb.formats.tiled_csl`, draws them).
"""

from __future__ import annotations

from typing import Any

from ..tiled import TILE_K, TILE_M, TILE_SIZE, tile_grid  # noqa: F401  (the grid both formats share)

VECTOR_WORDS = 4  # 4 uint32 words = one 16-byte load, the kernel's unit of reading ``words``

TILE_SHIFT = TILE_SIZE.bit_length() - 1  # 13: key >> 13 is the tile, key & 8191 the index inside it
MAGNITUDE = 0x7FFF  # value bits without the sign: 0 for +0.0 and -0.0, the two zeros, in fp16 and bf16 alike
NEGATIVE_ZERO = 0x8000


def swizzle(index: Any) -> Any:
    """Position field of the element at ``index = row * 64 + col`` of a tile: ``row * 64 + (col ^ ((row % 8) << 3))``.

    The map only flips bits 3..5 (the column's 16-byte chunk) with bits 6..8 (the row modulo 8), which it leaves
    alone, so it is its own inverse: ``swizzle(swizzle(i)) == i``. Works on Python ints and on NumPy/CuPy integer
    arrays.

    Examples
    --------
    >>> swizzle(1 * 64 + 2)  # row 1, column 2: chunk 0 moves to slot 1
    74
    >>> swizzle(74)
    66
    """
    return index ^ ((index >> 3) & 0x38)
