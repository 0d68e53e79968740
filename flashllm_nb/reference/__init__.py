"""NumPy/SciPy references that the kernels are checked against.

- :mod:`.spmm`: float64 ``spmm_reference``, ``linear_reference`` and ``abs_product`` (the error scale);
- :mod:`.tolerance`: every elementwise tolerance: the worst-case bound of an fp32-accumulated product (the tests),
  the benchmark's probabilistic check of one product against another, and a decoder's logits bound;
- :mod:`.fragments`: the lane-level emulator of ``mma.sync`` and ``ldmatrix``, the PTX fragment layouts' spec;
- :mod:`.decoder`: a float64 OPT / Llama decoder, the logits the inference engine is checked against.
"""

from .spmm import abs_product, linear_reference, spmm_reference

__all__ = ["spmm_reference", "linear_reference", "abs_product"]
