"""Tiny Hugging Face-layout checkpoints with random weights, written by the tests (no network, no transformers).

``write_checkpoint`` makes a folder with ``config.json`` and safetensors shards whose tensor names and shapes are
those a Hugging Face ``OPTForCausalLM`` / ``LlamaForCausalLM`` of that configuration saves, and returns the
tensors (prefix-free names, as :func:`flashllm_nb.reference.decoder.decoder_logits` takes them).
"""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from flashllm_nb.llm.checkpoint import all_tensors
from flashllm_nb.llm.config import PRESETS, from_hf

PREFIX = {"opt": "model.decoder.", "llama": "model."}


def tiny_config(name: str, **changes) -> dict:
    """A copy of preset ``name``'s Hugging Face configuration with ``changes``."""
    return {**PRESETS[name], **changes}


def random_tensors(hf_config: dict, seed: int = 0, dtype=np.float16, zero_fraction: float = 0.0) -> dict:
    """Random weights for ``hf_config``: matrices N(0, 1/cols) (activations of order one through every layer),
    norms near one, biases and embeddings of order 0.1-1. With ``zero_fraction`` the linear layers' matrices are
    multiplied by a random 0/1 mask, as pruning code does, which leaves -0.0 where a weight was negative."""
    config = from_hf(hf_config)
    rng = np.random.default_rng(seed)
    shapes = all_tensors(config)
    tensors = {}
    for name, shape in shapes.items():
        if "norm" in name:
            values = (1 if name.endswith("weight") else 0) + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            values = 0.1 * rng.standard_normal(shape)
        elif "embed" in name:
            values = rng.standard_normal(shape)
        else:
            values = rng.standard_normal(shape) / np.sqrt(shape[1])
            if zero_fraction and name.startswith("layers."):
                values = values * (rng.random(shape) >= zero_fraction)
        tensors[name] = values.astype(dtype)
    return tensors


def write_checkpoint(path, hf_config: dict, tensors: dict, shards: int = 1, drop: tuple[str, ...] = ()) -> str:
    """Write ``tensors`` (prefix-free names) under the family's prefix into ``path`` with ``config.json``, in
    ``shards`` files (with an index when more than one); tensors named in ``drop`` are left out."""
    os.makedirs(path, exist_ok=True)
    config = from_hf(hf_config)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f)
    full = {}
    for name, value in tensors.items():
        if name in drop:
            continue
        full[name[1:] if name.startswith("/") else PREFIX[config.family] + name] = np.ascontiguousarray(value)
    names = sorted(full)
    if shards == 1:
        save_file(full, os.path.join(path, "model.safetensors"))
        return os.fspath(path)
    weight_map = {}
    for s in range(shards):
        part = names[s::shards]
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: full[n] for n in part}, os.path.join(path, file))
        weight_map.update({n: file for n in part})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return os.fspath(path)


BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def zero_decoder_linears(model, fraction: float = 0.8) -> None:
    """Zero about ``fraction`` of every decoder linear weight of a transformers ``model`` in place, by a random
    mask from torch's generator (what pruning code leaves: -0.0 where a weight was negative)."""
    import torch

    with torch.no_grad():
        for module_name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in module_name:
                module.weight.mul_(torch.rand_like(module.weight) >= fraction)
