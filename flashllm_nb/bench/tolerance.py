"""When is a benchmarked product right? One elementwise rule, derived here, for any two fp32-accumulated results.

Every provider computes ``Y = X @ W.T`` (N x M) from the same fp16/bf16 X and W. Element (i, j) is a sum of K
products ``x_ik * w_jk``. The derivation:

1. The products are exact: an fp16 x fp16 product has at most 22 significant bits (bf16: 16), fp32 holds 24.
2. Summing K terms in fp32, in any order (tiles, split-K, trees), errs by at most ``K * u32 * S`` in the worst
   case, ``S = sum_k |x_ik * w_jk|``, ``u32 = 2^-24``. That worst case needs every rounding error to point the
   same way; for independent errors the bound is ``lam * sqrt(K) * u32 * S`` with probability at least
   ``1 - 2 exp(-lam^2 / 2)`` (Higham & Mary, SIAM J. Sci. Comput. 2019). We take ``lam = 8`` (a false alarm
   about once in 10^14 elements) and bound ``S <= ||x_i||_2 * ||w_j||_2`` (Cauchy-Schwarz), cheap per row.
3. The fp32 sum is rounded once to the output type: at most ``u_out * |y|`` (``u = 2^-11`` for fp16, ``2^-8``
   for bf16, ``2^-24`` for an fp32 output), or half a subnormal step near zero.

Two results y (the provider) and r (the reference, cuBLAS) each carry these errors, so the rule is

    |y - r| <= (u_y + u_r) * |r|  +  (eta_y + eta_r)  +  2^-20 * sqrt(K) * ||x_i||_2 * ||w_j||_2

with ``eta`` half the smallest subnormal of each output type and ``2^-20 = 2 * 8 * 2^-24``. A NaN or Inf
anywhere fails. Against a float64 reference (the simulator path), ``u_r`` and ``eta_r`` are float64's and the
rule is the same.

Why not the worst-case bound (``flashllm_nb.reference.tolerance`` uses it to test small kernels against
float64)? At K = 36864 it allows errors near a quarter of a typical output, so a kernel that dropped a whole
64-wide k-tile would pass. This rule allows about 3.5 % of a typical output at K = 36864 and 50 % sparsity, and
under 1 % at K <= 9216; a dropped k-tile moves each of its 128 x N outputs by ~4 % (rms) of a typical output at
K = 36864, so among those outputs many exceed the tolerance and it is caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["UNIT_ROUNDOFF", "HALF_SUBNORMAL", "ACCUMULATION", "Check", "tolerance", "check_close"]

#: Half an ulp at 1.0 (round to nearest) of each output type, keyed by ``str(dtype)``.
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
#: Half the smallest subnormal step: the absolute rounding error at the bottom of each type's range.
HALF_SUBNORMAL = {"float16": 2.0**-25, "bfloat16": 2.0**-134, "float32": 2.0**-150, "float64": 2.0**-1075}
#: ``2 * lam * u32`` with ``lam = 8``: two independent fp32 accumulations, each within 8 "standard deviations".
ACCUMULATION = 2.0**-20


@dataclass(frozen=True)
class Check:
    """The outcome of :func:`check_close`."""

    ok: bool
    worst: float  # max |y - r| / tol over all elements (<= 1 when ok; inf for a NaN/Inf or a shape mismatch)
    n_bad: int  # elements outside the tolerance
    message: str  # "" when ok, else where and by how much it failed


def dtype_name(dtype: Any) -> str:
    """``float16`` / ``bfloat16`` / ``float32`` / ``float64`` for NumPy, CuPy and torch dtypes alike."""
    return str(dtype).removeprefix("torch.")


def tolerance(ref_abs: Any, x_norm: Any, w_norm: Any, k: int, out_dtype: Any, ref_dtype: Any) -> Any:
    """The elementwise bound on ``|y - r|`` (N x M) from the module docstring.

    Parameters
    ----------
    ref_abs : array (N, M)
        ``|r|``, the reference's magnitude (float32 or float64).
    x_norm, w_norm : arrays (N,), (M,)
        Euclidean norms of the rows of X and of W (the W the provider really multiplied).
    k : int
        The reduction length K (in_features).
    out_dtype, ref_dtype
        The types y and r were rounded to.
    """
    u = UNIT_ROUNDOFF[dtype_name(out_dtype)] + UNIT_ROUNDOFF[dtype_name(ref_dtype)]
    eta = HALF_SUBNORMAL[dtype_name(out_dtype)] + HALF_SUBNORMAL[dtype_name(ref_dtype)]
    return u * ref_abs + eta + ACCUMULATION * float(np.sqrt(k)) * (x_norm[:, None] * w_norm[None, :])


def check_close(y: Any, ref: Any, x_norm: Any, w_norm: Any, k: int, out_dtype: Any, ref_dtype: Any,
                xp: Any = np) -> Check:
    """Check ``y`` against ``ref`` elementwise with :func:`tolerance`.

    ``y`` and ``ref`` are float32/float64 arrays of module ``xp`` (NumPy or CuPy) holding the two results' values;
    ``out_dtype``/``ref_dtype`` say what they were rounded to before being widened. Only a few scalars are copied
    back to the host.
    """
    if tuple(y.shape) != tuple(ref.shape):
        return Check(False, float("inf"), int(np.prod(ref.shape)), f"shape {tuple(y.shape)} != {tuple(ref.shape)}")
    y = y.astype(xp.float64)
    ref = ref.astype(xp.float64)
    if not bool(xp.isfinite(y).all()):  # synchronize!
        bad = int((~xp.isfinite(y)).sum())
        return Check(False, float("inf"), bad, f"{bad} non-finite outputs")
    tol = tolerance(xp.abs(ref), x_norm.astype(xp.float64), w_norm.astype(xp.float64), k, out_dtype, ref_dtype)
    ratio = xp.abs(y - ref) / tol
    worst_at = int(ratio.argmax())  # synchronize!
    i, j = divmod(worst_at, ref.shape[1])
    worst = float(ratio.ravel()[worst_at])
    n_bad = int((ratio > 1).sum())
    if n_bad == 0:
        return Check(True, worst, 0, "")
    return Check(False, worst, n_bad,
                 f"{n_bad} of {ratio.size} outputs outside tolerance; worst at (n={i}, m={j}): "
                 f"got {float(y[i, j]):.6g}, reference {float(ref[i, j]):.6g}, {worst:.3g} x the tolerance")
