"""A Hugging Face checkpoint folder on local disk: ``config.json``, ``model.safetensors`` (or shards listed by
``model.safetensors.index.json``) and, for text, ``tokenizer.json``.

:class:`Checkpoint` opens every shard's header first (the ``safetensors`` package refuses a truncated or damaged
file there), then checks that every tensor the model needs is present with the right shape and a floating dtype:
all before any weight is read or any GPU memory is touched. Tensors are then read one at a time
(:meth:`Checkpoint.read`), memory-mapped by ``safetensors``, so the dense model never exists whole in host memory.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import ml_dtypes
import numpy as np

from flashllm_nb.llm.config import ModelConfig, read_config

__all__ = ["Checkpoint", "all_tensors", "block_tensors", "model_tensors", "LINEAR_PARTS", "NORMS"]

_FLOAT_DTYPES = {"F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16), "F32": np.dtype(np.float32)}
# Where a family's decoder tensors sit: the first prefix under which the embedding is found is the checkpoint's.
_PREFIXES = {"opt": ("model.decoder.", "decoder.", ""), "llama": ("model.", "")}

#: Per fused linear layer of a block, the checkpoint's matrices stacked into it (rows in this order).
LINEAR_PARTS = {
    "opt": {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "out": ("self_attn.out_proj",),
            "ffn_in": ("fc1",), "ffn_out": ("fc2",)},
    "llama": {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "out": ("self_attn.o_proj",),
              "ffn_in": ("mlp.gate_proj", "mlp.up_proj"), "ffn_out": ("mlp.down_proj",)},
}
#: A block's two norms: before (after, post-LN) attention and before the MLP.
NORMS = {"opt": ("self_attn_layer_norm", "final_layer_norm"), "llama": ("input_layernorm", "post_attention_layernorm")}


def _part_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(rows, cols) of each checkpoint matrix of a block, by its name inside the block."""
    h, q, kv, f = config.hidden_size, config.q_size, config.kv_size, config.ffn_size
    if config.family == "opt":
        return {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                "self_attn.out_proj": (h, q), "fc1": (f, h), "fc2": (h, f)}
    return {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, q), "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}


def block_tensors(config: ModelConfig, index: int) -> dict[str, tuple[int, ...]]:
    """Names (inside the decoder prefix) and shapes of block ``index``'s tensors."""
    names: dict[str, tuple[int, ...]] = {}
    attention_bias, mlp_bias = config.has_linear_bias
    for part, shape in _part_shapes(config).items():
        names[f"layers.{index}.{part}.weight"] = shape
        if attention_bias if part.startswith("self_attn") else mlp_bias:
            names[f"layers.{index}.{part}.bias"] = (shape[0],)
    affine = config.family == "llama" or config.layer_norm_affine
    for norm in NORMS[config.family]:
        if affine:
            names[f"layers.{index}.{norm}.weight"] = (config.hidden_size,)
            if config.family == "opt":
                names[f"layers.{index}.{norm}.bias"] = (config.hidden_size,)
    return names


def model_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names (inside the decoder prefix; ``lm_head.weight`` at the top) and shapes of the tensors outside blocks."""
    h, e, v = config.hidden_size, config.embed_dim, config.vocab_size
    names: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (v, e)}
    if config.family == "opt":
        names["embed_positions.weight"] = (config.max_positions + 2, h)
        if config.word_embed_dim:
            names["project_in.weight"] = (h, e)
            names["project_out.weight"] = (e, h)
        if config.final_norm and config.layer_norm_affine:
            names["final_layer_norm.weight"] = (h,)
            names["final_layer_norm.bias"] = (h,)
    else:
        names["norm.weight"] = (h,)
    if not config.tie_embeddings:
        names["/lm_head.weight"] = (v, e)  # "/": outside the decoder prefix
    return names


def all_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor of the model: :func:`model_tensors` and each block's."""
    names = dict(model_tensors(config))
    for index in range(config.num_layers):
        names.update(block_tensors(config, index))
    return names


class Checkpoint:
    """A checked, open checkpoint folder (module docstring). Raises ``FileNotFoundError`` or ``ValueError``
    naming the file and the tensor at fault."""

    def __init__(self, path: str | os.PathLike):
        import safetensors

        self.path = os.fspath(path)
        self.config, self.hf_config = read_config(self.path)
        self._files = {}
        self._where: dict[str, str] = {}
        for file in self._shard_files():
            try:
                handle = safetensors.safe_open(file, framework="numpy")
            except Exception as e:  # safetensors raises its own SafetensorError for damaged files
                raise ValueError(f"Invalid checkpoint file {file!r}: {e}") from None
            self._files[file] = handle
            for name in handle.keys():
                self._where[name] = file
        self.prefix = self._find_prefix()
        self._check_tensors()

    def _shard_files(self) -> list[str]:
        index = os.path.join(self.path, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                try:
                    weight_map = json.load(f)["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"Invalid {index}: expected JSON with a 'weight_map', got an error ({e})") \
                        from None
            files = sorted({os.path.join(self.path, name) for name in weight_map.values()})
            missing = [f for f in files if not os.path.isfile(f)]
            if missing:
                raise FileNotFoundError(f"Invalid checkpoint {self.path!r}: {index} lists shards that do not "
                                        f"exist: {missing[:3]}")
            return files
        single = os.path.join(self.path, "model.safetensors")
        if os.path.isfile(single):
            return [single]
        found = sorted(f for f in os.listdir(self.path) if f.endswith(".safetensors"))
        if not found:
            raise FileNotFoundError(f"Invalid checkpoint folder {self.path!r}: expected model.safetensors or "
                                    f"model.safetensors.index.json, found neither (only .safetensors is read)")
        return [os.path.join(self.path, f) for f in found]

    def _find_prefix(self) -> str:
        for prefix in _PREFIXES[self.config.family]:
            if prefix + "embed_tokens.weight" in self._where:
                return prefix
        raise ValueError(f"Invalid checkpoint {self.path!r}: no embedding tensor (looked for "
                         f"{[p + 'embed_tokens.weight' for p in _PREFIXES[self.config.family]]})")

    def full_name(self, name: str) -> str:
        return name[1:] if name.startswith("/") else self.prefix + name

    def _check_tensors(self) -> None:
        expected = all_tensors(self.config)
        missing = [self.full_name(n) for n in expected if self.full_name(n) not in self._where]
        if missing:
            raise ValueError(f"Invalid checkpoint {self.path!r}: {len(missing)} tensors missing, e.g. {missing[:3]}")
        for name, shape in expected.items():
            full = self.full_name(name)
            view = self._files[self._where[full]].get_slice(full)
            got_shape, got_dtype = tuple(view.get_shape()), view.get_dtype()
            if got_shape != shape:
                raise ValueError(f"Invalid shape of tensor {full!r} in {self._where[full]!r}: expected {shape}, "
                                 f"got {got_shape}")
            if got_dtype not in _FLOAT_DTYPES:
                raise ValueError(f"Invalid dtype of tensor {full!r} in {self._where[full]!r}: expected one of "
                                 f"{sorted(_FLOAT_DTYPES)}, got {got_dtype}")

    # ------------------------------------------------------------------------------------------------- reading

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` (inside the decoder prefix, or ``/name`` at the top) as a host array of its stored
        dtype (float16, bfloat16 or float32)."""
        full = self.full_name(name)
        return self._files[self._where[full]].get_tensor(full)

    def read_shard(self, name: str, world: int, rank: int) -> np.ndarray:
        """Rank ``rank``'s piece of tensor ``name`` for tensor parallelism over ``world`` ranks
        (:func:`flashllm_nb.llm.parallel.shard_tensor`), reading only that piece's bytes."""
        from flashllm_nb.llm.parallel import shard_tensor

        full = self.full_name(name)
        view = self._files[self._where[full]].get_slice(full)
        piece = shard_tensor(self.config, name, view, world, rank)
        return view[:] if piece is view else np.asarray(piece)  # a replicated tensor comes back whole

    def read_rows(self, name: str, rows: int) -> np.ndarray:
        """The first ``rows`` rows of a matrix (for estimates; reads only those bytes)."""
        full = self.full_name(name)
        view = self._files[self._where[full]].get_slice(full)
        return view[: min(rows, view.get_shape()[0])]

    def nbytes(self, name: str) -> int:
        full = self.full_name(name)
        view = self._files[self._where[full]].get_slice(full)
        return int(np.prod(view.get_shape())) * _FLOAT_DTYPES[view.get_dtype()].itemsize

    @property
    def tokenizer_file(self) -> str | None:
        file = os.path.join(self.path, "tokenizer.json")
        return file if os.path.isfile(file) else None

    def linear_names(self) -> Iterator[tuple[int, str, tuple[str, ...]]]:
        """(block, fused layer, its checkpoint matrices' names) for every linear layer."""
        for index in range(self.config.num_layers):
            for layer, parts in LINEAR_PARTS[self.config.family].items():
                yield index, layer, tuple(f"layers.{index}.{part}" for part in parts)
