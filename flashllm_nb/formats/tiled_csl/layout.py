"""Where each word of a tile goes: the bank-interleaved order of its entries (:func:`layout_sorted`) and the
positions of its padding (:func:`_padding_index`), computed by :func:`place_words` with whole-array operations on
the GPU and a compiled loop on the host (both give the same words; the tests check it).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .geometry import TILE_SHIFT, TILE_SIZE, VECTOR_WORDS, swizzle


def place_words(xp: Any, keys: Any, packed: Any, starts: Any, tile_offsets: Any, n_words: int) -> Any:
    """The words array: entry j (ascending ``keys``, packed word ``packed[j]``) stored where the canonical layout
    (``layout_sorted``) puts it, and each tile's padding (its last 0 to 3 words) on the tile's first positions
    that hold no entry (``_padding_index``). ``starts[t]`` is tile t's first entry.

    On the host a compiled loop, O(nnz): NumPy's two nnz-long sorts are several times slower than the encoder's
    budget on an OPT-66B matrix. On the GPU the sorts (CUB radix sorts) are cheap."""
    words = xp.zeros(n_words, np.uint32)
    if xp is np:
        _place_words_kernel()(keys, packed, starts, tile_offsets, words)
    else:
        place_words_sorted(xp, keys, packed, starts, tile_offsets, words)
    return words


def place_words_sorted(xp: Any, keys: Any, packed: Any, starts: Any, tile_offsets: Any, words: Any) -> None:
    """``place_words`` with whole-array operations (the GPU's; it runs on NumPy too): write into zeroed ``words``."""
    counts = starts[1:] - starts[:-1]
    order, slot = layout_sorted(xp, keys, packed >> 16, starts, counts)
    tile = (keys >> TILE_SHIFT)[order]
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


def layout_sorted(xp: Any, keys: Any, positions: Any, starts: Any, counts: Any) -> tuple[Any, Any]:
    """Where each entry goes inside its tile: ``(order, slot)`` such that entry ``order[j]`` is stored in word
    ``slot[j]`` of its tile. ``keys`` ascending (tile, row, col); ``positions`` their swizzled positions;
    ``starts[t]``/``counts[t]`` the first entry and the number of entries of tile t.

    The layout serves the kernel's scatter. A warp stores one word of each of 32 consecutive 16-byte vectors at
    once (lane l: word s of vector l of a block of 32 vectors), and shared memory serves 32 banks per cycle: two
    values in one bank (``(position >> 1) % 32``) but in different 4-byte words cost a cycle each. In row-major
    order such a store hits 3.3-3.5 values per bank, so the stores are 4-way conflicted (the measurement:
    ``docs/kernel-design.md``, "The format's order inside a tile"). So:

    1. *deal*: round r takes the r-th entry (in row-major order) of every bank of the tile that has one, banks
       ascending; the rounds follow each other. A full round is 32 values in 32 different banks.
    2. *transpose*: the dealt sequence fills each block of 32 vectors (128 words) column by column: entry kk of
       a block goes to word s of vector l, ``(s, l)`` taken in s-major order, so one warp store is one round. In
       a tile's last, partial block of V vectors the same holds with V lanes, skipping the (at most 3) padding
       slots of its last vector, which thereby stay the tile's last words.

    This brings a store to about 1.5 values per bank on random sparsity (rounds run out unevenly at the end).
    """
    n = int(keys.size)
    tile = (keys >> TILE_SHIFT).astype(np.int64)
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
    rank += tile << TILE_SHIFT  # the deal's sort key: (tile, round); a tile has at most 8192 entries
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
    """``place_words`` for NumPy arrays as a numba-compiled loop (compiled on first use, cached on disk): per
    tile, group the entries by bank, deal the rounds, write each dealt entry to its transposed slot, and walk the
    tile's first entries to its first free positions for the padding."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def place_words_host(keys, packed, starts, tile_offsets, words):
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

    return place_words_host
