"""How much GPU memory a model will need, predicted before anything is allocated, and the refusal when it does not
fit: the numbers (needed, free) and the sparsity that would fit, instead of an out-of-memory error halfway.

Tiled-CSL stores 4 bytes per nonzero, plus on average 1.5 padding words and one 4-byte offset per 128 x 64 tile;
dense matrices 2 bytes per element. While a model is built, the largest fused matrix also exists densely on the
device with the pruning and encoding temporaries around it (sorts over its entries): ``BUILD_BYTES_PER_ELEMENT``
bytes per element of it, on top of what is already loaded.
"""

from __future__ import annotations

import math

import numpy as np

from flashllm_nb.llm import device
from flashllm_nb.llm.config import ModelConfig

__all__ = ["predict_load", "check_fits", "tiled_csl_bytes", "predict_generate", "check_generate_fits",
           "predict_forward", "check_forward_fits",
           "BUILD_BYTES_PER_ELEMENT", "RESERVE_BYTES"]

BUILD_BYTES_PER_ELEMENT = 18  # dense bits (2), pruning keys and mask (~4), encoder keys, sorts and words (~12)
RESERVE_BYTES = 1 << 30  # the CUDA context, cuBLAS and kernel modules, CuPy's pool slack
_SAMPLE_ROWS = 256  # rows of each matrix read to estimate a checkpoint's own sparsity


def tiled_csl_bytes(rows: int, cols: int, sparsity: float) -> int:
    """Predicted bytes of a rows x cols matrix with ``sparsity`` zeros in Tiled-CSL."""
    tiles = math.ceil(rows / 128) * math.ceil(cols / 64)
    return int(4 * (1 - sparsity) * rows * cols + 4 * 1.5 * tiles + 4 * (tiles + 2))


def _layer_bytes(rows: int, cols: int, sparsity: float, dense_below: float, itemsize: int) -> int:
    if sparsity >= dense_below:
        return tiled_csl_bytes(rows, cols, sparsity)
    return rows * cols * itemsize


def predict_load(config: ModelConfig, dtype, sparsity: float | None, dense_below: float,
                 checkpoint=None) -> dict[str, int]:
    """Predicted bytes of a loaded model by component, and ``build_peak``: the most the GPU holds while building.

    With ``sparsity=None`` each fused layer's sparsity is estimated from the first rows of the checkpoint's first
    block (a checkpoint's pruning is about uniform over layers)."""
    itemsize = np.dtype(dtype).itemsize
    layer_sparsity = {name: sparsity for name in config.linear_shapes()}
    if sparsity is None:
        layer_sparsity = _estimate_sparsity(config, checkpoint) if checkpoint is not None else \
            {name: 0.0 for name in config.linear_shapes()}
    linears = sum(_layer_bytes(rows, cols, layer_sparsity[name], dense_below, itemsize)
                  for name, (rows, cols) in config.linear_shapes().items()) * config.num_layers
    dense = config.dense_parameters() * itemsize
    largest = max(rows * cols for rows, cols in config.linear_shapes().values())
    return {"linears": linears, "dense": dense, "build_peak": linears + dense + BUILD_BYTES_PER_ELEMENT * largest}


def _estimate_sparsity(config: ModelConfig, checkpoint) -> dict[str, float]:
    from flashllm_nb.llm.checkpoint import LINEAR_PARTS

    estimates = {}
    for layer, parts in LINEAR_PARTS[config.family].items():
        zeros = total = 0
        for part in parts:
            rows = checkpoint.read_rows(f"layers.0.{part}.weight", _SAMPLE_ROWS)
            bits = np.ascontiguousarray(rows).view(np.uint16 if rows.itemsize == 2 else np.uint32)
            magnitude = bits & (0x7FFF if rows.itemsize == 2 else 0x7FFFFFFF)
            zeros += int(magnitude.size - np.count_nonzero(magnitude))
            total += magnitude.size
        estimates[layer] = zeros / total if total else 0.0
    return estimates


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def check_fits(prediction: dict[str, int], config: ModelConfig, sparsity: float | None,
               free: int | None = None) -> None:
    """Refuse (``MemoryError``) a build whose predicted peak exceeds the GPU's free memory (``free`` bytes, asked
    of the device when None), saying by how much and what sparsity would fit. Nothing to check under the
    simulator."""
    free = _free_bytes(free)
    if free is None:
        return
    available = free - RESERVE_BYTES
    if prediction["build_peak"] <= available:
        return
    linear_params = config.linear_parameters()
    # bytes the linears may take: what is free beyond the dense weights and the build's transient
    room = available - (prediction["build_peak"] - prediction["linears"])
    fit = 1 - room / (4 * linear_params) if linear_params else 1.0
    hint = f"; sparsity >= {min(max(fit, 0.5), 1.0):.2f} would fit" if fit < 1 else "; no sparsity would fit"
    raise MemoryError(f"Model {config.name or config.family} needs about {_gb(prediction['build_peak'])} of GPU "
                      f"memory to load (linears {_gb(prediction['linears'])}, dense {_gb(prediction['dense'])}, "
                      f"build transient {_gb(prediction['build_peak'] - prediction['linears'] - prediction['dense'])}"
                      f"), but {_gb(free)} is free ({_gb(RESERVE_BYTES)} kept in reserve) at sparsity "
                      f"{sparsity}{hint}")


def _scratch_bytes(model, tokens: int) -> int:
    """The dense prefill scratch a pass over ``tokens`` tokens may still allocate (the largest sparse matrix)."""
    sparse = [layer for layer in model.linears if layer.sparse]
    policy = model.prefill.policy
    if not sparse or policy == "sparse" or (policy == "auto" and tokens <= 64):
        return 0
    return max(2 * max(layer.rows * layer.cols for layer in sparse) - model.prefill.scratch_bytes, 0)


def predict_generate(model, batch: int, max_len: int, prompt_tokens: int) -> dict[str, int]:
    """Bytes :func:`~flashllm_nb.llm.generate` will allocate: the KV cache, the prefill and decode activations,
    and the dense prefill scratch."""
    from flashllm_nb.llm.engine import Activations, KVCache

    c = model.config
    return {"kv_cache": KVCache.bytes_needed(c, batch, max_len),
            "activations": Activations.bytes_needed(c, prompt_tokens, batch) + Activations.bytes_needed(c, batch,
                                                                                                          batch),
            "prefill_scratch": _scratch_bytes(model, prompt_tokens)}


def predict_forward(model, batch: int, seq: int) -> dict[str, int]:
    """Bytes :meth:`Model.forward` will allocate: its cache, activations with every row's logits (and their float32
    copy), the dense prefill scratch."""
    from flashllm_nb.llm.engine import Activations, KVCache

    c = model.config
    tokens = batch * seq
    return {"kv_cache": KVCache.bytes_needed(c, batch, seq),
            "activations": Activations.bytes_needed(c, tokens, tokens) + 4 * tokens * c.vocab_size,
            "prefill_scratch": _scratch_bytes(model, tokens)}


def _free_bytes(free: int | None) -> int | None:
    if free is not None:
        return free
    memory_info = device.free_memory()
    return None if memory_info is None else memory_info[0]


def check_forward_fits(prediction: dict[str, int], free: int | None = None) -> None:
    """Refuse (``MemoryError``) a forward pass whose buffers exceed the free memory, with the numbers."""
    free = _free_bytes(free)
    needed = sum(prediction.values())
    if free is None or needed <= free - RESERVE_BYTES:
        return
    raise MemoryError(f"This forward pass needs about {_gb(needed)} of GPU memory (" + ", ".join(
        f"{name.replace('_', ' ')} {_gb(value)}" for name, value in prediction.items()) + f"), but {_gb(free)} is "
        f"free ({_gb(RESERVE_BYTES)} kept in reserve); pass fewer or shorter sequences")


def check_generate_fits(prediction: dict[str, int], batch: int, max_len: int, free: int | None = None) -> None:
    """Refuse (``MemoryError``) a generation whose buffers exceed the free memory (``free`` bytes, asked of the
    device when None), with the numbers and how many sequences of this length would fit (everything but the
    prefill scratch scales with the number of sequences)."""
    free = _free_bytes(free)
    needed = sum(prediction.values())
    if free is None or needed <= free - RESERVE_BYTES:
        return
    per_sequence = (prediction["kv_cache"] + prediction["activations"]) / batch if batch else 0
    room = free - RESERVE_BYTES - prediction["prefill_scratch"]
    fits = int(max(room, 0) // per_sequence) if per_sequence else 0
    raise MemoryError(f"Generating {batch} sequences of up to {max_len} tokens needs about {_gb(needed)} of GPU "
                      f"memory (KV cache {_gb(prediction['kv_cache'])}, activations {_gb(prediction['activations'])}"
                      f", prefill scratch {_gb(prediction['prefill_scratch'])}), but {_gb(free)} is free "
                      f"({_gb(RESERVE_BYTES)} kept in reserve); about {fits} sequences of this length would fit")
