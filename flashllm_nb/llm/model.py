"""A loaded decoder: its weights on the device, and ``forward`` (all logits of a batch of sequences, no cache kept).

Weights are flat uint16 bit arrays of the model's dtype (float16 or bfloat16) on the engine's device (CuPy on a
GPU, NumPy under the simulator); each block's four linear layers are :class:`~flashllm_nb.llm.weights.Linear`
objects, Tiled-CSL or dense. The query, key and value projections are one fused matrix (rows: all query heads,
then key heads, then value heads), and so are Llama's gate and up projections ([gate; up]): one product each
instead of three and two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flashllm_nb._checks import invalid
from flashllm_nb.llm import device, memory
from flashllm_nb.llm.config import ModelConfig
from flashllm_nb.llm.dense import bits_to_float32
from flashllm_nb.llm.engine import Activations, KVCache, PrefillPlanner, run_decoder
from flashllm_nb.llm.weights import Linear

__all__ = ["Model", "Block", "Norm", "part_rows"]


def part_rows(config: ModelConfig, part: str) -> int:
    """Rows of checkpoint matrix ``part`` (``"self_attn.k_proj"``, ``"fc1"``, ...) inside its fused layer."""
    if part.endswith(("k_proj", "v_proj")):
        return config.kv_size
    if part.endswith("q_proj"):
        return config.q_size
    if part.endswith(("out_proj", "o_proj", "fc2", "down_proj")):
        return config.hidden_size
    return config.ffn_size


@dataclass
class Norm:
    """LayerNorm (weight and bias) or RMSNorm (weight; bias None), flat uint16 arrays of hidden_size."""

    weight: Any
    bias: Any = None

    @property
    def nbytes(self) -> int:
        return int(self.weight.nbytes) + (0 if self.bias is None else int(self.bias.nbytes))

    def copy(self) -> "Norm":
        """A copy with arrays of its own."""
        return Norm(self.weight.copy(), None if self.bias is None else self.bias.copy())


@dataclass
class Block:
    """One decoder layer."""

    attn_norm: Norm
    qkv: Linear
    out: Linear
    ffn_norm: Norm
    ffn_in: Linear
    ffn_out: Linear

    @property
    def linears(self) -> tuple[Linear, Linear, Linear, Linear]:
        return self.qkv, self.out, self.ffn_in, self.ffn_out

    def copy(self) -> "Block":
        """A copy with arrays of its own."""
        return Block(attn_norm=self.attn_norm.copy(), qkv=self.qkv.copy(), out=self.out.copy(),
                     ffn_norm=self.ffn_norm.copy(), ffn_in=self.ffn_in.copy(), ffn_out=self.ffn_out.copy())


class Model:
    """A decoder ready to run: see :func:`flashllm_nb.llm.load` and :func:`flashllm_nb.llm.random_model`.

    Attributes
    ----------
    config : ModelConfig
    dtype : numpy.dtype
        float16 or bfloat16: weights, activations and the KV cache.
    blocks : list of Block
    prefill : PrefillPlanner
        How sparse layers multiply many tokens at once (``model.prefill.policy = "sparse" | "dense" | "auto"``).
    communicator : optional
        Under tensor parallelism, the all-reduce between ranks (:mod:`flashllm_nb.llm.collectives`); ``config``
        is then this rank's share of the model (:func:`flashllm_nb.llm.parallel.shard_config`).
    """

    def __init__(self, config: ModelConfig, dtype, embed_tokens, embed_positions, project_in, project_out,
                 blocks: list[Block], final_norm: Norm | None, lm_head: Linear, communicator=None):
        self.config = config
        self.communicator = communicator  # tensor parallelism: sums partial outputs over the ranks
        self.dtype = np.dtype(dtype)
        self.embed_tokens = embed_tokens
        self.embed_positions = embed_positions
        self.project_in = project_in
        self.project_out = project_out
        self.blocks = blocks
        self.final_norm = final_norm
        self.lm_head = lm_head
        inv_freq = config.rope_inv_freq()
        self.inv_freq = None if inv_freq is None else device.to_device(inv_freq)
        self.stream = device.Stream()
        self.prefill = PrefillPlanner(self)
        self.tokenizer_file: str | None = None  # the checkpoint's tokenizer.json, where it had one
        device.synchronize()  # the weights were written on CuPy's default stream; the engine's stream reads them

    def save(self, path) -> None:
        """Write the model to a folder that :func:`flashllm_nb.llm.load` reads back without pruning again
        (:mod:`flashllm_nb.llm.saved`)."""
        from flashllm_nb.llm import saved

        saved.save(self, path)

    # ------------------------------------------------------------------------------------------------ running

    def forward(self, ids) -> Any:
        """Logits of every position of a batch of equally long sequences, computed from scratch (no cache kept).

        Parameters
        ----------
        ids : array of int, (batch, seq)
            Token ids, NumPy or the engine's device module.

        Returns
        -------
        array of float32, (batch, seq, vocab_size)
            In the engine's module (CuPy on a GPU, NumPy under the simulator).
        """
        ids = self._check_ids(ids)
        batch, seq = ids.shape
        tokens = batch * seq
        xp = device.xp()
        memory.check_forward_fits(memory.predict_forward(self, batch, seq))
        with self.stream:  # the buffers are zeroed on the engine's stream, ordered with its kernels
            acts = Activations(self.config, tokens, tokens)
            cache = KVCache(self.config, batch, seq)
            acts.ids[...] = xp.asarray(ids.reshape(-1), dtype=np.int32)
            acts.positions[...] = xp.tile(xp.arange(seq, dtype=np.int32), batch)
            acts.slots[...] = xp.repeat(xp.arange(batch, dtype=np.int32), seq)
            run_decoder(self, acts, cache, tokens, stream=self.stream.ptr, planner=self.prefill)
            logits = bits_to_float32(acts.logits, self.dtype).reshape(batch, seq, self.config.vocab_size)
        self.stream.synchronize()
        return logits

    def _check_ids(self, ids) -> np.ndarray:
        """``ids`` as a host int64 (batch, seq) array, every id checked against the vocabulary and positions."""
        ids = device.to_host(ids) if not isinstance(ids, (list, tuple)) else np.asarray(ids)
        if ids.ndim != 2:
            raise invalid("shape", "ids", "(batch, seq)", ids.shape)
        if ids.dtype.kind not in "iu":
            raise invalid("dtype", "ids", "integers", ids.dtype, TypeError)
        if ids.size == 0:
            raise invalid("shape", "ids", "at least one token", ids.shape)
        self.check_tokens(ids, "ids")
        if ids.shape[1] > self.config.max_positions:
            raise invalid("shape", "ids", f"at most {self.config.max_positions} positions per sequence "
                          f"(the model's max_position_embeddings)", ids.shape)
        return ids.astype(np.int64)

    def check_tokens(self, ids: np.ndarray, name: str) -> None:
        bad = (ids < 0) | (ids >= self.config.vocab_size)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise invalid("value", name, f"token ids in [0, {self.config.vocab_size})",
                          f"{int(ids[index])} at {index}")

    def checkpoint_tensors(self) -> dict[str, np.ndarray]:
        """The weights as the checkpoint names them (inside the decoder prefix; an untied head as
        ``/lm_head.weight``), dense host arrays of the model's dtype: the fused layers split back into their
        matrices, Tiled-CSL decoded. What :func:`flashllm_nb.reference.decoder.decoder_logits` takes."""
        from flashllm_nb.llm.checkpoint import LINEAR_PARTS, NORMS

        c = self.config

        def host(bits, shape):
            return device.to_host(bits).view(self.dtype).reshape(shape)

        tensors = {"embed_tokens.weight": host(self.embed_tokens, (c.vocab_size, c.embed_dim))}
        if self.embed_positions is not None:
            tensors["embed_positions.weight"] = host(self.embed_positions, (c.max_positions + 2, c.hidden_size))
        for name in ("project_in", "project_out"):
            layer = getattr(self, name)
            if layer is not None:
                tensors[f"{name}.weight"] = host(layer.weight, (layer.rows, layer.cols))
        if self.lm_head.weight is not self.embed_tokens:
            tensors["/lm_head.weight"] = host(self.lm_head.weight, (c.vocab_size, c.embed_dim))
        final = "final_layer_norm" if c.family == "opt" else "norm"
        norms = [(final, self.final_norm)] if self.final_norm is not None else []
        for i, block in enumerate(self.blocks):
            first, second = NORMS[c.family]
            norms += [(f"layers.{i}.{first}", block.attn_norm), (f"layers.{i}.{second}", block.ffn_norm)]
            for layer_name, parts in LINEAR_PARTS[c.family].items():
                layer = getattr(block, layer_name)
                weight = layer.weight.to_host().to_dense() if layer.sparse else host(layer.weight,
                                                                                      (layer.rows, layer.cols))
                bias = None if layer.bias is None else host(layer.bias, (layer.rows,))
                rows = np.cumsum([0] + [part_rows(c, part) for part in parts])
                for part, start, stop in zip(parts, rows[:-1], rows[1:]):
                    tensors[f"layers.{i}.{part}.weight"] = weight[start:stop]
                    if bias is not None:
                        tensors[f"layers.{i}.{part}.bias"] = bias[start:stop]
        for name, norm in norms:
            if c.family == "llama" or c.layer_norm_affine:
                tensors[f"{name}.weight"] = host(norm.weight, (c.hidden_size,))
                if norm.bias is not None:
                    tensors[f"{name}.bias"] = host(norm.bias, (c.hidden_size,))
        return tensors

    # ------------------------------------------------------------------------------------------------ inventory

    @property
    def linears(self) -> list[Linear]:
        return [layer for block in self.blocks for layer in block.linears]

    def memory(self) -> dict[str, int]:
        """Bytes of the weights by component: sparse linears, dense linears, embeddings and head, norms."""
        sparse = sum(layer.nbytes for layer in self.linears if layer.sparse)
        dense = sum(layer.nbytes for layer in self.linears if not layer.sparse)
        embeddings = int(self.embed_tokens.nbytes)
        if self.embed_positions is not None:
            embeddings += int(self.embed_positions.nbytes)
        for extra in (self.project_in, self.project_out):
            if extra is not None:
                embeddings += extra.nbytes
        if self.lm_head.weight is not self.embed_tokens:
            embeddings += self.lm_head.nbytes
        norms = sum(b.attn_norm.nbytes + b.ffn_norm.nbytes for b in self.blocks)
        norms += 0 if self.final_norm is None else self.final_norm.nbytes
        return {"sparse_linears": sparse, "dense_linears": dense, "embeddings": embeddings, "norms": norms}

    @property
    def nbytes(self) -> int:
        return sum(self.memory().values())

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over all linear layers' weights (dense layers counted as stored)."""
        total = sum(layer.rows * layer.cols for layer in self.linears)
        stored = sum(layer.weight.nnz if layer.sparse else layer.rows * layer.cols for layer in self.linears)
        return 1.0 - stored / total if total else 0.0

    def __repr__(self) -> str:
        c = self.config
        sparse = sum(layer.sparse for layer in self.linears)
        return (f"<flashllm_nb.llm.Model {c.name or c.family}: {c.num_layers} layers, hidden {c.hidden_size}, "
                f"{self.dtype}, {sparse}/{len(self.linears)} linears Tiled-CSL, {self.sparsity:.1%} sparse, "
                f"{self.nbytes / 1e9:.2f} GB of weights on {device.device_name()}>")
