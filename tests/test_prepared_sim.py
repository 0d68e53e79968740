"""``prepare_linear`` / ``prepare_spmm`` in Numba's CUDA simulator: a prepared product checks its arguments once and
then recomputes on the same arrays each call, reading X's contents at the time of the call.

Every result is compared with the float64 reference within the fp32-accumulation bound, and with what a fresh
``linear``/``spmm`` call computes (bit for bit: the same kernel on the same data).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import flashllm_nb as fl
from flashllm_nb.reference import linear_reference, spmm_reference
from flashllm_nb.reference.spmm import abs_product
from flashllm_nb.reference.tolerance import assert_close_to_reference

pytestmark = pytest.mark.sim


def _sparse(rng, m, k, sparsity, dtype=np.float16):
    W = rng.standard_normal((m, k)).astype(np.float32)
    W[rng.random((m, k)) < sparsity] = 0
    return W.astype(dtype)


@pytest.mark.parametrize("k,split_k", [(96, None), (77, 2)])  # 77: X is read through an aligned copy
def test_prepared_linear_recomputes_with_the_current_activations(k, split_k):
    rng = np.random.default_rng(k)
    W = _sparse(rng, 150, k, 0.7)
    A = fl.TiledCSL.from_dense(W)
    X = rng.standard_normal((5, k)).astype(np.float16)
    bias = rng.standard_normal(150).astype(np.float16)
    Y = np.full((5, 150), np.nan, np.float16)
    P = fl.prepare_linear(X, A, bias, out=Y, split_k=split_k)
    assert isinstance(P, fl.Prepared) and P.out is Y and np.isnan(Y).all()  # preparing computes nothing
    for step in range(2):
        X[...] = rng.standard_normal(X.shape).astype(np.float16)  # new contents, same array
        assert P() is Y
        assert_close_to_reference(Y, linear_reference(X, A, bias), abs_product(X, W.T), k, W.dtype,
                                  what=f"prepared linear, step {step}")
        np.testing.assert_array_equal(Y.view(np.uint16), fl.linear(X, A, bias, split_k=split_k).view(np.uint16))


def test_prepared_spmm_bf16_allocates_out_and_recomputes():
    rng = np.random.default_rng(1)
    W = _sparse(rng, 130, 64, 0.5, ml_dtypes.bfloat16)
    A = fl.TiledCSL.from_dense(W)
    X = rng.standard_normal((64, 9)).astype(ml_dtypes.bfloat16)
    P = fl.prepare_spmm(A, X)
    assert P.out.shape == (130, 9) and P.out.dtype == W.dtype
    for _ in range(2):
        X[...] = rng.standard_normal(X.shape).astype(ml_dtypes.bfloat16)
        Z = P()
        assert_close_to_reference(Z, spmm_reference(A, X), abs_product(W, X), 64, W.dtype, what="prepared spmm")


def test_prepared_empty_products():
    A = fl.TiledCSL.from_dense(np.zeros((40, 0), np.float16))  # K = 0: the output is the bias
    bias = np.arange(40, dtype=np.float16)
    P = fl.prepare_linear(np.zeros((3, 0), np.float16), A, bias)
    P.out[...] = 7
    np.testing.assert_array_equal(P(), np.broadcast_to(bias, (3, 40)))
    Q = fl.prepare_linear(np.zeros((0, 16), np.float16), fl.TiledCSL.from_dense(np.ones((8, 16), np.float16)))
    assert Q().shape == (0, 8)


def test_prepare_checks_arguments_like_linear():
    A = fl.TiledCSL.from_dense(np.ones((8, 16), np.float16))
    with pytest.raises(ValueError, match="shape of X"):
        fl.prepare_linear(np.zeros((2, 15), np.float16), A)
    with pytest.raises(TypeError, match="dtype of X"):
        fl.prepare_linear(np.zeros((2, 16), np.float32), A)
    with pytest.raises(ValueError, match="shape of out"):
        fl.prepare_spmm(A, np.zeros((16, 2), np.float16), out=np.zeros((8, 3), np.float16))
