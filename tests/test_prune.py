"""Pruning: exact zero counts (overall and per row), magnitude order, tie and NaN rules, argument checks."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashllm_nb import prune

DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]


def _weights(shape, dtype, seed, zeros=0.0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(shape).astype(dtype)
    W[rng.random(shape) < zeros] = 0
    return W


@given(st.integers(1, 60), st.integers(1, 60), st.sampled_from(DTYPES), st.floats(0, 1), st.floats(0, 0.5),
       st.integers(0, 2**32 - 1))
def test_magnitude_exact_count_and_order(M, K, dtype, sparsity, zeros, seed):
    """magnitude() zeros exactly max(k, existing zeros) entries, k = round(sparsity * size); it only zeros, and
    every kept nonzero is at least as large in magnitude as every entry it pruned."""
    W = _weights((M, K), dtype, seed, zeros)
    P = prune.magnitude(W, sparsity)
    assert P.dtype == W.dtype and P.shape == W.shape
    k, z0 = round(sparsity * W.size), int((W == 0).sum())
    assert int((P == 0).sum()) == max(k, z0)
    kept = P != 0
    np.testing.assert_array_equal(P[kept], W[kept])
    if kept.any() and (~kept).any():
        assert np.abs(W[~kept].astype(np.float64)).max() <= np.abs(W[kept].astype(np.float64)).min()


@given(st.integers(1, 40), st.integers(1, 80), st.sampled_from(DTYPES), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_magnitude_per_row_exact_counts(M, K, dtype, sparsity, seed):
    """per_row=True zeros exactly round(sparsity * K) entries in every row (W has no zeros), the smallest of that
    row."""
    W = _weights((M, K), dtype, seed)
    W[W == 0] = 1  # no existing zeros: the count is exact
    P = prune.magnitude(W, sparsity, per_row=True)
    k = round(sparsity * K)
    np.testing.assert_array_equal((P == 0).sum(axis=1), np.full(M, k))
    magnitudes = np.abs(W.astype(np.float64))
    for row in range(M):
        pruned, kept = magnitudes[row][P[row] == 0], magnitudes[row][P[row] != 0]
        if pruned.size and kept.size:
            assert pruned.max() <= kept.min()


def test_ties_go_to_the_lowest_index_and_existing_zeros_first():
    W = np.array([2.0, -1.0, 1.0, 0.0, -0.0, 1.0, 3.0], np.float16)
    # priority: the two zeros (indices 3, 4), then |1| at indices 1, 2, 5 in that order
    assert prune.magnitude(W, 3 / 7).tolist() == [2.0, 0.0, 1.0, 0.0, 0.0, 1.0, 3.0]
    assert prune.magnitude(W, 4 / 7).tolist() == [2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 3.0]


def test_pruned_entries_are_positive_zero():
    W = np.array([-0.0, -1.0, 2.0, -3.0], np.float16)
    P = prune.magnitude(W, 0.5)
    assert P.view(np.uint16).tolist()[:2] == [0, 0]  # +0.0, not -0.0: the canonical zero


def test_more_existing_zeros_than_asked_are_left_alone():
    W = np.array([0.0, 0.0, -0.0, 1.0], np.float32)
    P = prune.magnitude(W, 0.25)
    np.testing.assert_array_equal(P.view(np.uint32), W.view(np.uint32))


def test_nan_is_kept_and_inf_goes_before_nan():
    W = np.array([np.nan, 5.0, -np.inf, 1.0], np.float32)
    P = prune.magnitude(W, 0.5)
    assert np.isnan(P[0]) and P[1:].tolist() == [0.0, -np.inf, 0.0]
    P = prune.magnitude(W, 0.75)
    assert np.isnan(P[0]) and (P[1:] == 0).all()


def test_rounding_of_the_count_is_half_to_even():
    W = np.arange(1, 11, dtype=np.float32)  # 10 entries: 0.25 * 10 = 2.5 rounds to 2, 0.35 * 10 = 3.5 to 4
    assert int((prune.magnitude(W, 0.25) == 0).sum()) == 2
    assert int((prune.magnitude(W, 0.35) == 0).sum()) == 4


def test_input_is_not_modified():
    W = _weights((20, 30), np.float16, 0)
    before = W.copy()
    prune.magnitude(W, 0.9)
    prune.random(W, 0.9, seed=0)
    np.testing.assert_array_equal(W, before)


@given(st.integers(1, 60), st.integers(1, 60), st.sampled_from(DTYPES), st.floats(0, 1), st.floats(0, 0.5),
       st.integers(0, 2**32 - 1))
def test_random_exact_count(M, K, dtype, sparsity, zeros, seed):
    """random() zeros exactly max(round(sparsity * size), existing zeros) entries and changes nothing else."""
    W = _weights((M, K), dtype, seed, zeros)
    P = prune.random(W, sparsity, seed=seed)
    assert P.dtype == W.dtype
    assert int((P == 0).sum()) == max(round(sparsity * W.size), int((W == 0).sum()))
    np.testing.assert_array_equal(P[P != 0], W[P != 0])


def test_random_is_reproducible_and_seed_dependent():
    W = np.ones((64, 64), np.float32)
    a, b, c = (prune.random(W, 0.5, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    np.testing.assert_array_equal(prune.random(W, 0.5, seed=np.random.default_rng(7)), a)


def test_random_positions_are_uniform():
    # 400 draws of 25 zeros among 100 entries: each entry is zeroed 100 times in expectation (sd ~8.7);
    # a chi-square test on the 100 counts (99 degrees of freedom) with a generous 0.999 quantile of ~148.
    W = np.ones(100, np.float32)
    counts = sum((prune.random(W, 0.25, seed=s) == 0).astype(int) for s in range(400))
    chi2 = ((counts - 100) ** 2 / 100).sum() * (100 / 75)  # hypergeometric variance: factor (N - n) / N
    assert counts.sum() == 400 * 25
    assert chi2 < 148


def test_matches_the_package_docstring_example():
    W = np.random.default_rng(0).standard_normal((256, 128)).astype(np.float16)
    assert int((prune.random(W, 0.8, seed=0) != 0).sum()) == 6554  # 32768 - round(0.8 * 32768)


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, float("nan"), float("inf")])
def test_sparsity_out_of_range(sparsity):
    for fn in (prune.magnitude, prune.random):
        message = f"Invalid value of sparsity: expected a number in \\[0, 1\\], got {sparsity}"
        with pytest.raises(ValueError, match=message):
            fn(np.ones(4, np.float32), sparsity)


@pytest.mark.parametrize("sparsity", [True, "0.5", None])
def test_sparsity_must_be_a_number(sparsity):
    with pytest.raises(TypeError, match="Invalid type of sparsity: expected a real number in \\[0, 1\\]"):
        prune.magnitude(np.ones(4, np.float32), sparsity)


def test_dtype_and_type_checks():
    with pytest.raises(TypeError, match="Invalid dtype of W: expected float16, bfloat16, float32 or float64, "
                                        "got int32"):
        prune.magnitude(np.ones(4, np.int32), 0.5)
    with pytest.raises(TypeError, match="Invalid type of W: expected a NumPy or CuPy array, got list"):
        prune.random([1.0, 2.0], 0.5)


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 5)])
def test_empty_arrays(shape):
    for P in (prune.magnitude(np.ones(shape, np.float16), 0.5), prune.magnitude(np.ones(shape), 0.5, per_row=True),
              prune.random(np.ones(shape), 0.5)):
        assert P.shape == shape
