"""The decoder's linear layers: each ``y = x @ W.T + b`` with W in Tiled-CSL (sparse enough to gain) or dense.

A :class:`Linear` is built from its dense weight once, on the device, as it arrives from a checkpoint (or a random
generator): pruned to the asked sparsity (or left with the zeros it has), then encoded, and the dense copy dropped.
A matrix left sparser than ``dense_below`` becomes Tiled-CSL; a denser one stays a dense uint16 bit matrix for
cuBLAS, since Tiled-CSL moves 4 bytes per stored entry against dense's 2 per element and gains nothing below about
half zeros (``docs/anchors.md``, the bound table).

At run time a sparse layer multiplies through the Tiled-CSL kernel (``flashllm_nb.linear``), or, for many tokens
at once (prefill), expands into a dense scratch buffer and calls cuBLAS, whichever
:class:`~flashllm_nb.llm.engine.PrefillPlanner` says is faster for its shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flashllm_nb.formats.tiled_csl import TiledCSL
from flashllm_nb.kernels import api
from flashllm_nb.llm import device, kernels
from flashllm_nb.llm.dense import matmul_t

__all__ = ["Linear", "PRUNE_METHODS", "DENSE_BELOW", "prune_bits", "encode_linear"]

PRUNE_METHODS = ("magnitude", "magnitude-row")
#: Matrices less sparse than this stay dense: Tiled-CSL's bound is 1.0x dense at 50 % sparsity.
DENSE_BELOW = 0.5


class Linear:
    """``y = x @ W.T + b`` for W of shape (rows, cols): ``weight`` a device :class:`TiledCSL` or a flat uint16
    array of rows * cols bit patterns; ``bias`` a flat uint16 array of ``rows`` or None."""

    def __init__(self, weight: Any, bias: Any, rows: int, cols: int, dtype: np.dtype):
        self.weight = weight
        self.bias = bias
        self.rows, self.cols = rows, cols
        self.dtype = np.dtype(dtype)

    @property
    def sparse(self) -> bool:
        return isinstance(self.weight, TiledCSL)

    @property
    def nbytes(self) -> int:
        """Bytes of the weight as stored (words and offsets, or the dense matrix), bias included."""
        return int(self.weight.nbytes) + (0 if self.bias is None else int(self.bias.nbytes))

    @property
    def sparsity(self) -> float:
        return self.weight.sparsity if self.sparse else 0.0

    def copy(self) -> "Linear":
        """A copy with arrays of its own."""
        return Linear(self.weight.copy(), None if self.bias is None else self.bias.copy(), self.rows, self.cols,
                      self.dtype)

    def __call__(self, x, out, n: int, stream: int, scratch=None, relu: bool = False) -> None:
        """``out[:n * rows] = x[:n * cols] @ W.T + b`` on flat bit arrays, then ReLU if ``relu`` (in the sparse
        kernel's epilogue; a kernel of its own after a dense product). A sparse layer given a ``scratch`` (a flat
        uint16 buffer of at least rows * cols) expands into it and multiplies densely instead."""
        if self.sparse and scratch is None:
            api.linear(x[: n * self.cols].reshape(n, self.cols), self.weight, bias=self.bias,
                       out=out[: n * self.rows].reshape(n, self.rows), stream=stream,
                       activation="relu" if relu else None)
            return
        if self.sparse:
            kernels.expand(self.weight, scratch, stream)
            weight = scratch
        else:
            weight = self.weight
        matmul_t(x, weight, out, n, self.rows, self.cols, self.dtype, stream)
        if self.bias is not None:
            kernels.add_bias(out, self.bias, n, self.rows, self.dtype, stream)
        if relu:
            kernels.activation(out, out, n, self.rows, "relu", self.dtype, stream)

    def __repr__(self) -> str:
        kind = f"Tiled-CSL, {self.sparsity:.1%} sparse" if self.sparse else "dense"
        return f"<Linear {self.rows}x{self.cols} {self.dtype}, {kind}, {self.nbytes / 1e6:.1f} MB>"


def prune_bits(bits, sparsity: float, method: str):
    """A pruned copy of a (rows, cols) uint16 bit matrix of float16 or bfloat16 values: ``round(sparsity * size)``
    entries of least magnitude zeroed (``"magnitude"``), or ``round(sparsity * cols)`` in every row
    (``"magnitude-row"``, Wanda's mask shape); exact in count (:func:`flashllm_nb.prune.magnitude`).

    The bits are pruned as float16 whatever they encode: magnitude order is the order of the bits with the sign
    cleared, the same for both formats, and zeroed entries are 0x0000 in both."""
    from flashllm_nb import prune

    if method not in PRUNE_METHODS:
        raise ValueError(f"Invalid prune: expected one of {PRUNE_METHODS}, got {method!r}")
    return prune.magnitude(bits.view(np.float16), sparsity, per_row=method == "magnitude-row").view(np.uint16)


def encode_linear(bits, bias, dtype, sparsity: float | None = None, prune: str = "magnitude",
                  dense_below: float = DENSE_BELOW) -> Linear:
    """A :class:`Linear` from a (rows, cols) uint16 bit matrix on the engine's device (consumed: the caller keeps
    no other reference), pruned to ``sparsity`` first unless it is None; Tiled-CSL if at least ``dense_below`` of
    it is zero, else dense."""
    rows, cols = bits.shape
    if sparsity is not None:
        bits = prune_bits(bits, sparsity, prune)
    size = rows * cols
    zeros = size - int(device.xp().count_nonzero(bits & 0x7FFF))  # synchronize!
    if size and zeros / size >= dense_below:
        # CuPy has no bfloat16: the encoder takes the bits and the dtype they encode.
        return Linear(TiledCSL.from_dense(bits, dtype=dtype), bias, rows, cols, dtype)
    return Linear(device.xp().ascontiguousarray(bits).reshape(-1), bias, rows, cols, dtype)
