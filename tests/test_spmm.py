"""The Tiled-CSL SpMM kernel in whichever tier the session runs (``tier``), element by element against the float64
reference: in Numba's CUDA simulator at a few tiles (one Python thread per CUDA thread), on a GPU at real sizes
(OPT-66B layer shapes). Each test is one check; ``by_tier`` gives its cases in each tier, named by shape, N and the
mma path (``planned``: the plan's own; the simulator plays a Hopper GPU, whose ``linear`` plans the wgmma kernels,
so its cases force the mma.sync kernels that every other GPU takes too).

What only the simulator can afford to sweep (property tests, tile sequences, validation) is in
``test_spmm_sim.py``; what only a GPU can run (OPT-66B shapes, PyTorch tensors, remembered launches) in
``test_spmm_gpu.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import flashllm_nb as fl
from flashllm_nb.kernels.spmm import plan as spmm_plan
from flashllm_nb.llm.device import synchronize
from flashllm_nb.reference.tolerance import assert_close_to_reference
from spmm_checks import BF16, F16, check_product, random_activations, random_sparse, reference
from tier import SIMULATOR, by_tier, device, host


def _case(m, k, n, *rest, name):
    """A pytest case (m, k, n, *rest) named by its shape, N and ``name``."""
    return pytest.param(m, k, n, *rest, id=f"{m}x{k}-n{n}-{name}")


BLOCK_WIDTHS = by_tier(
    sim=[_case(130, 72, n, "nk", path, name=path) for path, ns in [("wgmma", (1, 7, 8, 9, 16, 33, 64, 65)),
                                                                  ("sync", (1, 9, 16, 33))] for n in ns],
    gpu=[_case(1000, 777, n, layout, None, name=f"{layout}-planned") for n in (1, 7, 8, 33, 100, 256)
         for layout in ("nk", "kn")],
)


@pytest.mark.parametrize("m, k, n, layout, path", BLOCK_WIDTHS)
def test_block_widths_on_ragged_shapes(m, k, n, layout, path):
    """Each tile_n (8/16/32/64) and the column-block grid beyond 64, with N on and off multiples of 8 (the kernel
    pads X's rows), M and K off the tile grid; on the GPU both activation layouts."""
    rng = np.random.default_rng(n)
    check_product(random_sparse(rng, m, k, 0.7, F16), random_activations(rng, n, k, F16), layout=layout,
                  force=spmm_plan.Force(mma=path))


CLEAR_BY_ENTRIES = by_tier(
    sim=[_case(130, 7 * 64 - 5, n, 0.93, "nk", split_k, path, name=f"split{split_k}-{path}")
         for path, n, split_k in [("wgmma", 16, 1), ("wgmma", 16, 3), ("wgmma", 5, 3), ("sync", 9, 2)]],
    gpu=[_case(m, k, n, sparsity, layout, split_k, None,
               name=f"{sparsity}-{layout}-split{split_k or '-auto'}-planned")
         for m, k, n, sparsity, layout, split_k in [
             (9216, 9216, 16, 0.9, "nk", None), (36864, 9216, 8, 0.88, "kn", None), (9216, 36864, 16, 0.95, "nk", 7),
             (27648, 9216, 5, 0.9, "nk", 2), (9216, 9216, 16, 0.84, "nk", 3), (27648, 9216, 16, 0.885, "nk", None),
             (9216, 9216, 9, 0.9, "nk", 5), (27648, 9216, 16, 0.8, "nk", None), (9216, 36864, 8, 0.77, "nk", 3)]],
)


@pytest.mark.parametrize("m, k, n, sparsity, layout, split_k, path", CLEAR_BY_ENTRIES)
def test_sparse_matrices_clear_by_entries(m, k, n, sparsity, layout, split_k, path):
    """84-95 % sparse matrices at N <= 16 are planned with clear="entries" (the plan's own choice, not forced:
    positions buffers, an mbarrier with mma.sync, a second barrier per step with wgmma), and the product is right
    with automatic and forced split-K (block k ranges of both lengths modulo the loop's unrolling by two: under the
    simulator 7 k-tiles split 1, 2 or 3 ways: 7; 4 and 3; 3, 3 and 1). On the wgmma path at N 9-16 and 88 % or
    sparser the plan gives the block two activation stages (one tile ahead instead of three). On the GPU's OPT-66B
    layers: at 84 % the tiles (~328 vectors on average) come close to the 384-vector register buffer; at 88.5 %
    (~236) the 256-vector buffer takes them, a few overflowing it; on Hopper "nk" at 77-80 % clears by entries too,
    with the 512-vector buffer (elsewhere those two cases clear rows)."""
    rng = np.random.default_rng(m + n)
    W = random_sparse(rng, m, k, sparsity, F16)
    force = spmm_plan.Force(mma=path)
    tile_vectors = fl.TiledCSL.from_dense(device(W)).mean_tile_vectors
    config = spmm_plan.plan(m, n, k, "float16", layout, tile_vectors=tile_vectors, force=force).config
    assert config.clear == ("entries" if sparsity >= 0.84 or config.mma == "wgmma" else "rows")
    assert config.stages == (2 if config.mma == "wgmma" and 8 < n <= 16 and sparsity >= 0.88 else 4)
    check_product(W, random_activations(rng, n, k, F16), layout=layout, split_k=split_k, force=force)


BIAS_CASES = by_tier(
    sim=[_case(150, 100, 10, 0.5, 2, dtype, name=f"{dtype.name}-split2") for dtype in (F16, BF16)],
    gpu=[_case(4096, 2048, 16, 0.8, None, dtype, name=f"{dtype.name}-split-auto") for dtype in (F16, BF16)],
)


@pytest.mark.parametrize("m, k, n, sparsity, split_k, dtype", BIAS_CASES)
def test_bias_and_caller_output(m, k, n, sparsity, split_k, dtype):
    """``linear`` with a bias writes every element of the caller's ``out`` (poisoned with NaN), returns it, and
    equals X @ A.T + bias within the bound, fp16 and bf16 (on the GPU through PyTorch tensors)."""
    rng = np.random.default_rng(3)
    check_product(random_sparse(rng, m, k, sparsity, dtype), random_activations(rng, n, k, dtype),
                  bias=random_activations(rng, 1, m, dtype)[0], split_k=split_k)


NON_FINITE = by_tier(
    sim=[_case(140, 130, 6, (None, 2), path, name=f"{path}-split-auto-and-2") for path in ("wgmma", "sync")],
    gpu=[_case(2048, 2048, 8, (None,), None, name="planned-split-auto")],
)


# The split-K reduction's Inf - Inf is the intended NaN; NumPy warns of it under the simulator.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("m, k, n, split_ks, path", NON_FINITE)
def test_non_finite_values_propagate_as_dense(m, k, n, split_ks, path):
    """NaN/Inf in A or X give what a dense product gives: 0 * Inf is NaN even where A's entry is a structural
    zero, because the kernel computes each tile densely."""
    rng = np.random.default_rng(4)
    W = random_sparse(rng, m, k, 0.8, F16)
    W[3, 5] = np.inf
    W[m // 2, k * 10 // 13] = np.nan
    W[m - 1, k - 1] = -np.inf
    X = random_activations(rng, n, k, F16)
    X[2, 17] = np.inf  # column 17 of A has zeros: those rows turn NaN in a dense product
    X[4, 5] = 0  # 0 * inf in row 3 -> NaN for token 4
    for split_k in split_ks:
        check_product(W, X, split_k=split_k, force=spmm_plan.Force(mma=path))


SPLIT_K = by_tier(
    sim=[_case(100, 5 * 64, n, 0.5, 5, name="split5") for n in (3, 16)],
    gpu=[_case(9216, 9216, 16, 0.8, split_k, name=f"split{split_k}") for split_k in (1, 2, 7, 144)],
)


@pytest.mark.parametrize("m, k, n, sparsity, split_k", SPLIT_K)
def test_forced_split_k(m, k, n, sparsity, split_k):
    """A forced split-K, bias on, both layouts. The reducing block loads the partials of several splits per round
    trip (4 at tile_n 8, 2 at 16): under the simulator 5 splits leave a part-filled last group, on a ragged M; on
    the GPU up to 144 splits of an OPT-66B layer."""
    rng = np.random.default_rng(n + split_k)
    W = random_sparse(rng, m, k, sparsity, F16)
    check_product(W, random_activations(rng, n, k, F16), bias=random_activations(rng, 1, m, F16)[0],
                  split_k=split_k)
    check_product(W, random_activations(rng, n, k, F16), layout="kn", split_k=split_k)


FENCES_TICKET = by_tier(
    sim=[_case(200, 5 * 64, n, path, dtype, 3, name=f"{path}-split3") for n, path, dtype in
         ((1, "wgmma", F16), (8, "sync", BF16))],
    gpu=[_case(7168, 7168, n, None, F16, split_k, name=f"split{split_k or 'planned'}")
         for n, split_k in ((1, None), (16, 9), (16, 112))],
)


@pytest.mark.parametrize("m, k, n, path, dtype, split_k", FENCES_TICKET)
def test_fences_ticket_gives_the_bits_of_the_acq_rel_ticket(m, k, n, path, dtype, split_k):
    """The split-K ticket taken between two fences (``SpmmConfig(ticket="fences")``, the A/B alternative to the
    plan's acquire-release add) gives the reference's product within the bound, and, launched twice more (its
    tickets back at zero), exactly the bits of the plan's ticket: both sum the splits in split order."""
    rng = np.random.default_rng(n + (split_k or 0))
    W = random_sparse(rng, m, k, 0.8, dtype)
    X = random_activations(rng, n, k, dtype)
    fences = spmm_plan.Force(mma=path, ticket="fences")
    check_product(W, X, split_k=split_k, force=fences)
    A, Xd = fl.TiledCSL.from_dense(device(W)), device(X)
    planned = spmm_plan.plan(m, n, k, dtype.name, "nk", split_k=split_k, force=fences)
    assert planned.splits > 1 and planned.config.ticket == "fences"
    acq_rel = spmm_plan.Force(mma=path)
    assert spmm_plan.plan(m, n, k, dtype.name, "nk", split_k=split_k, force=acq_rel).config.ticket == "acq_rel"
    planned_bits = host(fl.linear(Xd, A, split_k=split_k, force=acq_rel)).view(np.uint16)
    for _ in range(2):
        np.testing.assert_array_equal(host(fl.linear(Xd, A, split_k=split_k, force=fences)).view(np.uint16),
                                      planned_bits)


BLOCKS_PER_SM_CAP = by_tier(
    sim=[_case(200, 5 * 64, 1, 3, name="split3"), _case(130, 4 * 64, 8, None, name="planned")],
    gpu=[_case(7168, 7168, 1, None, name="opt30b-square"), _case(7168, 28672, 16, None, name="opt30b-fc2")],
)


@pytest.mark.parametrize("m, k, n, split_k", BLOCKS_PER_SM_CAP)
def test_blocks_per_sm_cap_pads_shared_memory_and_keeps_the_product(m, k, n, split_k):
    """``Force(blocks_per_sm=4)`` launches with enough dynamic shared memory that the driver's occupancy calculator
    allows at most 4 blocks an SM (on the GPU, where the plan alone allows more on these shapes), and the product is
    the reference's within the bound, split-K included."""
    from flashllm_nb.kernels.spmm import driver

    rng = np.random.default_rng(m + n)
    W = random_sparse(rng, m, k, 0.8, F16)
    capped = spmm_plan.Force(blocks_per_sm=4)
    check_product(W, random_activations(rng, n, k, F16), bias=random_activations(rng, 1, m, F16)[0],
                  split_k=split_k, force=capped)
    p = spmm_plan.plan(m, n, k, "float16", "nk", split_k=split_k, force=capped)
    assert p.shared_bytes >= p.config.shared_bytes(p.k_tiles_per_split)
    assert driver.blocks_per_sm(p.config, p.shared_bytes) <= 4
    if not SIMULATOR:
        assert driver.blocks_per_sm(p.config, p.config.shared_bytes(p.k_tiles_per_split)) > 4
        assert driver.blocks_per_sm(p.config, p.shared_bytes - 1) > 4  # the least padding that caps


STREAM_K = by_tier(
    # 3 tile rows of 10 k-tiles over the simulated device's 4 blocks (ranges 7, 8, 7, 8: every row shared by two,
    # two blocks crossing into the next row); one row of 8 k-tiles shared by 2 blocks in each of 2 column blocks
    # (tile_n 64); 8 rows of one k-tile over 8 blocks (no sharing: stored at once).
    sim=[_case(300, 640, 3, "wgmma", BF16, name="wgmma-bf16-shared-rows"),
         _case(300, 640, 2, "sync", F16, name="sync-crossing-rows"),
         _case(128, 512, 70, None, F16, name="one-row-two-blocks-two-columns"),
         _case(1000, 64, 2, None, F16, name="unshared-rows")],
    gpu=[_case(m, k, n, None, F16, name=f"opt30b-{m}x{k}") for m, k, n in
         ((7168, 7168, 1), (21504, 7168, 1), (28672, 7168, 1), (7168, 28672, 1), (7168, 7168, 16), (4000, 3000, 1))],
)


# The reference's Inf - Inf in a row with NaN and Inf is the intended NaN; NumPy warns of it under the simulator.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("m, k, n, path, dtype", STREAM_K)
def test_stream_k_gives_the_reference_product(m, k, n, path, dtype):
    """``Force(stream_k=True)``: every element of the caller's output (poisoned with NaN) equals the float64
    reference within the bound, with a bias, with ReLU in the epilogue and with NaN and Inf in A and X, in both
    layouts and with A in Tiled-Bitmap; the same call again gives the same bits (the shared tiles are summed in
    block order); on the GPU the grid has a block for every resident slot of the device."""
    from flashllm_nb.kernels.spmm import driver
    from flashllm_nb.kernels.spmm.plan import multiprocessors

    rng = np.random.default_rng(m + k + n)
    W = random_sparse(rng, m, k, 0.8, dtype)
    X = random_activations(rng, n, k, dtype)
    bias = random_activations(rng, 1, m, dtype)[0]
    stream = spmm_plan.Force(mma=path, stream_k=True)
    p = spmm_plan.plan(m, n, k, dtype.name, "nk", tile_vectors=fl.TiledCSL.from_dense(device(W)).mean_tile_vectors,
                       force=stream)
    assert p.config.stream_k
    if not SIMULATOR:
        slots = multiprocessors() * driver.blocks_per_sm(p.config, p.shared_bytes)
        units = -(-m // 128) * -(-k // 64)
        assert p.grid[0] * p.grid[1] == min(slots, units // spmm_plan.MIN_K_TILES_PER_SPLIT), (p.grid, slots)
    first = check_product(W, X, bias=bias, force=stream)
    check_product(W, X, bias=bias, force=stream, relu=True)
    if not SIMULATOR or path == "wgmma":  # under the simulator, on its first case only: seconds a product there
        check_product(W, X, layout="kn", force=spmm_plan.Force(stream_k=True))  # "kn" takes mma.sync
        check_product(W, X, force=stream, matrix_format=fl.TiledBitmap)
    A, Xd = fl.TiledCSL.from_dense(device(W)), device(X)
    np.testing.assert_array_equal(host(fl.linear(Xd, A, bias=device(bias), force=stream)).view(np.uint16),
                                  first.view(np.uint16))
    W[3, 5], W[m // 2, k // 3] = np.inf, np.nan
    X[0, 7] = -np.inf
    check_product(W, X, force=stream)


REPEATED = by_tier(
    sim=[_case(128, 512, 4, 0.6, 4, 1, name="split4")],
    gpu=[_case(9216, 9216, 16, 0.8, None, 3, name="split-auto")],
)


@pytest.mark.parametrize("m, k, n, sparsity, split_k, repeats", REPEATED)
def test_repeated_calls_are_bitwise_identical(m, k, n, sparsity, split_k, repeats):
    """Split-K partials are reduced in split order and the tickets reset: the same call again gives the same
    bits."""
    rng = np.random.default_rng(5)
    A = fl.TiledCSL.from_dense(device(random_sparse(rng, m, k, sparsity, F16)))
    X = device(random_activations(rng, n, k, F16))
    first = host(fl.linear(X, A, split_k=split_k)).view(np.uint16)
    for _ in range(repeats):
        np.testing.assert_array_equal(host(fl.linear(X, A, split_k=split_k)).view(np.uint16), first)


PRODUCER_THEN_PRODUCT = by_tier(
    sim=[_case(130, 200, n, path, name=path) for n, path in ((9, "wgmma"), (16, "sync"))],
    gpu=[_case(27648, 9216, n, None, name="opt66b-qkv-then-fc1") for n in (1, 16)],
)


@pytest.mark.parametrize("m, k, n, path", PRODUCER_THEN_PRODUCT)
def test_product_right_behind_the_kernel_writing_its_activations(m, k, n, path):
    """``H = X @ A1.T`` then ``Y = H @ A2.T`` on one stream with nothing in between, three ways: built for dependent
    launch and launched so (the second may start while the first drains, and waits with ``griddepcontrol`` before
    it reads H), built without it (``grid_dependency=False``, what an A100 runs), and built for it but launched
    normally (the default). H starts as NaN each time, so a read of it before the first product finished shows;
    all equal the reference and each other bit for bit (the simulator runs the first two)."""
    from flashllm_nb.kernels import driver

    rng = np.random.default_rng(n)
    W1, W2 = random_sparse(rng, m, k, 0.8, F16), random_sparse(rng, k, m, 0.8, F16)
    A1, A2 = fl.TiledCSL.from_dense(device(W1)), fl.TiledCSL.from_dense(device(W2))
    X = device(random_activations(rng, n, k, F16))
    results = []
    for dependent, launches in ((True, True), (False, False), (True, False)):
        if SIMULATOR and launches != dependent:
            continue
        previous = driver.set_dependent_launches(launches)
        try:
            H = device(np.full((n, m), np.nan, F16))
            synchronize()  # the weights are settled before the scope, as the engine's are
            with driver.dependent_launch_scope():
                fl.linear(X, A1, out=H, force=spmm_plan.Force(mma=path, grid_dependency=dependent))
                Y = fl.linear(H, A2, force=spmm_plan.Force(mma=path, grid_dependency=dependent))
            h, y = host(H), host(Y)
        finally:
            driver.set_dependent_launches(previous)
        ref, scale = reference(W2, h)
        assert_close_to_reference(y, ref, scale, m, F16, what=f"dependent={dependent} launches={launches}")
        results.append(y)
    for y in results[1:]:
        np.testing.assert_array_equal(y.view(np.uint16), results[0].view(np.uint16))


RELU_EPILOGUE = by_tier(
    sim=[_case(150, 100, 10, split_k, path, dtype, name=f"{dtype.name}-{path}-split{split_k}")
         for split_k, path, dtype in ((1, "wgmma", F16), (2, "sync", BF16))],
    gpu=[_case(36864, 9216, n, None, None, dtype, name=f"{dtype.name}-opt66b-fc1-planned")
         for n, dtype in ((1, F16), (16, F16), (16, BF16))],
)


# The reference's Inf - Inf in a row with NaN and Inf is the intended NaN; NumPy warns of it under the simulator.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("m, k, n, split_k, path, dtype", RELU_EPILOGUE)
def test_relu_in_the_epilogue(m, k, n, split_k, path, dtype):
    """``linear(..., activation="relu")`` equals ReLU of the reference, bias included: negative sums become 0,
    NaN and +Inf pass, -Inf becomes +0, and a row of zeros stays zero (the bound cannot see the last three: their
    reference is infinite or their magnitude zero, so they are checked exactly)."""
    rng = np.random.default_rng(n + m)
    W = random_sparse(rng, m, k, 0.8, dtype)
    W[0, :] = 0  # with a zero bias entry: the output column is exactly 0 (or -0 from a negative zero sum)
    W[1, 3], W[2, 4], W[3, 5] = np.nan, np.inf, -np.inf
    X = random_activations(rng, n, k, dtype)
    X[:, 3:6] = np.abs(X[:, 3:6]) + 1  # so row 2 is +Inf and row 3 -Inf for every token
    bias = random_activations(rng, 1, m, dtype)[0]
    bias[0] = 0
    got = check_product(W, X, bias=bias, split_k=split_k, force=spmm_plan.Force(mma=path), relu=True)
    assert (got[:, 0] == 0).all() and np.isnan(got[:, 1].astype(np.float32)).all()
    assert (got[:, 2] == np.inf).all() and (got[:, 3] == 0).all() and not np.signbit(got[:, 3]).any()


def test_activation_must_be_relu_or_none():
    """Any other activation is refused before any work, naming the argument and the choices."""
    rng = np.random.default_rng(0)
    A = fl.TiledCSL.from_dense(device(random_sparse(rng, 128, 64, 0.5, F16)))
    with pytest.raises(ValueError, match=r"activation.*\(None, 'relu'\).*gelu"):
        fl.linear(device(random_activations(rng, 2, 64, F16)), A, activation="gelu")
