"""The Tiled-CSL SpMM kernel in Numba's CUDA simulator, checked element by element against the float64 reference.

The simulator runs the same kernel source as the GPU (PTX instructions replaced by their lane-level twins), one
Python thread per CUDA thread, so shapes stay at a few tiles. The awkward cases are swept on purpose: shapes that
are not tile multiples, N = 1 and N not a multiple of 8, empty and fully dense tiles, tiles denser than the
register budget (the overflow pass), split-K on and off, NaN and Inf, bf16, bias, a caller's ``out``.

The simulator plays a Hopper GPU, so ``linear`` plans the wgmma kernels; tests parametrized by ``path`` run the
``linear`` cases a second time with the mma.sync kernels that every other GPU's ``linear`` takes (``spmm`` always
takes them), forced through ``plan.Force``, as are the clearing and register-buffer variants.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flashllm_nb as fl
from flashllm_nb.kernels.spmm import plan as spmm_plan
from flashllm_nb.reference import linear_reference, spmm_reference
from flashllm_nb.reference.spmm import abs_product
from flashllm_nb.reference.tolerance import assert_close_to_reference

pytestmark = pytest.mark.sim

DTYPES = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]


BOTH_PATHS = pytest.mark.parametrize("path", ["wgmma", "sync"])


def _force(path=None, clear=None, prefetch_vectors=None):
    """The plan choices a test fixes (None: the plan's own); the simulator plays a Hopper GPU, where linear takes
    the wgmma kernels unless told otherwise."""
    assert spmm_plan.mma_for("nk") == "wgmma", "the simulator is meant to play a Hopper GPU"
    return spmm_plan.Force(mma=path, clear=clear, prefetch_vectors=prefetch_vectors)


def _random_sparse(rng, m, k, sparsity, dtype):
    W = rng.standard_normal((m, k)).astype(np.float32)
    W[rng.random((m, k)) < sparsity] = 0
    return W.astype(dtype)


def _check_linear(W, X, bias=None, split_k=None, force=None):
    A = fl.TiledCSL.from_dense(W)
    Y = fl.linear(X, A, bias=bias, split_k=split_k, force=force)
    assert Y.dtype == W.dtype and Y.shape == (X.shape[0], W.shape[0])
    ref = linear_reference(X, A, bias)
    assert_close_to_reference(Y, ref, abs_product(X, W.T), W.shape[1], W.dtype, what="linear")


def _check_spmm(W, X, split_k=None, force=None):
    A = fl.TiledCSL.from_dense(W)
    Y = fl.spmm(A, X, split_k=split_k, force=force)
    assert Y.dtype == W.dtype and Y.shape == (W.shape[0], X.shape[1])
    assert_close_to_reference(Y, spmm_reference(A, X), abs_product(W, X), W.shape[1], W.dtype, what="spmm")


_LINEAR_CASES = dict(
    m=st.integers(1, 260),
    k=st.integers(1, 200),
    n=st.integers(1, 40),
    sparsity=st.floats(0.0, 1.0),
    dtype=st.sampled_from(DTYPES),
    split_k=st.sampled_from([None, 1, 2, 3]),
    seed=st.integers(0, 2**32 - 1),
)


@settings(max_examples=40)
@given(**_LINEAR_CASES)
def test_linear_matches_reference(m, k, n, sparsity, dtype, split_k, seed):
    """linear(X, A) equals X @ A.T within the fp32-accumulation bound, for any shape, density, dtype and split
    (on the simulated Hopper: the wgmma kernels)."""
    _linear_case(m, k, n, sparsity, dtype, split_k, seed)


@settings(max_examples=15, suppress_health_check=[HealthCheck.too_slow])
@given(**_LINEAR_CASES)
def test_linear_matches_reference_with_mma_sync(m, k, n, sparsity, dtype, split_k, seed):
    """The same property on the mma.sync kernels that linear takes on GPUs other than Hopper."""
    _linear_case(m, k, n, sparsity, dtype, split_k, seed, _force("sync"))


def _linear_case(m, k, n, sparsity, dtype, split_k, seed, force=None):
    rng = np.random.default_rng(seed)
    _check_linear(_random_sparse(rng, m, k, sparsity, dtype), rng.standard_normal((n, k)).astype(dtype),
                  split_k=split_k, force=force)


@settings(max_examples=25)
@given(
    m=st.integers(1, 200),
    k=st.integers(1, 150),
    n=st.integers(1, 40),
    sparsity=st.floats(0.0, 1.0),
    dtype=st.sampled_from(DTYPES),
    split_k=st.sampled_from([None, 1, 2]),
    seed=st.integers(0, 2**32 - 1),
)
def test_spmm_matches_reference(m, k, n, sparsity, dtype, split_k, seed):
    """spmm(A, X) equals A @ X (X as K x N row-major, the transposed-load path) within the same bound."""
    rng = np.random.default_rng(seed)
    _check_spmm(_random_sparse(rng, m, k, sparsity, dtype), rng.standard_normal((k, n)).astype(dtype),
                split_k=split_k)


@pytest.mark.parametrize("path, n", [("wgmma", n) for n in (1, 7, 8, 9, 16, 33, 64, 65)]
                         + [("sync", n) for n in (1, 9, 16, 33)])
def test_every_block_width(path, n):
    """Each tile_n (8/16/32/64) and the column-block grid beyond 64, with N on and off multiples of 8."""
    rng = np.random.default_rng(n)
    _check_linear(_random_sparse(rng, 130, 72, 0.7, np.float16), rng.standard_normal((n, 72)).astype(np.float16),
                  force=_force(path))


@pytest.mark.parametrize("path, dtype", [("wgmma", DTYPES[0]), ("wgmma", DTYPES[1]), ("sync", DTYPES[0])],
                         ids=["wgmma-fp16", "wgmma-bf16", "sync-fp16"])
def test_empty_dense_and_overflowing_tiles(path, dtype):
    """Tile rows/columns that are entirely empty next to fully dense tiles (8192 entries: more than the 2560 the
    registers prefetch for a matrix this dense, so the overflow pass runs), across split-K boundaries."""
    rng = np.random.default_rng(1)
    W = rng.standard_normal((256, 4 * 64)).astype(dtype)
    W[:128, 64:192] = 0  # two empty tiles in tile row 0
    W[128:, :64] = 0  # an empty tile in tile row 1; the rest is fully dense
    X = rng.standard_normal((5, 256)).astype(dtype)
    A = fl.TiledCSL.from_dense(W)
    assert spmm_plan.prefetch_for(4, 8, A.mean_tile_vectors) == 640  # the larger register buffer is the one exercised here
    for split_k in (1, 2, 4):
        _check_linear(W, X, split_k=split_k, force=_force(path))


# spmm ("kn") always takes mma.sync, so its wgmma cases would repeat the sync ones; "entries" is planned for 4-warp
# blocks up to tile_n 16 only, and checked with 8 warps on the wgmma path too (256 threads behind each barrier).
# The last field is the "entries" register buffer: None = the plan's for this matrix (~389 vectors per tile: 512 on
# the wgmma path, 256 with 8 warps), or 256 / 384 forced (the buffers of sparser matrices; mma.sync never gets 512).
# With 256 the wgmma path at N = 16 gets two activation stages (stages_for).
_SEQUENCE_CASES = [(path, "rows", layout, n, None) for path in ("wgmma", "sync")
                   for layout, n in (("nk", 16), ("kn", 16), ("nk", 64)) if not (path == "wgmma" and layout == "kn")]
_SEQUENCE_CASES += [("wgmma", "entries", "nk", 16, None), ("wgmma", "entries", "nk", 16, 256),
                    ("wgmma", "entries", "nk", 16, 384), ("sync", "entries", "nk", 16, 384),
                    ("sync", "entries", "kn", 16, 384), ("wgmma", "entries", "nk", 64, None)]


@pytest.mark.parametrize("path, clearing, x_layout, n, entries_buffer", _SEQUENCE_CASES)
def test_tile_sequence_leaves_no_stale_values(path, clearing, x_layout, n, entries_buffer):
    """Along one tile row, sparse tiles, a dense tile (more words than the registers prefetch), empty tiles and a
    one-entry tile (three padding words) follow each other in the two alternating A buffers, so a value that the
    clearing between tiles missed would enter a later tile's product (kernels that skipped clearing part of a
    buffer, or the last word of each vector, failed this test). clear="rows": each warp clears the rows it read;
    "entries": each thread the positions it scattered (after the mbarrier with mma.sync; on the wgmma path a step
    after, before a second barrier), or the whole buffer after a tile denser than its registers (the dense tile and
    the 30 %-dense one, 614 vectors); 11 tiles are five rounds of the loop unrolled by two and one step.
    N = 16 checks 4-warp blocks, N = 64 on the wgmma path 8-warp ones (two warpgroups)."""
    force = _force(path if x_layout == "nk" else None, clearing, entries_buffer)
    rng = np.random.default_rng(3)
    densities = [0.1, 0.12, 1.0, 0.05, 0.0, 0.3, 0.1, 0.0, 0.2, 0.08, 0.15]
    W = np.zeros((128, 64 * len(densities)), np.float32)
    for t, density in enumerate(densities):
        W[:, 64 * t:64 * (t + 1)] = np.where(rng.random((128, 64)) < density, rng.standard_normal((128, 64)), 0)
    W[5, 64 * 7 + 3] = 1.5  # the one entry of tile 7
    W = W.astype(np.float16)
    tile_vectors = fl.TiledCSL.from_dense(W).mean_tile_vectors
    config = spmm_plan.plan(128, n, W.shape[1], "float16", x_layout, tile_vectors=tile_vectors, force=force).config
    assert config.clear == clearing
    if entries_buffer is not None:
        assert config.prefetch_vectors == entries_buffer
    assert config.stages == (2 if entries_buffer == 256 else 4)
    if x_layout == "nk":
        _check_linear(W, rng.standard_normal((n, W.shape[1])).astype(np.float16), split_k=1, force=force)
    else:
        _check_spmm(W, rng.standard_normal((W.shape[1], n)).astype(np.float16), split_k=1, force=force)


@pytest.mark.parametrize("path, n, split_k", [("wgmma", 16, 1), ("wgmma", 16, 3), ("wgmma", 5, 3), ("sync", 9, 2)])
def test_sparse_matrices_clear_by_entries(path, n, split_k):
    """A 93 %-sparse matrix is planned with clear="entries" (the plan's own choice, not forced), and its product
    is right for block k ranges of both lengths modulo the loop's unrolling by two (7 k-tiles split 1, 2 or 3
    ways: 7; 4 and 3; 3, 3 and 1). At N = 16 on the wgmma path the plan gives the block two activation stages
    (one tile ahead instead of three)."""
    rng = np.random.default_rng(n)
    W = _random_sparse(rng, 130, 7 * 64 - 5, 0.93, np.float16)
    A = fl.TiledCSL.from_dense(W)
    force = _force(path)
    config = spmm_plan.plan(130, n, W.shape[1], "float16", "nk", tile_vectors=A.mean_tile_vectors, force=force).config
    assert config.clear == "entries"
    assert config.stages == (2 if (path, n) == ("wgmma", 16) else 4)
    _check_linear(W, rng.standard_normal((n, W.shape[1])).astype(np.float16), split_k=split_k, force=force)


def test_all_zero_matrix_gives_zeros_and_bias():
    rng = np.random.default_rng(2)
    W = np.zeros((100, 70), np.float16)
    X = rng.standard_normal((3, 70)).astype(np.float16)
    bias = rng.standard_normal(100).astype(np.float16)
    A = fl.TiledCSL.from_dense(W)
    np.testing.assert_array_equal(fl.linear(X, A), np.zeros((3, 100), np.float16))
    np.testing.assert_array_equal(fl.linear(X, A, bias=bias), np.broadcast_to(bias, (3, 100)))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
def test_bias_and_caller_output(dtype):
    rng = np.random.default_rng(3)
    W = _random_sparse(rng, 150, 100, 0.5, dtype)
    X = rng.standard_normal((10, 100)).astype(dtype)
    bias = rng.standard_normal(150).astype(dtype)
    out = np.full((10, 150), np.nan, dtype)  # poisoned: every element must be written
    A = fl.TiledCSL.from_dense(W)
    assert fl.linear(X, A, bias=bias, out=out, split_k=2) is out
    assert_close_to_reference(out, linear_reference(X, A, bias), abs_product(X, W.T), 100, dtype, what="linear+bias")


@BOTH_PATHS
def test_nan_and_inf_propagate_as_dense(path):
    """NaN/Inf in A or X give what a dense product gives: 0 * Inf is NaN even where A's entry is a structural
    zero, because the kernel computes each tile densely."""
    rng = np.random.default_rng(4)
    W = _random_sparse(rng, 140, 130, 0.8, np.float16)
    W[3, 5] = np.inf
    W[70, 100] = np.nan
    W[139, 129] = -np.inf
    X = rng.standard_normal((6, 130)).astype(np.float16)
    X[2, 17] = np.inf  # column 17 of A has zeros: those rows turn NaN in a dense product
    X[4, 5] = 0  # 0 * inf in row 3 -> NaN for token 4
    _check_linear(W, X, force=_force(path))
    _check_linear(W, X, split_k=2, force=_force(path))


@pytest.mark.parametrize("n", [3, 16])
def test_split_k_reduction_in_groups_of_splits(n):
    """The reducing block loads the partials of several splits per round trip (4 at tile_n 8, 2 at 16): 5 splits
    leave a part-filled last group. Bias on, a ragged M, and both layouts."""
    rng = np.random.default_rng(8)
    W = _random_sparse(rng, 100, 5 * 64, 0.5, np.float16)
    bias = rng.standard_normal(100).astype(np.float16)
    _check_linear(W, rng.standard_normal((n, W.shape[1])).astype(np.float16), bias=bias, split_k=5)
    _check_spmm(W, rng.standard_normal((W.shape[1], n)).astype(np.float16), split_k=5)


def test_result_is_deterministic_with_split_k():
    """Split-K partials are reduced in split order, so repeated calls give identical bits."""
    rng = np.random.default_rng(5)
    A = fl.TiledCSL.from_dense(_random_sparse(rng, 128, 512, 0.6, np.float16))
    X = rng.standard_normal((4, 512)).astype(np.float16)
    first = fl.linear(X, A, split_k=4)
    np.testing.assert_array_equal(first.view(np.uint16), fl.linear(X, A, split_k=4).view(np.uint16))


class TestValidation:
    """Bad input is an exception naming the argument, the expectation and what was given."""

    def setup_method(self):
        rng = np.random.default_rng(6)
        self.W = _random_sparse(rng, 64, 32, 0.5, np.float16)
        self.A = fl.TiledCSL.from_dense(self.W)
        self.X = rng.standard_normal((4, 32)).astype(np.float16)

    def test_wrong_k(self):
        with pytest.raises(ValueError, match=r"Invalid shape of X: expected \(\*, 32\), got \(4, 31\)"):
            fl.linear(self.X[:, :31].copy(), self.A)

    def test_wrong_dtype(self):
        with pytest.raises(TypeError, match="Invalid dtype of X"):
            fl.linear(self.X.astype(np.float32), self.A)
        with pytest.raises(TypeError, match="Invalid dtype of X: expected A's dtype float16, got bfloat16"):
            fl.linear(self.X.astype(ml_dtypes.bfloat16), self.A)

    def test_wrong_ndim(self):
        with pytest.raises(ValueError, match="Invalid number of dimensions of X"):
            fl.linear(self.X[0], self.A)

    def test_not_row_major(self):
        with pytest.raises(ValueError, match="Invalid memory layout of X"):
            fl.spmm(self.A, np.asfortranarray(self.X.T))

    def test_not_a_tiled_csl(self):
        with pytest.raises(TypeError, match="Invalid type of A"):
            fl.linear(self.X, self.W)

    def test_bad_out(self):
        with pytest.raises(ValueError, match=r"Invalid shape of out: expected \(4, 64\)"):
            fl.linear(self.X, self.A, out=np.empty((64, 4), np.float16))
        with pytest.raises(TypeError, match="Invalid dtype of out"):
            fl.linear(self.X, self.A, out=np.empty((4, 64), np.float32))

    def test_bad_bias(self):
        with pytest.raises(ValueError, match=r"Invalid shape of bias: expected \(64,\), got \(32,\)"):
            fl.linear(self.X, self.A, bias=np.zeros(32, np.float16))

    def test_bad_split_k(self):
        with pytest.raises(ValueError, match="Invalid value of split_k"):
            fl.linear(self.X, self.A, split_k=0)

    def test_bad_force(self):
        with pytest.raises(TypeError, match="Invalid type of force: expected None or a flashllm_nb.kernels.spmm.plan"):
            fl.linear(self.X, self.A, force={"mma": "sync"})
