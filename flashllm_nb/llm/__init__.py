"""The inference engine: pruned OPT and Llama models on the Tiled-CSL kernel, end to end.

>>> import flashllm_nb as fl                                                       # doctest: +SKIP
>>> model = fl.llm.load("path/to/checkpoint", sparsity=0.8, prune="magnitude")    # doctest: +SKIP
>>> logits = model.forward(ids)                  # (batch, seq) -> (batch, seq, vocab) float32     # doctest: +SKIP
>>> out = fl.llm.generate(model, ids, max_new_tokens=64)                           # doctest: +SKIP
>>> model = fl.llm.random_model("opt-66b", sparsity=0.8)   # a preset's shapes, random weights  # doctest: +SKIP

Modules, one concern each: ``config`` (shapes and presets), ``checkpoint`` (safetensors folders), ``weights`` (sparse
or dense linear layers), ``kernels`` (the decoder's non-linear kernels), ``dense`` (cuBLAS products), ``engine`` (one
pass over a batch of tokens), ``model``, ``build`` (loading), ``saved`` (a pruned model's own folder), ``memory``
(predictions and refusals), ``generate`` (decoding, CUDA graphs, sampling).
"""

from flashllm_nb.llm.build import load, random_model
from flashllm_nb.llm.config import PRESETS, ModelConfig, preset
from flashllm_nb.llm.generate import GenerationStats, generate
from flashllm_nb.llm.model import Model

__all__ = ["load", "random_model", "generate", "Model", "ModelConfig", "GenerationStats", "PRESETS", "preset"]
