"""The Tiled-CSL encoders: from a dense bit matrix, from SciPy COO entries, and from words in any order (Flash-LLM's
row-major files). Each gathers the entries as ascending keys ``tile * 8192 + row * 64 + col`` and hands them to
:func:`pack`, which counts the tiles' vectors and has :mod:`.layout` place the words.

All but :func:`encode_scipy` (host only) are written once over an array module ``xp`` (numpy or cupy): the same
lines are the CPU and the GPU encoder.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from ..._checks import invalid
from ..tiled import tile_major
from .decode import entries
from .geometry import MAGNITUDE, TILE_K, TILE_M, TILE_SIZE, VECTOR_WORDS, tile_grid
from .layout import place_words

_HOST_BLOCK = 1 << 18  # elements per block of the host's entry mask: 512 KiB of uint16, within a core's L2 cache
_MAX_VECTORS = int(np.iinfo(np.int32).max)  # tile_offsets are int32


def encode_dense(xp: Any, bits: Any, grid: tuple[int, int]) -> tuple[Any, Any, int]:
    """Words, tile offsets and nnz of the (M, K) uint16 bit matrix ``bits``."""
    n_tile_rows, n_tile_cols = grid
    tiled = tile_major(xp, bits, grid).reshape(-1)  # the flat index is the key: nonzero() needs no sort
    keys = xp.flatnonzero(_is_entry(xp, tiled))
    return pack(xp, keys, tiled[keys], n_tile_rows * n_tile_cols)


def _is_entry(xp: Any, bits: Any) -> Any:
    """Bool mask of the 1-D uint16 ``bits`` that are entries: neither +0.0 nor -0.0 (the sign bit masked off).

    A bool mask, because NumPy's nonzero is several times faster on bool than on uint16. On the host it is built in
    blocks that stay in the CPU's cache: masking the whole matrix at once writes and reads back a temporary as large
    as the matrix, which costs about a third of the nonzero itself."""
    if xp is not np:
        return (bits & MAGNITUDE) != 0
    entry = np.empty(bits.size, bool)
    for start in range(0, bits.size, _HOST_BLOCK):
        np.not_equal(bits[start : start + _HOST_BLOCK] & MAGNITUDE, 0, out=entry[start : start + _HOST_BLOCK])
    return entry


def pack(xp: Any, keys: Any, values: Any, n_tiles: int) -> tuple[Any, Any, int]:
    """Lay out entries given by ascending ``keys = tile * 8192 + row * 64 + col`` and their uint16 value bits."""
    # Entries before each tile boundary. The keys are sorted, so n_tiles + 1 binary searches replace a bincount
    # pass over all nnz keys.
    starts = xp.searchsorted(keys, xp.arange(n_tiles + 1, dtype=keys.dtype) * TILE_SIZE)
    counts = starts[1:] - starts[:-1]
    vectors = (counts + (VECTOR_WORDS - 1)) // VECTOR_WORDS
    ends = xp.cumsum(vectors)
    total = int(ends[-1]) if n_tiles else 0  # synchronize!
    if total > _MAX_VECTORS:
        raise ValueError(
            f"Tiled-CSL's int32 tile_offsets address at most {_MAX_VECTORS} 16-byte vectors; this matrix needs {total}"
        )
    tile_offsets = xp.zeros(n_tiles + 2, np.int32)
    tile_offsets[1:-1] = ends
    tile_offsets[-1] = total

    # The words, in place in one uint32 buffer (the keys are int64: touch them once). Truncating a key to 32 bits
    # keeps its low 13 bits, the index inside the tile.
    packed = keys.astype(np.uint32)
    packed &= TILE_SIZE - 1
    packed ^= (packed >> 3) & 0x38  # swizzle(), in place
    packed <<= 16
    packed |= values

    words = place_words(xp, keys, packed, starts, tile_offsets, VECTOR_WORDS * total)
    return words, tile_offsets, int(keys.size)


def encode_scipy(S: Any, dtype: np.dtype) -> tuple[Any, Any, tuple[int, int], int]:
    """Words, tile offsets, shape and nnz of the 2-D real SciPy sparse ``S`` rounded to ``dtype``, on the host.

    Duplicates are summed in ``S``'s own type before rounding; entries that round to a zero are dropped; a finite
    value that rounds to +-Inf raises a ValueError."""
    coo = S.tocoo(copy=True)
    coo.sum_duplicates()
    with np.errstate(over="ignore"):
        cast = coo.data.astype(dtype)
    overflow = np.flatnonzero(np.isfinite(coo.data) & ~np.isfinite(cast.astype(np.float32)))
    if overflow.size:
        i = overflow[0]
        raise invalid("value", "S", f"values that fit {dtype} (|x| <= {float(ml_dtypes.finfo(dtype).max)})",
                      f"{coo.data[i]} at ({coo.row[i]}, {coo.col[i]}) and {overflow.size - 1} more")
    bits = cast.view(np.uint16)
    keep = (bits & MAGNITUDE) != 0  # drop +0.0 and -0.0
    rows, cols, bits = coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), bits[keep]
    shape = (int(S.shape[0]), int(S.shape[1]))
    n_tile_rows, n_tile_cols = tile_grid(shape)
    keys = ((rows // TILE_M) * n_tile_cols + cols // TILE_K) * TILE_SIZE + (rows % TILE_M) * TILE_K + cols % TILE_K
    order = np.argsort(keys)
    words, tile_offsets, nnz = pack(np, keys[order], bits[order], n_tile_rows * n_tile_cols)
    return words, tile_offsets, shape, nnz


def reorder_words(xp: Any, words: Any, tile_offsets: Any, n_tiles: int) -> tuple[Any, Any]:
    """New words and tile offsets holding the entries of ``words`` (each tile's in any order, padding anywhere) in
    the canonical layout. Padding and -0.0 words are dropped; a position outside the tile raises a ValueError."""
    positions = words >> 16
    bad = xp.flatnonzero(((words & MAGNITUDE) != 0) & (positions >= TILE_SIZE))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"word {i} has position {int(positions[i])}; positions in a {TILE_M} x {TILE_K} "
                         f"tile are < {TILE_SIZE}")
    tiles, index, values = entries(xp, words, tile_offsets)
    keys = tiles.astype(np.int64) * TILE_SIZE + index.astype(np.int64)
    by_key = xp.argsort(keys, kind="stable")
    words, tile_offsets, _ = pack(xp, keys[by_key], values[by_key], n_tiles)
    return words, tile_offsets
