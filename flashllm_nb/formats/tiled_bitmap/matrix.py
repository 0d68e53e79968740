"""The :class:`TiledBitmap` class: an encoded matrix with its constructors, checks, properties and conversions. The
layout itself is :mod:`.codec`'s, its invariants :mod:`.validate`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..._checks import check_ndim
from .._xp import array_module, as_bits, to_device, to_host, value_dtype
from ..tiled_csl.geometry import TILE_K, TILE_M, tile_grid
from ..tiled_csl.matrix import _check_shape, _human_bytes
from .codec import BITMAP_VECTORS, bitmap_counts, dense_bits, encode_dense
from .validate import check_arrays, check_tiles


class TiledBitmap:
    """An M x K fp16/bf16 matrix in Tiled-Bitmap, on the host (NumPy) or a CUDA device (CuPy).

    Build one with :meth:`from_dense` or :meth:`from_raw`; ``TiledBitmap(words, tile_offsets, shape, dtype)`` wraps
    the arrays without copying and runs only the cheap checks of :meth:`check_format`. The package docstring
    (:mod:`flashllm_nb.formats.tiled_bitmap`) describes the layout.
    """

    def __init__(self, words: Any, tile_offsets: Any, shape: tuple[int, int], dtype: Any):
        self._words = words
        self._tile_offsets = tile_offsets
        self._shape = _check_shape(shape)
        self._dtype = value_dtype(dtype)
        self._nnz: int | None = None
        self.check_format(full_check=False)

    @classmethod
    def _from_parts(cls, words: Any, tile_offsets: Any, shape: tuple[int, int], dtype: np.dtype, nnz: int | None):
        """Wrap arrays that this library produced (encoder, device copies): no checks."""
        self = object.__new__(cls)
        self._words, self._tile_offsets, self._shape, self._dtype, self._nnz = words, tile_offsets, shape, dtype, nnz
        return self

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
        bits, dtype = as_bits(W, "W", dtype)
        check_ndim(bits, "W", 2)
        xp = array_module(bits)
        shape = (int(bits.shape[0]), int(bits.shape[1]))
        words, tile_offsets, nnz = encode_dense(xp, bits, tile_grid(shape))
        return cls._from_parts(words, tile_offsets, shape, dtype, nnz)

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

        1. ``words`` is a 1-D uint32 array and ``tile_offsets`` a 1-D int32 array of the same module;
        2. ``len(tile_offsets) == n_tiles + 2``, ``tile_offsets[0] == 0``, the offsets never decrease, and the
           last one repeats the one before it;
        3. ``len(words) == 4 * tile_offsets[-1]``;
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
    def shape(self) -> tuple[int, int]:
        """The logical (M, K)."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        """``np.dtype(np.float16)`` or ``np.dtype(ml_dtypes.bfloat16)``, also for device storage."""
        return self._dtype

    @property
    def words(self) -> Any:
        """uint32: each non-empty tile's bitmap and value vectors, tile after tile (NumPy or CuPy)."""
        return self._words

    @property
    def tile_offsets(self) -> Any:
        """int32, n_tiles + 2 entries, in 16-byte vectors (NumPy or CuPy, as ``words``)."""
        return self._tile_offsets

    @property
    def nnz(self) -> int:
        """Stored entries: the set bits of the bitmaps (counted, not checked against the values)."""
        if self._nnz is None:
            xp = array_module(self._words)
            _, counts = bitmap_counts(xp, self._words, self._tile_offsets.astype(np.int64))
            self._nnz = int(counts.sum())  # synchronize!
        return self._nnz

    @property
    def nbytes(self) -> int:
        """Bytes of ``words`` and ``tile_offsets``: what the kernel reads."""
        return int(self._words.nbytes + self._tile_offsets.nbytes)

    @property
    def sparsity(self) -> float:
        """``1 - nnz / (M * K)``; 1.0 for an empty matrix."""
        size = self._shape[0] * self._shape[1]
        return 1.0 - self.nnz / size if size else 1.0

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(128, 64)."""
        return TILE_M, TILE_K

    @property
    def n_tile_rows(self) -> int:
        """ceil(M / 128)."""
        return tile_grid(self._shape)[0]

    @property
    def n_tile_cols(self) -> int:
        """ceil(K / 64)."""
        return tile_grid(self._shape)[1]

    @property
    def n_tiles(self) -> int:
        """n_tile_rows * n_tile_cols; ``tile_offsets`` has n_tiles + 2 entries."""
        return self.n_tile_rows * self.n_tile_cols

    @property
    def mean_tile_vectors(self) -> int:
        """Value vectors per tile (bitmaps not counted), rounded up: what the kernel holds in registers per tile on
        average (~235 at 80 % sparsity). No synchronisation; counts an empty tile's missing bitmap as if it had
        one."""
        n_tiles = self.n_tiles
        return max(0, -(-self._words.size // (4 * n_tiles)) - BITMAP_VECTORS) if n_tiles else 0

    @property
    def on_device(self) -> bool:
        """True when the arrays are CuPy arrays."""
        return not isinstance(self._words, np.ndarray)

    def to_dense(self, bits: bool = False) -> Any:
        """The dense (M, K) matrix in the array module of the storage (uint16 bit patterns with ``bits``); a
        bfloat16 matrix on the device only as bits (CuPy has no bfloat16)."""
        xp = array_module(self._words)
        if not bits and xp is not np and self._dtype != np.float16:
            raise TypeError("CuPy has no bfloat16: use to_dense(bits=True) for the uint16 bit patterns, "
                            "or to_host().to_dense()")
        offsets = self._tile_offsets.astype(np.int64)
        dense = dense_bits(xp, self._words, offsets, self._shape, tile_grid(self._shape))
        return dense if bits else dense.view(self._dtype)

    def to_device(self) -> "TiledBitmap":
        """A copy with CuPy arrays (``self`` when already there, or under the simulator, whose device reads host
        memory)."""
        from flashllm_nb import _runtime

        if self.on_device or _runtime.simulator_enabled():
            return self
        _runtime.require_gpu("TiledBitmap.to_device()")
        return TiledBitmap._from_parts(to_device(self._words), to_device(self._tile_offsets), self._shape,
                                       self._dtype, self._nnz)

    def to_host(self) -> "TiledBitmap":
        """A copy with NumPy arrays (``self`` when already on the host)."""
        if not self.on_device:
            return self
        return TiledBitmap._from_parts(to_host(self._words), to_host(self._tile_offsets), self._shape, self._dtype,
                                       self._nnz)

    def copy(self) -> "TiledBitmap":
        """A copy with arrays of its own, in the same module."""
        return TiledBitmap._from_parts(self._words.copy(), self._tile_offsets.copy(), self._shape, self._dtype,
                                       self._nnz)

    def __repr__(self) -> str:
        return (f"<TiledBitmap {self._shape[0]}x{self._shape[1]} {self._dtype}, nnz={self.nnz} "
                f"({100 * self.sparsity:.1f}% sparse), {_human_bytes(self.nbytes)}, "
                f"{'device' if self.on_device else 'host'}>")
