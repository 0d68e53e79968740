"""PyTorch and Hugging Face ``transformers``: a drop-in sparse ``nn.Linear``.

>>> import flashllm_nb.torch as flt                                                     # doctest: +SKIP
>>> model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16).cuda()  # doctest: +SKIP
>>> flt.sparsify(model, sparsity=0.8, prune="magnitude", skip=("lm_head",))            # doctest: +SKIP
>>> model.generate(...)                                                                 # doctest: +SKIP

- :class:`SparseLinear`: an ``nn.Module`` holding a Tiled-CSL weight and the bias, built with
  :meth:`SparseLinear.from_linear`; state dict round trip; float16 and bfloat16; any leading dimensions.
- :func:`sparsify`: every ``nn.Linear`` of a model replaced in place, each dense weight dropped as it goes;
  sibling projections of one input (q, k, v; gate, up) stacked into one product: :class:`SparseSiblings`, with a
  :class:`SiblingRows` in each sibling's place (:mod:`flashllm_nb.torch.siblings`); a ReLU that follows a layer
  (OPT's ``fc1``) applied in that layer's epilogue (:data:`ACTIVATION_AFTER`).
- ``torch.ops.flashllm_nb.sparse_linear``: the operator behind them, with a fake implementation for
  ``torch.compile`` and CUDA graphs (:mod:`flashllm_nb.torch.ops`).

The engine in :mod:`flashllm_nb.llm` runs whole models faster; this package is for models that stay in PyTorch.
"""

from flashllm_nb.torch.convert import ACTIVATION_AFTER, DENSE_BELOW, SparsifyReport, sparsify
from flashllm_nb.torch.modules import PRUNE_METHODS, SparseLinear
from flashllm_nb.torch.ops import sparse_linear
from flashllm_nb.torch.siblings import SIBLING_GROUPS, SiblingRows, SparseSiblings

__all__ = ["SparseLinear", "sparsify", "SparsifyReport", "sparse_linear", "DENSE_BELOW", "PRUNE_METHODS",
           "SparseSiblings", "SiblingRows", "SIBLING_GROUPS", "ACTIVATION_AFTER"]
