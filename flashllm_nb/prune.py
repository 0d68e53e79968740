"""Unstructured pruning: zero an exact number of a weight matrix's entries, by magnitude or at random.

Both functions return a new array of ``W``'s dtype and array module (NumPy or CuPy) and leave ``W`` untouched.
The number of zeros asked for is ``k = round(sparsity * n)`` (Python's ``round``, half to even) where ``n`` is
``W.size``, or the row length with ``per_row=True``. Entries that are already zero (+0.0 or -0.0) count as pruned
first, so the result has exactly ``max(k, zeros already in W)`` zeros (per row with ``per_row=True``), and every
pruned entry is written as +0.0, whatever the sign of the weight it replaces (Tiled-CSL stores neither zero).

Both pick the k entries of lowest priority, ties broken by position (lowest flat index first), so the result is
deterministic: 16-bit magnitudes of a whole matrix from a histogram of their 65536 possible values (one counting
pass), anything else with one ``partition`` per row.

>>> import numpy as np
>>> W = np.array([[0.5, -3.0, 0.0, 2.0], [8.0, -6.0, 4.0, 5.0]], np.float16)
>>> magnitude(W, 0.5)
array([[ 0.,  0.,  0.,  0.],
       [ 8., -6.,  4.,  5.]], dtype=float16)
>>> magnitude(W, 0.5, per_row=True)
array([[ 0., -3.,  0.,  2.],
       [ 8., -6.,  0.,  0.]], dtype=float16)
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import ml_dtypes
import numpy as np

from ._checks import invalid
from .formats._xp import array_module

__all__ = ["magnitude", "random"]

# |w| ordered as an unsigned integer: for an IEEE float with the sign bit cleared, the bit pattern read as an
# unsigned integer grows with the magnitude, +Inf above every finite value and NaN (any payload) above +Inf.
_MAGNITUDE_BITS = {
    np.dtype(np.float16): (np.uint16, 0x7FFF),
    np.dtype(ml_dtypes.bfloat16): (np.uint16, 0x7FFF),
    np.dtype(np.float32): (np.uint32, 0x7FFF_FFFF),
    np.dtype(np.float64): (np.uint64, 0x7FFF_FFFF_FFFF_FFFF),
}


def _check(W: Any, sparsity: Any) -> Any:
    """W's array module, after checking W's dtype and that sparsity is a number in [0, 1]."""
    xp = array_module(W, "W")
    if np.dtype(W.dtype) not in _MAGNITUDE_BITS:
        raise invalid("dtype", "W", "float16, bfloat16, float32 or float64", W.dtype, TypeError)
    if isinstance(sparsity, (bool, np.bool_)) or not isinstance(sparsity, Real):
        raise invalid("type", "sparsity", "a real number in [0, 1]", type(sparsity).__name__, TypeError)
    if not 0.0 <= sparsity <= 1.0:  # also refuses NaN
        raise invalid("value", "sparsity", "a number in [0, 1]", sparsity)
    return xp


def _lowest(xp: Any, key: Any, k: int) -> Any:
    """Bool mask of the k smallest keys in each row of the 2-D ``key``, ties going to the lowest column first."""
    if k == 0:
        return xp.zeros(key.shape, bool)
    if key.shape[0] == 1 and key.dtype == np.uint16:
        return _lowest_16bit(xp, key, k)
    kth = xp.partition(key, k - 1, axis=1)[:, k - 1 : k]  # the k-th smallest key of each row
    chosen = key < kth
    tie = key == kth
    missing = k - chosen.sum(axis=1, keepdims=True)  # how many of the ties each row still takes, by position
    if key.shape[0] == 1:  # one long row (the whole matrix): pick the ties by index, no n-long running count
        first_ties = xp.flatnonzero(tie[0])[: int(missing[0, 0])]  # synchronize!
        chosen[0, first_ties] = True
        return chosen
    return chosen | (tie & (xp.cumsum(tie, axis=1, dtype=np.int32) <= missing))


def _lowest_16bit(xp: Any, key: Any, k: int) -> Any:
    """``_lowest`` for one row of 16-bit keys: the k-th smallest key from a histogram of the 65536 possible keys
    (one counting pass instead of a partition, which sorts on the GPU), then the ties by position."""
    counts = xp.bincount(key[0], minlength=1 << 16)
    at_most = xp.cumsum(counts)  # at_most[v]: keys <= v
    kth = int(xp.searchsorted(at_most, xp.asarray([k], at_most.dtype))[0])  # synchronize! smallest v: >= k keys <= v
    below = int(at_most[kth - 1]) if kth else 0  # keys < kth, all chosen
    chosen = key < kth
    first_ties = xp.flatnonzero(key[0] == kth)[: k - below]
    chosen[0, first_ties] = True
    return chosen


def _zeroed(xp: Any, W: Any, mask: Any) -> Any:
    return xp.where(mask, xp.zeros((), W.dtype), W)  # +0.0 where pruned, whatever the sign of the weight


def magnitude(W: Any, sparsity: float, per_row: bool = False) -> Any:
    """Zero the entries of smallest magnitude.

    Parameters
    ----------
    W : numpy.ndarray or cupy.ndarray
        float16, bfloat16, float32 or float64, any shape; with ``per_row`` the rows run along the last axis.
    sparsity : float in [0, 1]
        Fraction of entries to zero: ``round(sparsity * W.size)`` of them, or ``round(sparsity * W.shape[-1])``
        in every row with ``per_row=True``.
    per_row : bool, default False
        Prune each row (output neuron) to the same count instead of the matrix as a whole.

    Returns
    -------
    array
        A pruned copy, same dtype and array module.

    Notes
    -----
    Priority, lowest pruned first: existing zeros, then increasing ``|w|``, +-Inf, and NaN last (NaN counts as
    larger than any magnitude, so it is kept unless the count leaves no other choice). Equal magnitudes go by
    position, lowest index first.

    Examples
    --------
    >>> W = np.array([[1.0, -0.5, np.nan, -np.inf]], np.float32)
    >>> magnitude(W, 0.75).tolist()
    [[0.0, 0.0, nan, 0.0]]
    """
    xp = _check(W, sparsity)
    uint, clear_sign = _MAGNITUDE_BITS[np.dtype(W.dtype)]
    if per_row and W.ndim < 1:
        raise invalid("number of dimensions", "W", "at least 1 with per_row=True", W.ndim)
    rows = W.reshape(int(np.prod(W.shape[:-1])), W.shape[-1]) if per_row else W.reshape(1, -1)
    key = xp.ascontiguousarray(rows).view(uint) & uint(clear_sign)
    mask = _lowest(xp, key, round(sparsity * rows.shape[1]))
    return _zeroed(xp, W, mask.reshape(W.shape))


def random(W: Any, sparsity: float, seed: Any = None) -> Any:
    """Zero ``round(sparsity * W.size)`` entries at uniformly random positions.

    Parameters
    ----------
    W : numpy.ndarray or cupy.ndarray
        float16, bfloat16, float32 or float64, any shape.
    sparsity : float in [0, 1]
    seed : None, int, or numpy.random.Generator
        As for ``numpy.random.default_rng``. The random numbers are drawn on the host, so one seed gives the same
        positions for NumPy and CuPy inputs.

    Returns
    -------
    array
        A pruned copy, same dtype and array module.

    Notes
    -----
    Existing zeros count as pruned first; the rest of the count is drawn uniformly among the non-zero entries.
    Each entry gets a random 64-bit priority and the lowest ones are pruned (ties, which have probability about
    ``W.size**2 / 2**65``, go to the lower index).

    Examples
    --------
    >>> W = np.ones((4, 8), np.float16)
    >>> int((random(W, 0.75, seed=0) == 0).sum())
    24
    """
    xp = _check(W, sparsity)
    priority = np.random.default_rng(seed).integers(1, 2**64, W.size, dtype=np.uint64, endpoint=False)
    priority = xp.asarray(priority)
    priority[(W == 0).reshape(-1)] = 0  # existing zeros first
    mask = _lowest(xp, priority.reshape(1, -1), round(sparsity * W.size))
    return _zeroed(xp, W, mask.reshape(W.shape))
