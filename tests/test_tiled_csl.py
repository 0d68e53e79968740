"""Tiled-CSL on the host: the bit layout against hand-worked words, round trips, conversions and constructors (and
one check of pruned weights that runs on the session's tier: the host under the simulator, the device on a GPU).

An independent, loop-per-tile encoder written straight from the spec (``_spec_encode``) checks the vectorised one
word for word on random matrices; the layout itself is pinned by words worked out by hand. -0.0 is a zero: never
stored, read back as +0.0; padding sits on the first positions of its tile that hold no entry.
"""

from __future__ import annotations

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import scipy.sparse
from hypothesis import given
from hypothesis import strategies as st

from flashllm_nb.formats.tiled_csl import TILE_K, TILE_M, TILE_SIZE, TiledCSL, swizzle
from flashllm_nb.formats.tiled_csl.decode import entries
from flashllm_nb.formats.tiled_csl.layout import place_words_sorted
from tier import SIMULATOR, by_tier, device, host

F16, BF16 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)

# Bit patterns for the round trips: -0.0 (a zero: read back as +0.0), and what must come back bit-exactly: +-Inf,
# NaNs with payloads (quiet and signalling, both signs), the smallest and largest subnormals, the largest finite.
SPECIAL_BITS = {
    F16: [0x8000, 0x7C00, 0xFC00, 0x7E01, 0xFE55, 0x7C01, 0x0001, 0x03FF, 0x8001, 0x7BFF],
    BF16: [0x8000, 0x7F80, 0xFF80, 0x7FC1, 0xFFA5, 0x7F81, 0x0001, 0x007F, 0x8001, 0x7F7F],
}


def _spec_layout(tile_words: list[int]) -> list[int]:
    """The canonical order of one tile's entries (row-major in), as the format's docstring states it; 0 where the
    padding goes."""
    by_bank: dict[int, list[int]] = {}
    for w in tile_words:  # deal: round r takes the r-th entry of every bank that has one, banks ascending
        by_bank.setdefault(((w >> 16) >> 1) % 32, []).append(w)
    dealt = [by_bank[b][r] for r in range(max(map(len, by_bank.values()), default=0)) for b in range(32)
             if b in by_bank and r < len(by_bank[b])]
    out = [0] * (-(-len(dealt) // 4) * 4)
    for start in range(0, len(dealt), 128):  # transpose each block of 32 vectors: one 32-lane store per round
        block = dealt[start : start + 128]
        lanes = -(-len(block) // 4)
        holes = 4 * lanes - len(block)
        slots = [(s, lane) for s in range(4) for lane in range(lanes) if not (lane == lanes - 1 and s >= 4 - holes)]
        for (s, lane), w in zip(slots, block):
            out[start + 4 * lane + s] = w
    return out


def _spec_encode(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The format as the spec words it, one tile at a time: an independent check on the vectorised encoder."""
    M, K = bits.shape
    n_tile_rows, n_tile_cols = -(-M // TILE_M), -(-K // TILE_K)
    words, offsets = [], [0]
    for tr in range(n_tile_rows):
        for tc in range(n_tile_cols):
            tile = np.zeros((TILE_M, TILE_K), np.uint32)
            part = bits[tr * TILE_M : (tr + 1) * TILE_M, tc * TILE_K : (tc + 1) * TILE_K]
            tile[: part.shape[0], : part.shape[1]] = part
            tile[tile == 0x8000] = 0  # -0.0 is a zero
            rows, cols = np.nonzero(tile)  # row-major: ascending (row, col)
            tile_words = _spec_layout([(int(r) * 64 + (int(c) ^ ((int(r) % 8) << 3))) << 16 | int(tile[r, c])
                                       for r, c in zip(rows, cols)])
            holes = len(tile_words) - len(rows)  # the last words; padding q on the q-th zero, row-major
            free = np.flatnonzero(tile.reshape(-1) == 0)[:holes]
            tile_words[len(tile_words) - holes :] = [int(swizzle(int(f))) << 16 for f in free]
            words += tile_words
            offsets.append(offsets[-1] + len(tile_words) // 4)
    offsets.append(offsets[-1])
    return np.array(words, np.uint32), np.array(offsets, np.int32)


@st.composite
def sparse_bits(draw, max_side: int = 300):
    """(uint16 bit matrix, dtype): any shape up to max_side, any sparsity, random bits plus special values."""
    M = draw(st.integers(1, max_side))
    K = draw(st.integers(1, max_side))
    dtype = draw(st.sampled_from([F16, BF16]))
    sparsity = draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bits = rng.integers(0, 2**16, (M, K), dtype=np.uint16)  # every pattern: NaN payloads, subnormals, -0.0, ...
    specials = rng.random((M, K)) < 0.05
    bits[specials] = rng.choice(SPECIAL_BITS[dtype], int(specials.sum()))
    bits[rng.random((M, K)) < sparsity] = 0
    return bits, dtype


# --------------------------------------------------------------------------------------------------- layout


def test_swizzle_matches_hand_computed_positions():
    # row * 64 + (col ^ ((row % 8) << 3)), worked out by hand
    cases = {(0, 0): 0, (0, 63): 63, (1, 0): 72, (1, 8): 64, (1, 9): 65, (2, 63): 128 + 47, (7, 63): 448 + 7,
             (8, 5): 512 + 5, (9, 0): 576 + 8, (127, 63): 8128 + 7}
    assert {rc: swizzle(rc[0] * 64 + rc[1]) for rc in cases} == cases


def test_swizzle_is_an_involution_that_keeps_rows_and_chunk_sets():
    index = np.arange(TILE_M * TILE_K)
    position = swizzle(index)
    np.testing.assert_array_equal(swizzle(position), index)
    np.testing.assert_array_equal(position >> 6, index >> 6)  # stays in its row
    # eight consecutive rows put any one chunk in eight different 16-byte slots: conflict-free ldmatrix
    chunks = (position.reshape(TILE_M, TILE_K)[:, ::8] >> 3) & 7
    for r in range(0, TILE_M, 8):
        for c in range(8):
            assert len(set(chunks[r : r + 8, c])) == 8


def test_words_worked_out_by_hand_for_a_3x70_matrix():
    W = np.zeros((3, 70), np.uint16)
    W[0, 0] = 0x3C00  # 1.0
    W[1, 2] = 0xC000  # -2.0
    W[1, 9] = 0x3800  # 0.5
    W[2, 5] = 0x0000  # +0.0: not stored
    W[2, 63] = 0x8000  # -0.0: not stored either
    W[0, 64:70] = [0x0001, 0x03FF, 0xFC00, 0x7E01, 0x7BFF, 0x7C00]  # tile 1's row 0, full: subnormals, -inf, NaN,
    W[2, 64] = 0xFE55  # a negative NaN with a payload                # the largest finite value, +inf
    A = TiledCSL.from_dense(W.view(np.float16))
    expected_words = [
        # tile 0 (rows 0..2, columns 0..63): 3 entries and 1 padding word. Banks (position // 2 % 32): 0, 5, 0;
        # the deal's first round is positions 0, 74 (banks 0, 5), its second 65 (bank 0 again).
        0x0000_3C00,  # (0, 0):  0*64 + (0 ^ 0)           = 0
        0x004A_C000,  # (1, 2):  1*64 + (2 ^ 8)  = 64 + 10 = 74 = 0x4A
        0x0041_3800,  # (1, 9):  1*64 + (9 ^ 8)  = 64 + 1  = 65 = 0x41
        0x0001_0000,  # padding on the tile's first position without an entry, (0, 1): position 1
        # tile 1 (rows 0..2, columns 64..69; local columns below): 7 entries, positions 0..5 (banks 0, 0, 1, 1, 2,
        # 2) and (2, 0): 2*64 + (0 ^ 16) = 144 = 0x90 (bank 8). Dealt: 0, 2, 4, 144 | 1, 3, 5. Two vectors, one
        # padding slot: columns s = 0, 1, 2 take two dealt entries each (vector 0, vector 1), column 3 one.
        0x0000_0001,  # (0, 0)  s = 0, vector 0
        0x0004_7BFF,  # (0, 4)  s = 1, vector 0
        0x0001_03FF,  # (0, 1)  s = 2, vector 0
        0x0005_7C00,  # (0, 5)  s = 3, vector 0
        0x0002_FC00,  # (0, 2)  s = 0, vector 1
        0x0090_FE55,  # (2, 0)  s = 1, vector 1
        0x0003_7E01,  # (0, 3)  s = 2, vector 1
        0x0006_0000,  # padding on the first free position, (0, 6): matrix column 70, outside the 70 columns
    ]
    assert A.words.dtype == np.uint32 and A.tile_offsets.dtype == np.int32
    assert [hex(w) for w in A.words] == [hex(w) for w in expected_words]
    assert A.tile_offsets.tolist() == [0, 1, 3, 3]  # vectors: tile 0 ends at 1, tile 1 at 3, repeated
    assert A.nnz == 10
    np.testing.assert_array_equal(A.to_dense(bits=True), np.where(W == 0x8000, 0, W))
    TiledCSL.from_raw(A.words, A.tile_offsets, A.shape, A.dtype)  # the full check agrees


def test_padding_positions_are_swizzled_like_entries():
    W = np.zeros((128, 64), np.float16)
    W[0, :] = 1.0  # row 0 full, then (1, 0): the first free positions are (1, 1), (1, 2), (1, 3)
    W[1, 0] = 2.0
    A = TiledCSL.from_dense(W)
    assert A.words.size == 68 and A.nnz == 65
    # row 1 swizzles columns with 1 << 3: position 64 + (c ^ 8)
    assert [hex(w) for w in A.words[-3:]] == ["0x490000", "0x4a0000", "0x4b0000"]


def test_bfloat16_words_hold_bfloat16_bits():
    W = np.zeros((9, 1), ml_dtypes.bfloat16)
    W[8, 0] = 1.0  # bf16 0x3F80; row 8 swizzles like row 0: position 8*64 + 0 = 512 = 0x200
    A = TiledCSL.from_dense(W)
    assert A.dtype == BF16
    assert A.words.tolist() == [0x0200_3F80, 0x0000_0000, 0x0001_0000, 0x0002_0000]  # padding on positions 0, 1, 2


def test_fully_dense_tile_and_empty_tiles():
    W = np.zeros((256, 128), np.float16)
    W[:128, 64:] = 1.0  # tile 1 fully dense, tiles 0, 2, 3 empty
    A = TiledCSL.from_dense(W)
    assert A.tile_offsets.tolist() == [0, 0, 2048, 2048, 2048, 2048]
    assert A.words.size == 8192 and A.nnz == 8192
    # a dense tile stores every position exactly once; every bank has 256 entries, so each of the 256 rounds of
    # the deal is complete and every 32-lane store of the kernel (word s of 32 consecutive vectors) hits 32 banks
    np.testing.assert_array_equal(np.sort(A.words >> 16), np.arange(8192))
    banks = ((A.words >> 17) % 32).reshape(64, 32, 4)  # (block of 32 vectors, lane, word)
    assert all(len(set(banks[b, :, s])) == 32 for b in range(64) for s in range(4))


@given(sparse_bits())
def test_encoder_matches_the_spec_encoder(case):
    """The vectorised encoder's words and offsets equal a loop-per-tile encoding written from the spec."""
    bits, dtype = case
    A = TiledCSL.from_dense(bits.view(dtype))
    words, offsets = _spec_encode(bits)
    np.testing.assert_array_equal(A.words, words)
    np.testing.assert_array_equal(A.tile_offsets, offsets)


# --------------------------------------------------------------------------------------------------- round trips


def _without_negative_zeros(bits: np.ndarray) -> np.ndarray:
    """What a round trip gives back: every -0.0 as +0.0, every other bit pattern as it was."""
    return np.where(bits == 0x8000, np.uint16(0), bits)


@given(sparse_bits())
def test_dense_round_trip_is_bit_exact_but_for_negative_zero(case):
    """to_dense(from_dense(W)) has W's bit patterns, NaN payloads, +-Inf and subnormals included, with -0.0 read
    back as +0.0; the encoding is canonical (passes the full check) and nnz counts the patterns that are not
    zeros."""
    bits, dtype = case
    A = TiledCSL.from_dense(bits.view(dtype))
    dense = A.to_dense()
    assert dense.dtype == dtype and dense.shape == bits.shape
    np.testing.assert_array_equal(dense.view(np.uint16), _without_negative_zeros(bits))
    assert A.nnz == np.count_nonzero(bits & 0x7FFF)
    A.check_format(full_check=True)


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_special_values_round_trip(dtype):
    bits = np.zeros((130, 70), np.uint16)
    bits[::7, ::3].flat[: 4 * len(SPECIAL_BITS[dtype])] = SPECIAL_BITS[dtype] * 4
    assert (bits == 0x8000).sum() == 4  # the test means something: -0.0 is there
    A = TiledCSL.from_dense(bits.view(dtype))
    assert A.nnz == 4 * (len(SPECIAL_BITS[dtype]) - 1)
    np.testing.assert_array_equal(A.to_dense(bits=True), _without_negative_zeros(bits))
    assert not (A.words & 0xFFFF == 0x8000).any()


@given(sparse_bits())
def test_padding_sits_on_the_first_free_positions_of_its_tile(case):
    """Each tile's padding words (its last 0..3, value bits 0) hold, in order, the first positions of the tile in
    row-major order that hold no entry: never an entry's position, never the same position twice."""
    bits, dtype = case
    A = TiledCSL.from_dense(bits.view(dtype))
    for t in range(A.n_tiles):
        tile_words = A.words[4 * A.tile_offsets[t] : 4 * A.tile_offsets[t + 1]]
        is_padding = (tile_words & 0xFFFF) == 0
        n_pad = int(is_padding.sum())
        assert n_pad <= 3 and is_padding[len(tile_words) - n_pad :].all()  # a suffix
        entry_index = swizzle(tile_words[~is_padding] >> 16)
        padding_index = swizzle(tile_words[is_padding] >> 16)
        assert not np.isin(padding_index, entry_index).any()
        free = np.setdiff1d(np.arange(TILE_SIZE), entry_index)  # ascending: row-major
        np.testing.assert_array_equal(padding_index, free[:n_pad])


# Under the simulator on the host encoder, on the GPU on the CuPy / PyTorch one (device inputs).
MASKED = by_tier(sim=[((300, 200), 0.2), ((256, 128), 0.5), ((129, 65), 0.03)],
                 gpu=[((4096, 4096), 0.2), ((1000, 777), 0.1), ((129, 65), 0.5)])


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("shape, kept", MASKED)
def test_weights_pruned_with_a_mask_store_only_their_nonzeros(shape, kept, dtype):
    """``W * mask`` leaves -0.0 wherever W < 0; encoded in the session's tier (the host encoder under the
    simulator, the device encoder on a GPU), it stores exactly count_nonzero(W * mask) entries, the same words as
    the host encoding of the mask applied with +0.0 (padding on the same free positions), passes the full check,
    and reads the zeros back as +0.0."""
    rng = np.random.default_rng(shape[0])
    W = rng.standard_normal(shape).astype(dtype)
    mask = rng.random(shape) < kept
    P = W * mask.astype(dtype)
    assert (P.view(np.uint16) == 0x8000).sum() > 0.4 * (~mask).sum()  # the test means something
    A = TiledCSL.from_dense(device(P))
    assert A.on_device == (not SIMULATOR)
    assert A.nnz == np.count_nonzero(P) == np.count_nonzero(W[mask])
    B = TiledCSL.from_dense(np.where(mask, W, dtype.type(0)))
    assert (A.shape, A.dtype, A.nnz) == (B.shape, B.dtype, B.nnz)
    np.testing.assert_array_equal(host(A.words), B.words)
    np.testing.assert_array_equal(host(A.tile_offsets), B.tile_offsets)
    A.check_format(full_check=True)
    np.testing.assert_array_equal(host(A.to_dense(bits=True)), _without_negative_zeros(P.view(np.uint16)))


@given(sparse_bits(max_side=200))
def test_to_scipy_equals_the_dense_matrix(case):
    """to_scipy() is float32 CSR with sorted indices, one entry per stored element, each value bit-exact after
    widening (NaN payloads too; toarray() would quiet signalling NaNs, so the entries are compared directly)."""
    bits, dtype = case
    A = TiledCSL.from_dense(bits.view(dtype))
    S = A.to_scipy()
    assert S.format == "csr" and S.dtype == np.float32 and S.has_sorted_indices and S.nnz == A.nnz
    coo = S.tocoo()
    assert np.count_nonzero(bits[coo.row, coo.col] & 0x7FFF) == A.nnz == np.count_nonzero(bits & 0x7FFF)
    expected = bits.view(dtype).astype(np.float32)[coo.row, coo.col]
    np.testing.assert_array_equal(coo.data.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("shape", [(1, 1), (128, 64), (129, 65), (127, 63), (1, 300), (300, 1), (256, 192)])
def test_edge_shapes_round_trip(shape):
    rng = np.random.default_rng(sum(shape))
    W = rng.standard_normal(shape).astype(np.float16)
    W[rng.random(shape) < 0.5] = 0
    A = TiledCSL.from_dense(W)
    assert A.n_tile_rows == -(-shape[0] // 128) and A.n_tile_cols == -(-shape[1] // 64)
    assert A.tile_offsets.size == A.n_tiles + 2
    np.testing.assert_array_equal(A.to_dense(), W)


@pytest.mark.parametrize("shape", [(0, 0), (0, 70), (70, 0)])
def test_empty_matrix_is_legal(shape):
    A = TiledCSL.from_dense(np.zeros(shape, np.float16))
    assert A.n_tiles == 0 and A.nnz == 0 and A.sparsity == 1.0 and A.mean_tile_vectors == 0
    assert A.tile_offsets.tolist() == [0, 0] and A.words.size == 0
    assert A.to_dense().shape == shape and A.to_scipy().shape == shape
    TiledCSL.from_raw(A.words, A.tile_offsets, shape, np.float16)


def test_all_zero_matrix_stores_no_words():
    A = TiledCSL.from_dense(np.zeros((300, 200), ml_dtypes.bfloat16))
    assert A.words.size == 0 and A.nnz == 0 and A.sparsity == 1.0
    assert A.tile_offsets.tolist() == [0] * (A.n_tiles + 2)


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_both_zeros_are_dropped_and_read_back_as_positive_zero(dtype):
    A = TiledCSL.from_dense(np.array([[0.0, -0.0, 1.0, -1.0]], dtype))
    assert A.nnz == 2 and A.to_scipy().nnz == 2
    assert A.to_dense(bits=True).tolist() == [[0, 0, np.array(1.0, dtype).view(np.uint16),
                                              np.array(-1.0, dtype).view(np.uint16)]]


def test_non_contiguous_input():
    W = np.random.default_rng(1).standard_normal((70, 150)).astype(np.float16)
    W[W < 0.5] = 0
    A = TiledCSL.from_dense(W.T)
    np.testing.assert_array_equal(A.to_dense(), W.T)


# --------------------------------------------------------------------------------------------------- inputs


def test_uint16_bits_need_dtype():
    bits = np.array([[0x3F80, 0]], np.uint16)
    A = TiledCSL.from_dense(bits, dtype=ml_dtypes.bfloat16)
    assert A.dtype == BF16 and A.to_dense()[0, 0] == 1.0
    with pytest.raises(TypeError, match="what the uint16 bits of W encode"):
        TiledCSL.from_dense(bits)


def test_dtype_argument_never_casts():
    with pytest.raises(TypeError, match=r"Invalid dtype of dtype: expected None or W's own dtype float16"):
        TiledCSL.from_dense(np.ones((2, 2), np.float16), dtype=ml_dtypes.bfloat16)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.bool_])
def test_other_dtypes_are_refused_naming_W(dtype):
    with pytest.raises(TypeError, match=rf"Invalid dtype of W: expected float16 or bfloat16, got {np.dtype(dtype)}"):
        TiledCSL.from_dense(np.ones((2, 2), dtype))


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2), ()])
def test_dense_input_must_be_2d(shape):
    with pytest.raises(ValueError, match=rf"Invalid number of dimensions of W: expected 2, got {len(shape)}"):
        TiledCSL.from_dense(np.ones(shape, np.float16))


def test_non_arrays_are_refused():
    with pytest.raises(TypeError, match="Invalid type of W: expected a NumPy or CuPy array"):
        TiledCSL.from_dense([[1.0, 2.0]])


def test_dlpack_producer_on_the_host_is_accepted():
    class Producer:  # a minimal foreign tensor: only the DLPack protocol
        def __init__(self, array):
            self._array = array

        def __dlpack__(self, **kwargs):
            return self._array.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self._array.__dlpack_device__()

    W = np.array([[0.0, 3.0], [4.0, 0.0]], np.float16)
    A = TiledCSL.from_dense(Producer(W))
    assert not A.on_device
    np.testing.assert_array_equal(A.to_dense(), W)


def test_import_and_host_path_do_not_import_cupy():
    code = ("import sys, numpy as np, flashllm_nb as fl\n"
            "A = fl.TiledCSL.from_dense(np.eye(3, dtype=np.float16)); A.to_dense(); A.to_scipy(); repr(A)\n"
            "assert 'cupy' not in sys.modules, 'cupy imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------------- from_scipy


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil", "dok", "bsr"])
@pytest.mark.parametrize("kind", [scipy.sparse.csr_matrix, scipy.sparse.csr_array])
def test_from_scipy_equals_from_dense(fmt, kind):
    rng = np.random.default_rng(3)
    D = np.where(rng.random((150, 130)) < 0.1, rng.standard_normal((150, 130)), 0.0)
    A = TiledCSL.from_scipy(kind(D).asformat(fmt))
    B = TiledCSL.from_dense(D.astype(np.float16))
    np.testing.assert_array_equal(A.words, B.words)
    np.testing.assert_array_equal(A.tile_offsets, B.tile_offsets)


def test_from_scipy_sums_duplicates_and_drops_zeros():
    S = scipy.sparse.coo_array(([1.0, 2.0, 0.0, -1e-9, -0.0, 5.0], ([0, 0, 1, 2, 3, 3], [0, 0, 1, 2, 3, 4])),
                               shape=(4, 200))
    A = TiledCSL.from_scipy(S)  # 1+2 summed; explicit 0, an underflowing value and -0.0 dropped
    assert A.nnz == 2
    assert A.to_dense()[0, 0] == 3.0 and A.to_dense()[3, 4] == 5.0


def test_from_scipy_keeps_the_callers_matrix():
    S = scipy.sparse.coo_array(([1.0, 2.0], ([0, 0], [0, 0])), shape=(1, 1))
    TiledCSL.from_scipy(S)
    assert S.nnz == 2


def test_from_scipy_bfloat16_and_specials():
    S = scipy.sparse.csr_array(np.array([[np.inf, 0, np.nan], [3e38, 1.0, 0]]))
    A = TiledCSL.from_scipy(S, dtype=ml_dtypes.bfloat16)  # 3e38 fits bfloat16 (max ~3.39e38)
    D = A.to_dense().astype(np.float64)
    assert D[0, 0] == np.inf and np.isnan(D[0, 2]) and D[1, 1] == 1.0 and abs(D[1, 0] - 3e38) < 1e36


def test_from_scipy_refuses_overflow():
    S = scipy.sparse.csr_array(np.array([[1.0, 0.0], [0.0, 70000.0]]))
    with pytest.raises(ValueError, match=r"Invalid value of S: expected values that fit float16 \(\|x\| <= 65504.0\), "
                                         r"got 70000.0 at \(1, 1\) and 0 more"):
        TiledCSL.from_scipy(S)


def test_from_scipy_refuses_non_sparse_and_complex():
    with pytest.raises(TypeError, match="Invalid type of S: expected a scipy.sparse matrix or array, got ndarray"):
        TiledCSL.from_scipy(np.eye(2))
    with pytest.raises(TypeError, match="Invalid dtype of S: expected real or boolean values, got complex128"):
        TiledCSL.from_scipy(scipy.sparse.csr_array(np.eye(2, dtype=complex)))
    with pytest.raises(TypeError, match="Invalid dtype of dtype: expected float16 or bfloat16"):
        TiledCSL.from_scipy(scipy.sparse.eye(2), dtype=np.float32)


# --------------------------------------------------------------------------------------------------- properties


def test_properties_and_repr():
    W = np.zeros((300, 100), np.float16)
    W[::3, ::2] = 1.0  # 100 x 50 = 5000 entries
    A = TiledCSL.from_dense(W)
    assert A.shape == (300, 100) and A.dtype == F16 and A.nnz == 5000
    assert A.tile_shape == (128, 64) and (A.n_tile_rows, A.n_tile_cols, A.n_tiles) == (3, 2, 6)
    # Entries per tile: 43 x 32 and 43 x 18 in tile rows 0 and 1, 14 x 32 and 14 x 18 in row 2, each tile padded
    # to whole 4-word vectors: (2 * (344 + 194) + 112 + 63) / 6 = 208.5 vectors, rounded up.
    assert A.mean_tile_vectors == 209
    assert A.nbytes == A.words.nbytes + A.tile_offsets.nbytes == 4 * A.words.size + 4 * 8
    assert A.sparsity == pytest.approx(1 - 5000 / 30000)
    assert not A.on_device and A.to_host() is A
    assert repr(A) == f"<TiledCSL 300x100 float16, nnz=5000 (83.3% sparse), {A.nbytes / 1e3:.1f} kB, host>"


def test_nnz_of_a_checked_wrap_counts_entries_not_padding():
    A = TiledCSL(np.array([0x3C00, 0, 0, 0], np.uint32), np.array([0, 1, 1], np.int32), (1, 1), np.float16)
    assert A.nnz == 1 and A.sparsity == 0.0


@given(sparse_bits(max_side=400))
def test_the_sorted_layout_of_the_gpu_encoder_equals_the_host_loop(case):
    """The GPU encoder lays words out with whole-array operations (two sorts, ``layout_sorted``, and binary
    searches for the padding), the host encoder with a compiled loop; run the GPU one on NumPy here and compare word
    for word, padding included."""
    bits, dtype = case
    A = TiledCSL.from_dense(bits.view(dtype))  # host: the loop
    tiles, index, values = entries(np, A.words, A.tile_offsets)
    keys = np.sort(tiles.astype(np.int64) * TILE_SIZE + index)
    packed = (swizzle(keys & (TILE_SIZE - 1)).astype(np.uint32) << 16) | bits.view(np.uint16)[
        (keys >> 13) // A.n_tile_cols * TILE_M + (keys & (TILE_SIZE - 1)) // TILE_K,
        (keys >> 13) % A.n_tile_cols * TILE_K + (keys & (TILE_K - 1))]
    starts = np.searchsorted(keys, np.arange(A.n_tiles + 1) * TILE_SIZE)
    words = np.zeros_like(A.words)
    place_words_sorted(np, keys, packed, starts, A.tile_offsets, words)
    np.testing.assert_array_equal(words, A.words)
