"""Tiled-Bitmap: a bitmap per 128 x 64 tile and the tile's values packed, for fewer bytes than Tiled-CSL.

Tiled-CSL moves 4 bytes per stored entry (the value and its position). Here a tile's positions are one bit per
element, and the values travel alone, 7 to a 16-byte vector::

    W, M x K, cut into 128 x 64 tiles numbered row-major over the tile grid, as Tiled-CSL's

    words          | t0: bitmap (64 vectors), value vectors | (t1 empty) | t2: bitmap, value vectors | ...
    tile_offsets   [0, end t0, end t1, ..., end last, end last]            (int32, in 16-byte vectors)

    bitmap         256 uint32: word 2 * row + h, bit b  =  element (row, 32 * h + b) is stored
    value vector   8 uint16 slots: slot 0 = the position row * 64 + col of the vector's first entry,
                   slots 1..7 = the bits of 7 entries, in row-major order; after a tile's last entry, 0

A tile's value vectors hold its entries in row-major order, so the kernel finds the place of each value by walking
the bitmap on from the vector's first position: no per-entry position is stored. Bytes per element at sparsity s:
``(1 - s) * 16 / 7 + 1 / 8``, against Tiled-CSL's ``(1 - s) * 4``: 0.582 against 0.8 at 80 % (27 % less), 0.354
against 0.4 at 90 %; equal at about 93 % and worse above.

Policies, as Tiled-CSL's (:mod:`flashllm_nb.formats.tiled_csl`): a zero is a zero whatever its sign (neither +0.0
nor -0.0 is stored; every other bit pattern is, NaN and Inf included); any M, K >= 0 (edge tiles are padded inside
the format, their bitmaps mark only elements inside the shape); an empty tile stores nothing, not even its bitmap;
one matrix has exactly one encoding.

:mod:`.codec` lays the format out and reads it back, :mod:`.validate` checks its invariants, :mod:`.matrix` is the
:class:`TiledBitmap` class.
"""

from __future__ import annotations

from .codec import BITMAP_VECTORS, VALUES_PER_VECTOR
from .matrix import TiledBitmap

__all__ = ["TiledBitmap", "BITMAP_VECTORS", "VALUES_PER_VECTOR"]
