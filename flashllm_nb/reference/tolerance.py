"""How far a kernel result may lie from the float64 reference, element by element, and why.

Every SpMM kernel computes each output as a sum of K exact products (fp16 x fp16 and bf16 x bf16 products are exact
in fp32), accumulated in fp32, then rounded once to the output type. The error of element (i, j) is therefore at most

    |y - ref| <= ROUND[dtype] * |ref|  +  K * ACCUMULATE * (|A| @ |X|)[i, j]  +  TINY[dtype]

| term | value | reason |
|---|---|---|
| ``ROUND`` | 2^-11 (fp16), 2^-8 (bf16) | one round-to-nearest of the fp32 sum to the output type: half an ulp |
| ``ACCUMULATE`` | 2^-23 | each fp32 addition errs by at most one ulp of the running sum; the Tensor Cores' internal adder is not guaranteed to round to nearest, so a full ulp (2^-23) is allowed, not half; split-K adds its partial sums in fp32 too and stays inside the same K additions |
| ``TINY`` | smallest subnormal of the output type | an fp32 result under the output's subnormal range flushes or rounds by up to one subnormal step |

The bound uses ``|A| @ |X|``, not ``|ref|``, because cancellation can make ``ref`` tiny while the accumulated
rounding errors are not. Non-finite values follow dense arithmetic: where the float64 reference is NaN the result
must be NaN, where it is +-Inf the result must be the same infinity, and a finite reference whose rounding to the
output type overflows may come back as that infinity.
"""

from __future__ import annotations

import numpy as np

from flashllm_nb.formats._xp import BFLOAT16, FLOAT16

__all__ = ["ROUND", "ACCUMULATE", "TINY", "error_bound", "assert_close_to_reference"]

ROUND = {FLOAT16: 2.0**-11, BFLOAT16: 2.0**-8}
ACCUMULATE = 2.0**-23
TINY = {FLOAT16: 2.0**-24, BFLOAT16: 2.0**-133}


def error_bound(ref: np.ndarray, abs_product: np.ndarray, k: int, dtype) -> np.ndarray:
    """Elementwise bound on |result - ref| for a K-term fp32-accumulated product rounded once to ``dtype``."""
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
