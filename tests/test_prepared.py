"""``prepare_linear`` in whichever tier the session runs (``tier``): a prepared product checks its arguments once
and then recomputes on the same arrays each call, reading X's contents at the time of the call. Under the simulator
on a few tiles, on the GPU on an OPT-66B layer (fp16 through CuPy, bf16 through PyTorch tensors).

What only the simulator checks of prepared products (``prepare_spmm``, empty products, argument checks) is in
``test_prepared_sim.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import flashllm_nb as fl
from flashllm_nb.reference.tolerance import assert_close_to_reference
from spmm_checks import BF16, F16, random_activations, random_sparse, reference
from tier import SIMULATOR, by_tier, device, host

PREPARED_LINEAR = by_tier(
    # k = 77: X is read through an aligned copy
    sim=[pytest.param(150, k, 5, 0.7, split_k, F16, id=f"150x{k}-n5-float16-split{split_k or '-auto'}")
         for k, split_k in [(96, None), (77, 2)]],
    gpu=[pytest.param(9216, 9216, 16, 0.8, split_k, dtype,
                      id=f"9216x9216-n16-{dtype.name}-split{split_k or '-auto'}")
         for split_k in (None, 3) for dtype in (F16, BF16)],
)
STEPS = by_tier(sim=2, gpu=3)


@pytest.mark.parametrize("m, k, n, sparsity, split_k, dtype", PREPARED_LINEAR)
def test_prepared_linear_recomputes_with_the_current_activations(m, k, n, sparsity, split_k, dtype):
    """Preparing computes nothing (the caller's ``out``, poisoned with NaN, stays so); each call then writes ``out``
    from X's current contents (new values, same array): the float64 reference with the bias within the bound, and
    bit for bit what a fresh ``linear`` call on the same arrays computes."""
    rng = np.random.default_rng(k)
    W = random_sparse(rng, m, k, sparsity, dtype)
    A = fl.TiledCSL.from_dense(device(W))
    bias = random_activations(rng, 1, m, dtype)[0]
    B = device(bias)  # alive as long as the launches that read it (a retargeted launch holds no array)
    X = device(random_activations(rng, n, k, dtype))
    Y = device(np.full((n, m), np.nan, dtype))
    P = fl.prepare_linear(X, A, B, out=Y, split_k=split_k)
    assert isinstance(P, fl.Prepared) and P.out is Y and np.isnan(host(Y).astype(np.float32)).all()
    for step in range(STEPS):
        x = random_activations(rng, n, k, dtype)
        X[...] = device(x)
        assert P() is Y
        got = host(Y)
        assert_close_to_reference(got, *reference(W, x, bias), k, dtype, what=f"prepared linear, step {step}")
        fresh = host(fl.linear(X, A, B, split_k=split_k))
        np.testing.assert_array_equal(got.view(np.uint16), fresh.view(np.uint16))
    launch = P.packed_launch
    assert (launch is None) == SIMULATOR  # the GPU cases' rows are read in place: their launch can be pointed
    if launch is not None:
        x = random_activations(rng, n, k, dtype)
        X2, Y2 = device(x), device(np.full((n, m), np.nan, dtype))
        launch.set_pointers(_address(X2), _address(Y2))
        launch()
        assert_close_to_reference(host(Y2), *reference(W, x, bias), k, dtype, what="the packed launch, retargeted")


def _address(array) -> int:
    """The device address of a CuPy array or a PyTorch tensor."""
    return array.data_ptr() if hasattr(array, "data_ptr") else array.data.ptr
