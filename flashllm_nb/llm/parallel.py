"""Tensor parallelism, Megatron style: how a decoder's weights split over ``world`` GPUs, one shard per rank.

Per block, each rank holds

- the query, key and value rows of ``num_heads / world`` query heads and ``num_kv_heads / world`` key-value heads
  (rank r takes the r-th contiguous group of each), so attention runs on local heads only;
- the first MLP matrix (``fc1``, or Llama's ``gate_proj`` and ``up_proj``) split by output rows;
- the attention output projection and the second MLP matrix (``fc2`` / ``down_proj``) split by input columns, the
  columns that meet the rank's own heads and MLP rows. Their products are partial sums: one all-reduce after each
  completes them. Their biases stay on rank 0 (zeros elsewhere), so the sum counts them once;
- everything else whole: embeddings, norms, the LM head.

A rank's model is then the single-GPU model of :func:`shard_config` (fewer heads, narrower MLP, the same hidden
size), plus the two all-reduces per block. :func:`shard_tensor` cuts a checkpoint tensor to a rank's piece.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from flashllm_nb._checks import invalid
from flashllm_nb.llm.config import ModelConfig

__all__ = ["check_tensor_parallel", "shard_config", "shard_span", "shard_tensor", "ROW_SPLIT", "COLUMN_SPLIT"]

#: Block matrices split by output rows (their biases split alike): the rank computes its rows of the product.
ROW_SPLIT = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "fc1", "mlp.gate_proj", "mlp.up_proj")
#: Block matrices split by input columns: the rank computes a partial sum of the whole product.
COLUMN_SPLIT = ("self_attn.out_proj", "self_attn.o_proj", "fc2", "mlp.down_proj")

_BLOCK_TENSOR = re.compile(r"^layers\.\d+\.(?P<part>.+)\.(?P<kind>weight|bias)$")


def check_tensor_parallel(config: ModelConfig, world: Any) -> int:
    """``world`` as an int, after checking that it divides the query heads, the key-value heads and the MLP width
    (each rank takes an equal share of each); a ValueError names what it does not divide."""
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise invalid("value", "tensor_parallel", "an integer >= 1", world)
    for field in ("num_heads", "num_kv_heads", "ffn_size"):
        value = getattr(config, field)
        if value % world:
            raise ValueError(f"Invalid tensor_parallel: expected a divisor of {field} ({value}) so that every rank "
                             f"takes an equal share, got {world}")
    return world


def shard_config(config: ModelConfig, world: int) -> ModelConfig:
    """The model one rank runs: ``num_heads``, ``num_kv_heads`` and ``ffn_size`` divided by ``world``."""
    world = check_tensor_parallel(config, world)
    return dataclasses.replace(config, num_heads=config.num_heads // world,
                               num_kv_heads=config.num_kv_heads // world, ffn_size=config.ffn_size // world)


def shard_span(config: ModelConfig, part: str, world: int, rank: int) -> tuple[int, int, int]:
    """(axis, start, stop) of rank ``rank``'s piece of block matrix ``part`` (``"fc1"``, ``"self_attn.k_proj"``):
    axis 0 for a row split, 1 for a column split."""
    world = check_tensor_parallel(config, world)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
        raise invalid("value", "rank", f"an integer in [0, {world})", rank)
    if part in ("self_attn.k_proj", "self_attn.v_proj"):
        width, axis = config.kv_size, 0
    elif part == "self_attn.q_proj":
        width, axis = config.q_size, 0
    elif part in ("fc1", "mlp.gate_proj", "mlp.up_proj"):
        width, axis = config.ffn_size, 0
    elif part in ("self_attn.out_proj", "self_attn.o_proj"):
        width, axis = config.q_size, 1
    elif part in ("fc2", "mlp.down_proj"):
        width, axis = config.ffn_size, 1
    else:
        raise invalid("value", "part", f"one of {ROW_SPLIT + COLUMN_SPLIT}", part)
    share = width // world
    return axis, rank * share, (rank + 1) * share


def shard_tensor(config: ModelConfig, name: str, value, world: int, rank: int):
    """Rank ``rank``'s piece of checkpoint tensor ``name`` (``"layers.3.fc1.weight"``, ``"embed_tokens.weight"``):
    a slice of the block matrices and their biases, a zero bias on ranks other than 0 for the column-split
    matrices, and the tensor itself for everything replicated. ``value`` is any array with NumPy slicing (a
    ``safetensors`` slice reads only the piece)."""
    match = _BLOCK_TENSOR.match(name)
    if match is None or match["part"] not in ROW_SPLIT + COLUMN_SPLIT:
        return value
    axis, start, stop = shard_span(config, match["part"], world, rank)
    if match["kind"] == "bias":
        if axis == 0:
            return value[start:stop]
        return value[:] if rank == 0 else np.zeros_like(value[:])
    return value[start:stop] if axis == 0 else value[:, start:stop]
