"""``prepare_spmm`` and the edges of prepared products in Numba's CUDA simulator, on NumPy arrays: a prepared
``spmm`` allocates its output and recomputes from X's current contents, empty products give the bias or nothing,
and preparing checks its arguments as ``linear`` does. Results are compared with the float64 reference within the
fp32-accumulation bound.

The check shared with the GPU (``prepare_linear`` recomputing in place) is in ``test_prepared.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import flashllm_nb as fl
from flashllm_nb.reference import spmm_reference
from flashllm_nb.reference.spmm import abs_product
from flashllm_nb.reference.tolerance import assert_close_to_reference
from spmm_checks import BF16, random_sparse

pytestmark = pytest.mark.sim


def test_prepared_spmm_bf16_allocates_out_and_recomputes():
    """A prepared bf16 ``spmm`` without ``out`` allocates one of the right shape and dtype, and each call computes
    A @ X from X's current contents within the bound."""
    rng = np.random.default_rng(1)
    W = random_sparse(rng, 130, 64, 0.5, BF16)
    A = fl.TiledCSL.from_dense(W)
    X = rng.standard_normal((64, 9)).astype(BF16)
    P = fl.prepare_spmm(A, X)
    assert P.out.shape == (130, 9) and P.out.dtype == W.dtype
    for _ in range(2):
        X[...] = rng.standard_normal(X.shape).astype(BF16)
        Z = P()
        assert_close_to_reference(Z, spmm_reference(A, X), abs_product(W, X), 64, W.dtype, what="prepared spmm")


def test_prepared_empty_products():
    """K = 0 gives the bias in every row (whatever ``out`` held); N = 0 gives an empty result of the right shape."""
    A = fl.TiledCSL.from_dense(np.zeros((40, 0), np.float16))  # K = 0: the output is the bias
    bias = np.arange(40, dtype=np.float16)
    P = fl.prepare_linear(np.zeros((3, 0), np.float16), A, bias)
    P.out[...] = 7
    np.testing.assert_array_equal(P(), np.broadcast_to(bias, (3, 40)))
    Q = fl.prepare_linear(np.zeros((0, 16), np.float16), fl.TiledCSL.from_dense(np.ones((8, 16), np.float16)))
    assert Q().shape == (0, 8)


def test_prepare_checks_arguments_like_linear():
    """Preparing refuses a wrong shape or dtype of X and a wrong shape of out, with linear's messages."""
    A = fl.TiledCSL.from_dense(np.ones((8, 16), np.float16))
    with pytest.raises(ValueError, match="shape of X"):
        fl.prepare_linear(np.zeros((2, 15), np.float16), A)
    with pytest.raises(TypeError, match="dtype of X"):
        fl.prepare_linear(np.zeros((2, 16), np.float32), A)
    with pytest.raises(ValueError, match="shape of out"):
        fl.prepare_spmm(A, np.zeros((16, 2), np.float16), out=np.zeros((8, 3), np.float16))
