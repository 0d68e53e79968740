"""The SpMM kernel on a GPU where only a GPU can go: OPT-66B layer shapes at every N, the whole range of sparsity on
a mid-size layer, PyTorch tensors in and out, device checks, and the remembered launch of repeated CuPy calls. Each
product is checked element by element against the float64 reference (computed with CuPy), into outputs poisoned
with NaN first, so that an element the kernel never writes cannot pass (``spmm_checks``). Skipped without a GPU
(see conftest.py).

The checks shared with the simulator, at GPU sizes here, are in ``test_spmm.py`` and ``test_prepared.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import flashllm_nb as fl
from flashllm_nb.kernels.spmm import plan as spmm_plan
from flashllm_nb.reference.tolerance import assert_close_to_reference
from spmm_checks import BF16, F16, check_product, random_activations, random_sparse, reference
from tier import device, host

pytestmark = pytest.mark.gpu

OPT66B = [(27648, 9216), (9216, 9216), (36864, 9216), (9216, 36864)]


@pytest.mark.parametrize("m,k", OPT66B, ids=[f"{m}x{k}" for m, k in OPT66B])
@pytest.mark.parametrize("n", [1, 16, 64])
def test_opt66b_layers(m, k, n):
    """Each OPT-66B layer shape at 80 % sparsity, fp16, N = 1 / 16 / 64, automatic split-K."""
    rng = np.random.default_rng(m * 7 + k + n)
    check_product(random_sparse(rng, m, k, 0.8, F16), random_activations(rng, n, k, F16))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7, 0.9, 0.99, 1.0])
def test_sparsity_range(sparsity):
    """From fully dense (every tile overflows the register prefetch) to empty, on a mid-size layer."""
    rng = np.random.default_rng(int(sparsity * 100))
    check_product(random_sparse(rng, 4096, 4096, sparsity, F16), random_activations(rng, 16, 4096, F16))


@pytest.mark.parametrize("n, split_k", [(16, None), (8, 3)])
def test_wgmma_entries_zero_whole_tiles_over_the_register_buffer(n, split_k):
    """clear="entries" forced on a 72 %-sparse layer on the wgmma path: its tiles (~575 vectors) overflow the
    512-vector buffer, so every thread zeroes the whole buffer (not its entries) before the zero-first barrier, and
    the overflowing vectors load during the scatter. The plan never chooses this (entries stop at 480 vectors);
    the kernel must still be right. Needs the wgmma path (Hopper)."""
    if spmm_plan.mma_for("nk") != "wgmma":
        pytest.skip("the wgmma path needs a Hopper (sm_90) GPU")
    force = spmm_plan.Force(clear="entries")
    rng = np.random.default_rng(72 + n)
    W = random_sparse(rng, 4096, 6144, 0.72, F16)
    A = fl.TiledCSL.from_dense(device(W))
    config = spmm_plan.plan(4096, n, 6144, "float16", "nk", tile_vectors=A.mean_tile_vectors, force=force).config
    assert (config.mma, config.clear, config.prefetch_vectors) == ("wgmma", "entries", 512)
    assert A.mean_tile_vectors > 512
    check_product(W, random_activations(rng, n, 6144, F16), split_k=split_k, force=force)


@pytest.mark.parametrize("layout", ["nk", "kn"])
def test_bf16_torch_tensors(layout):
    """bf16 through PyTorch tensors on an OPT-66B layer: in as torch, out as torch."""
    rng = np.random.default_rng(4)
    check_product(random_sparse(rng, 9216, 9216, 0.8, BF16), random_activations(rng, 16, 9216, BF16), layout=layout)


def test_host_matrix_is_refused_on_a_gpu():
    """A matrix on the host with activations on the GPU is refused, naming A's device."""
    import cupy as cp

    A = fl.TiledCSL.from_dense(np.eye(8, dtype=np.float16))
    with pytest.raises(ValueError, match="Invalid device of A"):
        fl.linear(cp.ones((1, 8), np.float16), A)


def test_repeated_calls_take_the_remembered_launch_and_stay_right(monkeypatch):
    """Repeated ``linear`` calls on CuPy arrays launch a remembered, patched parameter block (api._FastCalls)
    instead of the full path. Across new activations, a new output per call, two layers of one shape in turn,
    with and without bias, and new matrices at possibly recycled addresses, every result equals the float64
    reference; arguments the remembered launch cannot take (column-major X, misaligned X, a wrong out dtype)
    still take the full path, which copies or raises as ever."""
    import cupy as cp

    from flashllm_nb.kernels.spmm import driver

    rng = np.random.default_rng(11)
    m = k = 4096
    full_path = []
    original = driver.launch
    monkeypatch.setattr(driver, "launch", lambda *a: (full_path.append(1), original(*a)))  # a spy on a public name

    def check(Y, X, W, bias):
        """Y, on the device, equals the float64 reference of host X, W and bias."""
        assert_close_to_reference(host(Y), *reference(W, X, bias), k, F16, what="remembered linear")

    Ws = [random_sparse(rng, m, k, 0.8, F16) for _ in range(2)]
    As = [fl.TiledCSL.from_dense(device(W)) for W in Ws]
    bias = random_activations(rng, 1, m, F16)[0]
    for step in range(3):
        for W, A in zip(Ws, As):
            X = random_activations(rng, 16, k, F16)
            Xd = device(X)
            for b in (None, bias):
                bd = None if b is None else device(b)
                check(fl.linear(Xd, A, bias=bd), X, W, b)
                out = cp.full((16, m), np.nan, np.float16)
                assert fl.linear(Xd, A, bias=bd, out=out) is out
                check(out, X, W, b)
        if step == 0:
            first_round = len(full_path)
    assert first_round == 8 and len(full_path) == first_round  # later rounds never took the full path

    for _ in range(3):  # a new matrix per call, possibly at the address of the one just freed
        W = random_sparse(rng, m, k, 0.9, F16)
        A = fl.TiledCSL.from_dense(device(W))
        X = random_activations(rng, 16, k, F16)
        check(fl.linear(device(X), A), X, W, None)
        del A

    A, W = As[0], Ws[0]
    X = random_activations(rng, 16, k, F16)
    Xd = device(X)
    fl.linear(Xd, A)
    with pytest.raises(ValueError, match="Invalid memory layout of X"):
        fl.linear(cp.asfortranarray(Xd), A)
    with pytest.raises(TypeError, match="Invalid dtype of out"):
        fl.linear(Xd, A, out=cp.empty((16, m), np.float32))
    shifted = cp.empty(16 * k + 1, np.float16)[1:].reshape(16, k)  # 2 bytes past a 16-byte boundary
    shifted[...] = Xd
    check(fl.linear(shifted, A), X, W, None)
