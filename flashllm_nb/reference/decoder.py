"""A float64 NumPy decoder: the logits an OPT or Llama model computes, written from Hugging Face's modelling code
(``modeling_opt.py``, ``modeling_llama.py``) with every operation in float64 and no rounding in between.

It is what the engine is checked against: the same weights (fp16 / bf16 values, exact in float64), one sequence at
a time, the plain textbook order of operations (separate q, k, v projections, repeated key-value heads, an explicit
causal mask). The only float32 step is where Hugging Face's model defines one: the rotary angle ``position *
inv_freq`` is a float32 product there, so it is here too.

Tensors are named as in the checkpoint, inside the decoder prefix (``layers.0.self_attn.q_proj.weight``,
``embed_tokens.weight``, ...; an untied LM head as ``/lm_head.weight``), as float arrays of any precision.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["decoder_logits"]


def _layer_norm(x, weight, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _rms_norm(x, weight, eps):
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * weight


def _attention(q, k, v, window):
    """Causal attention of (heads, seq, d) queries over keys and values of the same shape."""
    seq, d = q.shape[1], q.shape[2]
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
    i, j = np.arange(seq)[:, None], np.arange(seq)[None, :]
    allowed = (j <= i) & ((window is None) | (j > i - (window or 0)))
    scores = np.where(allowed, scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return p @ v


def _rope(x, positions, inv_freq):
    """HF's rotate-half rotary embedding of (heads, seq, d) ``x``; the angle a float32 product, as HF computes it."""
    angles = (positions.astype(np.float32)[:, None] * inv_freq[None, :]).astype(np.float64)  # (seq, d/2)
    cos, sin = np.cos(angles), np.sin(angles)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def decoder_logits(config, tensors: Mapping[str, np.ndarray], ids, tensor_parallel: int = 1) -> np.ndarray:
    """float64 logits (seq, vocab) of one sequence of token ``ids`` (1-D ints).

    Parameters
    ----------
    config : flashllm_nb.llm.ModelConfig
    tensors : mapping of name to array
        The model's weights (module docstring).
    ids : 1-D int array
    tensor_parallel : int
        Compute each block's attention and MLP as ``tensor_parallel`` ranks would, each on its shard of the weights
        (:mod:`flashllm_nb.llm.parallel`), and sum their outputs as the all-reduce does: the same logits, up to
        float64 rounding, when the sharding is right.
    """
    from flashllm_nb.llm.parallel import shard_config, shard_tensor

    w = {name: np.asarray(value, dtype=np.float64) for name, value in tensors.items()}
    ids = np.asarray(ids, dtype=np.int64)
    seq = ids.size
    positions = np.arange(seq)
    c = config
    x = w["embed_tokens.weight"][ids]
    if c.family == "opt":
        if c.word_embed_dim:
            x = x @ w["project_in.weight"].T
        x = x + w["embed_positions.weight"][positions + 2]
    inv_freq = c.rope_inv_freq()
    ranks = [(shard_config(c, tensor_parallel), {name: shard_tensor(c, name, value, tensor_parallel, rank)
                                                 for name, value in w.items()}) for rank in range(tensor_parallel)]

    def linear(w, name, value):
        out = value @ w[f"{name}.weight"].T
        bias = w.get(f"{name}.bias")
        return out if bias is None else out + bias

    def norm(name, value):
        if c.family == "llama":
            return _rms_norm(value, w[f"{name}.weight"], c.norm_eps)
        if not c.layer_norm_affine:
            return _layer_norm(value, 1.0, 0.0, c.norm_eps)
        return _layer_norm(value, w[f"{name}.weight"], w[f"{name}.bias"], c.norm_eps)

    def attention(rc, w, p, h):
        heads, kv, d = rc.num_heads, rc.num_kv_heads, rc.head_dim
        q = linear(w, p + "self_attn.q_proj", h).reshape(seq, heads, d).transpose(1, 0, 2)
        k = linear(w, p + "self_attn.k_proj", h).reshape(seq, kv, d).transpose(1, 0, 2)
        v = linear(w, p + "self_attn.v_proj", h).reshape(seq, kv, d).transpose(1, 0, 2)
        if inv_freq is not None:
            q, k = _rope(q, positions, inv_freq), _rope(k, positions, inv_freq)
        group = heads // kv
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        attended = _attention(q, k, v, c.sliding_window).transpose(1, 0, 2).reshape(seq, heads * d)
        return linear(w, p + ("self_attn.out_proj" if c.family == "opt" else "self_attn.o_proj"), attended)

    def mlp(w, p, h):
        if c.family == "opt":
            return linear(w, p + "fc2", np.maximum(linear(w, p + "fc1", h), 0))
        gate = linear(w, p + "mlp.gate_proj", h)
        return linear(w, p + "mlp.down_proj", gate / (1 + np.exp(-gate)) * linear(w, p + "mlp.up_proj", h))

    for i in range(c.num_layers):
        p = f"layers.{i}."
        if c.family == "opt":
            h = norm(p + "self_attn_layer_norm", x) if c.norm_before else x
        else:
            h = norm(p + "input_layernorm", x)
        x = x + sum(attention(rc, rw, p, h) for rc, rw in ranks)
        if c.family == "opt":
            if not c.norm_before:
                x = norm(p + "self_attn_layer_norm", x)
            h = norm(p + "final_layer_norm", x) if c.norm_before else x
            x = x + sum(mlp(rw, p, h) for _, rw in ranks)
            if not c.norm_before:
                x = norm(p + "final_layer_norm", x)
        else:
            h = norm(p + "post_attention_layernorm", x)
            x = x + sum(mlp(rw, p, h) for _, rw in ranks)
    if c.family == "opt":
        if c.final_norm:
            x = norm("final_layer_norm", x)
        if c.word_embed_dim:
            x = x @ w["project_out.weight"].T
    else:
        x = norm("norm", x)
    head = w["embed_tokens.weight"] if c.tie_embeddings else w["/lm_head.weight"]
    return x @ head.T
