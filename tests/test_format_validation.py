"""``TiledCSL.from_raw`` refuses every kind of malformed input, one test per invariant, each checking its message.

The base case is the hand-checked 3 x 70 matrix of two tiles (tile 0: columns 0..63, tile 1: columns 64..69):
one entry in each, 1.0 at (0, 0) and 1.0 at (0, 64), each padded with 3 words of value bits 0 on the tile's first
three positions without an entry, 1, 2 and 3.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashllm_nb.formats.tiled_csl import TILE_K, TILE_M, TiledCSL, swizzle
from row_major import row_major_words

ONE = 0x3C00  # fp16 1.0
PAD = (1 << 16, 2 << 16, 3 << 16)  # the padding of a tile whose only entry is at position 0
SHAPE = (3, 70)


def words(*w):
    return np.array(w, np.uint32)


def offsets(*o):
    return np.array(o, np.int32)


def raw(w=None, o=None, shape=SHAPE, dtype=np.float16):
    w = words(ONE, *PAD, ONE, *PAD) if w is None else w
    o = offsets(0, 1, 2, 2) if o is None else o
    return TiledCSL.from_raw(w, o, shape, dtype)


def refuses(exc, message, **kwargs):
    with pytest.raises(exc, match=re.escape(message)):
        raw(**kwargs)


def test_the_base_case_is_valid():
    A = raw()
    assert A.nnz == 2 and A.to_dense()[0, 0] == 1.0 and A.to_dense()[0, 64] == 1.0


# --------------------------------------------------------------------------------------------------- cheap checks


def test_words_dtype():
    refuses(TypeError, "Invalid dtype of words: expected uint32, got int32", w=words(ONE, 0, 0, 0).astype(np.int32))


def test_tile_offsets_dtype():
    refuses(TypeError, "Invalid dtype of tile_offsets: expected int32, got int64",
            o=offsets(0, 1, 2, 2).astype(np.int64))


def test_words_must_be_1d():
    refuses(ValueError, "Invalid number of dimensions of words: expected 1, got 2", w=words(ONE, 0, 0, 0).reshape(2, 2))


def test_arrays_must_be_contiguous():
    """A strided view would be read from its first element on, contiguously, by the kernel: refused."""
    every_other = np.zeros(16, np.uint32)
    every_other[::2] = words(ONE, *PAD, ONE, *PAD)
    refuses(ValueError, "Invalid memory layout of words: expected a C-contiguous (row-major) array, got strides (8,)",
            w=every_other[::2])
    refuses(ValueError, "Invalid memory layout of tile_offsets", o=offsets(0, 0, 1, 1, 2, 2, 2, 2)[::2])


def test_arrays_must_be_arrays():
    refuses(TypeError, "Invalid type of tile_offsets: expected a NumPy or CuPy array, got list", o=[0, 1, 2, 2])


def test_shape_must_be_a_pair_of_non_negative_integers():
    refuses(ValueError, "Invalid value of shape: expected a pair (M, K), got (3,)", shape=(3,))
    refuses(ValueError, "Invalid value of shape[0]: expected >= 0, got -1", shape=(-1, 70))
    refuses(TypeError, "Invalid type of shape[1]: expected an integer, got float", shape=(3, 70.0))


def test_dtype_must_be_float16_or_bfloat16():
    refuses(TypeError, "Invalid dtype of dtype: expected float16 or bfloat16, got float32", dtype=np.float32)


def test_number_of_tile_offsets():
    refuses(ValueError, "tile_offsets has 3 entries; expected n_tiles + 2 = 4 for shape 3 x 70 (1 x 2 tiles)",
            o=offsets(0, 1, 1))


def test_first_offset_is_zero():
    refuses(ValueError, "tile_offsets[0] is 1; expected 0", o=offsets(1, 1, 2, 2))


def test_offsets_never_decrease():
    refuses(ValueError, "tile_offsets decrease: tile_offsets[2] = 0 < tile_offsets[1] = 1", o=offsets(0, 1, 0, 0))


def test_last_offset_repeats():
    refuses(ValueError, "tile_offsets[-1] is 3; expected a repeat of tile_offsets[-2] = 2", o=offsets(0, 1, 2, 3))


def test_words_length_matches_offsets():
    refuses(ValueError, "words has 7 entries; expected 4 * tile_offsets[-1] = 8", w=words(ONE, 0, 0, 0, ONE, 0, 0))


def test_tile_cannot_hold_more_than_its_part_of_the_matrix():
    # tile 1 covers 3 x 6 = 18 elements: at most 5 vectors; 6 claimed
    refuses(ValueError, "tile 1 has 6 vectors (24 words); its 3 x 6 part of the matrix holds at most 18 entries, "
                        "which need 5 vectors", w=words(*([ONE, 0, 0, 0] * 7)), o=offsets(0, 1, 7, 7))


# --------------------------------------------------------------------------------------------------- full checks


def test_positions_below_8192():
    refuses(ValueError, "word 4 (word 0 of tile 1) has position 8192; positions in a 128 x 64 tile are < 8192",
            w=words(ONE, *PAD, 8192 << 16 | ONE, *PAD))
    refuses(ValueError, "word 7 (word 3 of tile 1) has position 9000; positions in a 128 x 64 tile are < 8192",
            w=words(ONE, *PAD, ONE, 1 << 16, 2 << 16, 9000 << 16))  # padding too


@pytest.mark.parametrize("reorder", [False, True])
def test_negative_zero_is_not_stored(reorder):
    w = words(ONE, *PAD, 0x8000, *PAD)  # tile 1: one -0.0 "entry"
    if not reorder:
        refuses(ValueError, "word 4 (word 0 of tile 1) holds -0.0 (value bits 0x8000); -0.0 is a zero, which "
                            "Tiled-CSL does not store (TiledCSL.from_raw(..., reorder=True) drops it)", w=w)
        return
    A = TiledCSL.from_raw(w, offsets(0, 1, 2, 2), SHAPE, np.float16, reorder=True)
    assert A.nnz == 1 and A.words.tolist() == [ONE, *PAD] and A.tile_offsets.tolist() == [0, 1, 1, 1]
    assert A.to_dense(bits=True)[0, 64] == 0


def test_padding_on_the_first_free_positions():
    refuses(ValueError, "word 1 (word 1 of tile 0) is padding on tile row 0, column 5; a tile's padding goes on its "
                        "first positions without an entry in row-major order, here tile row 0, column 1",
            w=words(ONE, 5 << 16, 2 << 16, 3 << 16, ONE, *PAD))
    refuses(ValueError, "word 5 (word 1 of tile 1) is padding on tile row 0, column 2; a tile's padding goes on its "
                        "first positions without an entry in row-major order, here tile row 0, column 1",
            w=words(ONE, *PAD, ONE, 2 << 16, 1 << 16, 3 << 16))  # the right positions, out of order


def test_padding_never_on_an_entry():
    """Padding 0x00000000 (position 0, this library's format before -0.0 and padding changed) on a tile whose
    entry is at position 0: Flash-LLM's kernel would scatter the zero over the entry."""
    refuses(ValueError, "word 1 (word 1 of tile 0) is padding on tile row 0, column 0, which holds an entry (word 0): "
                        "a kernel that scatters padding, as Flash-LLM's does, would erase it; a tile's padding goes "
                        "on its first positions without an entry in row-major order, here tile row 0, column 1",
            w=words(ONE, 0, 0, 0, ONE, *PAD))


def test_padding_may_point_outside_the_logical_shape():
    """An edge tile's positions outside the matrix hold no entry: padding goes there when the positions inside are
    taken (the first free ones here are columns 70 and 71 of row 0), entries never do."""
    W = np.zeros(SHAPE, np.float16)
    W[0, 64:] = 1.0  # tile 1's row 0, all 6 columns
    A = TiledCSL.from_dense(W)
    assert A.words[-2:].tolist() == [6 << 16, 7 << 16]
    B = TiledCSL.from_raw(A.words, A.tile_offsets, SHAPE, np.float16)
    assert B.nnz == 6


def test_padding_only_at_the_end_of_a_tile():
    refuses(ValueError, "word 1 (word 1 of tile 0) is padding but the entry after it is in the same tile; padding "
                        "goes only at the end of a tile", w=words(ONE, 2 << 16, 1 << 16 | ONE, 3 << 16, ONE, *PAD))


def test_at_most_three_padding_words_per_tile():
    refuses(ValueError, "tile 0 ends with 7 padding words; at most 3 are needed to fill its last 16-byte vector",
            w=words(ONE, *PAD, *range(4 << 16, 8 << 16, 1 << 16), ONE, *PAD), o=offsets(0, 2, 3, 3))


def test_entries_inside_the_logical_rows():
    # position 3 * 64 = 192: tile row 3, column 0 ^ (3 << 3) = 24, i.e. matrix row 3 of a 3-row matrix
    refuses(ValueError, "word 4 (word 0 of tile 1) is at row 3, column 88 of the matrix, outside its 3 x 70 shape",
            w=words(ONE, *PAD, 192 << 16 | ONE, 0, 1 << 16, 2 << 16))


def test_entries_inside_the_logical_columns():
    # position 6 in tile 1: column 64 + 6 = 70 of a 70-column matrix
    refuses(ValueError, "word 4 (word 0 of tile 1) is at row 0, column 70 of the matrix, outside its 3 x 70 shape",
            w=words(ONE, *PAD, 6 << 16 | ONE, 0, 1 << 16, 2 << 16))


def test_no_position_twice_in_a_tile():
    refuses(ValueError, "tile 0 holds tile row 1, column 2 (position 74) twice, in words 0 and 1",
            w=words(74 << 16 | ONE, 74 << 16 | 0x4000, 0, 1 << 16, ONE, *PAD))


def test_entries_in_the_canonical_bank_interleaved_order():
    # positions 74 (bank 5) then 65 (bank 0): both in the deal's first round, where banks go in ascending order
    refuses(ValueError, "word 0 (word 0 of tile 0) holds tile row 1, column 2 where the canonical layout has tile row "
                        "1, column 9", w=words(74 << 16 | ONE, 65 << 16 | ONE, 0, 1 << 16, ONE, *PAD))
    raw(w=words(65 << 16 | ONE, 74 << 16 | ONE, 0, 1 << 16, ONE, *PAD))  # the canonical order of the same entries


def test_reorder_lays_out_row_major_input_canonically():
    """Flash-LLM's encoder writes row-major order; from_raw(reorder=True) re-lays it out as from_dense would."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((300, 200)).astype(np.float16)
    W[rng.random(W.shape) < 0.7] = 0
    A = TiledCSL.from_dense(W)
    words_rm, vectors = row_major_words(A)  # the same entries, row-major inside each tile
    B = TiledCSL.from_raw(words_rm, vectors, A.shape, A.dtype, reorder=True)
    np.testing.assert_array_equal(B.words, A.words)
    np.testing.assert_array_equal(B.tile_offsets, A.tile_offsets)
    with pytest.raises(ValueError, match="canonical layout"):
        TiledCSL.from_raw(words_rm, vectors, A.shape, A.dtype)
    words_rm[0] = 8192 << 16 | ONE
    with pytest.raises(ValueError, match="has position 8192"):
        TiledCSL.from_raw(words_rm, vectors, A.shape, A.dtype, reorder=True)


def _flash_llm_row_major(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flash-LLM's row-major encoder, ``InitSparseMatrixA_API_NoReorder`` (csrc/SpMM_API.cu): per tile, every
    element with ``fabs(x) > 0`` (NaN-free input here) in row-major order, with the tile's first (4 - n % 4) % 4
    other elements interleaved where they fall as padding, each holding its own bits (+0.0 or -0.0)."""
    words, vectors = [], [0]
    for tr in range(bits.shape[0] // TILE_M):
        for tc in range(bits.shape[1] // TILE_K):
            tile = bits[tr * TILE_M : (tr + 1) * TILE_M, tc * TILE_K : (tc + 1) * TILE_K].reshape(-1)
            nonzero = (tile & 0x7FFF) != 0
            padding = np.flatnonzero(~nonzero)[: -int(nonzero.sum()) % 4]
            index = np.union1d(np.flatnonzero(nonzero), padding)  # ascending: row-major
            words += [int(swizzle(int(i))) << 16 | int(tile[i]) for i in index]
            vectors.append(len(words) // 4)
    vectors.append(vectors[-1])
    return np.array(words, np.uint32), np.array(vectors, np.int32)


def test_reorder_takes_flash_llm_row_major_encoding():
    """Flash-LLM's row-major encoder interleaves its padding with the entries and gives it the zero's own bits,
    -0.0 included; from_raw(reorder=True) makes the canonical encoding of the same matrix. Its padding positions
    are this format's: the first positions of each tile, row-major, without an entry."""
    rng = np.random.default_rng(1)
    W = rng.standard_normal((512, 256)).astype(np.float16)
    P = W * (rng.random(W.shape) < 0.2).astype(np.float16)  # -0.0 where W < 0
    words_fl, vectors = _flash_llm_row_major(P.view(np.uint16))
    padding_fl = (words_fl & 0x7FFF) == 0
    assert ((words_fl & 0xFFFF) == 0x8000).any()  # the test means something: padding holding -0.0 is there
    A = TiledCSL.from_dense(P)
    B = TiledCSL.from_raw(words_fl, vectors, P.shape, np.float16, reorder=True)
    np.testing.assert_array_equal(B.words, A.words)
    np.testing.assert_array_equal(B.tile_offsets, A.tile_offsets)
    assert B.nnz == np.count_nonzero(P)
    np.testing.assert_array_equal(vectors, A.tile_offsets)  # the same tile sizes, and padding on the same positions:
    tiles_fl = np.repeat(np.arange(A.n_tiles), 4 * np.diff(vectors[:-1]))
    tiles = np.repeat(np.arange(A.n_tiles), 4 * np.diff(A.tile_offsets[:-1]))
    padding = (A.words & 0xFFFF) == 0
    assert {(int(t), int(w >> 16)) for t, w in zip(tiles_fl[padding_fl], words_fl[padding_fl])} == \
        {(int(t), int(w >> 16)) for t, w in zip(tiles[padding], A.words[padding])}


@given(st.integers(1, 300), st.integers(1, 200), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_reorder_takes_any_order_and_any_padding(M, K, sparsity, seed):
    """Words shuffled inside their tiles, padding on random positions (an entry's ones included) or holding -0.0:
    from_raw(reorder=True) gives the canonical encoding back."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(1, 2**16, (M, K), dtype=np.uint16)
    bits[rng.random((M, K)) < sparsity] = 0
    A = TiledCSL.from_dense(bits.view(np.float16))
    shuffled = A.words.copy()
    for t in range(A.n_tiles):
        tile = shuffled[4 * A.tile_offsets[t] : 4 * A.tile_offsets[t + 1]]
        padding = (tile & 0xFFFF) == 0
        tile[padding] = rng.integers(0, 8192, int(padding.sum()), dtype=np.uint32) << 16 | rng.choice(
            np.array([0, 0x8000], np.uint32), int(padding.sum()))
        rng.shuffle(tile)
    B = TiledCSL.from_raw(shuffled, A.tile_offsets.copy(), A.shape, A.dtype, reorder=True)
    np.testing.assert_array_equal(B.words, A.words)
    np.testing.assert_array_equal(B.tile_offsets, A.tile_offsets)


def test_constructor_runs_only_the_cheap_checks():
    bad_position = words(ONE, *PAD, 8192 << 16 | ONE, *PAD)
    A = TiledCSL(bad_position, offsets(0, 1, 2, 2), SHAPE, np.float16)  # SciPy's contract: cheap checks only
    with pytest.raises(ValueError, match="has position 8192"):
        A.check_format(full_check=True)
    with pytest.raises(ValueError, match=re.escape("tile_offsets[0] is 1")):
        TiledCSL(bad_position, offsets(1, 1, 2, 2), SHAPE, np.float16)


@given(st.integers(1, 200), st.integers(1, 200), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_every_encoder_output_passes_from_raw(M, K, sparsity, seed):
    """from_raw accepts every encoding that from_dense produces and counts the same nnz."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(1, 2**16, (M, K), dtype=np.uint16)
    bits[rng.random((M, K)) < sparsity] = 0
    A = TiledCSL.from_dense(bits.view(np.float16))
    B = TiledCSL.from_raw(A.words, A.tile_offsets, A.shape, A.dtype)
    assert B.nnz == A.nnz == np.count_nonzero(bits & 0x7FFF)
