"""A loaded model saved to one folder, so that the next load skips reading the dense checkpoint and pruning it.

Folder layout::

    flashllm_nb.json                   format tag and version, the ModelConfig, the dtype, which linears are sparse
    dense.safetensors                  embeddings, norms, biases and dense linears (float16 / bfloat16 tensors)
    layers.{i}.{qkv,out,ffn_in,ffn_out}.flcsl   each sparse linear, a checked Tiled-CSL file (flashllm_nb.save)
    tokenizer.json                     copied from the source checkpoint when it had one

Loading checks the manifest against the files before moving anything to the GPU (every .flcsl header and the
dense tensors' sizes and dtypes), then reads each matrix through :func:`flashllm_nb.load`, which verifies its
checksum and every format invariant.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from flashllm_nb.formats import io as flcsl_io
from flashllm_nb.llm import device, memory
from flashllm_nb.llm.config import ModelConfig
from flashllm_nb.llm.model import Block, Model, Norm
from flashllm_nb.llm.weights import Linear

__all__ = ["save", "load_saved", "is_saved", "MANIFEST", "FORMAT"]

MANIFEST = "flashllm_nb.json"
FORMAT = "flashllm_nb.llm"
VERSION = 1
_LINEARS = ("qkv", "out", "ffn_in", "ffn_out")


def is_saved(path) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), MANIFEST))


def _dense_tensors(model: Model) -> dict:
    """Name -> device bit array of every dense tensor of ``model``."""
    tensors = {"embed_tokens": model.embed_tokens}
    if model.embed_positions is not None:
        tensors["embed_positions"] = model.embed_positions
    for name in ("project_in", "project_out"):
        layer = getattr(model, name)
        if layer is not None:
            tensors[name] = layer.weight
    if model.lm_head.weight is not model.embed_tokens:
        tensors["lm_head"] = model.lm_head.weight
    if model.final_norm is not None:
        tensors["final_norm.weight"] = model.final_norm.weight
        if model.final_norm.bias is not None:
            tensors["final_norm.bias"] = model.final_norm.bias
    for i, block in enumerate(model.blocks):
        for norm_name in ("attn_norm", "ffn_norm"):
            norm = getattr(block, norm_name)
            tensors[f"layers.{i}.{norm_name}.weight"] = norm.weight
            if norm.bias is not None:
                tensors[f"layers.{i}.{norm_name}.bias"] = norm.bias
        for name in _LINEARS:
            layer = getattr(block, name)
            if not layer.sparse:
                tensors[f"layers.{i}.{name}.weight"] = layer.weight
            if layer.bias is not None:
                tensors[f"layers.{i}.{name}.bias"] = layer.bias
    return tensors


def _expected_dense(config: ModelConfig, sparse: dict[str, bool]) -> dict[str, int]:
    """Name -> element count of every tensor ``dense.safetensors`` must hold (all stored flat)."""
    h, e, v = config.hidden_size, config.embed_dim, config.vocab_size
    expected = {"embed_tokens": v * e}
    if config.family == "opt":
        expected["embed_positions"] = (config.max_positions + 2) * h
        if config.word_embed_dim:
            expected.update(project_in=h * e, project_out=e * h)
    if not config.tie_embeddings:
        expected["lm_head"] = v * e
    layer_norm = config.family == "opt"
    if config.family == "llama" or config.final_norm:
        expected["final_norm.weight"] = h
        if layer_norm:
            expected["final_norm.bias"] = h
    attention_bias, mlp_bias = config.has_linear_bias
    shapes = config.linear_shapes()
    for i in range(config.num_layers):
        for norm in ("attn_norm", "ffn_norm"):
            expected[f"layers.{i}.{norm}.weight"] = h
            if layer_norm:
                expected[f"layers.{i}.{norm}.bias"] = h
        for name in _LINEARS:
            rows, cols = shapes[name]
            if not sparse[f"layers.{i}.{name}"]:
                expected[f"layers.{i}.{name}.weight"] = rows * cols
            if attention_bias if name in ("qkv", "out") else mlp_bias:
                expected[f"layers.{i}.{name}.bias"] = rows
    return expected


def save(model: Model, path, tokenizer_file: str | None = None) -> None:
    """Write ``model`` to the folder ``path`` (created if missing; files of an earlier save are replaced)."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    sparse = {f"layers.{i}.{name}": getattr(block, name).sparse for i, block in enumerate(model.blocks)
              for name in _LINEARS}
    for key, is_sparse in sparse.items():
        if is_sparse:
            i, name = key.split(".")[1:]
            flcsl_io.save(os.path.join(path, f"{key}.flcsl"), getattr(model.blocks[int(i)], name).weight)
    dense = {name: device.to_host(bits).view(model.dtype) for name, bits in _dense_tensors(model).items()}
    save_file(dense, os.path.join(path, "dense.safetensors"))
    tokenizer_file = tokenizer_file or getattr(model, "tokenizer_file", None)
    if tokenizer_file:
        shutil.copyfile(tokenizer_file, os.path.join(path, "tokenizer.json"))
    manifest = {"format": FORMAT, "version": VERSION, "dtype": model.dtype.name, "config": model.config.to_dict(),
                "sparse": sparse}
    with open(os.path.join(path, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)


def load_saved(path, prefill: str = "auto", progress: bool = True) -> Model:
    """Read a folder written by :func:`save` (module docstring)."""
    import safetensors
    from tqdm import tqdm

    path = os.fspath(path)
    with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"Invalid {os.path.join(path, MANIFEST)}: not JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"Invalid {os.path.join(path, MANIFEST)}: expected format {FORMAT!r} version {VERSION}, "
                         f"got {manifest.get('format')!r} version {manifest.get('version')!r}")
    config = ModelConfig.from_dict(manifest["config"])
    dtype = np.dtype(manifest["dtype"]) if manifest["dtype"] == "float16" else \
        np.dtype(__import__("ml_dtypes").bfloat16)
    sparse = manifest["sparse"]
    files = {key: os.path.join(path, f"{key}.flcsl") for key, is_sparse in sparse.items() if is_sparse}
    missing = [f for f in files.values() if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"Invalid saved model {path!r}: missing {missing[:3]}")
    dense_file = os.path.join(path, "dense.safetensors")
    try:
        dense = safetensors.safe_open(dense_file, framework="numpy")
    except Exception as e:  # safetensors' own error type for damaged files
        raise ValueError(f"Invalid saved model file {dense_file!r}: {e}") from None
    shapes = config.linear_shapes()
    for key, file in files.items():
        rows, cols = shapes[key.split(".")[2]]
        header = flcsl_io.read_header(file)
        if header["shape"] != (rows, cols) or header["dtype"] != dtype:
            raise ValueError(f"Invalid saved model {path!r}: {file} holds a {header['shape']} {header['dtype']} "
                             f"matrix, expected ({rows}, {cols}) {dtype}")
    stored = {name: dense.get_slice(name) for name in dense.keys()}
    for name, size in _expected_dense(config, sparse).items():
        if name not in stored:
            raise ValueError(f"Invalid saved model {path!r}: {dense_file} has no tensor {name!r}")
        got_size, got_dtype = int(np.prod(stored[name].get_shape())), stored[name].get_dtype()
        if got_size != size or got_dtype != {"float16": "F16", "bfloat16": "BF16"}[dtype.name]:
            raise ValueError(f"Invalid tensor {name!r} in {dense_file}: expected {size} {dtype} values, got "
                             f"{got_size} {got_dtype}")
    linear_bytes = sum(os.path.getsize(f) for f in files.values())
    memory.check_fits({"linears": linear_bytes, "dense": os.path.getsize(dense_file),
                       "build_peak": linear_bytes + os.path.getsize(dense_file)}, config, None)

    def tensor(name: str):
        return device.to_device(np.ascontiguousarray(dense.get_tensor(name)).view(np.uint16).reshape(-1))

    def optional(name: str):
        return tensor(name) if name in dense.keys() else None

    bar = tqdm(total=config.num_layers, unit="layer", desc=f"loading {os.path.basename(path)}", disable=not progress)
    try:
        embed_tokens = tensor("embed_tokens")
        project_in = project_out = None
        if config.word_embed_dim:
            project_in = Linear(tensor("project_in"), None, config.hidden_size, config.embed_dim, dtype)
            project_out = Linear(tensor("project_out"), None, config.embed_dim, config.hidden_size, dtype)
        blocks = []
        for i in range(config.num_layers):
            linears = {}
            for name in _LINEARS:
                key = f"layers.{i}.{name}"
                rows, cols = shapes[name]
                weight = flcsl_io.load(files[key], device=not device.SIMULATOR) if sparse[key] else \
                    tensor(f"{key}.weight")
                linears[name] = Linear(weight, optional(f"{key}.bias"), rows, cols, dtype)
            norms = {n: Norm(tensor(f"layers.{i}.{n}.weight"), optional(f"layers.{i}.{n}.bias"))
                     for n in ("attn_norm", "ffn_norm")}
            blocks.append(Block(**norms, **linears))
            bar.update(1)
        final_norm = Norm(tensor("final_norm.weight"), optional("final_norm.bias")) \
            if "final_norm.weight" in dense.keys() else None
        head = optional("lm_head")
        lm_head = Linear(embed_tokens if head is None else head, None, config.vocab_size, config.embed_dim, dtype)
    finally:
        bar.close()
    model = Model(config, dtype, embed_tokens, optional("embed_positions"), project_in, project_out, blocks,
                  final_norm, lm_head)
    model.prefill.policy = prefill
    tokenizer = os.path.join(path, "tokenizer.json")
    model.tokenizer_file = tokenizer if os.path.isfile(tokenizer) else None
    return model
