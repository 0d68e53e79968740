"""What the two tiled formats (Tiled-CSL and Tiled-Bitmap) share.

Both cut an M x K matrix into 128 x 64 tiles, numbered row-major over the tile grid, and store it as one uint32
array ``words``, tile after tile, and the int32 ``tile_offsets`` that delimit each tile's 16-byte vectors in it
(``n_tiles + 2`` entries: 0, the running ends, the last end again), on the host (NumPy) or a CUDA device (CuPy).
What a tile's vectors hold is the format's own. This module holds the rest: the tile and its grid,
:class:`TiledMatrix`, the storage and
everything that does not look inside a tile; :func:`check_tile_arrays`, the checks of the arrays and their offsets
that do not either; :func:`tile_major`, a dense bit matrix laid out tile by tile for an encoder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import check_c_contiguous, check_int_in_range, check_ndim, invalid
from ._xp import array_module, as_bits, to_device, to_host, value_dtype
__all__ = ["TILE_M", "TILE_K", "TILE_SIZE", "tile_grid", "TiledMatrix", "check_tile_arrays", "tile_major"]

TILE_M = 128  # rows of a tile: one thread block's M extent in the kernel
TILE_K = 64  # columns of a tile: 64 fp16 = 128 bytes = eight 16-byte chunks, the unit of the swizzle
TILE_SIZE = TILE_M * TILE_K  # 8192 positions in a tile; fits Tiled-CSL's 16-bit position field


def tile_grid(shape: tuple[int, int]) -> tuple[int, int]:
    """(tile rows, tile columns) of an (M, K) matrix: (ceil(M / 128), ceil(K / 64))."""
    return -(-shape[0] // TILE_M), -(-shape[1] // TILE_K)


def _check_shape(shape: Any) -> tuple[int, int]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise invalid("value", "shape", "a pair (M, K)", shape)
    return check_int_in_range(shape[0], "shape[0]", 0), check_int_in_range(shape[1], "shape[1]", 0)


def _human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class TiledMatrix:
    """The storage of a tiled format and what does not depend on it: the arrays, the logical shape and value type,
    the tile grid, host and device copies. A format subclasses it with its constructors, ``check_format``, ``nnz``,
    ``mean_tile_vectors`` and ``to_dense``.

    ``Format(words, tile_offsets, shape, dtype)`` wraps the arrays without copying and runs only the cheap checks
    of ``check_format``. ``sparse_format`` is the name the kernel's configuration (``SpmmConfig.sparse``) and
    ``flashllm_nb.torch`` know the format by.
    """

    sparse_format: str

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
    def _encoded(cls, encode_dense, W: Any, dtype: Any):
        """``from_dense``: W's bits (checked: a 2-D fp16/bf16 array, or uint16 with ``dtype``) through the format's
        ``encode_dense(xp, bits, grid) -> (words, tile_offsets, nnz)``, on W's side (host or device)."""
        bits, dtype = as_bits(W, "W", dtype)
        check_ndim(bits, "W", 2)
        shape = (int(bits.shape[0]), int(bits.shape[1]))
        words, tile_offsets, nnz = encode_dense(array_module(bits), bits, tile_grid(shape))
        return cls._from_parts(words, tile_offsets, shape, dtype, nnz)

    def check_format(self, full_check: bool = False) -> None:
        raise NotImplementedError

    @property
    def nnz(self) -> int:
        raise NotImplementedError

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
        """uint32: the tiles' 16-byte vectors, tile after tile (NumPy or CuPy); what they hold is the format's."""
        return self._words

    @property
    def tile_offsets(self) -> Any:
        """int32, n_tiles + 2 entries, in 16-byte vectors (NumPy or CuPy, as ``words``)."""
        return self._tile_offsets

    @property
    def nbytes(self) -> int:
        """Bytes of ``words`` and ``tile_offsets``: what the kernel reads."""
        return int(self._words.nbytes + self._tile_offsets.nbytes)

    @property
    def sparsity(self) -> float:
        """``1 - nnz / (M * K)``; 1.0 for an empty matrix, which stores nothing."""
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
    def on_device(self) -> bool:
        """True when the arrays are CuPy arrays."""
        return not isinstance(self._words, np.ndarray)

    def _dense_module(self, bits: bool):
        """The array module of ``to_dense``'s result; a bfloat16 matrix on the device only as bits."""
        xp = array_module(self._words)
        if not bits and xp is not np and self._dtype != np.float16:
            raise TypeError("CuPy has no bfloat16: use to_dense(bits=True) for the uint16 bit patterns, "
                            "or to_host().to_dense()")
        return xp

    def to_device(self):
        """A copy with CuPy arrays (``self`` when already on the device).

        Under Numba's CUDA simulator (no GPU, or ``flashllm_nb.use_simulator()``) the simulated device reads host
        memory, so this returns the host matrix itself, which the kernels then take: code written for the GPU runs
        unchanged there. Without a GPU and with the simulator off it raises a RuntimeError that says so.
        """
        from flashllm_nb import _runtime

        if self.on_device or _runtime.simulator_enabled():
            return self
        _runtime.require_gpu(f"{type(self).__name__}.to_device()")
        return type(self)._from_parts(to_device(self._words), to_device(self._tile_offsets), self._shape,
                                      self._dtype, self._nnz)

    def copy(self):
        """A copy with arrays of its own, in the same module."""
        return type(self)._from_parts(self._words.copy(), self._tile_offsets.copy(), self._shape, self._dtype,
                                      self._nnz)

    def to_host(self):
        """A copy with NumPy arrays (``self`` when already on the host)."""
        if not self.on_device:
            return self
        return type(self)._from_parts(to_host(self._words), to_host(self._tile_offsets), self._shape, self._dtype,
                                      self._nnz)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self._shape[0]}x{self._shape[1]} {self._dtype}, nnz={self.nnz} "
                f"({100 * self.sparsity:.1f}% sparse), {_human_bytes(self.nbytes)}, "
                f"{'device' if self.on_device else 'host'}>")


def check_tile_arrays(words: Any, tile_offsets: Any, shape: tuple[int, int]) -> tuple[Any, np.ndarray, np.ndarray]:
    """The checks of the arrays that do not look inside a tile: ``words`` a 1-D uint32 array and ``tile_offsets`` a
    1-D int32 array of the same module, both contiguous, ``n_tiles + 2`` offsets from 0, never decreasing, the last
    repeated, and ``4 * tile_offsets[-1]`` words. Returns the array module, the offsets on the host as int64 and
    each tile's capacity (the elements of its part of the logical shape)."""
    xp = array_module(words, "words")
    if array_module(tile_offsets, "tile_offsets") is not xp:
        raise invalid("array module", "tile_offsets", f"that of words ({xp.__name__})",
                      type(tile_offsets).__module__, TypeError)
    for array, name, dtype in ((words, "words", np.uint32), (tile_offsets, "tile_offsets", np.int32)):
        check_ndim(array, name, 1)
        if array.dtype != dtype:
            raise invalid("dtype", name, np.dtype(dtype), array.dtype, TypeError)
        check_c_contiguous(array, name)  # the kernel reads them from their first element on, contiguously
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
    return xp, offsets, np.outer(tile_rows, tile_cols).reshape(-1)


def tile_major(xp: Any, bits: Any, grid: tuple[int, int]) -> Any:
    """The (M, K) bit matrix ``bits`` zero-padded to whole tiles and laid out tile by tile, (n_tile_rows,
    n_tile_cols, 128, 64) contiguous: the flat index of an element is then ``tile * 8192 + row * 64 + col``, so
    ``flatnonzero`` gives the entries grouped by tile and in row-major order inside each, without a sort."""
    n_tile_rows, n_tile_cols = grid
    rows, cols = n_tile_rows * TILE_M, n_tile_cols * TILE_K
    if bits.shape != (rows, cols):
        padded = xp.zeros((rows, cols), np.uint16)
        padded[: bits.shape[0], : bits.shape[1]] = bits
        bits = padded
    return xp.ascontiguousarray(bits.reshape(n_tile_rows, TILE_M, n_tile_cols, TILE_K).transpose(0, 2, 1, 3))
