"""The Tiled-CSL SpMM kernel in Numba's CUDA simulator, checked element by element against the float64 reference:
the sweeps that only the simulator's small shapes afford, and the validation of the kernel API on NumPy arrays.

The simulator runs the same kernel source as the GPU (PTX instructions replaced by their lane-level twins), one
Python thread per CUDA thread, so shapes stay at a few tiles. The awkward cases are swept on purpose: any shape,
density, dtype and split (property tests), empty and fully dense tiles, tiles denser than the register budget (the
overflow pass), tile sequences that would leave stale values behind, an all-zero matrix. These products are
allocated by the call; the checks shared with the GPU (block widths, clearing by entries, bias into a caller's
``out``, NaN and Inf, forced split-K, determinism) are in ``test_spmm.py``, which runs them in either tier.

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
from spmm_checks import BF16, F16, check_product, random_activations, random_sparse

pytestmark = pytest.mark.sim

DTYPES = [F16, BF16]


def _force(path=None, clear=None, prefetch_vectors=None):
    """The plan choices a test fixes (None: the plan's own); the simulator plays a Hopper GPU, where linear takes
    the wgmma kernels unless told otherwise."""
    assert spmm_plan.mma_for("nk") == "wgmma", "the simulator is meant to play a Hopper GPU"
    return spmm_plan.Force(mma=path, clear=clear, prefetch_vectors=prefetch_vectors)


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
    """One example of the linear properties: a random matrix and activations of the drawn shape and dtype."""
    rng = np.random.default_rng(seed)
    check_product(random_sparse(rng, m, k, sparsity, dtype), random_activations(rng, n, k, dtype), split_k=split_k,
                  force=force, poisoned_out=False)


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
    check_product(random_sparse(rng, m, k, sparsity, dtype), random_activations(rng, n, k, dtype), layout="kn",
                  split_k=split_k, poisoned_out=False)


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
        check_product(W, X, split_k=split_k, force=_force(path), poisoned_out=False)


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
    check_product(W, random_activations(rng, n, W.shape[1], F16), layout=x_layout, split_k=1, force=force,
                  poisoned_out=False)


def test_all_zero_matrix_gives_zeros_and_bias():
    """A matrix without entries gives exact zeros, and with a bias exactly the bias in every row."""
    rng = np.random.default_rng(2)
    W = np.zeros((100, 70), np.float16)
    X = rng.standard_normal((3, 70)).astype(np.float16)
    bias = rng.standard_normal(100).astype(np.float16)
    A = fl.TiledCSL.from_dense(W)
    np.testing.assert_array_equal(fl.linear(X, A), np.zeros((3, 100), np.float16))
    np.testing.assert_array_equal(fl.linear(X, A, bias=bias), np.broadcast_to(bias, (3, 100)))


class TestValidation:
    """Bad input is an exception naming the argument, the expectation and what was given."""

    def setup_method(self):
        rng = np.random.default_rng(6)
        self.W = random_sparse(rng, 64, 32, 0.5, F16)
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


@pytest.mark.parametrize("path, split_k", [("wgmma", 3), ("sync", 3), ("wgmma", 1), ("wgmma", "stream")])
def test_timeline_kernel_records_every_block_and_keeps_the_product(path, split_k):
    """The development variant ``timeline=True`` (``driver.launch_timeline``, read by ``dev/block_timeline.py``):
    every block's record holds its marks in the order the block passes them, exactly one block of each output
    tile wrote it (stream-K: the blocks' tallies add up to the output tiles), and the product is still the float64
    reference's within the fp32 bound."""
    from flashllm_nb.kernels.spmm import driver
    from flashllm_nb.kernels.spmm.config import TIMELINE_FIELDS
    from flashllm_nb.reference.tolerance import assert_close_to_reference
    from spmm_checks import reference

    rng = np.random.default_rng(11)
    # Two tile rows, the second partial; five k-tiles over three splits (2, 2, 1). Stream-K: three tile rows of 7
    # k-tiles over 4 blocks (5, 5, 5, 6 k-tiles), the second and third blocks crossing into the next row.
    m, k, n = (300, 448, 3) if split_k == "stream" else (200, 320, 3)
    W, X = random_sparse(rng, m, k, 0.8, F16), random_activations(rng, n, k, F16)
    A = fl.TiledCSL.from_dense(W)
    stream = split_k == "stream"
    force = spmm_plan.Force(mma=path, stream_k=True) if stream else _force(path)
    p = spmm_plan.plan(m, n, k, "float16", "nk", split_k=None if stream else split_k, tile_vectors=A.mean_tile_vectors,
                       force=force)
    assert p.splits == (1 if stream else split_k) and p.config.stream_k == stream and not p.config.timeline
    Y = np.full((n, m), np.nan, np.float16)
    operands = driver.Operands(A.words, A.tile_offsets, X.view(np.uint16).reshape(-1), k,
                               Y.view(np.uint16).reshape(-1), None, m, n, k, A.n_tile_cols)
    records = driver.launch_timeline(p, operands, driver.timeline_tickets(p, np), np)
    with pytest.raises(ValueError, match="tickets of launch_timeline"):
        driver.launch_timeline(p, operands, np.zeros(3, np.int32), np)

    ref, scale = reference(W, X)
    assert_close_to_reference(Y, ref, scale, k, F16, what=f"timeline kernel, {path}, split {split_k}")
    blocks = p.grid[0] * p.grid[1] * p.grid[2]
    assert records.shape == (blocks, len(TIMELINE_FIELDS)) and records.dtype == np.int32
    field = {name: records[:, i].astype(np.int64) for i, name in enumerate(TIMELINE_FIELDS)}
    marks = np.stack([field[name] for name in ("start", "offsets", "waited", "loop_end", "ticket", "end")], axis=1)
    elapsed = (marks - marks[:, :1]) % 2**31  # the marks are the clock's low 31 bits
    assert (marks > 0).all(), "a mark was never written"
    assert (np.diff(elapsed, axis=1) >= 0).all(), f"marks out of order:\n{elapsed}"
    assert (field["sm"] == 0).all()  # the simulator runs every block on SM 0
    if stream:
        assert p.grid == (4, 1, 1) and field["wrote"].sum() == p.tickets and field["wrote"].max() <= 2
        return
    wrote_per_tile = field["wrote"].reshape(p.grid[2], p.grid[0] * p.grid[1]).sum(axis=0)
    assert (wrote_per_tile == 1).all(), f"blocks that wrote each output tile: {wrote_per_tile}"
