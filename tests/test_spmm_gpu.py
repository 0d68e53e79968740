"""The SpMM kernel on a GPU at real sizes (OPT-66B layer shapes), element by element against a float64 reference.

The reference is the float64 product of the same fp16/bf16 inputs, computed on the GPU with CuPy (the matrices are
too large for a quick CPU product), with the bound of ``flashllm_nb.reference.tolerance``. Outputs are poisoned with
NaN first, so an element the kernel never writes cannot pass. Skipped without a GPU (see conftest.py).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import flashllm_nb as fl
from flashllm_nb.reference.tolerance import assert_close_to_reference

pytestmark = pytest.mark.gpu
cp = pytest.importorskip("cupy")

OPT66B = [(27648, 9216), (9216, 9216), (36864, 9216), (9216, 36864)]


def _pruned(rng, m, k, sparsity):
    W = cp.asarray(rng.standard_normal((m, k), dtype=np.float32))
    W[cp.asarray(rng.random((m, k)) < sparsity)] = 0
    return W


def _check(W32, X32, dtype, *, layout="nk", split_k=None, bias32=None, force=None):
    """Run linear (layout "nk") or spmm ("kn") on W, X rounded to dtype; compare with the float64 product."""
    as_dtype = (lambda a: a.astype(np.float16)) if dtype == np.float16 else _to_torch_bf16
    W, X = as_dtype(W32), as_dtype(X32)
    A = fl.TiledCSL.from_dense(W)
    W64, X64 = _float64(W), _float64(X)
    if layout == "nk":
        out = _poisoned(as_dtype, (X32.shape[0], W32.shape[0]))
        bias = None if bias32 is None else as_dtype(bias32)
        Y = fl.linear(X, A, bias=bias, out=out, split_k=split_k, force=force)
        ref = X64 @ W64.T + (0 if bias is None else _float64(bias)[None, :])
        abs_prod = cp.abs(X64) @ cp.abs(W64).T
    else:
        Xt = as_dtype(X32.T.copy())
        out = _poisoned(as_dtype, (W32.shape[0], X32.shape[0]))
        Y = fl.spmm(A, Xt, out=out, split_k=split_k, force=force)
        ref = W64 @ X64.T
        abs_prod = cp.abs(W64) @ cp.abs(X64).T
    assert Y is out
    got = _float64(Y).get()
    assert_close_to_reference(got, ref.get(), abs_prod.get(), W32.shape[1], dtype,
                              what=f"{layout} {W32.shape} N={X32.shape[0]} {np.dtype(dtype).name} split={split_k}")


def _to_torch_bf16(a):
    torch = pytest.importorskip("torch")
    return torch.as_tensor(a, device="cuda").to(torch.bfloat16)


def _float64(a):
    if type(a).__module__.startswith("torch"):
        return cp.asarray(a.float()).astype(np.float64)
    return a.astype(np.float64)


def _poisoned(as_dtype, shape):
    return as_dtype(cp.full(shape, np.nan, np.float32))


@pytest.mark.parametrize("m,k", OPT66B, ids=[f"{m}x{k}" for m, k in OPT66B])
@pytest.mark.parametrize("n", [1, 16, 64])
def test_opt66b_layers(m, k, n):
    """Each OPT-66B layer shape at 80 % sparsity, fp16, N = 1 / 16 / 64, automatic split-K."""
    rng = np.random.default_rng(m * 7 + k + n)
    _check(_pruned(rng, m, k, 0.8), cp.asarray(rng.standard_normal((n, k), dtype=np.float32)), np.float16)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7, 0.9, 0.99, 1.0])
def test_sparsity_range(sparsity):
    """From fully dense (every tile overflows the register prefetch) to empty, on a mid-size layer."""
    rng = np.random.default_rng(int(sparsity * 100))
    _check(_pruned(rng, 4096, 4096, sparsity), cp.asarray(rng.standard_normal((16, 4096), dtype=np.float32)),
           np.float16)


@pytest.mark.parametrize("m,k,n,sparsity,layout,split_k", [
    (9216, 9216, 16, 0.9, "nk", None), (36864, 9216, 8, 0.88, "kn", None), (9216, 36864, 16, 0.95, "nk", 7),
    (27648, 9216, 5, 0.9, "nk", 2), (9216, 9216, 16, 0.84, "nk", 3), (27648, 9216, 16, 0.885, "nk", None),
    (9216, 9216, 9, 0.9, "nk", 5), (27648, 9216, 16, 0.8, "nk", None), (9216, 36864, 8, 0.77, "nk", 3),
])
def test_sparse_layers_clear_by_entries(m, k, n, sparsity, layout, split_k):
    """84-95 % sparse OPT-66B layers at N <= 16: planned with clear="entries" (positions buffers; an mbarrier with
    mma.sync, a second barrier per step with wgmma), with automatic and forced split-K (block k ranges of both
    lengths modulo the loop's unrolling by two). At 84 % the tiles (~328 vectors on average) come close to the
    384-vector register buffer; at 88.5 % (~236) the 256-vector buffer takes them, a few overflowing it. On Hopper
    "nk" at N 9-16 and 88.5 % or sparser runs on the wgmma path with two activation stages and 6 blocks per SM, and
    "nk" at 77-80 % clears by entries too, with the 512-vector buffer (elsewhere those two cases clear rows)."""
    from flashllm_nb.kernels.spmm import plan as spmm_plan

    rng = np.random.default_rng(m + n)
    W = _pruned(rng, m, k, sparsity)
    A = fl.TiledCSL.from_dense(W.astype(np.float16))
    config = spmm_plan.plan(m, n, k, "float16", layout, tile_vectors=A.mean_tile_vectors).config
    assert config.clear == ("entries" if sparsity >= 0.84 or config.mma == "wgmma" else "rows")
    assert config.stages == (2 if config.mma == "wgmma" and 8 < n <= 16 and sparsity >= 0.88 else 4)
    _check(W, cp.asarray(rng.standard_normal((n, k), dtype=np.float32)), np.float16, layout=layout, split_k=split_k)


@pytest.mark.parametrize("n, split_k", [(16, None), (8, 3)])
def test_wgmma_entries_zero_whole_tiles_over_the_register_buffer(n, split_k):
    """clear="entries" forced on a 72 %-sparse layer on the wgmma path: its tiles (~575 vectors) overflow the
    512-vector buffer, so every thread zeroes the whole buffer (not its entries) before the zero-first barrier, and
    the overflowing vectors load during the scatter. The plan never chooses this (entries stop at 480 vectors);
    the kernel must still be right. Needs the wgmma path (Hopper)."""
    from flashllm_nb.kernels.spmm import plan as spmm_plan

    if spmm_plan.mma_for("nk") != "wgmma":
        pytest.skip("the wgmma path needs a Hopper (sm_90) GPU")
    force = spmm_plan.Force(clear="entries")
    rng = np.random.default_rng(72 + n)
    W = _pruned(rng, 4096, 6144, 0.72)
    A = fl.TiledCSL.from_dense(W.astype(np.float16))
    config = spmm_plan.plan(4096, n, 6144, "float16", "nk", tile_vectors=A.mean_tile_vectors, force=force).config
    assert (config.mma, config.clear, config.prefetch_vectors) == ("wgmma", "entries", 512)
    assert A.mean_tile_vectors > 512
    _check(W, cp.asarray(rng.standard_normal((n, 6144), dtype=np.float32)), np.float16, split_k=split_k, force=force)


@pytest.mark.parametrize("n", [1, 7, 8, 33, 100, 256])
@pytest.mark.parametrize("layout", ["nk", "kn"])
def test_ragged_shapes_and_layouts(n, layout):
    """M and K off the tile grid, N off multiples of 8 (the kernel pads X's rows), both activation layouts."""
    rng = np.random.default_rng(n)
    _check(_pruned(rng, 1000, 777, 0.7), cp.asarray(rng.standard_normal((n, 777), dtype=np.float32)), np.float16,
           layout=layout)


@pytest.mark.parametrize("split_k", [1, 2, 7, 144])
def test_forced_split_k(split_k):
    rng = np.random.default_rng(split_k)
    _check(_pruned(rng, 9216, 9216, 0.8), cp.asarray(rng.standard_normal((16, 9216), dtype=np.float32)),
           np.float16, split_k=split_k)


def test_bias():
    rng = np.random.default_rng(3)
    _check(_pruned(rng, 4096, 2048, 0.8), cp.asarray(rng.standard_normal((16, 2048), dtype=np.float32)),
           np.float16, bias32=cp.asarray(rng.standard_normal(4096, dtype=np.float32)))


@pytest.mark.parametrize("layout", ["nk", "kn"])
def test_bf16_torch_tensors(layout):
    """bf16 through PyTorch tensors: in as torch, out as torch."""
    rng = np.random.default_rng(4)
    _check(_pruned(rng, 9216, 9216, 0.8), cp.asarray(rng.standard_normal((16, 9216), dtype=np.float32)),
           ml_dtypes.bfloat16, layout=layout)


def test_non_finite_values_propagate_as_dense():
    rng = np.random.default_rng(5)
    W = _pruned(rng, 2048, 2048, 0.8)
    W[5, 7] = np.inf
    W[1000, 3] = np.nan
    X = cp.asarray(rng.standard_normal((8, 2048), dtype=np.float32))
    X[2, 100] = -np.inf
    _check(W, X, np.float16)


def test_repeated_calls_are_bitwise_identical():
    """Split-K reduces in split order and resets its tickets: the same call twice gives the same bits."""
    rng = np.random.default_rng(6)
    A = fl.TiledCSL.from_dense(_pruned(rng, 9216, 9216, 0.8).astype(np.float16))
    X = cp.asarray(rng.standard_normal((16, 9216), dtype=np.float32)).astype(np.float16)
    first = fl.linear(X, A).view(np.uint16)
    for _ in range(3):
        cp.testing.assert_array_equal(first, fl.linear(X, A).view(np.uint16))


def test_host_matrix_is_refused_on_a_gpu():
    A = fl.TiledCSL.from_dense(np.eye(8, dtype=np.float16))
    with pytest.raises(ValueError, match="Invalid device of A"):
        fl.linear(cp.ones((1, 8), np.float16), A)


@pytest.mark.parametrize("split_k", [None, 3])
def test_prepared_linear_follows_new_activations_in_place(split_k):
    """A prepared product on the GPU: each call reads X's current contents; results equal fresh linear calls bit
    for bit and the float64 reference within the bound (CuPy fp16 and PyTorch bf16)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    W = _pruned(rng, 9216, 9216, 0.8)
    for as_dtype, dtype in ((lambda a: a.astype(np.float16), np.float16), (_to_torch_bf16, ml_dtypes.bfloat16)):
        Wd = as_dtype(W)
        A = fl.TiledCSL.from_dense(Wd)
        X = as_dtype(cp.asarray(rng.standard_normal((16, 9216), dtype=np.float32)))
        P = fl.prepare_linear(X, A, out=_poisoned(as_dtype, (16, 9216)), split_k=split_k)
        for _ in range(3):
            fresh = as_dtype(cp.asarray(rng.standard_normal((16, 9216), dtype=np.float32)))
            if isinstance(X, torch.Tensor):
                X.copy_(fresh)
            else:
                X[...] = fresh
            Y = P()
            expected = fl.linear(X, A, split_k=split_k)
            same = (Y == expected).all() if isinstance(Y, torch.Tensor) else bool(cp.all(Y == expected))
            assert same
            X64, W64 = _float64(X), _float64(Wd)
            assert_close_to_reference(_float64(Y).get(), (X64 @ W64.T).get(), (cp.abs(X64) @ cp.abs(W64).T).get(),
                                      9216, dtype, what=f"prepared linear split={split_k}")


def test_repeated_calls_take_the_remembered_launch_and_stay_right(monkeypatch):
    """Repeated ``linear`` calls on CuPy arrays launch a remembered, patched parameter block (api._FastCalls)
    instead of the full path. Across new activations, a new output per call, two layers of one shape in turn,
    with and without bias, and new matrices at possibly recycled addresses, every result equals the float64
    reference; arguments the remembered launch cannot take (column-major X, misaligned X, a wrong out dtype)
    still take the full path, which copies or raises as ever."""
    from flashllm_nb.kernels.spmm import driver

    rng = np.random.default_rng(11)
    m = k = 4096
    full_path = []
    original = driver.launch
    monkeypatch.setattr(driver, "launch", lambda *a: (full_path.append(1), original(*a)))  # a spy on a public name

    def check(Y, X, W, bias):
        X64, W64 = _float64(X), _float64(W)
        ref = X64 @ W64.T + (0 if bias is None else _float64(bias)[None, :])
        assert_close_to_reference(_float64(Y).get(), ref.get(), (cp.abs(X64) @ cp.abs(W64).T).get(), k, np.float16,
                                  what="remembered linear")

    Ws = [_pruned(rng, m, k, 0.8).astype(np.float16) for _ in range(2)]
    As = [fl.TiledCSL.from_dense(W) for W in Ws]
    bias = cp.asarray(rng.standard_normal(m).astype(np.float16))
    for step in range(3):
        for W, A in zip(Ws, As):
            X = cp.asarray(rng.standard_normal((16, k), dtype=np.float32)).astype(np.float16)
            for b in (None, bias):
                check(fl.linear(X, A, bias=b), X, W, b)
                out = _poisoned(lambda a: a.astype(np.float16), (16, m))
                assert fl.linear(X, A, bias=b, out=out) is out
                check(out, X, W, b)
        if step == 0:
            first_round = len(full_path)
    assert first_round == 8 and len(full_path) == first_round  # later rounds never took the full path

    for _ in range(3):  # a new matrix per call, possibly at the address of the one just freed
        W = _pruned(rng, m, k, 0.9).astype(np.float16)
        A = fl.TiledCSL.from_dense(W)
        X = cp.asarray(rng.standard_normal((16, k), dtype=np.float32)).astype(np.float16)
        check(fl.linear(X, A), X, W, None)
        del A

    A, W = As[0], Ws[0]
    X = cp.asarray(rng.standard_normal((16, k), dtype=np.float32)).astype(np.float16)
    fl.linear(X, A)
    with pytest.raises(ValueError, match="Invalid memory layout of X"):
        fl.linear(cp.asfortranarray(X), A)
    with pytest.raises(TypeError, match="Invalid dtype of out"):
        fl.linear(X, A, out=cp.empty((16, m), np.float32))
    shifted = cp.empty(16 * k + 1, np.float16)[1:].reshape(16, k)  # 2 bytes past a 16-byte boundary
    shifted[...] = X
    check(fl.linear(shifted, A), shifted, W, None)
