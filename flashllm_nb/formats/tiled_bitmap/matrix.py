"""The :class:`TiledBitmap` class: an encoded matrix with its constructors, checks, properties and conversions. The
layout itself is :mod:`.codec`'s, its invariants :mod:`.validate`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._xp import array_module
from ..tiled import TiledMatrix
from ..tiled_csl.geometry import tile_grid
from .codec import BITMAP_VECTORS, bitmap_counts, dense_bits, encode_dense
from .validate import check_arrays, check_tiles


class TiledBitmap(TiledMatrix):
    """An M x K fp16/bf16 matrix in Tiled-Bitmap, on the host (NumPy) or a CUDA device (CuPy).

    Build one with :meth:`from_dense` or :meth:`from_raw`; ``TiledBitmap(words, tile_offsets, shape, dtype)`` wraps
    the arrays without copying and runs only the cheap checks of :meth:`check_format`. The package docstring
    (:mod:`flashllm_nb.formats.tiled_bitmap`) describes the layout; the storage, the shape and tile-grid properties
    and the host and device copies are :class:`~flashllm_nb.formats.tiled.TiledMatrix`'s.
    """

    sparse_format = "bitmap"

    @classmethod
    def from_dense(cls, W: Any, dtype: Any = None) -> "TiledBitmap":
        """Encode a dense fp16/bf16 matrix; every element that is not a zero (+0.0 or -0.0) is stored.

        ``W``: an (M, K) float16 or bfloat16 array (NumPy gives a host matrix; CuPy or a CUDA tensor a device one,
        encoded on the GPU), or uint16 bit patterns with ``dtype`` naming their type. Nothing is ever cast.

        Examples
        --------
        >>> W = np.zeros((3, 70), np.float16); W[1, 2] = 1.0; W[0, 65] = -2.0
        >>> A = TiledBitmap.from_dense(W)
        >>> A.nnz, A.tile_offsets.tolist(), bool((A.to_dense() == W).all())
        (2, [0, 65, 130, 130], True)
        """
        return cls._encoded(encode_dense, W, dtype)

    @classmethod
    def from_raw(cls, words: Any, tile_offsets: Any, shape: tuple[int, int], dtype: Any) -> "TiledBitmap":
        """Wrap existing arrays (both NumPy or both CuPy, not copied) after checking every invariant of
        :meth:`check_format`."""
        self = cls(words, tile_offsets, shape, dtype)
        self.check_format(full_check=True)
        return self

    def check_format(self, full_check: bool = False) -> None:
        """Check the invariants of the format; raise TypeError/ValueError naming the first one broken.

        Always (O(n_tiles)):

        1-3. the arrays and their offsets as both tiled formats have them
             (:func:`~flashllm_nb.formats.tiled.check_tile_arrays`: types, ``n_tiles + 2`` offsets from 0, never
             decreasing, the last repeated, 4 words a vector);
        4. every tile has 0 vectors, or its 64 bitmap vectors and from 1 to as many value vectors as its part of
           the logical shape can fill.

        With ``full_check`` (O(size); sets ``nnz``):

        5. a non-empty tile's value vectors are exactly those its bitmap's entries need (``ceil(entries / 7)``);
        6. no bitmap marks an element outside the logical shape (edge tiles);
        7. no entry's value is a zero (+0.0 or -0.0): zeros are not stored, and the kernel takes a zero slot for
           the end of its tile;
        8. slot 0 of every value vector is the position (``row * 64 + col``) of the vector's first entry;
        9. the slots after a tile's last entry are 0.
        """
        xp, offsets = check_arrays(self._words, self._tile_offsets, self._shape)
        if full_check:
            self._nnz = check_tiles(xp, self._words, offsets, self._shape)

    @property
    def nnz(self) -> int:
        """Stored entries: the set bits of the bitmaps (counted, not checked against the values)."""
        if self._nnz is None:
            xp = array_module(self._words)
            _, counts = bitmap_counts(xp, self._words, self._tile_offsets.astype(np.int64))
            self._nnz = int(counts.sum())  # synchronize!
        return self._nnz

    @property
    def mean_tile_vectors(self) -> int:
        """Value vectors per tile (bitmaps not counted), rounded up: what the kernel holds in registers per tile on
        average (~235 at 80 % sparsity). No synchronisation; counts an empty tile's missing bitmap as if it had
        one."""
        n_tiles = self.n_tiles
        return max(0, -(-self._words.size // (4 * n_tiles)) - BITMAP_VECTORS) if n_tiles else 0

    def to_dense(self, bits: bool = False) -> Any:
        """The dense (M, K) matrix in the array module of the storage (uint16 bit patterns with ``bits``); a
        bfloat16 matrix on the device only as bits (CuPy has no bfloat16)."""
        xp = self._dense_module(bits)
        offsets = self._tile_offsets.astype(np.int64)
        dense = dense_bits(xp, self._words, offsets, self._shape, tile_grid(self._shape))
        return dense if bits else dense.view(self._dtype)
