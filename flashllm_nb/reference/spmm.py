"""Float64 references for ``spmm`` and ``linear``: the numbers every kernel is checked against.

Widening fp16 and bf16 values to float64 is exact, and so is the product of any two of them (11 + 11 or 8 + 8
significant bits fit in float64's 53). A float64 sum of K such products is then within about K * 2**-53 of the
exact result: far below any fp32-accumulating kernel's tolerance (see ``reference.tolerance``).

Non-finite inputs follow dense arithmetic, because the kernels compute densely ("compute as dense"): a structural
zero of A times an Inf or NaN in X is 0 * Inf = NaN, which a sparse product, multiplying only stored entries,
would silently skip. So whenever X holds a non-finite value (or a dense A does) the product is taken over the
dense float64 matrices with ``einsum``, which runs NumPy's own loops and honours IEEE rules for every term, zeros
included. Non-finite values of a sparse A need no such care: they are stored entries, multiplied like in a dense
product.

Every function accepts for A anything with ``to_scipy()`` (e.g. :class:`~flashllm_nb.TiledCSL`), a SciPy sparse
matrix or array, or a dense NumPy/CuPy array; X and bias as NumPy or CuPy arrays of float16, bfloat16, float32 or
float64. Results are NumPy float64.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import scipy.sparse

from .._checks import check_ndim, check_shape, invalid
from ..formats._xp import to_host

__all__ = ["spmm_reference", "linear_reference", "abs_product"]

_FLOATS = tuple(np.dtype(d) for d in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64))


def _matrix(A: Any, name: str) -> Any:
    """A as float64: a CSR array when sparse, else a dense 2-D ndarray."""
    if hasattr(A, "to_scipy"):
        A = A.to_scipy()
    if scipy.sparse.issparse(A):
        check_ndim(A, name, 2)
        return scipy.sparse.csr_array(A, dtype=np.float64)
    return _dense(A, name, 2)


def _dense(x: Any, name: str, ndim: int) -> np.ndarray:
    if not hasattr(x, "dtype") or isinstance(x, np.generic):
        raise invalid("type", name, "a NumPy or CuPy array", type(x).__name__, TypeError)
    check_ndim(x, name, ndim)
    if np.dtype(x.dtype) not in _FLOATS:
        raise invalid("dtype", name, "float16, bfloat16, float32 or float64", x.dtype, TypeError)
    return to_host(x).astype(np.float64)  # synchronize!


def _is_finite(A: Any) -> bool:
    return bool(np.isfinite(A.data if scipy.sparse.issparse(A) else A).all())


def _product(A: Any, X: np.ndarray) -> np.ndarray:
    """A @ X in float64 with dense-arithmetic semantics for non-finite values (module docstring)."""
    with np.errstate(invalid="ignore", over="ignore"):
        if np.isfinite(X).all() and (scipy.sparse.issparse(A) or _is_finite(A)):
            return np.asarray(A @ X)
        dense = A.toarray() if scipy.sparse.issparse(A) else A
        return np.einsum("mk,kn->mn", dense, X)


def spmm_reference(A: Any, X: Any) -> np.ndarray:
    """``A @ X`` in float64.

    Parameters
    ----------
    A : TiledCSL, scipy.sparse, or array, shape (M, K)
    X : array, shape (K, N)

    Returns
    -------
    numpy.ndarray
        float64, shape (M, N).

    Examples
    --------
    >>> import numpy as np
    >>> from flashllm_nb import TiledCSL
    >>> A = TiledCSL.from_dense(np.array([[1.0, 0.0], [0.0, 2.0]], np.float16))
    >>> spmm_reference(A, np.array([[3.0], [np.inf]], np.float16)).tolist()  # 0 * inf = nan, as dense gives
    [[nan], [inf]]
    """
    A = _matrix(A, "A")
    X = _dense(X, "X", 2)
    check_shape(X, "X", (A.shape[1], None))
    return _product(A, X)


def linear_reference(X: Any, A: Any, bias: Any = None) -> np.ndarray:
    """``X @ A.T + bias`` in float64: a linear layer with weight A (out_features x in_features).

    Parameters
    ----------
    X : array, shape (N, K)
    A : TiledCSL, scipy.sparse, or array, shape (M, K)
    bias : array, shape (M,), optional

    Returns
    -------
    numpy.ndarray
        float64, shape (N, M), C-contiguous.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.array([[1.0, 2.0], [0.0, -1.0], [0.5, 0.0]], np.float16)
    >>> linear_reference(np.ones((1, 2), np.float16), W, bias=np.array([0.0, 1.0, 2.0], np.float16)).tolist()
    [[3.0, 0.0, 2.5]]
    """
    A = _matrix(A, "A")
    X = _dense(X, "X", 2)
    check_shape(X, "X", (None, A.shape[1]))
    Y = np.ascontiguousarray(_product(A, X.T).T)
    if bias is not None:
        bias = _dense(bias, "bias", 1)
        check_shape(bias, "bias", (A.shape[0],))
        with np.errstate(invalid="ignore"):  # Inf - Inf = NaN is the intended dense result
            Y += bias
    return Y


def abs_product(A: Any, X: Any) -> np.ndarray:
    """``|A| @ |X|`` in float64: the scale of the rounding errors of ``A @ X`` (``reference.tolerance``).

    Parameters
    ----------
    A : TiledCSL, scipy.sparse, or array, shape (M, K)
    X : array, shape (K, N)

    Returns
    -------
    numpy.ndarray
        float64, shape (M, N).

    Examples
    --------
    >>> import numpy as np
    >>> abs_product(np.array([[1.0, -2.0]], np.float16), np.array([[3.0], [1.0]], np.float16)).tolist()
    [[5.0]]
    """
    A = abs(_matrix(A, "A"))
    X = np.abs(_dense(X, "X", 2))
    check_shape(X, "X", (A.shape[1], None))
    return _product(A, X)
