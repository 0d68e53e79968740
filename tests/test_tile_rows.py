"""Tile rows as units (``stack_tile_rows``, ``tile_row_block``, ``tile_row_span``), in both formats and the
session's tier (host arrays under the simulator, device arrays on a GPU): a stack is word for word the encoding of
the matrices stacked with zero rows between them, and each matrix's block of it is word for word its own encoding.
"""

from __future__ import annotations

import numpy as np
import pytest

from flashllm_nb.formats.tile_rows import stack_tile_rows, tile_row_block, tile_row_span
from flashllm_nb.formats.tiled_bitmap import TiledBitmap
from flashllm_nb.formats.tiled_csl import TILE_M, TiledCSL
from tier import BF16, by_tier, device, host

F16 = np.dtype(np.float16)
FORMATS = pytest.mark.parametrize("fmt", [TiledCSL, TiledBitmap], ids=["csl", "bitmap"])
# Row counts: one row, a tile row and one, none, exact tile rows, and a dense matrix among sparse ones.
HEIGHTS = by_tier(sim=[(1, 129, 0, 256, 64), (128, 7)], gpu=[(1, 129, 0, 256, 64), (7168, 1024, 1024), (128, 7)])


def _matrix(rng, rows: int, cols: int, dtype, zeros: float) -> np.ndarray:
    W = rng.standard_normal((rows, cols)).astype(dtype)
    W[rng.random((rows, cols)) < zeros] = 0
    W[rng.random((rows, cols)) < 0.05] *= -0.0  # -0.0: a zero, never stored
    return W


@FORMATS
@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("heights", HEIGHTS)
@pytest.mark.parametrize("cols", [200, 64])
def test_stack_is_the_encoding_of_the_stacked_matrices_and_each_block_its_own(heights, cols, dtype, fmt):
    rng = np.random.default_rng(len(heights) * cols)
    dense = [_matrix(rng, rows, cols, dtype, 0.0 if i == 1 else 0.8) for i, rows in enumerate(heights)]
    if dtype == F16:
        dense[0][0, :3] = [np.inf, np.nan, -np.inf]
    matrices = [fmt.from_dense(device(W)) for W in dense]
    stack, first_rows = stack_tile_rows(matrices)
    expected_first = np.cumsum([0] + [-(-r // TILE_M) * TILE_M for r in heights[:-1]]).tolist()
    assert first_rows == expected_first
    stacked = np.zeros((first_rows[-1] + heights[-1], cols), dtype)
    for W, first in zip(dense, first_rows):
        stacked[first : first + W.shape[0]] = W
    reference = fmt.from_dense(stacked)
    assert type(stack) is fmt and stack.shape == reference.shape and stack.dtype == reference.dtype
    assert stack.nnz == reference.nnz
    np.testing.assert_array_equal(host(stack.words), reference.words)
    np.testing.assert_array_equal(host(stack.tile_offsets), reference.tile_offsets)
    stack.check_format(full_check=True)
    for W, A, first in zip(dense, matrices, first_rows):
        block = tile_row_block(stack, first, W.shape[0])
        block.check_format(full_check=True)
        assert type(block) is fmt and block.shape == A.shape and block.nnz == A.nnz
        np.testing.assert_array_equal(host(block.words), host(A.words))
        np.testing.assert_array_equal(host(block.tile_offsets), host(A.tile_offsets))
        begin, end = tile_row_span(stack, first, W.shape[0])
        np.testing.assert_array_equal(host(stack.words[4 * begin : 4 * end]), host(A.words))
        if A.words.size:  # a view of the stack's words, not a copy
            assert np.shares_memory(block.words, stack.words) if isinstance(block.words, np.ndarray) else \
                block.words.data.ptr == stack.words.data.ptr + 16 * begin


@FORMATS
def test_stacking_leaves_its_inputs_and_a_block_may_end_on_padding_rows(fmt):
    rng = np.random.default_rng(3)
    W = _matrix(rng, 64, 100, F16, 0.7)
    A = fmt.from_dense(device(W))
    words = host(A.words).copy()
    stack, first_rows = stack_tile_rows([A, A])
    np.testing.assert_array_equal(host(A.words), words)
    # rows 64 .. 127 of the stack are padding: a block may stop anywhere in them
    for rows in (64, 100, 128):
        block = tile_row_block(stack, 0, rows)
        np.testing.assert_array_equal(host(block.to_dense(bits=True))[:64], W.view(np.uint16) & ~(
            (W.view(np.uint16) == 0x8000) * np.uint16(0x8000)))
        assert block.shape == (rows, 100)
    assert tile_row_block(stack, 128, 0).shape == (0, 100) and tile_row_block(stack, 128, 0).words.size == 0


@FORMATS
def test_a_block_that_cuts_through_entries_is_refused(fmt):
    A = fmt.from_dense(device(np.ones((130, 64), np.float16)))
    with pytest.raises(ValueError, match="cut at row 10 of 128.*(holds an entry|marks an entry) in tile row 1[0-9]"
                       if fmt is TiledBitmap else "cut at row 10 of 128.*holds an entry at tile row 1[0-9]"):
        tile_row_block(A, 0, 10)
    with pytest.raises(ValueError, match="cut at row 1 of 128.*tile row 1"):
        tile_row_block(A, 128, 1)


def test_bad_arguments_are_refused_naming_them():
    A = TiledCSL.from_dense(device(np.ones((300, 64), np.float16)))
    B = TiledCSL.from_dense(device(np.ones((3, 65), np.float16)))
    C = TiledCSL.from_dense(device(np.ones((3, 64), np.float16).astype(BF16)))
    with pytest.raises(TypeError, match="Invalid type of matrices: expected a sequence of TiledCSL or TiledBitmap, "
                                        "got TiledCSL"):
        stack_tile_rows(A)
    with pytest.raises(ValueError, match="Invalid length of matrices: expected at least one matrix, got 0"):
        stack_tile_rows([])
    with pytest.raises(TypeError, match=r"Invalid type of matrices\[1\]: expected a TiledCSL .matrices\[0\]'s "
                                        r"format., got int"):
        stack_tile_rows([A, 3])
    with pytest.raises(TypeError, match=r"Invalid type of matrices\[1\]: expected a TiledCSL .* got TiledBitmap"):
        stack_tile_rows([A, TiledBitmap.from_dense(device(np.ones((3, 64), np.float16)))])
    with pytest.raises(ValueError, match=r"Invalid width of matrices\[1\]: expected 64 columns .* got 65"):
        stack_tile_rows([A, B])
    with pytest.raises(TypeError, match=r"Invalid dtype of matrices\[1\]: expected float16 .* got bfloat16"):
        stack_tile_rows([A, C])
    with pytest.raises(TypeError, match="Invalid type of matrix: expected a TiledCSL or TiledBitmap, got str"):
        tile_row_block("A", 0, 1)
    with pytest.raises(ValueError, match="Invalid value of first_row: expected a multiple of 128.*got 64"):
        tile_row_block(A, 64, 1)
    with pytest.raises(ValueError, match=r"Invalid value of first_row: expected in \[0, 300\], got -128"):
        tile_row_block(A, -128, 1)
    with pytest.raises(ValueError, match=r"Invalid value of rows: expected in \[0, 44\], got 45"):
        tile_row_span(A, 256, 45)
    with pytest.raises(TypeError, match="Invalid type of rows: expected an integer, got float"):
        tile_row_block(A, 0, 1.0)
