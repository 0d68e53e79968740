"""How far a computed result may lie from a reference, element by element, and why: the project's one home of
tolerances, used by the tests, the kernel benchmark, the dev tools and the CLI.

Every SpMM kernel and every benchmarked provider computes each output as a sum of K exact products (fp16 x fp16 and
bf16 x bf16 products are exact in fp32), accumulated in fp32, then rounded once to the output type. Its error is
therefore bounded by three terms, built from the per-type constants below (``ROUND``, ``TINY``):

    |y - ref| <= (rounding to the output type)  +  (subnormal slack)  +  (fp32 accumulation error)

The bounds here differ in how they bound the accumulation error, and in whether one result or two carry rounding
errors, because they serve different purposes:

- :func:`error_bound` (asserted by :func:`assert_close_to_reference`): the **worst case**, for checking a kernel
  against the float64 reference (the tests, ``dev/kernel_dev``, the CLI's ``demo``). No correct kernel can fail it,
  whatever the data.
- :func:`probable_bound` (checked by :func:`check_close`): a **probabilistic** bound between two fp32-accumulated
  results, for the kernel benchmark, which checks every provider against cuBLAS (or float64) at K up to 36864: there
  the worst case is too loose to catch a kernel that dropped a whole tile.
- :func:`logits_bound` (asserted by :func:`assert_logits_close`): a whole decoder's logits, a first-order model of
  the roundings on the way.

Worst case
----------

    |y - ref| <= ROUND[dtype] * |ref|  +  K * ACCUMULATE * (|A| @ |X|)[i, j]  +  TINY[dtype]

| term | value | reason |
|---|---|---|
| ``ROUND`` | 2^-11 (fp16), 2^-8 (bf16) | one round-to-nearest of the fp32 sum to the output type: half an ulp |
| ``ACCUMULATE`` | 2^-23 | each fp32 addition errs by at most one ulp of the running sum; the Tensor Cores' internal adder is not guaranteed to round to nearest, so a full ulp (``2 * ROUND[float32]``) is allowed, not half; split-K adds its partial sums in fp32 too and stays inside the same K additions |
| ``TINY`` | smallest subnormal of the output type | an fp32 result under the output's subnormal range flushes or rounds by up to one subnormal step |

The bound uses ``|A| @ |X|``, not ``|ref|``, because cancellation can make ``ref`` tiny while the accumulated
rounding errors are not. Non-finite values follow dense arithmetic: where the float64 reference is NaN the result
must be NaN, where it is +-Inf the result must be the same infinity, and a finite reference whose rounding to the
output type overflows may come back as that infinity.

Probable (the benchmark's check)
--------------------------------

For output (i, j) of ``Y = X @ W.T``, ``S = sum_k |x_ik * w_jk|``:

1. Summing K terms in fp32, in any order (tiles, split-K, trees), errs by at most ``K * u32 * S`` in the worst case
   (``u32 = ROUND[float32] = 2^-24``). That worst case needs every rounding error to point the same way; for
   independent errors the bound is ``lam * sqrt(K) * u32 * S`` with probability at least ``1 - 2 exp(-lam^2 / 2)``
   (Higham & Mary, SIAM J. Sci. Comput. 2019). ``SIGMAS = lam = 8`` (a false alarm about once in 10^14 elements),
   and ``S <= ||x_i||_2 * ||w_j||_2`` (Cauchy-Schwarz), cheap per row.
2. The fp32 sum is rounded once to the output type: at most ``ROUND[out] * |y|``, or half a subnormal step near 0.

Two results y (the provider) and r (the reference, cuBLAS) each carry these errors, so the rule is

    |y - r| <= (ROUND[y] + ROUND[r]) * |r|  +  (TINY[y] + TINY[r]) / 2  +  2^-20 * sqrt(K) * ||x_i||_2 * ||w_j||_2

with ``2^-20 = 2 * SIGMAS * ROUND[float32]``. A NaN or Inf anywhere fails. Against a float64 reference (the
simulator path), ``ROUND[r]`` and ``TINY[r]`` are float64's and the rule is the same.

Why not the worst case there? At K = 36864 it allows errors near a quarter of a typical output, so a kernel that
dropped a whole 64-wide k-tile would pass. This rule allows about 3.5 % of a typical output at K = 36864 and 50 %
sparsity, and under 1 % at K <= 9216; a dropped k-tile moves each of its 128 x N outputs by ~4 % (rms) of a typical
output at K = 36864, so among those outputs many exceed the tolerance and it is caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flashllm_nb.formats._xp import BFLOAT16, FLOAT16

__all__ = [
    "ROUND", "TINY", "ACCUMULATE", "SIGMAS", "error_bound", "assert_close_to_reference", "Check", "dtype_name",
    "probable_bound", "check_close", "ROUNDINGS_PER_LAYER", "logits_bound", "assert_logits_close",
]

FLOAT32, FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
#: Unit roundoff of each type: half an ulp at 1.0, the largest relative error of one round to nearest.
ROUND = {FLOAT16: 2.0**-11, BFLOAT16: 2.0**-8, FLOAT32: 2.0**-24, FLOAT64: 2.0**-53}
#: Smallest subnormal step of each type: the largest absolute error of a flush to zero at the bottom of its range
#: (a round to nearest errs by half of it).
TINY = {FLOAT16: 2.0**-24, BFLOAT16: 2.0**-133, FLOAT32: 2.0**-149, FLOAT64: 2.0**-1074}
#: Worst-case relative error of one fp32 addition of the Tensor Cores: a full ulp, not half (see the table above).
ACCUMULATE = 2 * ROUND[FLOAT32]
#: Standard deviations the probabilistic bound allows each fp32 accumulation (``lam`` in the module docstring).
SIGMAS = 8


# Worst case: a kernel against the float64 reference ---------------------------------------------------------------

def error_bound(ref: np.ndarray, abs_product: np.ndarray, k: int, dtype) -> np.ndarray:
    """Elementwise worst-case bound on |result - ref| for a K-term fp32-accumulated product rounded once to
    ``dtype``, against the float64 reference ``ref`` (``abs_product`` is ``|A| @ |X|``)."""
    dtype = np.dtype(dtype)
    with np.errstate(invalid="ignore"):
        return ROUND[dtype] * np.abs(ref) + k * ACCUMULATE * abs_product + TINY[dtype]


def assert_close_to_reference(result, ref: np.ndarray, abs_product: np.ndarray, k: int, dtype, what: str = "result"):
    """Raise AssertionError listing the worst offending elements if ``result`` breaks :func:`error_bound`.

    ``result`` is a NumPy array of float16/bfloat16 (or anything castable to float64); ``ref`` and ``abs_product``
    are the float64 reference and ``|A| @ |X|`` of the same shape.
    """
    got = np.asarray(result).astype(np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"{what}: shape {got.shape} != reference shape {ref.shape}")
    dtype = np.dtype(dtype)
    bound = error_bound(ref, abs_product, k, dtype)
    overflows = np.isfinite(ref) & np.isinf(ref.astype(dtype).astype(np.float64))
    with np.errstate(invalid="ignore"):
        ok = np.where(
            np.isnan(ref),
            np.isnan(got),
            np.where(
                np.isinf(ref),
                got == ref,
                (np.abs(got - ref) <= bound) | (overflows & (got == ref.astype(dtype).astype(np.float64))),
            ),
        )
    if ok.all():
        return
    bad = np.argwhere(~ok)
    lines = [
        f"  at {tuple(int(i) for i in idx)}: got {got[tuple(idx)]!r}, reference {ref[tuple(idx)]!r}, "
        f"bound {bound[tuple(idx)]:.3g}"
        for idx in bad[:10]
    ]
    raise AssertionError(f"{what}: {len(bad)} of {ok.size} elements outside the error bound\n" + "\n".join(lines))


# Probable: the benchmark's check of one result against another ---------------------------------------------------

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


def probable_bound(ref_abs: Any, x_norm: Any, w_norm: Any, k: int, out_dtype: Any, ref_dtype: Any) -> Any:
    """The benchmark's elementwise bound on ``|y - r|`` (N x M) between two fp32-accumulated results (the module
    docstring's "Probable" rule).

    Parameters
    ----------
    ref_abs : array (N, M)
        ``|r|``, the reference's magnitude (float32 or float64; NumPy or CuPy).
    x_norm, w_norm : arrays (N,), (M,)
        Euclidean norms of the rows of X and of W (the W the provider really multiplied).
    k : int
        The reduction length K (in_features).
    out_dtype, ref_dtype
        The types y and r were rounded to (NumPy, CuPy or torch dtypes, or their names).
    """
    out, ref = np.dtype(dtype_name(out_dtype)), np.dtype(dtype_name(ref_dtype))
    accumulation = 2 * SIGMAS * ROUND[FLOAT32]  # two accumulations, each within SIGMAS standard deviations
    return ((ROUND[out] + ROUND[ref]) * ref_abs + (TINY[out] + TINY[ref]) / 2
            + accumulation * float(np.sqrt(k)) * (x_norm[:, None] * w_norm[None, :]))


def check_close(y: Any, ref: Any, x_norm: Any, w_norm: Any, k: int, out_dtype: Any, ref_dtype: Any,
                xp: Any = np) -> Check:
    """Check ``y`` against ``ref`` elementwise with :func:`probable_bound`.

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
    tol = probable_bound(xp.abs(ref), x_norm.astype(xp.float64), w_norm.astype(xp.float64), k, out_dtype, ref_dtype)
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


# A whole decoder ---------------------------------------------------------------------------------------------------
#: Roundings to the model's dtype per decoder layer on the way to the logits: the normalised input, the fused
#: projection, the queries and keys after RoPE, the attention output, the output projection, the residual stream,
#: the MLP's inner activations and its output.
ROUNDINGS_PER_LAYER = 8


def logits_bound(ref: np.ndarray, num_layers: int, dtype) -> np.ndarray:
    """Elementwise bound on |logits - ref| for a decoder run in ``dtype`` against the float64 reference ``ref``
    (..., vocab), with the same weights.

    Each rounding of an activation to ``dtype`` perturbs it by at most ``ROUND`` relative; carried to the logits
    it is worth about ``ROUND`` times their scale (the row's root mean square), and the ``ROUNDINGS_PER_LAYER``
    roundings of each layer, plus as many again for the embedding, the final norm and the head, add up. The
    logit's own final rounding adds ``ROUND * |ref|``. This is a first-order model, not a worst case: a sum of
    roundings that all err the same way, with unit sensitivity."""
    u = ROUND[np.dtype(dtype)]
    scale = np.sqrt(np.mean(ref * ref, axis=-1, keepdims=True))
    return u * ROUNDINGS_PER_LAYER * (num_layers + 1) * scale + u * np.abs(ref)


def assert_logits_close(got, ref: np.ndarray, num_layers: int, dtype, what: str = "logits") -> None:
    """Raise AssertionError naming the worst elements where ``got`` breaks :func:`logits_bound`."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"{what}: shape {got.shape} != reference shape {ref.shape}")
    bound = logits_bound(ref, num_layers, dtype)
    bad = ~(np.abs(got - ref) <= bound)  # NaN fails
    if not bad.any():
        return
    worst = np.argsort(-(np.abs(got - ref) / bound).reshape(-1))[:5]
    lines = [f"  at {np.unravel_index(i, got.shape)}: got {got.reshape(-1)[i]!r}, reference {ref.reshape(-1)[i]!r}, "
             f"bound {bound.reshape(-1)[i]:.3g}" for i in worst]
    raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} logits outside the bound\n" + "\n".join(lines))
