"""What a decoder looks like: one :class:`ModelConfig` for OPT and Llama-family models, read from a Hugging Face
``config.json`` or taken from a named preset.

Two families cover the models Flash-LLM and its users prune:

==========  =====================================================================================================
``opt``     learned positions (offset 2), LayerNorm before (or, OPT-350m, after) each block, ReLU MLP, biases,
            embeddings tied to the LM head, optional ``project_in`` / ``project_out`` around the decoder
``llama``   Llama-2/3 and Mistral: rotary positions (HF's rotate-half form, with ``linear`` or ``llama3`` scaling),
            RMSNorm before each block, grouped-query attention, SwiGLU MLP, optional sliding window
==========  =====================================================================================================

Everything else is refused when the configuration is read, before any weight is touched, with the field that is
not supported named.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = ["ModelConfig", "PRESETS", "preset", "from_hf", "read_config"]

_OPT_ARCHITECTURES = {"OPTForCausalLM", "OPTModel"}
_LLAMA_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    """The shape and arithmetic of a decoder-only transformer (``family`` ``"opt"`` or ``"llama"``)."""

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    max_positions: int
    norm_eps: float
    # OPT
    norm_before: bool = True  # LayerNorm before each block (every OPT but 350m)
    word_embed_dim: int | None = None  # OPT's embedding width where it differs from hidden_size (project_in/out)
    final_norm: bool = True
    layer_norm_affine: bool = True
    bias: bool = True  # OPT: biases on every linear
    # Llama
    attention_bias: bool = False
    mlp_bias: bool = False
    rope_theta: float = 10000.0
    # {"rope_type": "linear" | "llama3", ...}, None for plain RoPE; compared, but left out of the hash (a dict)
    rope_scaling: Mapping[str, Any] | None = field(default=None, hash=False)
    sliding_window: int | None = None
    # both
    tie_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    name: str = field(default="", compare=False)

    # --------------------------------------------------------------------------------------------- derived shapes

    @property
    def embed_dim(self) -> int:
        """Width of the token embedding and the LM head's input."""
        return self.word_embed_dim or self.hidden_size

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def qkv_size(self) -> int:
        """Rows of the fused query-key-value projection."""
        return self.q_size + 2 * self.kv_size

    @property
    def ffn_in_size(self) -> int:
        """Rows of the fused first MLP projection: fc1 (OPT), or [gate; up] (Llama)."""
        return self.ffn_size if self.family == "opt" else 2 * self.ffn_size

    @property
    def activation(self) -> str:
        return "relu" if self.family == "opt" else "silu_glu"

    @property
    def norm(self) -> str:
        return "layer" if self.family == "opt" else "rms"

    @property
    def has_linear_bias(self) -> tuple[bool, bool]:
        """(attention projections, MLP projections) carry biases."""
        if self.family == "opt":
            return self.bias, self.bias
        return self.attention_bias, self.mlp_bias

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(rows, columns) of each fused linear layer of a block."""
        return {"qkv": (self.qkv_size, self.hidden_size), "out": (self.hidden_size, self.q_size),
                "ffn_in": (self.ffn_in_size, self.hidden_size), "ffn_out": (self.hidden_size, self.ffn_size)}

    def linear_parameters(self) -> int:
        """Weights of all blocks' linear layers (what pruning applies to)."""
        return self.num_layers * sum(r * c for r, c in self.linear_shapes().values())

    def dense_parameters(self) -> int:
        """Weights that stay dense: embeddings, positions, norms, biases, projections and an untied LM head."""
        count = self.vocab_size * self.embed_dim
        if not self.tie_embeddings:
            count += self.vocab_size * self.embed_dim
        if self.family == "opt":
            count += (self.max_positions + 2) * self.hidden_size
            if self.word_embed_dim:
                count += 2 * self.word_embed_dim * self.hidden_size
        norms = 2 if self.family == "opt" else 1
        count += self.num_layers * 2 * norms * self.hidden_size + norms * self.hidden_size
        attention_bias, mlp_bias = self.has_linear_bias
        count += self.num_layers * ((self.qkv_size + self.hidden_size) * attention_bias
                                    + (self.ffn_in_size + self.hidden_size) * mlp_bias)
        return count

    def kv_bytes_per_token(self, itemsize: int = 2) -> int:
        """Bytes of keys and values one token keeps in the cache, all layers."""
        return 2 * self.num_layers * self.kv_size * itemsize

    def rope_inv_freq(self) -> np.ndarray | None:
        """float32 inverse frequencies of the rotary embedding (None for OPT), as Hugging Face computes them."""
        if self.family != "llama":
            return None
        dim = self.head_dim
        inv_freq = (1.0 / (self.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim)))
        inv_freq = inv_freq.astype(np.float32)
        scaling = self.rope_scaling or {}
        kind = scaling.get("rope_type", "default")
        if kind == "linear":
            inv_freq = (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
        elif kind == "llama3":
            factor = scaling["factor"]
            low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
            old = scaling["original_max_position_embeddings"]
            low_wavelen, high_wavelen = old / low, old / high
            wavelen = 2 * math.pi / inv_freq
            scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
            smooth = (old / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
        return inv_freq

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["eos_token_id"] = list(self.eos_token_id)
        data["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        data = dict(data)
        data["eos_token_id"] = tuple(data.get("eos_token_id") or ())
        return cls(**data)


# ---------------------------------------------------------------------------------------------------- reading


def _refuse(what: str, expected: str, got: Any, source: str) -> ValueError:
    return ValueError(f"Unsupported model in {source}: expected {what} {expected}, got {got!r}")


def _int(hf: Mapping[str, Any], key: str, source: str, default: Any = None, minimum: int = 1) -> int:
    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {key} in {source}: expected an integer >= {minimum}, got {value!r}")
    return value


def _eos(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),)


def _rope(hf: Mapping[str, Any], source: str) -> tuple[float, dict | None]:
    """(theta, scaling) from transformers 4's ``rope_theta`` / ``rope_scaling`` or 5's ``rope_parameters``."""
    parameters = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = parameters.pop("rope_theta", hf.get("rope_theta", 10000.0))
    merged = {**scaling, **parameters}
    kind = merged.pop("rope_type", merged.pop("type", "default"))
    if kind not in _ROPE_TYPES:
        raise _refuse("rope type", f"one of {_ROPE_TYPES}", kind, source)
    if kind == "default":
        return float(theta), None
    needed = ("factor",) if kind == "linear" else ("factor", "low_freq_factor", "high_freq_factor",
                                                   "original_max_position_embeddings")
    missing = [key for key in needed if key not in merged]
    if missing:
        raise ValueError(f"Invalid rope scaling in {source}: {kind} needs {needed}, missing {missing}")
    return float(theta), {"rope_type": kind, **{key: merged[key] for key in needed}}


def from_hf(hf: Mapping[str, Any], source: str = "config.json", name: str = "") -> ModelConfig:
    """A :class:`ModelConfig` from a Hugging Face configuration dictionary; anything not supported is refused
    with a ``ValueError`` naming the field, what is supported and what was found."""
    model_type = hf.get("model_type")
    common = dict(vocab_size=_int(hf, "vocab_size", source), hidden_size=_int(hf, "hidden_size", source),
                  num_layers=_int(hf, "num_hidden_layers", source), num_heads=_int(hf, "num_attention_heads", source),
                  max_positions=_int(hf, "max_position_embeddings", source),
                  bos_token_id=hf.get("bos_token_id"), eos_token_id=_eos(hf.get("eos_token_id")),
                  pad_token_id=hf.get("pad_token_id"), torch_dtype=hf.get("torch_dtype") or hf.get("dtype"),
                  name=name)
    if model_type == "opt":
        activation = hf.get("activation_function", "relu")
        if activation != "relu":
            raise _refuse("activation_function", "'relu'", activation, source)
        if common["hidden_size"] % common["num_heads"]:
            raise ValueError(f"Invalid hidden_size in {source}: {common['hidden_size']} is not a multiple of "
                             f"num_attention_heads = {common['num_heads']}")
        word_embed_dim = hf.get("word_embed_proj_dim", common["hidden_size"])
        config = ModelConfig(
            family="opt", num_kv_heads=common["num_heads"], head_dim=common["hidden_size"] // common["num_heads"],
            ffn_size=_int(hf, "ffn_dim", source), norm_eps=1e-5,
            norm_before=bool(hf.get("do_layer_norm_before", True)),
            word_embed_dim=None if word_embed_dim == common["hidden_size"] else word_embed_dim,
            final_norm=bool(hf.get("do_layer_norm_before", True)) and not hf.get("_remove_final_layer_norm", False),
            layer_norm_affine=bool(hf.get("layer_norm_elementwise_affine", True)),
            bias=bool(hf.get("enable_bias", True)), tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            **common)
    elif model_type in _LLAMA_TYPES:
        activation = hf.get("hidden_act", "silu")
        if activation != "silu":
            raise _refuse("hidden_act", "'silu'", activation, source)
        if hf.get("pretraining_tp", 1) not in (1, None):
            raise _refuse("pretraining_tp", "1", hf.get("pretraining_tp"), source)
        num_kv = _int(hf, "num_key_value_heads", source, default=common["num_heads"])
        if common["num_heads"] % num_kv:
            raise ValueError(f"Invalid num_key_value_heads in {source}: {num_kv} does not divide "
                             f"num_attention_heads = {common['num_heads']}")
        head_dim = hf.get("head_dim") or common["hidden_size"] // common["num_heads"]
        theta, scaling = _rope(hf, source)
        window = hf.get("sliding_window") if model_type == "mistral" else None
        config = ModelConfig(
            family="llama", num_kv_heads=num_kv, head_dim=head_dim, ffn_size=_int(hf, "intermediate_size", source),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), attention_bias=bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)), rope_theta=theta, rope_scaling=scaling,
            sliding_window=window, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bias=False, **common)
    else:
        raise _refuse("model_type", "'opt', 'llama' or 'mistral'", model_type, source)
    if config.head_dim % 8 or config.head_dim > 256:
        raise _refuse("head dimension", "a multiple of 8 up to 256", config.head_dim, source)
    return config


def read_config(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """The :class:`ModelConfig` of a checkpoint folder's ``config.json``, and the raw dictionary."""
    file = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"Invalid checkpoint folder {os.fspath(path)!r}: expected a config.json in it, "
                                f"found none")
    with open(file, encoding="utf-8") as f:
        try:
            hf = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"Invalid {file}: not JSON ({e})") from None
    return from_hf(hf, source=file, name=os.path.basename(os.path.normpath(os.fspath(path)))), hf


# ----------------------------------------------------------------------------------------------------- presets

def _opt(hidden: int, layers: int, heads: int, **extra) -> dict:
    return {**dict(model_type="opt", vocab_size=50272, hidden_size=hidden, num_hidden_layers=layers,
                   num_attention_heads=heads, ffn_dim=4 * hidden, max_position_embeddings=2048, bos_token_id=2,
                   eos_token_id=2, pad_token_id=1, torch_dtype="float16"), **extra}


def _llama(hidden: int, layers: int, heads: int, kv: int, ffn: int, vocab: int, positions: int, **extra) -> dict:
    return {**dict(model_type="llama", vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                   num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=ffn,
                   max_position_embeddings=positions, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                   torch_dtype="float16"), **extra}


#: Hugging Face configurations of the published models, for :func:`flashllm_nb.llm.random_model` (random weights of
#: the right shapes: speed and memory, not text). ``*-tiny`` are for tests.
PRESETS: dict[str, dict] = {
    "opt-125m": _opt(768, 12, 12),
    "opt-350m": _opt(1024, 24, 16, word_embed_proj_dim=512, do_layer_norm_before=False),
    "opt-1.3b": _opt(2048, 24, 32),
    "opt-2.7b": _opt(2560, 32, 32),
    "opt-6.7b": _opt(4096, 32, 32),
    "opt-13b": _opt(5120, 40, 40),
    "opt-30b": _opt(7168, 48, 56),
    "opt-66b": _opt(9216, 64, 72),
    "opt-175b": _opt(12288, 96, 96),
    "llama-2-7b": _llama(4096, 32, 32, 32, 11008, 32000, 4096),
    "llama-2-13b": _llama(5120, 40, 40, 40, 13824, 32000, 4096),
    "llama-2-70b": _llama(8192, 80, 64, 8, 28672, 32000, 4096),
    "llama-3-8b": _llama(4096, 32, 32, 8, 14336, 128256, 8192, rope_theta=500000.0, bos_token_id=128000,
                         eos_token_id=128001, torch_dtype="bfloat16"),
    "llama-3.1-8b": _llama(4096, 32, 32, 8, 14336, 128256, 131072, rope_theta=500000.0, bos_token_id=128000,
                           eos_token_id=128001, torch_dtype="bfloat16",
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "llama-3-70b": _llama(8192, 80, 64, 8, 28672, 128256, 8192, rope_theta=500000.0, bos_token_id=128000,
                          eos_token_id=128001, torch_dtype="bfloat16"),
    "mistral-7b": dict(_llama(4096, 32, 32, 8, 14336, 32000, 32768), model_type="mistral", sliding_window=4096),
    "opt-tiny": _opt(64, 2, 4, ffn_dim=128, vocab_size=96, max_position_embeddings=64),
    "llama-tiny": _llama(64, 2, 4, 2, 96, 96, 64, rope_theta=10000.0),
}


def preset(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a named preset (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"Invalid preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return from_hf(PRESETS[name], source=f"preset {name!r}", name=name)
