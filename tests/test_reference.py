"""The float64 references against a plain dense float64 product, for every kind of A, non-finite values included;
and the terms of the worst-case error bound (``reference.tolerance.error_bound``) kernels are checked with."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import scipy.sparse
from hypothesis import given
from hypothesis import strategies as st

from flashllm_nb import TiledCSL
from flashllm_nb.reference import abs_product, linear_reference, spmm_reference
from flashllm_nb.reference.tolerance import error_bound

DTYPES = [np.float16, ml_dtypes.bfloat16]


def _dense64(A, X):
    """The plain dense float64 product, by NumPy's own loops (IEEE rules for every term, zeros included)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.einsum("mk,kn->mn", np.asarray(A, np.float64), np.asarray(X, np.float64))


def _case(M, K, N, dtype, sparsity, seed, specials=0.0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((M, K)).astype(dtype)
    W[rng.random((M, K)) < sparsity] = 0
    X = rng.standard_normal((K, N)).astype(dtype)
    for arr in (W, X):
        hit = rng.random(arr.shape) < specials
        arr[hit] = rng.choice(np.array([np.inf, -np.inf, np.nan], np.float32), int(hit.sum())).astype(dtype)
    return W, X


def _same(actual, expected, scale):
    """Equal where non-finite (NaN where NaN, same infinity), within float64 summation rounding elsewhere."""
    assert actual.dtype == np.float64 and actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)])
    assert (np.abs(actual[finite] - expected[finite]) <= 1e-13 * scale[finite]).all()


@given(st.integers(1, 150), st.integers(1, 150), st.integers(1, 20), st.sampled_from(DTYPES), st.floats(0, 1),
       st.sampled_from([0.0, 0.0, 0.01, 0.1]), st.integers(0, 2**32 - 1))
def test_spmm_reference_is_the_dense_float64_product(M, K, N, dtype, sparsity, specials, seed):
    """spmm_reference(A, X) equals the dense float64 A @ X for A given as TiledCSL, SciPy CSR or dense array,
    with NaN and +-Inf (in A or X) propagating exactly as in the dense product."""
    W, X = _case(M, K, N, dtype, sparsity, seed, specials)
    expected = _dense64(W, X)
    scale = _dense64(np.abs(W.astype(np.float64)), np.abs(X.astype(np.float64)))
    for A in (TiledCSL.from_dense(W), scipy.sparse.csr_array(W.astype(np.float32)), W):
        _same(spmm_reference(A, X), expected, scale)


@given(st.integers(1, 150), st.integers(1, 150), st.integers(1, 20), st.sampled_from(DTYPES), st.floats(0, 1),
       st.booleans(), st.sampled_from([0.0, 0.01]), st.integers(0, 2**32 - 1))
def test_linear_reference_is_x_times_a_transposed_plus_bias(M, K, N, dtype, sparsity, with_bias, specials, seed):
    """linear_reference(X, A, bias) equals the dense float64 X @ A.T + bias, C-contiguous, shape (N, M)."""
    W, Xt = _case(M, K, N, dtype, sparsity, seed, specials)
    X = np.ascontiguousarray(Xt.T)
    bias = np.random.default_rng(seed).standard_normal(M).astype(dtype) if with_bias else None
    expected = _dense64(X, W.T) + (0.0 if bias is None else bias.astype(np.float64))
    scale = _dense64(np.abs(X.astype(np.float64)), np.abs(W.T.astype(np.float64)))
    Y = linear_reference(X, TiledCSL.from_dense(W), bias)
    assert Y.flags.c_contiguous
    _same(Y, expected, scale + (0.0 if bias is None else np.abs(bias.astype(np.float64))))


@given(st.integers(1, 100), st.integers(1, 100), st.integers(1, 10), st.sampled_from(DTYPES), st.floats(0, 1),
       st.sampled_from([0.0, 0.05]), st.integers(0, 2**32 - 1))
def test_abs_product(M, K, N, dtype, sparsity, specials, seed):
    """abs_product(A, X) equals the dense |A| @ |X| for a TiledCSL or dense A (NaN/Inf as in the dense product)."""
    W, X = _case(M, K, N, dtype, sparsity, seed, specials)
    expected = _dense64(np.abs(W.astype(np.float64)), np.abs(X.astype(np.float64)))
    for A in (TiledCSL.from_dense(W), W):
        _same(abs_product(A, X), expected, expected)


def test_structural_zero_times_inf_is_nan_as_in_the_dense_product():
    W = np.array([[1.0, 0.0], [0.0, 0.0]], np.float16)  # column 1 holds only structural zeros
    X = np.array([[2.0, 1.0], [np.inf, 1.0]], np.float16)
    A = TiledCSL.from_dense(W)
    assert np.isnan(A.to_scipy() @ X.astype(np.float64)).sum() == 0  # what a sparse product would say
    Y = spmm_reference(A, X)
    assert np.isnan(Y[:, 0]).all() and Y[:, 1].tolist() == [1.0, 0.0]
    assert np.isnan(abs_product(A, X)[:, 0]).all()
    assert np.isnan(linear_reference(np.ascontiguousarray(X.T), A)[0]).all()


def test_stored_inf_times_zero_is_nan():
    A = TiledCSL.from_dense(np.array([[np.inf, 1.0]], np.float16))
    assert np.isnan(spmm_reference(A, np.array([[0.0], [1.0]], np.float16))[0, 0])


def test_bfloat16_is_widened_exactly():
    x = np.array([[1 + 2**-7], [2**-133]], ml_dtypes.bfloat16)  # the last bit of the mantissa; a subnormal
    W = np.array([[1.0, 2.0**100]], ml_dtypes.bfloat16)
    assert spmm_reference(W, x)[0, 0] == 1 + 2**-7 + 2.0**-33


def test_accepts_device_like_kinds_of_a():
    W = np.array([[0.5, 0.0], [0.0, -1.0]], np.float32)
    X = np.eye(2, dtype=np.float32)
    for A in (W, scipy.sparse.csr_matrix(W), scipy.sparse.coo_array(W), TiledCSL.from_dense(W.astype(np.float16))):
        np.testing.assert_array_equal(spmm_reference(A, X), W)


def test_shape_errors_name_the_argument():
    A = TiledCSL.from_dense(np.ones((3, 5), np.float16))
    with pytest.raises(ValueError, match=r"Invalid shape of X: expected \(5, \*\), got \(4, 2\)"):
        spmm_reference(A, np.ones((4, 2), np.float16))
    with pytest.raises(ValueError, match=r"Invalid shape of X: expected \(\*, 5\), got \(2, 4\)"):
        linear_reference(np.ones((2, 4), np.float16), A)
    with pytest.raises(ValueError, match=r"Invalid shape of bias: expected \(3,\), got \(5,\)"):
        linear_reference(np.ones((2, 5), np.float16), A, np.ones(5, np.float16))
    with pytest.raises(ValueError, match=r"Invalid number of dimensions of X: expected 2, got 1"):
        abs_product(A, np.ones(5, np.float16))


def test_type_errors_name_the_argument():
    A = np.ones((2, 2), np.float16)
    with pytest.raises(TypeError, match="Invalid dtype of X: expected float16, bfloat16, float32 or float64, "
                                        "got int64"):
        spmm_reference(A, np.ones((2, 2), np.int64))
    with pytest.raises(TypeError, match="Invalid type of X: expected a NumPy or CuPy array, got list"):
        spmm_reference(A, [[1.0], [2.0]])
    with pytest.raises(TypeError, match="Invalid dtype of A: expected float16, bfloat16, float32 or float64, "
                                        "got int32"):
        spmm_reference(np.ones((2, 2), np.int32), np.ones((2, 1)))


@pytest.mark.parametrize("dtype, round_, tiny", [(np.float16, 2.0**-11, 2.0**-24),
                                                  (ml_dtypes.bfloat16, 2.0**-8, 2.0**-133)])
def test_worst_case_error_bound_terms(dtype, round_, tiny):
    """One rounding of |ref|, a full fp32 ulp (2^-23) per addition of |A| @ |X|, one subnormal step."""
    ref, abs_prod = np.array([[0.0, -3.0, 1e4]]), np.array([[1.0, 5.0, 2e4]])
    expected = round_ * np.abs(ref) + 100 * 2.0**-23 * abs_prod + tiny
    np.testing.assert_array_equal(error_bound(ref, abs_prod, 100, dtype), expected)
