"""Tiled-Bitmap: the format (layout, round trips, every invariant check) on the host, and the kernel's bitmap stage
on A in that format, element by element against the float64 reference in the session's tier (the simulator at
small sizes, the GPU at OPT-30B's decode shapes).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import flashllm_nb as fl
from flashllm_nb.formats.tiled_bitmap import BITMAP_VECTORS, VALUES_PER_VECTOR, TiledBitmap
from flashllm_nb.kernels.spmm import plan as spmm_plan
from flashllm_nb.kernels.spmm.config import SpmmConfig
from spmm_checks import BF16, F16, check_product, random_activations, random_sparse
from tier import SIMULATOR, by_tier, device


def stored_bits(W: np.ndarray) -> np.ndarray:
    """What the format keeps of W: every bit pattern, but both zeros as +0.0."""
    bits = W.view(np.uint16)
    return np.where((bits & 0x7FFF) == 0, 0, bits).astype(np.uint16)


# ------------------------------------------------------------------------------------------------------- format


def test_layout_of_a_small_matrix():
    """Two entries in two tiles: each tile is its 64 bitmap vectors and one value vector (first position, value,
    zeros); the bitmap bit of (row, col) is bit col % 32 of word 2 * row + col // 32."""
    W = np.zeros((3, 70), np.float16)
    W[1, 2], W[0, 65] = 1.0, -2.0
    A = TiledBitmap.from_dense(W)
    assert A.tile_offsets.tolist() == [0, 65, 130, 130]
    words = A.words.reshape(-1, 4)
    bitmap0, values0 = words[:BITMAP_VECTORS].reshape(-1), words[BITMAP_VECTORS]
    assert np.flatnonzero(bitmap0).tolist() == [2] and bitmap0[2] == 1 << 2
    assert values0.tolist() == [(0x3C00 << 16) | (1 * 64 + 2), 0, 0, 0]
    bitmap1, values1 = words[65 : 65 + BITMAP_VECTORS].reshape(-1), words[65 + BITMAP_VECTORS]
    assert np.flatnonzero(bitmap1).tolist() == [0] and bitmap1[0] == 1 << 1
    assert values1.tolist() == [(0xC000 << 16) | 1, 0, 0, 0]
    assert A.nnz == 2


def test_value_vectors_hold_seven_entries_in_row_major_order():
    W = np.zeros((128, 64), np.float16)
    cells = [(0, 63), (1, 0), (1, 5), (2, 33), (5, 7), (9, 40), (9, 41), (127, 0), (127, 63)]
    for i, (r, c) in enumerate(cells):
        W[r, c] = i + 1
    A = TiledBitmap.from_dense(W)
    slots = A.words.view(np.uint16).reshape(-1, 8)[BITMAP_VECTORS:]
    assert slots.shape == (2, 8)
    assert slots[0, 0] == 63 and slots[1, 0] == 127 * 64  # first positions of entries 0 and 7
    values = np.concatenate([slots[0, 1:], slots[1, 1:]]).view(np.float16)
    assert values[: len(cells)].tolist() == list(range(1, len(cells) + 1))
    assert (values[len(cells):] == 0).all()


@given(m=st.integers(0, 300), k=st.integers(0, 200), density=st.sampled_from([0.0, 0.01, 0.2, 0.6, 1.0]),
       bf16=st.booleans(), seed=st.integers(0, 2**31))
def test_round_trip(m, k, density, bf16, seed):
    """Any shape (edge tiles, empty), any density; -0.0 reads back as +0.0, NaN and Inf bit-exactly; the full
    check passes on what the encoder writes, and nnz counts the entries."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((m, k)) * (rng.random((m, k)) < density)).astype(BF16 if bf16 else F16)
    special = rng.random((m, k))
    W[special < 0.02] = -0.0
    W[(special > 0.98) & (special < 0.99)] = np.nan
    W[special > 0.995] = -np.inf
    A = TiledBitmap.from_dense(W)
    assert A.dtype == W.dtype and A.shape == (m, k)
    assert (A.to_dense(bits=True) == stored_bits(W)).all()
    assert A.nnz == int(np.count_nonzero(stored_bits(W)))
    B = TiledBitmap.from_raw(A.words, A.tile_offsets, A.shape, A.dtype)
    assert B.nnz == A.nnz


def test_bytes_at_80_percent():
    """0.2 * 16 / 7 + 1 / 8 = 0.582 bytes an element at 80 %, against Tiled-CSL's 0.8."""
    rng = np.random.default_rng(1)
    W = random_sparse(rng, 1024, 1024, 0.8, F16)
    per_element = TiledBitmap.from_dense(W).nbytes / W.size
    assert abs(per_element - (0.2 * 16 / 7 + 1 / 8)) < 0.01
    assert per_element < 0.75 * fl.TiledCSL.from_dense(W).nbytes / W.size


def test_empty_tiles_store_nothing():
    W = np.zeros((256, 192), np.float16)
    W[200, 100] = 3.0  # tile (1, 1) only
    A = TiledBitmap.from_dense(W)
    assert np.diff(A.tile_offsets).tolist() == [0, 0, 0, 0, BITMAP_VECTORS + 1, 0, 0]


def _broken(mutate, W=None):
    """Encode W (a default 80 %-sparse 200 x 100 fp16), mutate copies of its arrays, and return what from_raw says."""
    if W is None:
        W = random_sparse(np.random.default_rng(3), 200, 100, 0.8, F16)
    A = TiledBitmap.from_dense(W)
    words, offsets = A.words.copy(), A.tile_offsets.copy()
    mutate(words, offsets)
    with pytest.raises((ValueError, TypeError)) as raised:
        TiledBitmap.from_raw(words, offsets, A.shape, A.dtype)
    return str(raised.value)


def test_check_format_names_each_broken_invariant():
    W = random_sparse(np.random.default_rng(3), 200, 100, 0.8, F16)
    A = TiledBitmap.from_dense(W)
    first_values = (BITMAP_VECTORS * 4)  # word index of tile 0's first value vector

    def clear_a_bit(words, offsets):  # tile 0's bitmap claims one entry fewer than its value vectors hold
        h = int(np.flatnonzero(words[:256])[-1])
        words[h] &= ~np.uint32(1 << (int(words[h]).bit_length() - 1))  # its last entry's mark

    count0 = int(np.count_nonzero(W[:128, :64]))
    if count0 % VALUES_PER_VECTOR == 1:  # one vector fewer: the sizes disagree
        assert "value vectors; the tile has" in _broken(clear_a_bit)
    else:  # the last vector's last value slot is now past the last entry, and not 0
        assert "must be 0" in _broken(clear_a_bit)
    assert "starts at position" in _broken(lambda w, o: w.__setitem__(first_values, w[first_values] ^ 1))

    def zero_value(words, offsets):
        words[first_values] &= np.uint32(0xFFFF)  # value 0 of vector 0 becomes +0.0

    assert "zeros are not stored" in _broken(zero_value)

    def negative_zero(words, offsets):
        words[first_values] = (words[first_values] & np.uint32(0xFFFF)) | np.uint32(0x8000 << 16)

    assert "zeros are not stored" in _broken(negative_zero)

    def dirty_padding(words, offsets):
        last = int(offsets[1]) - 1  # tile 0's last vector
        words[4 * last + 3] |= np.uint32(0x3C00 << 16)

    assert count0 % VALUES_PER_VECTOR not in (0, VALUES_PER_VECTOR - 1)  # slot 7 of the last vector is padding
    assert "must be 0" in _broken(dirty_padding)
    assert "tile_offsets[0]" in _broken(lambda w, o: o.__setitem__(0, 1))
    assert "repeat" in _broken(lambda w, o: o.__setitem__(-1, o[-1] + 1))
    assert "decrease" in _broken(lambda w, o: o.__setitem__(1, o[2] + 1))
    with pytest.raises(TypeError, match="words"):
        TiledBitmap(A.words.astype(np.int32), A.tile_offsets, A.shape, A.dtype)
    with pytest.raises(ValueError, match="tile_offsets has"):
        TiledBitmap(A.words, A.tile_offsets[:-1], A.shape, A.dtype)
    with pytest.raises(ValueError, match="words has"):
        TiledBitmap(A.words[:-4], A.tile_offsets, A.shape, A.dtype)
    strided = np.zeros(2 * A.words.size, np.uint32)
    strided[::2] = A.words
    with pytest.raises(ValueError, match="Invalid memory layout of words: expected a C-contiguous"):
        TiledBitmap(strided[::2], A.tile_offsets, A.shape, A.dtype)


@pytest.mark.parametrize("row,col", [(100, 0), (5, 40)])
def test_bits_outside_the_shape_are_refused(row, col):
    """A mark below the 100 rows or right of the 40 columns of an edge tile; its value slot is filled in, so that
    only the mark's place is wrong."""
    W = np.zeros((100, 40), np.float16)
    W[99, 39] = 1.0
    A = TiledBitmap.from_dense(W)
    words = A.words.copy()
    words[2 * row + col // 32] |= np.uint32(1 << (col % 32))
    slots = words.view(np.uint16)
    slots[BITMAP_VECTORS * 8 + 2] = 0x4000  # a second value, 2.0
    slots[BITMAP_VECTORS * 8] = min(row * 64 + col, 99 * 64 + 39)  # the first entry in row-major order
    with pytest.raises(ValueError, match=f"row {row}, column {col}, which is matrix element .* outside the shape"):
        TiledBitmap.from_raw(words, A.tile_offsets, A.shape, A.dtype)


def test_other_broken_invariants_are_refused():
    W = np.zeros((4, 4), np.float16)
    W[1, 2] = 1.0
    A = TiledBitmap.from_dense(W)
    with pytest.raises(TypeError, match="Invalid type of tile_offsets: expected a NumPy or CuPy array, got list"):
        TiledBitmap(A.words, list(A.tile_offsets), A.shape, A.dtype)
    with pytest.raises(ValueError, match=r"tile 0 has 68 vectors; expected 0 .no entries. or the 64 .* 1 to 3 value"):
        TiledBitmap(np.zeros(4 * 68, np.uint32), np.array([0, 68, 68], np.int32), A.shape, A.dtype)
    empty_bitmap = A.words.copy()
    empty_bitmap[:256] = 0
    with pytest.raises(ValueError, match="tile 0 has 65 vectors but its bitmap is empty"):
        TiledBitmap.from_raw(empty_bitmap, A.tile_offsets, A.shape, A.dtype)
    two = A.words.copy()
    two[2] |= np.uint32(1)  # a second entry (1, 0) before (1, 2): the bitmap has 2, the vector 1 and a 0 slot
    with pytest.raises(ValueError, match="starts at position|zeros are not stored|must be 0"):
        TiledBitmap.from_raw(two, A.tile_offsets, A.shape, A.dtype)


def test_a_tile_of_only_a_bitmap_is_refused():
    W = np.ones((4, 4), np.float16)
    A = TiledBitmap.from_dense(W)
    with pytest.raises(ValueError, match="0 .no entries. or the 64"):
        TiledBitmap(A.words[: 4 * BITMAP_VECTORS], np.array([0, BITMAP_VECTORS, BITMAP_VECTORS], np.int32),
                    A.shape, A.dtype)


# ------------------------------------------------------------------------------------------------------- plan


def test_plan_zeroes_by_rows_and_sizes_the_buffer_to_the_values():
    p = spmm_plan.plan(7168, 1, 7168, "float16", "nk", tile_vectors=235, sparse="bitmap")
    assert p.config.sparse == "bitmap" and p.config.clear == "rows" and p.config.prefetch_vectors == 256
    p = spmm_plan.plan(7168, 1, 7168, "float16", "nk", tile_vectors=352, sparse="bitmap")
    assert p.config.prefetch_vectors == 384
    with pytest.raises(ValueError, match="zeroes by rows only"):
        SpmmConfig(tile_n=8, sparse="bitmap", clear="entries")


# ------------------------------------------------------------------------------------------------------- kernel

KERNEL_CASES = by_tier(
    sim=[  # (m, k, n, sparsity, force, split_k)
        (130, 200, 1, 0.8, None, None),  # N = 1, edge tiles on both sides
        (256, 640, 16, 0.0, None, None),  # dense tiles: value vectors beyond the register buffer
        (256, 320, 8, 1.0, None, None),  # empty: every tile absent
        (300, 700, 5, 0.9, spmm_plan.Force(mma="wgmma"), 3),  # wgmma, split-K
        (200, 300, 40, 0.7, spmm_plan.Force(mma="wgmma", warps=8), None),  # 8 warps: one bitmap word a thread
        (129, 1000, 3, 0.98, spmm_plan.Force(mma="sync"), 4),  # mostly empty tiles, split-K
        (128, 64, 2, 0.5, None, None),  # one k-tile: the prologue alone
        (200, 128, 3, 0.6, None, 2),  # one k-tile a block
        (256, 128, 1, 0.7, spmm_plan.Force(mma="wgmma"), None),  # two k-tiles a block
    ],
    gpu=[
        (7168, 7168, 1, 0.8, None, None), (21504, 7168, 1, 0.8, None, None), (28672, 7168, 16, 0.8, None, None),
        (7168, 28672, 1, 0.9, None, None), (7168, 28672, 16, 0.7, None, None), (4096, 4096, 64, 0.5, None, None),
        (4096, 4096, 16, 0.0, None, None), (4096, 4096, 16, 0.99, None, None), (4100, 3000, 7, 0.8, None, 5),
    ],
)


@pytest.mark.parametrize("m,k,n,sparsity,force,split_k", KERNEL_CASES)
def test_linear(m, k, n, sparsity, force, split_k):
    rng = np.random.default_rng(m + k + n)
    check_product(random_sparse(rng, m, k, sparsity, F16), random_activations(rng, n, k, F16), split_k=split_k,
                  force=force, matrix_format=TiledBitmap)


@pytest.mark.parametrize("split_k", [1, 3, 5])
def test_empty_dense_and_sparse_tiles_in_a_row(split_k):
    """Five k-tiles per tile row, each empty, dense, one entry at a corner, or sparse, in every order a block of
    one, two or five k-tiles sees them (split-K 5, 3 or 1): a tile's bitmap and values never belong to another."""
    rng = np.random.default_rng(split_k)
    m, k = by_tier(sim=(256, 320), gpu=(1024, 320))
    W = np.zeros((m, k), np.float16)
    for tile_row in range(m // 128):
        for tile_col, kind in enumerate(np.roll(["empty", "dense", "corner", "sparse", "empty"], tile_row)):
            rows, cols = slice(128 * tile_row, 128 * tile_row + 128), slice(64 * tile_col, 64 * tile_col + 64)
            if kind == "dense":
                W[rows, cols] = random_sparse(rng, 128, 64, 0.0, F16)
            elif kind == "corner":
                W[128 * tile_row + 127, 64 * tile_col + 63] = 1.5
            elif kind == "sparse":
                W[rows, cols] = random_sparse(rng, 128, 64, 0.9, F16)
    check_product(W, random_activations(rng, 4, k, F16), split_k=split_k, matrix_format=TiledBitmap)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the simulator's uint32 wrapping
@pytest.mark.parametrize("damage", ["empty bitmap", "position past the tile"])
def test_a_matrix_built_without_the_checks_stays_in_bounds(damage):
    """The cheap constructor lets through a bitmap of no marks under a tile of value vectors, or a first position
    past the tile's 8192: the kernel must still end and touch nothing outside its buffers (the simulator raises on
    any index outside an array). The values are wrong; only ``from_raw``'s full check refuses such arrays."""
    rng = np.random.default_rng(4)
    W = random_sparse(rng, 130, 100, 0.8, F16)
    A = TiledBitmap.from_dense(W)
    words = A.words.copy()
    if damage == "empty bitmap":
        words[: 4 * BITMAP_VECTORS] = 0
    else:
        words.view(np.uint16)[8 * BITMAP_VECTORS] = 0xFFFF
    broken = TiledBitmap(device(words), device(A.tile_offsets), A.shape, A.dtype)
    with pytest.raises(ValueError):
        broken.check_format(full_check=True)
    y = fl.linear(device(random_activations(rng, 2, 100, F16)), broken)
    assert y.shape == (2, 130)


def test_awkward_values_bias_relu_bf16():
    """NaN, Inf and -0.0 among the weights, bf16, a bias and the fused ReLU, in one product."""
    rng = np.random.default_rng(11)
    m, k, n = by_tier(sim=(140, 130, 3), gpu=(3000, 2000, 9))
    W = random_sparse(rng, m, k, 0.8, BF16)
    W[5, 7], W[6, 8], W[7, 9] = np.nan, np.inf, -0.0
    bias = rng.standard_normal(m).astype(BF16)
    check_product(W, random_activations(rng, n, k, BF16), bias=bias, relu=True, matrix_format=TiledBitmap)


def test_spmm_kn_layout():
    rng = np.random.default_rng(12)
    m, k, n = by_tier(sim=(200, 150, 24), gpu=(4096, 4096, 48))
    check_product(random_sparse(rng, m, k, 0.8, F16), random_activations(rng, n, k, F16), layout="kn",
                  matrix_format=TiledBitmap)


def test_wrong_device_is_refused():
    A = TiledBitmap.from_dense(np.eye(8, dtype=np.float16))
    X = np.ones((2, 8), np.float16)
    if SIMULATOR:
        pytest.skip("under the simulator host matrices are the device's")
    with pytest.raises(ValueError, match="A"):
        fl.linear(device(X), A)


def test_ml_dtypes_bf16_from_numpy():
    W = np.array([[1.5, 0, -2]], ml_dtypes.bfloat16)
    A = TiledBitmap.from_dense(W)
    assert A.dtype == np.dtype(ml_dtypes.bfloat16) and A.to_dense().tolist() == W.tolist()
