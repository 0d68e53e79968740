"""Building a :class:`~flashllm_nb.llm.model.Model`: from a Hugging Face checkpoint folder (:func:`load`), from a
preset's shapes with random weights (:func:`random_model`), or from a folder this library saved
(:func:`load_saved`, via :mod:`flashllm_nb.llm.saved`).

Weights arrive one tensor at a time; each block's matrices are pruned on the device, stacked into the fused layers
and encoded before the next block is read, so neither host nor GPU ever holds the dense model. Before the first
byte goes to the GPU the memory the result will need is predicted and compared with what is free
(:mod:`flashllm_nb.llm.memory`).
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import ml_dtypes
import numpy as np

from flashllm_nb._checks import invalid
from flashllm_nb.llm import device, memory
from flashllm_nb.llm.checkpoint import LINEAR_PARTS, NORMS, Checkpoint, all_tensors
from flashllm_nb.llm.config import ModelConfig, preset
from flashllm_nb.llm.engine import check_prefill_policy
from flashllm_nb.llm.model import Block, Model, Norm
from flashllm_nb.llm.parallel import COLUMN_SPLIT
from flashllm_nb.llm.weights import DENSE_BELOW, PRUNE_METHODS, Linear, encode_linear, prune_bits

__all__ = ["load", "random_model", "resolve_dtype"]

RANDOM_WEIGHT_STD = 0.02  # Hugging Face's initializer_range for OPT and Llama
COLUMN_SPLIT_BIASES = tuple(f"{part}.bias" for part in COLUMN_SPLIT)
_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def resolve_dtype(dtype, config: ModelConfig) -> np.dtype:
    """The engine dtype: ``dtype`` if given, else the checkpoint's own when it is float16 or bfloat16, else
    float16."""
    if dtype is None:
        return _DTYPES.get(str(config.torch_dtype), _DTYPES["float16"])
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in _DTYPES:
        raise invalid("value", "dtype", "'float16' or 'bfloat16'", dtype)
    return _DTYPES[name]


def _check_sparsity(sparsity, allow_none: bool) -> None:
    if sparsity is None and allow_none:
        return
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        expected = "None or a number in [0, 1)" if allow_none else "a number in [0, 1)"
        raise invalid("value", "sparsity", expected, sparsity)


def load(path: str | os.PathLike, sparsity: float | None = None, prune: str = "magnitude", dtype=None,
         dense_below: float = DENSE_BELOW, prefill: str = "auto", progress: bool = True,
         tensor_parallel: int | None = None) -> Model:
    """Load a Hugging Face OPT / Llama / Mistral checkpoint folder onto the GPU, pruned and encoded on arrival.

    Parameters
    ----------
    path : str or path-like
        A local folder with ``config.json`` and ``model.safetensors`` (or shards and their index), or a folder
        written by :meth:`Model.save <flashllm_nb.llm.saved.save>` (then ``sparsity`` and ``prune`` must be left
        alone: the saved matrices are used as they are).
    sparsity : float in [0, 1), optional
        Prune every linear layer's matrix to this fraction of zeros. None keeps the zeros the checkpoint has
        (SparseGPT, Wanda and other pruned checkpoints).
    prune : {"magnitude", "magnitude-row"}
        Per matrix, or the same count in every output row (Wanda's mask shape); exact in count.
    dtype : {"float16", "bfloat16"}, optional
        Engine precision; by default the checkpoint's own where it is one of these, else float16.
    dense_below : float
        Matrices with fewer zeros than this fraction stay dense (cuBLAS).
    prefill : {"auto", "sparse", "dense"}
        How sparse layers multiply prompts of more than 64 tokens (:class:`~flashllm_nb.llm.engine.PrefillPlanner`).
    progress : bool
        Show a progress bar (tqdm) while loading.
    tensor_parallel : int, optional
        Split the model over this many GPUs, one process each (started by ``flashllm-nb generate --tp``,
        ``torchrun`` or Slurm, whose variables say which rank this process is): this process loads its rank's
        shard (:mod:`flashllm_nb.llm.parallel`) on its GPU and joins the ranks' NCCL communicator. 1 or None:
        the single-GPU model.

    Returns
    -------
    Model

    Raises
    ------
    FileNotFoundError, ValueError
        A missing file, an unsupported architecture, a missing or misshapen tensor, a damaged safetensors file, or
        more memory needed than the GPU has free (with the numbers and the sparsity that would fit): all before any
        weight is moved to the GPU.
    """
    from flashllm_nb.llm import saved

    check_prefill_policy(prefill)
    if saved.is_saved(path):
        # a saved model's matrices are used as they are: nothing that would change them applies
        given = {"sparsity": (sparsity, None), "prune": (prune, "magnitude"), "dtype": (dtype, None),
                 "dense_below": (dense_below, DENSE_BELOW)}
        for name, (value, default) in given.items():
            if value != default:
                raise invalid("value", name, f"{default!r} for a saved flashllm_nb model ({os.fspath(path)!r} is "
                              f"one: its matrices are used as they were saved)", value)
        if tensor_parallel not in (None, 1):
            raise invalid("value", "tensor_parallel", "None or 1 for a saved flashllm_nb model (load the checkpoint "
                          "folder to split it over GPUs)", tensor_parallel)
        return saved.load_saved(path, prefill=prefill, progress=progress)
    _check_sparsity(sparsity, allow_none=True)
    if prune not in PRUNE_METHODS:
        raise invalid("value", "prune", f"one of {PRUNE_METHODS}", prune)
    checkpoint = Checkpoint(path)
    dtype = resolve_dtype(dtype, checkpoint.config)
    config, group = _rank_config(checkpoint.config, tensor_parallel)
    memory.check_fits(memory.predict_load(config, dtype, sparsity, dense_below, checkpoint=checkpoint),
                      config, sparsity)
    communicator = _communicator(group)

    def read(name: str):
        values = checkpoint.read(name) if group is None else checkpoint.read_shard(name, group.world_size,
                                                                                     group.rank)
        return _to_bits(values, dtype, checkpoint.full_name(name))

    sizes = {name: int(np.prod(shape)) * dtype.itemsize for name, shape in all_tensors(config).items()}
    model = _build(config, dtype, read, sizes, sparsity, prune, dense_below, progress,
                   f"loading {os.path.basename(os.path.normpath(checkpoint.path))}", communicator)
    model.prefill.policy = prefill
    model.tokenizer_file = checkpoint.tokenizer_file
    return model


def random_model(name: str | ModelConfig, sparsity: float = 0.8, dtype=None, seed: int = 0,
                 prune: str = "magnitude", dense_below: float = DENSE_BELOW, prefill: str = "auto",
                 progress: bool = True, tensor_parallel: int | None = None) -> Model:
    """A model of a preset's shapes (or any :class:`ModelConfig`) with random weights, built on the device: for
    speed and memory measurements, not for text.

    Weights are drawn from N(0, 0.02^2) (Hugging Face's initialisation range), then pruned by magnitude to
    ``sparsity`` (0 keeps every matrix dense); norms get weights near 1, biases small random values. With
    ``tensor_parallel`` (see :func:`load`) each rank draws its own shard.
    """
    config = preset(name) if isinstance(name, str) else name
    if not isinstance(config, ModelConfig):
        raise invalid("type", "name", "a preset name or a ModelConfig", type(name).__name__, TypeError)
    _check_sparsity(sparsity, allow_none=False)
    check_prefill_policy(prefill)
    if prune not in PRUNE_METHODS:
        raise invalid("value", "prune", f"one of {PRUNE_METHODS}", prune)
    dtype = resolve_dtype(dtype, config)
    config, group = _rank_config(config, tensor_parallel)
    memory.check_fits(memory.predict_load(config, dtype, sparsity, dense_below), config, sparsity)
    communicator = _communicator(group)
    xp = device.xp()
    generator = xp.random.default_rng(seed + (0 if group is None else group.rank))
    shapes = all_tensors(config)

    def read(tensor: str):
        shape = shapes[tensor]
        if "norm" in tensor and tensor.endswith("weight"):
            values = 1 + RANDOM_WEIGHT_STD * generator.standard_normal(shape, dtype=np.float32)
        else:
            values = RANDOM_WEIGHT_STD * generator.standard_normal(shape, dtype=np.float32)
        if group is not None and group.rank != 0 and tensor.endswith(COLUMN_SPLIT_BIASES):
            values = xp.zeros_like(values)  # a column-split layer's bias lives on rank 0
        return _float32_to_bits(values, dtype)

    sizes = {tensor: int(np.prod(shape)) * dtype.itemsize for tensor, shape in shapes.items()}
    model = _build(config, dtype, read, sizes, None if sparsity == 0 else sparsity, prune, dense_below, progress,
                   f"building random {config.name or config.family}", communicator)
    model.prefill.policy = prefill
    return model


def _rank_config(config: ModelConfig, tensor_parallel):
    """(this process's share of ``config``, its process group) under tensor parallelism over more than one GPU,
    with this process's GPU made current; (``config``, None) for None or 1."""
    from flashllm_nb.llm import distributed, parallel

    if tensor_parallel is None:
        return config, None
    world = parallel.check_tensor_parallel(config, tensor_parallel)
    if world == 1:
        return config, None
    group = distributed.process_group_from_environ()
    if group.world_size != world:
        raise ValueError(f"Invalid tensor_parallel: {world} ranks asked for, but this process is one of "
                         f"{group.world_size} (WORLD_SIZE); start one process per GPU: flashllm-nb generate --tp "
                         f"{world}, torchrun --nproc-per-node {world}, or srun with {world} tasks")
    device.use_device(group.local_rank)
    return parallel.shard_config(config, world), group


def _communicator(group):
    if group is None:
        return None
    from flashllm_nb.llm.collectives import communicator_for

    return communicator_for(group)


# -------------------------------------------------------------------------------------------------- building


def _build(config: ModelConfig, dtype, read: Callable[[str], object], sizes: dict[str, int], sparsity, prune,
           dense_below, progress, what: str, communicator=None) -> Model:
    """Assemble a Model from ``read(name)``, which gives a tensor's bits on the device in the model's dtype."""
    from tqdm import tqdm

    xp = device.xp()
    bar = tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc=what, disable=not progress)

    def take(name: str):
        bits = read(name)
        bar.update(sizes[name])
        return bits

    def flat(name: str):
        return xp.ascontiguousarray(take(name)).reshape(-1)

    def norm(name: str) -> Norm | None:
        if config.family == "llama":
            return Norm(flat(f"{name}.weight"))
        if not config.layer_norm_affine:  # OPT without elementwise affine: weight 1, bias 0
            return Norm(_float32_to_bits(xp.ones(config.hidden_size, np.float32), dtype).reshape(-1),
                        xp.zeros(config.hidden_size, np.uint16))
        return Norm(flat(f"{name}.weight"), flat(f"{name}.bias"))

    try:
        embed_tokens = flat("embed_tokens.weight")
        embed_positions = flat("embed_positions.weight") if config.family == "opt" else None
        project_in = project_out = None
        if config.word_embed_dim:
            project_in = Linear(flat("project_in.weight"), None, config.hidden_size, config.embed_dim, dtype)
            project_out = Linear(flat("project_out.weight"), None, config.embed_dim, config.hidden_size, dtype)
        attention_bias, mlp_bias = config.has_linear_bias

        def make_block(prefix: str) -> Block:
            linears = {}
            for layer, parts in LINEAR_PARTS[config.family].items():
                with_bias = attention_bias if layer in ("qkv", "out") else mlp_bias
                matrices, biases = [], []
                for part in parts:
                    matrix = take(f"{prefix}{part}.weight")
                    if sparsity is not None:
                        matrix = prune_bits(matrix, sparsity, prune)
                    matrices.append(matrix)
                    if with_bias:
                        biases.append(flat(f"{prefix}{part}.bias"))
                stacked = matrices[0] if len(matrices) == 1 else xp.concatenate(matrices, axis=0)
                del matrices
                bias = None if not biases else biases[0] if len(biases) == 1 else xp.concatenate(biases)
                linears[layer] = encode_linear(stacked, bias, dtype, None, prune, dense_below)
                del stacked
            first, second = NORMS[config.family]
            return Block(attn_norm=norm(prefix + first), ffn_norm=norm(prefix + second), **linears)

        # A layer's temporaries (drawn or read matrices, pruning, encoding) come from a pool of their own, and the
        # layer is copied out of it (device.made_apart says why).
        blocks = [device.made_apart(functools.partial(make_block, f"layers.{index}."), Block.copy)
                  for index in range(config.num_layers)]
        if config.family == "opt":
            final_norm = norm("final_layer_norm") if config.final_norm else None
        else:
            final_norm = norm("norm")
        head = embed_tokens if config.tie_embeddings else flat("/lm_head.weight")
        lm_head = Linear(head, None, config.vocab_size, config.embed_dim, dtype)
    finally:
        bar.close()
    return Model(config, dtype, embed_tokens, embed_positions, project_in, project_out, blocks, final_norm, lm_head,
                 communicator=communicator)


def _to_bits(values: np.ndarray, dtype: np.dtype, name: str):
    """A host tensor of float16, bfloat16 or float32 as device bits of ``dtype``; a finite value that overflows
    ``dtype`` is refused, naming the tensor."""
    if values.dtype != dtype:
        with np.errstate(over="ignore", invalid="ignore"):
            cast = values.astype(dtype)
        overflow = np.isfinite(values.astype(np.float32)) & ~np.isfinite(cast.astype(np.float32))
        if overflow.any():
            i = tuple(int(v) for v in np.argwhere(overflow)[0])
            raise ValueError(f"Invalid tensor {name!r}: its value {values[i]} at {i} overflows {dtype}; load with "
                             f"dtype='bfloat16'")
        values = cast
    return device.to_device(np.ascontiguousarray(values).view(np.uint16))


def _float32_to_bits(values, dtype: np.dtype):
    """Device float32 values rounded to ``dtype`` bits, on the device (CuPy has no bfloat16: rounded on the
    bits)."""
    if dtype == np.float16:
        return values.astype(np.float16).view(np.uint16)
    bits = values.view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
