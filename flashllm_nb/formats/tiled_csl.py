"""Tiled-CSL: Flash-LLM's storage format for an unstructured-sparse fp16/bf16 weight matrix.

The kernel streams a weight matrix W (M x K, row-major) one 128 x 64 tile at a time: it loads only the tile's
stored entries, scatters them into a zeroed tile in shared memory, and multiplies that dense tile on the Tensor
Cores ("load as sparse, compute as dense"). The format is laid out for exactly that::

    W, M x K, cut into 128 x 64 tiles numbered row-major over the tile grid (t = tile_row * n_tile_cols + tile_col)

             K ->   0       64      128
        M    0   +-------+-------+-------+
        |        |  t0   |  t1   |  t2   |
        v  128   +-------+-------+-------+
                 |  t3   |  t4   |  t5   |      edge tiles are zero-padded; the logical shape is kept
                 +-------+-------+-------+

    words         | t0: entries, pad | t1: entries, pad | (t2 empty) | t3: entries, pad | ...
    tile_offsets  [0, end t0, end t1, end t2, ..., end t5, end t5]       (int32, in 4-word vectors)

    one word (uint32):   bits 31..16 = position in the tile, bits 15..0 = the fp16/bf16 bit pattern
    position          =  row * 64 + (col ^ ((row % 8) << 3))

The swizzle: a 64-column row of fp16 is 128 bytes, eight 16-byte chunks of 8 columns. The kernel keeps chunk ``c``
of tile row ``r`` in slot ``c ^ (r % 8)``::

    chunk ->   0 1 2 3 4 5 6 7
    row 0      0 1 2 3 4 5 6 7      slot that each chunk lands in
    row 1      1 0 3 2 5 4 7 6
    row 2      2 3 0 1 6 7 4 5
    ...
    row 7      7 6 5 4 3 2 1 0

so the eight rows that one ``ldmatrix`` 8 x 8 read fetches (one chunk each, same chunk index) sit in eight
different slots of their 128-byte rows: all 32 banks, no conflict. Storing the swizzled position lets the kernel
scatter each entry straight to its conflict-free place.

Policies (each decided once, here):

- Stored entries: every element that is not a zero. +0.0 (0x0000) and -0.0 (0x8000) are both zeros: neither is
  stored or counted in ``nnz``, and both read back as +0.0, as in SciPy, ``torch.Tensor.to_sparse``, cuSPARSE and
  Flash-LLM's encoder (it stores ``fabs(x) > 0``, which drops NaN too). This matters for pruned weights: ``W * mask``
  leaves -0.0 wherever W < 0. Every other bit pattern is an entry and round-trips bit-exactly: NaN (payload
  included), +-Inf, subnormals.
- Order: bank-interleaved (see ``_layout_sorted``): inside a tile the entries are dealt round-robin over the 32
  shared-memory banks their positions fall in and stored so that each 32-lane store of the kernel's scatter is
  one such round, i.e. 32 different banks (4-way bank conflicts in row-major order, about 1.5-way in this one).
  Flash-LLM's encoder writes row-major order: ``TiledCSL.from_raw(..., reorder=True)`` takes that (or any) order
  and lays it out anew. Only the canonical order is accepted otherwise, so one matrix has exactly one encoding
  (words compare and checksum bit-for-bit).
- Padding: each tile ends with the fewest words of value bits 0 that make its length a multiple of 4 (0 to 3; an
  empty tile has no words, a dense one 8192). Padding word q (q = 0, 1, 2) sits on the q-th position of its tile,
  in row-major (row, col) order, that holds no entry, swizzled like an entry's position; an edge tile's positions
  outside the logical shape hold no entry and count too, so padding may point there (entries never do). This
  library's kernels skip padding, but Flash-LLM's kernel scatters it like any entry, so padding on an entry's
  position would erase that entry. Flash-LLM's row-major encoder pads exactly so (AlibabaResearch/flash-llm at
  1d2828a: ``InitSparseMatrixA_API_NoReorder``, ``csrc/SpMM_API.cu:456-471``, writing the zero's own bits, -0.0
  included; the scatter, ``csrc/SpMM_Kernel.cuh:162``); its bank-balanced encoder takes the first zero position
  of the least-filled bank instead and may repeat one (``csrc/SpMM_API.cu:243-285``). Flash-LLM has no edge
  tiles (it asserts M % 128 == K % 64 == 0, ``csrc/SpMM_API.cu:432``). Free positions never run out: a tile of n
  entries needs ``(8192 - n) % 4`` of its ``8192 - n``.
- ``nnz`` counts entries (words with value bits other than 0), never padding.
- Shape: any M, K >= 0. An empty matrix (M == 0 or K == 0) has no tiles: ``tile_offsets == [0, 0]``, no words,
  ``sparsity == 1.0`` (nothing is stored; the same value as an all-zero matrix). The kernels treat it as a no-op.
- Device storage: CuPy arrays. CuPy has no bfloat16, so the value type is carried as :attr:`TiledCSL.dtype`
  and bfloat16 matrices come back from the device only as bits (``to_dense(bits=True)``).

Examples
--------
>>> import numpy as np
>>> W = np.zeros((3, 70), np.float16); W[1, 2] = 1.0; W[0, 65] = -2.0
>>> A = TiledCSL.from_dense(W)
>>> A
<TiledCSL 3x70 float16, nnz=2 (99.0% sparse), 48 B, host>
>>> [hex(w) for w in A.words], A.tile_offsets.tolist()  # entry, then padding on the first free positions
(['0x4a3c00', '0x0', '0x10000', '0x20000', '0x1c000', '0x0', '0x20000', '0x30000'], [0, 1, 2, 2])
>>> bool((A.to_dense() == W).all())
True
"""

from __future__ import annotations

import functools
from typing import Any

import ml_dtypes
import numpy as np
import scipy.sparse

from .._checks import check_int_in_range, check_ndim, invalid
from ._xp import array_module, as_bits, to_device, to_host, value_dtype

__all__ = ["TiledCSL", "TILE_M", "TILE_K", "TILE_SIZE", "VECTOR_WORDS", "swizzle"]

TILE_M = 128  # rows of a tile: one thread block's M extent in the kernel
TILE_K = 64  # columns of a tile: 64 fp16 = 128 bytes = eight 16-byte chunks, the unit of the swizzle
TILE_SIZE = TILE_M * TILE_K  # 8192 positions in a tile; fits the 16-bit position field
VECTOR_WORDS = 4  # 4 uint32 words = one 16-byte load, the kernel's unit of reading ``words``

_TILE_SHIFT = TILE_SIZE.bit_length() - 1  # 13: key >> 13 is the tile, key & 8191 the index inside it
_MAGNITUDE = 0x7FFF  # value bits without the sign: 0 for +0.0 and -0.0, the two zeros, in fp16 and bf16 alike
_NEGATIVE_ZERO = 0x8000
_HOST_BLOCK = 1 << 18  # elements per block of the host's entry mask: 512 KiB of uint16, within a core's L2 cache
_MAX_VECTORS = int(np.iinfo(np.int32).max)  # tile_offsets are int32


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


def _tile_grid(shape: tuple[int, int]) -> tuple[int, int]:
    return -(-shape[0] // TILE_M), -(-shape[1] // TILE_K)


# --------------------------------------------------------------------------------------------------- encoder
# Written once over an array module ``xp`` (numpy or cupy): the same lines are the CPU and the GPU encoder.


def _encode_dense(xp: Any, bits: Any, grid: tuple[int, int]) -> tuple[Any, Any, int]:
    """Words, tile offsets and nnz of the (M, K) uint16 bit matrix ``bits``."""
    n_tile_rows, n_tile_cols = grid
    rows, cols = n_tile_rows * TILE_M, n_tile_cols * TILE_K
    if bits.shape != (rows, cols):
        padded = xp.zeros((rows, cols), np.uint16)
        padded[: bits.shape[0], : bits.shape[1]] = bits
        bits = padded
    # Tile-major copy, (tile_row, row, tile_col, col) -> (tile_row, tile_col, row, col): the flat index of an element
    # is then the key tile * 8192 + row * 64 + col, so nonzero() returns the entries already grouped by tile and in
    # (row, col) order inside each tile -- no sort needed.
    tiled = xp.ascontiguousarray(bits.reshape(n_tile_rows, TILE_M, n_tile_cols, TILE_K).transpose(0, 2, 1, 3))
    tiled = tiled.reshape(-1)
    keys = xp.flatnonzero(_is_entry(xp, tiled))
    return _pack(xp, keys, tiled[keys], n_tile_rows * n_tile_cols)


def _is_entry(xp: Any, bits: Any) -> Any:
    """Bool mask of the 1-D uint16 ``bits`` that are entries: neither +0.0 nor -0.0 (the sign bit masked off).

    A bool mask, because NumPy's nonzero is several times faster on bool than on uint16. On the host it is built in
    blocks that stay in the CPU's cache: masking the whole matrix at once writes and reads back a temporary as large
    as the matrix, which costs about a third of the nonzero itself."""
    if xp is not np:
        return (bits & _MAGNITUDE) != 0
    entry = np.empty(bits.size, bool)
    for start in range(0, bits.size, _HOST_BLOCK):
        np.not_equal(bits[start : start + _HOST_BLOCK] & _MAGNITUDE, 0, out=entry[start : start + _HOST_BLOCK])
    return entry


def _pack(xp: Any, keys: Any, values: Any, n_tiles: int) -> tuple[Any, Any, int]:
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

    words = _place_words(xp, keys, packed, starts, tile_offsets, VECTOR_WORDS * total)
    return words, tile_offsets, int(keys.size)


def _place_words(xp: Any, keys: Any, packed: Any, starts: Any, tile_offsets: Any, n_words: int) -> Any:
    """The words array: entry j (ascending ``keys``, packed word ``packed[j]``) stored where the canonical layout
    (``_layout_sorted``) puts it, and each tile's padding (its last 0 to 3 words) on the tile's first positions
    that hold no entry (``_padding_index``). ``starts[t]`` is tile t's first entry.

    On the host a compiled loop, O(nnz): NumPy's two nnz-long sorts took 16 s for a 36864 x 9216 matrix at 80 %,
    against the encoder's 5 s budget. On the GPU the sorts (CUB radix sorts) are cheap."""
    words = xp.zeros(n_words, np.uint32)
    if xp is np:
        _place_words_kernel()(keys, packed, starts, tile_offsets, words)
    else:
        _place_words_sorted(xp, keys, packed, starts, tile_offsets, words)
    return words


def _place_words_sorted(xp: Any, keys: Any, packed: Any, starts: Any, tile_offsets: Any, words: Any) -> None:
    """``_place_words`` with whole-array operations (the GPU's; it runs on NumPy too): write into zeroed ``words``."""
    counts = starts[1:] - starts[:-1]
    order, slot = _layout_sorted(xp, keys, packed >> 16, starts, counts)
    tile = (keys >> _TILE_SHIFT)[order]
    words[VECTOR_WORDS * tile_offsets[tile].astype(np.int64) + slot] = packed[order]
    del order, slot, tile
    ends = VECTOR_WORDS * tile_offsets[1:-1].astype(np.int64)  # one past each tile's last word
    holes = ends - VECTOR_WORDS * tile_offsets[:-2].astype(np.int64) - counts  # padding words per tile
    padded = xp.flatnonzero(holes)
    # Three columns q = 0, 1, 2 per padded tile; where q >= holes[t] a column repeats q = holes[t] - 1 (the same
    # word to the same slot), so every shape is known without synchronising.
    q = xp.minimum(xp.arange(VECTOR_WORDS - 1)[None, :], holes[padded][:, None] - 1)
    index = _padding_index(xp, keys, starts, padded[:, None], q)
    words[ends[padded][:, None] - holes[padded][:, None] + q] = swizzle(index).astype(np.uint32) << 16


def _padding_index(xp: Any, keys: Any, starts: Any, tile: Any, q: Any) -> Any:
    """In-tile index (row * 64 + col) of the q-th position of tile ``tile`` (in row-major order) holding no entry,
    for entries at ascending, distinct ``keys``; ``starts[t]`` is tile t's first entry. ``tile`` and ``q`` are
    integer arrays (broadcast together).

    ``keys[j] - j`` counts the free positions (over all tiles' positions) before entry j and never decreases. Free
    position number f (counting from 0 over all tiles) is then ``f + m``, m being the number of entries with at most
    f free positions before them, found by one binary search; tile t's first free position is number
    ``t * 8192 - starts[t]``. Input with repeated keys (refused by the full format check) gets indices in range."""
    free_before = keys - xp.arange(keys.size, dtype=keys.dtype)
    tile = tile.astype(np.int64)
    number = tile * TILE_SIZE - starts[tile].astype(np.int64) + q
    index = number + xp.searchsorted(free_before, number.reshape(-1), side="right").reshape(number.shape)
    return xp.clip(index - tile * TILE_SIZE, 0, TILE_SIZE - 1)


def _layout_sorted(xp: Any, keys: Any, positions: Any, starts: Any, counts: Any) -> tuple[Any, Any]:
    """Where each entry goes inside its tile: ``(order, slot)`` such that entry ``order[j]`` is stored in word
    ``slot[j]`` of its tile. ``keys`` ascending (tile, row, col); ``positions`` their swizzled positions;
    ``starts[t]``/``counts[t]`` the first entry and the number of entries of tile t.

    The layout serves the kernel's scatter. A warp stores one word of each of 32 consecutive 16-byte vectors at
    once (lane l: word s of vector l of a block of 32 vectors), and shared memory serves 32 banks per cycle: two
    values in one bank (``(position >> 1) % 32``) but in different 4-byte words cost a cycle each. In row-major
    order such a store hits 3.3-3.5 values per bank (H200 ncu: 4-way conflicted stores, about a third of all
    shared-memory traffic at 80 % sparsity). So:

    1. *deal*: round r takes the r-th entry (in row-major order) of every bank of the tile that has one, banks
       ascending; the rounds follow each other. A full round is 32 values in 32 different banks.
    2. *transpose*: the dealt sequence fills each block of 32 vectors (128 words) column by column: entry kk of
       a block goes to word s of vector l, ``(s, l)`` taken in s-major order, so one warp store is one round. In
       a tile's last, partial block of V vectors the same holds with V lanes, skipping the (at most 3) padding
       slots of its last vector, which thereby stay the tile's last words.

    This brings a store to about 1.5 values per bank on random sparsity (rounds run out unevenly at the end).
    """
    n = int(keys.size)
    tile = (keys >> _TILE_SHIFT).astype(np.int64)
    # rank of each entry among the entries of its tile and bank (stable sort: row-major order kept inside a group)
    group = tile * 32 + ((positions >> 1) & 31)
    by_group = xp.argsort(group, kind="stable")
    sorted_group = group[by_group]
    new_group = xp.ones(n, bool)
    new_group[1:] = sorted_group[1:] != sorted_group[:-1]
    group_starts = xp.flatnonzero(new_group)
    rank = xp.empty(n, np.int64)
    rank[by_group] = xp.arange(n, dtype=np.int64) - group_starts[xp.cumsum(new_group) - 1]
    del sorted_group, new_group, group_starts
    # deal: by (tile, round), banks ascending inside a round (the stable sort keeps by_group's bank order)
    rank += tile << _TILE_SHIFT  # the deal's sort key: (tile, round); a tile has at most 8192 entries
    order = by_group[xp.argsort(rank[by_group], kind="stable")]
    del rank, by_group
    # transpose: the k-th dealt entry of its tile -> (block b, s, l) -> word 128 b + 4 l + s
    tile = tile[order]
    k = xp.arange(n, dtype=np.int64) - starts[:-1].astype(np.int64)[tile]
    block = k >> 7
    kk = k & 127
    in_block = xp.minimum(counts.astype(np.int64)[tile] - (block << 7), 128)  # entries of this block
    lanes = (in_block + 3) >> 2  # vectors of the block
    holes = 4 * lanes - in_block  # padding slots in the block's last vector (only a tile's last block has any)
    # column s of the block holds `lanes` entries, one fewer where the last vector's slot s is padding
    s, start_of_s = xp.zeros(n, np.int64), xp.zeros(n, np.int64)
    for column in range(1, VECTOR_WORDS):
        column_start = column * lanes - xp.maximum(column - VECTOR_WORDS + holes, 0)
        later = kk >= column_start
        s += later
        start_of_s = xp.where(later, column_start, start_of_s)
    slot = (block << 7) + VECTOR_WORDS * (kk - start_of_s) + s
    return order, slot


@functools.cache
def _place_words_kernel():
    """``_place_words`` for NumPy arrays as a numba-compiled loop (compiled on first use, cached on disk): per
    tile, group the entries by bank, deal the rounds, write each dealt entry to its transposed slot, and walk the
    tile's first entries to its first free positions for the padding."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def place_words(keys, packed, starts, tile_offsets, words):
        by_bank = np.empty(TILE_SIZE, np.int64)  # one tile's entries grouped by bank, row-major inside a bank
        for t in range(starts.size - 1):
            first, count = starts[t], starts[t + 1] - starts[t]
            if count == 0:
                continue
            base = VECTOR_WORDS * np.int64(tile_offsets[t])
            total = np.zeros(32, np.int64)
            for i in range(first, first + count):
                total[(packed[i] >> 17) & 31] += 1
            bank_start = np.zeros(33, np.int64)
            for b in range(32):
                bank_start[b + 1] = bank_start[b] + total[b]
            filled = bank_start[:32].copy()
            for i in range(first, first + count):
                b = (packed[i] >> 17) & 31
                by_bank[filled[b]] = i
                filled[b] += 1
            # the tile's last block of 32 vectors may be partial: its lanes, and the padding slots (holes)
            last_block = (count - 1) >> 7
            in_last = count - (last_block << 7)
            lanes = (in_last + 3) >> 2
            holes = 4 * lanes - in_last
            k = 0
            for r in range(total.max()):  # deal round by round, banks ascending
                for b in range(32):
                    if r < total[b]:
                        block, kk = k >> 7, k & 127
                        if block < last_block:  # a full block: column s = kk // 32, lane kk % 32
                            slot = (block << 7) + 4 * (kk & 31) + (kk >> 5)
                        else:
                            s, start_of_s = 0, 0
                            for column in range(1, 4):
                                column_start = column * lanes - max(column - 4 + holes, 0)
                                if kk >= column_start:
                                    s, start_of_s = column, column_start
                            slot = (block << 7) + 4 * (kk - start_of_s) + s
                        words[base + slot] = packed[by_bank[bank_start[b] + r]]
                        k += 1
            # padding: the tile's last `holes` words, on its first indices without an entry, ascending
            end, tile_end = first + count, VECTOR_WORDS * np.int64(tile_offsets[t + 1])
            pad, index, j = tile_end - holes, 0, first
            while pad < tile_end:
                if j < end and (keys[j] & (TILE_SIZE - 1)) <= index:
                    if (keys[j] & (TILE_SIZE - 1)) == index:  # an entry: not free
                        index += 1
                    j += 1  # (a repeated key, refused by the full check, is passed over)
                else:
                    words[pad] = np.uint32(index ^ ((index >> 3) & 0x38)) << np.uint32(16)
                    pad += 1
                    index += 1

    return place_words


# --------------------------------------------------------------------------------------------------- decoder


def _word_tiles(xp: Any, tile_offsets: Any, n_words: int) -> Any:
    """The tile (int32) of every word: a running sum of +steps placed at the first word of each non-empty tile."""
    n_tiles = tile_offsets.size - 2
    nonempty = xp.flatnonzero(tile_offsets[1 : n_tiles + 1] - tile_offsets[:n_tiles]).astype(np.int32)
    step = xp.zeros(n_words, np.int32)
    step[VECTOR_WORDS * tile_offsets[nonempty].astype(np.int64)] = xp.diff(nonempty, prepend=np.int32(0))
    return xp.cumsum(step, dtype=np.int32)


def _entries(xp: Any, words: Any, tile_offsets: Any) -> tuple[Any, Any, Any]:
    """(tile, row * 64 + col inside the tile, uint16 value bits) of every entry: padding (value bits 0) writes
    nothing, and neither does a -0.0 word (refused by the full check, dropped by ``from_raw(..., reorder=True)``)."""
    values = (words & 0xFFFF).astype(np.uint16)
    keep = xp.flatnonzero((values & _MAGNITUDE) != 0)  # bool mask: see _encode_dense
    tiles = _word_tiles(xp, tile_offsets, words.size)[keep]
    return tiles, swizzle(words[keep] >> 16), values[keep]


# --------------------------------------------------------------------------------------------------- validation


def _where(i: int, tile: int, tile_offsets: np.ndarray) -> str:
    return f"word {i} (word {i - VECTOR_WORDS * int(tile_offsets[tile])} of tile {tile})"


def _check_words(xp: Any, words: Any, tile_offsets: Any, offsets: np.ndarray, shape: tuple[int, int]) -> int:
    """The O(nnz) scan of :meth:`TiledCSL.check_format`; returns nnz. The cheap checks have passed; ``offsets`` is
    ``tile_offsets`` on the host."""
    n_tiles = offsets.size - 2
    tiles = _word_tiles(xp, tile_offsets, words.size)

    def first(bad: Any) -> int | None:
        return int(xp.flatnonzero(bad)[0]) if bool(bad.any()) else None  # synchronize!

    values, positions = words & 0xFFFF, words >> 16
    i = first(positions >= TILE_SIZE)
    if i is not None:
        raise ValueError(f"{_where(i, int(tiles[i]), offsets)} has position {int(positions[i])}; "
                         f"positions in a {TILE_M} x {TILE_K} tile are < {TILE_SIZE}")
    i = first(values == _NEGATIVE_ZERO)
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
    n_tile_cols = _tile_grid(shape)[1]
    if shape[0] % TILE_M or shape[1] % TILE_K:  # only edge tiles can reach past the logical shape
        row = (entry_tiles // n_tile_cols).astype(np.int64) * TILE_M + (index >> 6)
        col = (entry_tiles % n_tile_cols).astype(np.int64) * TILE_K + (index & (TILE_K - 1))
        j = first((row >= shape[0]) | (col >= shape[1]))
        if j is not None:
            i = int(entries[j])
            raise ValueError(f"{_where(i, int(tiles[i]), offsets)} is at row {int(row[j])}, column {int(col[j])} of "
                             f"the matrix, outside its {shape[0]} x {shape[1]} shape")
    # Canonical layout: no position twice, every entry where _place_words puts it and every padding word on the
    # position it gives (one matrix, one encoding).
    keys = entry_tiles.astype(np.int64) * TILE_SIZE + index.astype(np.int64)
    by_key = xp.argsort(keys, kind="stable")
    sorted_keys = keys[by_key]
    j = first(sorted_keys[1:] == sorted_keys[:-1])
    if j is not None:
        i, k = sorted(int(entries[by_key[j + q]]) for q in (0, 1))
        t, (row, col) = int(sorted_keys[j]) >> _TILE_SHIFT, divmod(int(sorted_keys[j]) & (TILE_SIZE - 1), TILE_K)
        raise ValueError(f"tile {t} holds tile row {row}, column {col} (position {int(positions[i])}) twice, "
                         f"in words {i} and {k}")
    starts = xp.searchsorted(sorted_keys >> _TILE_SHIFT, xp.arange(n_tiles + 1, dtype=np.int64))
    expected = _place_words(xp, sorted_keys, words[entries[by_key]], starts, xp.asarray(offsets.astype(np.int32)),
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


# --------------------------------------------------------------------------------------------------- the format


def _check_shape(shape: Any) -> tuple[int, int]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise invalid("value", "shape", "a pair (M, K)", shape)
    return check_int_in_range(shape[0], "shape[0]", 0), check_int_in_range(shape[1], "shape[1]", 0)


def _human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class TiledCSL:
    """An M x K fp16/bf16 matrix in Tiled-CSL, on the host (NumPy) or a CUDA device (CuPy).

    Build one with :meth:`from_dense`, :meth:`from_scipy` or :meth:`from_raw`; the constructor itself is SciPy's:
    ``TiledCSL(words, tile_offsets, shape, dtype)`` wraps the arrays without copying and runs only the cheap
    checks of :meth:`check_format`. The module docstring describes the layout.

    Parameters
    ----------
    words : numpy.ndarray or cupy.ndarray
        uint32, 1-D: the entries, tile after tile, each tile padded to a multiple of 4 words (padding on positions
        of the tile that hold no entry).
    tile_offsets : numpy.ndarray or cupy.ndarray
        int32, n_tiles + 2 entries counted in 4-word vectors: ``[0, end of tile 0, ..., end of last, end of last]``.
        Same array module as ``words``.
    shape : (int, int)
        The logical (M, K), M, K >= 0.
    dtype : float16 or bfloat16
        The type whose bit patterns the low 16 bits of each word hold.
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

    # ----------------------------------------------------------------------------------------------- constructors

    @classmethod
    def from_dense(cls, W: Any, dtype: Any = None) -> "TiledCSL":
        """Encode a dense fp16/bf16 matrix; every element that is not a zero (+0.0 or -0.0) is stored.

        Parameters
        ----------
        W : array, shape (M, K)
            float16 or bfloat16. NumPy arrays give a host TiledCSL; CuPy arrays and CUDA tensors (anything with
            ``__cuda_array_interface__`` or DLPack, e.g. torch including ``torch.bfloat16``) give a device one,
            encoded on the GPU. Any strides.
        dtype : float16 or bfloat16, optional
            Only when ``W`` holds uint16 bit patterns (as from ``to_dense(bits=True)``): the type they encode.
            Nothing is ever cast.

        Returns
        -------
        TiledCSL

        Raises
        ------
        TypeError
            ``W`` is not an array of float16/bfloat16 (or of uint16 with ``dtype``).
        ValueError
            ``W`` is not 2-D.

        Examples
        --------
        >>> W = np.eye(3, dtype=np.float16)
        >>> A = TiledCSL.from_dense(W)
        >>> A.nnz, A.shape, bool((A.to_dense() == W).all())
        (3, (3, 3), True)
        """
        bits, dtype = as_bits(W, "W", dtype)
        check_ndim(bits, "W", 2)
        xp = array_module(bits)
        shape = (int(bits.shape[0]), int(bits.shape[1]))
        words, tile_offsets, nnz = _encode_dense(xp, bits, _tile_grid(shape))
        return cls._from_parts(words, tile_offsets, shape, dtype, nnz)

    @classmethod
    def from_scipy(cls, S: Any, dtype: Any = np.float16) -> "TiledCSL":
        """Encode a SciPy sparse matrix or array on the host, rounding its values to ``dtype``.

        Duplicate entries are summed (in ``S``'s own type, as SciPy does) before rounding. Entries that are zero
        after rounding (explicit zeros, -0.0, values that underflow) are dropped: a SciPy zero is "not stored".

        Parameters
        ----------
        S : scipy.sparse matrix or array, 2-D
            Real or boolean values.
        dtype : float16 or bfloat16, default float16

        Returns
        -------
        TiledCSL
            On the host.

        Raises
        ------
        TypeError
            ``S`` is not a SciPy sparse object, or holds complex values.
        ValueError
            ``S`` is not 2-D, or a finite value overflows ``dtype`` (rounds to +-Inf). NaN and +-Inf are kept.

        Examples
        --------
        >>> S = scipy.sparse.csr_array(np.array([[0.0, 1.5], [2.0, 0.0]]))
        >>> TiledCSL.from_scipy(S).to_dense().tolist()
        [[0.0, 1.5], [2.0, 0.0]]
        """
        if not scipy.sparse.issparse(S):
            raise invalid("type", "S", "a scipy.sparse matrix or array", type(S).__name__, TypeError)
        check_ndim(S, "S", 2)
        dtype = value_dtype(dtype)
        if S.dtype.kind not in "biuf":
            raise invalid("dtype", "S", "real or boolean values", S.dtype, TypeError)
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
        keep = (bits & _MAGNITUDE) != 0  # drop +0.0 and -0.0
        rows, cols, bits = coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), bits[keep]
        shape = (int(S.shape[0]), int(S.shape[1]))
        n_tile_cols = _tile_grid(shape)[1]
        keys = ((rows // TILE_M) * n_tile_cols + cols // TILE_K) * TILE_SIZE + (rows % TILE_M) * TILE_K + cols % TILE_K
        order = np.argsort(keys)
        words, tile_offsets, nnz = _pack(np, keys[order], bits[order], int(np.prod(_tile_grid(shape))))
        return cls._from_parts(words, tile_offsets, shape, dtype, nnz)

    @classmethod
    def from_raw(cls, words: Any, tile_offsets: Any, shape: tuple[int, int], dtype: Any, *,
                 reorder: bool = False) -> "TiledCSL":
        """Wrap existing Tiled-CSL arrays after checking every invariant.

        Parameters
        ----------
        words, tile_offsets, shape, dtype
            As for the class. Both arrays NumPy (host) or both CuPy (device); they are not copied.
        reorder : bool
            Accept the entries of each tile in any order (Flash-LLM's encoder writes them in row-major order) and
            lay them out anew in the canonical order (new arrays): words with value bits 0 are dropped as padding
            wherever they are and whatever their positions, so are -0.0 words (zeros), and each tile is padded
            anew. Files of earlier versions of this library load this way. Without it, the arrays must already be
            canonical.

        Returns
        -------
        TiledCSL

        Raises
        ------
        TypeError
            Wrong array types or dtypes.
        ValueError
            Any broken invariant of :meth:`check_format` (``full_check=True``), stated with numbers.

        Examples
        --------
        One entry, 1.0 at tile row 1, column 2 (position 1 * 64 + (2 ^ 8) = 0x4a), and the padding on the tile's
        first three free positions, 0, 1 and 2:

        >>> A = TiledCSL.from_raw(np.array([0x4a3c00, 0x00000, 0x10000, 0x20000], np.uint32),
        ...                       np.array([0, 1, 1], np.int32), (3, 64), np.float16)
        >>> A.to_dense()[1, 2]
        np.float16(1.0)

        Flash-LLM's row-major order, or padding anywhere, needs ``reorder=True``:

        >>> B = TiledCSL.from_raw(np.array([0x4a3c00, 0, 0, 0], np.uint32), np.array([0, 1, 1], np.int32),
        ...                       (3, 64), np.float16, reorder=True)
        >>> bool((B.words == A.words).all())
        True
        """
        self = cls(words, tile_offsets, shape, dtype)
        if reorder:
            xp = array_module(words, "words")
            positions = words >> 16
            bad = xp.flatnonzero(((words & _MAGNITUDE) != 0) & (positions >= TILE_SIZE))
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"word {i} has position {int(positions[i])}; positions in a {TILE_M} x {TILE_K} "
                                 f"tile are < {TILE_SIZE}")
            tiles, index, values = _entries(xp, words, tile_offsets)
            keys = tiles.astype(np.int64) * TILE_SIZE + index.astype(np.int64)
            by_key = xp.argsort(keys, kind="stable")
            words, tile_offsets, _ = _pack(xp, keys[by_key], values[by_key], self.n_tiles)
            self = cls(words, tile_offsets, shape, dtype)
        self.check_format(full_check=True)
        return self

    # ----------------------------------------------------------------------------------------------- validation

    def check_format(self, full_check: bool = False) -> None:
        """Check the invariants of the format; raise TypeError/ValueError naming the first one broken.

        Always (O(n_tiles)):

        1. ``words`` is a 1-D uint32 array and ``tile_offsets`` a 1-D int32 array of the same module;
        2. ``len(tile_offsets) == n_tiles + 2``, ``tile_offsets[0] == 0``, the offsets never decrease, and the
           last one repeats the one before it;
        3. ``len(words) == 4 * tile_offsets[-1]``;
        4. no tile has more vectors than its part of the logical shape can fill (``ceil(rows * cols / 4)``).

        With ``full_check`` (O(nnz); sets ``nnz``):

        5. every position is < 8192;
        6. no word holds -0.0 (value bits 0x8000): a zero is not stored;
        7. padding (value bits 0) only at the end of its tile, and at most 3 padding words in a tile;
        8. every entry lies inside the logical shape (matters for edge tiles; padding may point outside it);
        9. no position twice among a tile's entries;
        10. the canonical layout: entries in the bank-interleaved order (``_layout_sorted``), and padding word q of
            a tile on the tile's q-th position (row-major) that holds no entry.
        """
        words, tile_offsets, shape = self._words, self._tile_offsets, self._shape
        xp = array_module(words, "words")
        if array_module(tile_offsets, "tile_offsets") is not xp:
            raise invalid("array module", "tile_offsets", f"that of words ({xp.__name__})",
                          type(tile_offsets).__module__, TypeError)
        for array, name, dtype in ((words, "words", np.uint32), (tile_offsets, "tile_offsets", np.int32)):
            check_ndim(array, name, 1)
            if array.dtype != dtype:
                raise invalid("dtype", name, np.dtype(dtype), array.dtype, TypeError)
        n_tile_rows, n_tile_cols = _tile_grid(shape)
        n_tiles = n_tile_rows * n_tile_cols
        if tile_offsets.size != n_tiles + 2:
            raise ValueError(f"tile_offsets has {tile_offsets.size} entries; expected n_tiles + 2 = {n_tiles + 2} "
                             f"for shape {shape[0]} x {shape[1]} ({n_tile_rows} x {n_tile_cols} tiles)")
        offsets = to_host(tile_offsets).astype(np.int64)  # synchronize! (n_tiles + 2 integers)
        if offsets[0] != 0:
            raise ValueError(f"tile_offsets[0] is {offsets[0]}; expected 0")
        counts = np.diff(offsets)
        if (counts < 0).any():
            t = int(np.flatnonzero(counts < 0)[0])
            raise ValueError(f"tile_offsets decrease: tile_offsets[{t + 1}] = {offsets[t + 1]} < "
                             f"tile_offsets[{t}] = {offsets[t]}")
        if counts[-1] != 0:
            raise ValueError(f"tile_offsets[-1] is {offsets[-1]}; expected a repeat of tile_offsets[-2] = "
                             f"{offsets[-2]}")
        if words.size != VECTOR_WORDS * offsets[-1]:
            raise ValueError(f"words has {words.size} entries; expected 4 * tile_offsets[-1] = "
                             f"{VECTOR_WORDS * offsets[-1]}")
        # Entries an edge tile can hold: its rows inside M times its columns inside K.
        tile_rows = np.minimum(TILE_M, shape[0] - TILE_M * np.arange(n_tile_rows))
        tile_cols = np.minimum(TILE_K, shape[1] - TILE_K * np.arange(n_tile_cols))
        capacity = np.outer(tile_rows, tile_cols).reshape(-1)
        over = np.flatnonzero(counts[:n_tiles] > -(-capacity // VECTOR_WORDS))
        if over.size:
            t = int(over[0])
            raise ValueError(f"tile {t} has {counts[t]} vectors ({VECTOR_WORDS * counts[t]} words); its "
                             f"{tile_rows[t // n_tile_cols]} x {tile_cols[t % n_tile_cols]} part of the matrix holds "
                             f"at most {capacity[t]} entries, which need {-(-capacity[t] // VECTOR_WORDS)} vectors")
        if full_check:
            self._nnz = _check_words(xp, words, tile_offsets, offsets, shape)

    # ----------------------------------------------------------------------------------------------- properties

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
        """uint32 entries and padding (value bits 0, on positions without an entry), tile after tile (NumPy or
        CuPy)."""
        return self._words

    @property
    def tile_offsets(self) -> Any:
        """int32, n_tiles + 2 entries, in 4-word vectors (NumPy or CuPy, as ``words``)."""
        return self._tile_offsets

    @property
    def nnz(self) -> int:
        """Stored entries (words with non-zero value bits); padding is not counted."""
        if self._nnz is None:
            xp = array_module(self._words)
            self._nnz = int(xp.count_nonzero(self._words & 0xFFFF))  # synchronize!
        return self._nnz

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
        return _tile_grid(self._shape)[0]

    @property
    def n_tile_cols(self) -> int:
        """ceil(K / 64)."""
        return _tile_grid(self._shape)[1]

    @property
    def n_tiles(self) -> int:
        """n_tile_rows * n_tile_cols; ``tile_offsets`` has n_tiles + 2 entries."""
        return self.n_tile_rows * self.n_tile_cols

    @property
    def mean_tile_vectors(self) -> int:
        """Stored 16-byte word vectors (``VECTOR_WORDS`` words, padding included) per tile, rounded up: how much a
        tile gives the kernel to load on average (~410 at 80 % sparsity). No synchronisation."""
        n_tiles = self.n_tiles
        return -(-self._words.size // (VECTOR_WORDS * n_tiles)) if n_tiles else 0

    @property
    def on_device(self) -> bool:
        """True when the arrays are CuPy arrays."""
        return not isinstance(self._words, np.ndarray)

    # ----------------------------------------------------------------------------------------------- conversions

    def to_dense(self, bits: bool = False) -> Any:
        """The dense (M, K) matrix, in the array module of the storage.

        Parameters
        ----------
        bits : bool, default False
            Return the uint16 bit patterns instead of float16/bfloat16 values.

        Returns
        -------
        numpy.ndarray or cupy.ndarray
            float16 or bfloat16 (host), float16 (device), or uint16 with ``bits=True``.

        Raises
        ------
        TypeError
            A bfloat16 matrix on the device with ``bits=False``: CuPy has no bfloat16. Use ``to_dense(bits=True)``
            (and e.g. ``torch.from_dlpack(b).view(torch.bfloat16)``) or ``to_host().to_dense()``.

        Examples
        --------
        -0.0 is a zero, not stored, and comes back as +0.0; every other value bit-exactly:

        >>> A = TiledCSL.from_dense(np.array([[1.0, -0.0, np.nan]], np.float16))
        >>> A.to_dense(bits=True)
        array([[15360,     0, 32256]], dtype=uint16)
        """
        xp = array_module(self._words)
        if not bits and xp is not np and self._dtype != np.float16:
            raise TypeError("CuPy has no bfloat16: use to_dense(bits=True) for the uint16 bit patterns, "
                            "or to_host().to_dense()")
        n_tile_rows, n_tile_cols = _tile_grid(self._shape)
        tiles, index, values = _entries(xp, self._words, self._tile_offsets)
        flat = xp.zeros(n_tile_rows * n_tile_cols * TILE_SIZE, np.uint16)
        flat[tiles.astype(np.int64) * TILE_SIZE + index] = values
        dense = flat.reshape(n_tile_rows, n_tile_cols, TILE_M, TILE_K).transpose(0, 2, 1, 3)
        dense = xp.ascontiguousarray(dense.reshape(n_tile_rows * TILE_M, n_tile_cols * TILE_K)[: self._shape[0],
                                                                                                : self._shape[1]])
        return dense if bits else dense.view(self._dtype)

    def to_scipy(self) -> scipy.sparse.csr_array:
        """The matrix as a float32 SciPy CSR array on the host (exact: float32 holds every fp16 and bf16 value).

        One explicit entry per stored entry (NaN included): its ``nnz`` equals ``self.nnz``.

        Examples
        --------
        >>> A = TiledCSL.from_dense(np.array([[0.0, 2.0], [3.0, 0.0]], np.float16))
        >>> A.to_scipy().toarray().tolist()
        [[0.0, 2.0], [3.0, 0.0]]
        """
        words, tile_offsets = to_host(self._words), to_host(self._tile_offsets)  # synchronize!
        tiles, index, values = _entries(np, words, tile_offsets)
        n_tile_cols = _tile_grid(self._shape)[1]
        rows = (tiles // n_tile_cols).astype(np.int64) * TILE_M + (index >> 6)
        cols = (tiles % n_tile_cols).astype(np.int64) * TILE_K + (index & (TILE_K - 1))
        data = values.view(self._dtype).astype(np.float32)
        return scipy.sparse.csr_array((data, (rows, cols)), shape=self._shape)

    def to_device(self) -> "TiledCSL":
        """A copy with CuPy arrays (``self`` when already on the device).

        Under Numba's CUDA simulator (no GPU, or ``flashllm_nb.use_simulator()``) the simulated device reads host
        memory, so this returns the host matrix itself, which the kernels then take: code written for the GPU runs
        unchanged there. Without a GPU and with the simulator off it raises a RuntimeError that says so.
        """
        from flashllm_nb import _runtime

        if self.on_device or _runtime.simulator_enabled():
            return self
        _runtime.require_gpu("TiledCSL.to_device()")
        return TiledCSL._from_parts(to_device(self._words), to_device(self._tile_offsets), self._shape, self._dtype,
                                    self._nnz)

    def copy(self) -> "TiledCSL":
        """A copy with arrays of its own, in the same module."""
        return TiledCSL._from_parts(self._words.copy(), self._tile_offsets.copy(), self._shape, self._dtype,
                                    self._nnz)

    def to_host(self) -> "TiledCSL":
        """A copy with NumPy arrays (``self`` when already on the host)."""
        if not self.on_device:
            return self
        return TiledCSL._from_parts(to_host(self._words), to_host(self._tile_offsets), self._shape, self._dtype,
                                    self._nnz)

    def __repr__(self) -> str:
        return (f"<TiledCSL {self._shape[0]}x{self._shape[1]} {self._dtype}, nnz={self.nnz} "
                f"({100 * self.sparsity:.1f}% sparse), {_human_bytes(self.nbytes)}, "
                f"{'device' if self.on_device else 'host'}>")
