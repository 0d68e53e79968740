"""The decoder's own kernels: everything of a transformer step that is not a linear layer.

Each function here launches one Numba kernel on flat (1-D, C-contiguous) arrays through
:class:`flashllm_nb.kernels.driver.Kernel`: on a GPU without Numba's dispatcher (so a decode step can be captured in
a CUDA graph), under the simulator on NumPy arrays. Activations are the uint16 bit patterns of the model's dtype
(float16 or bfloat16), widened to float32 for arithmetic and rounded once per stored result, as the Tensor-Core
products are. Kernels are built once per (dtype, compile-time shape) and cached.

=====================  ==============================================================================================
``embed``              token rows of the embedding table (plus OPT's learned positions): one block per token
``add_norm``           ``residual += delta`` then LayerNorm or RMSNorm of it (or, post-LN, the norm replaces it)
``add``                ``residual += delta`` alone (a model without a final norm)
``split_heads``        the fused QKV output into per-head queries and the KV cache, RoPE applied to q and k
``attention``          causal softmax attention of each query token over its sequence's cached keys (GQA, window),
                       split over spans of keys and combined when the batch is too small to fill the GPU
``activation``         ReLU in place, or SiLU-GLU ``silu(gate) * up`` of a fused [gate | up] row
``add_bias``           a bias row added to a dense product (cuBLAS has no bias epilogue here)
``argmax``             the index of each row's largest logit (greedy decoding inside the captured step)
``finish_step``        record the chosen tokens, mark finished sequences, move positions on (inside the captured step)
``expand``             a Tiled-CSL matrix scattered into a dense buffer (prefill through cuBLAS)
=====================  ==============================================================================================

Threads per block are a multiple of 32 and a power of two (the reductions halve them); under the simulator every
kernel runs with 32, because each simulated thread is a Python thread.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, types

from flashllm_nb.formats.tiled_csl import TILE_K, TILE_M
from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.driver import Kernel
from flashllm_nb.kernels.spmm.plan import multiprocessors

__all__ = [
    "embed", "add_norm", "add", "split_heads", "attention", "activation", "add_bias", "argmax", "finish_step",
    "expand",
    "NORM_THREADS", "ATTENTION_THREADS",
]

_SIM = ptx.SIMULATOR
NORM_THREADS = 32 if _SIM else 512  # a 9216-wide row: 18 values per thread
ATTENTION_THREADS = 32 if _SIM else 128  # keys scored per chunk, one per thread
COMBINE_THREADS = 32 if _SIM else 128
MAX_ATTENTION_SPLITS = 16
ROW_THREADS = 32 if _SIM else 256  # embed, split_heads, argmax
ELEMENTWISE_THREADS = 32 if _SIM else 256
ELEMENTWISE_BLOCKS = 4 if _SIM else 1024  # grid-stride loops: enough blocks to fill the GPU, few in the simulator
EXPAND_THREADS = 32 if _SIM else 256
VECTOR = 8  # values per 16-byte load of a key or value row

_U16 = types.Array(types.uint16, 1, "C")
_U32 = types.Array(types.uint32, 1, "C")
_I32A = types.Array(types.int32, 1, "C")
_F32A = types.Array(types.float32, 1, "C")
_I32, _F32 = types.int32, types.float32


def _converters(dtype: str):
    """(bits -> float32, float32 -> bits) for ``"float16"`` or ``"bfloat16"``."""
    if dtype == "bfloat16":
        return ptx.bf16_bits_to_f32, ptx.f32_to_bf16_bits
    return ptx.f16_bits_to_f32, ptx.f32_to_f16_bits


def _dtype_name(dtype) -> str:
    return "bfloat16" if np.dtype(dtype).name == "bfloat16" else "float16"


def _block_reduce(threads: int, op: str):
    """A device function ``reduce(scratch, value, t)``: the sum or max of ``value`` over the block's ``threads``
    threads (a power of two), returned to every thread. ``scratch`` is a float32 shared array of ``threads``."""

    if op == "sum":
        @cuda.jit(device=True)
        def combine(a, b):
            return a + b
    else:
        @cuda.jit(device=True)
        def combine(a, b):
            return a if a >= b else b

    @cuda.jit(device=True)
    def reduce(scratch, value, t):
        scratch[t] = value
        cuda.syncthreads()
        stride = threads // 2
        while stride > 0:
            if t < stride:
                scratch[t] = combine(scratch[t], scratch[t + stride])
            cuda.syncthreads()
            stride //= 2
        total = scratch[0]
        cuda.syncthreads()
        return total

    return reduce


# ------------------------------------------------------------------------------------------------------ embed


@functools.cache
def _embed_kernel(dtype: str) -> Kernel:
    load, store = _converters(dtype)

    @cuda.jit
    def embed_kernel(ids, table, positions, pos_table, out, width, row_offset, has_positions, pos_offset):
        token = cuda.blockIdx.x
        row = np.int64(ids[token] + row_offset) * width
        pos_row = np.int64(positions[token] + pos_offset) * width
        base = np.int64(token) * width
        for c in range(cuda.threadIdx.x, width, cuda.blockDim.x):
            if has_positions:
                out[base + c] = store(load(table[row + c]) + load(pos_table[pos_row + c]))
            else:
                out[base + c] = table[row + c]

    return Kernel(embed_kernel, (_I32A, _U16, _I32A, _U16, _U16, _I32, _I32, _I32, _I32), f"embed[{dtype}]")


def embed(ids, table, out, width: int, dtype, positions=None, pos_table=None, pos_offset: int = 0,
          row_offset: int = 0, tokens: int | None = None, stream: int = 0) -> None:
    """``out[t] = table[ids[t] + row_offset] (+ pos_table[positions[t] + pos_offset])`` for the first ``tokens``
    tokens (all of ``ids`` by default), rows of ``width`` values."""
    has = positions is not None
    _embed_kernel(_dtype_name(dtype))((ids.size if tokens is None else tokens,), ROW_THREADS,
                                      (ids, table, positions if has else ids, pos_table if has else table, out,
                                       width, row_offset, int(has), pos_offset), stream)


# ------------------------------------------------------------------------------------------------------- norms


@functools.cache
def _norm_kernel(dtype: str, kind: str, threads: int) -> Kernel:
    load, store = _converters(dtype)
    block_sum = _block_reduce(threads, "sum")
    rms = kind == "rms"

    @cuda.jit
    def add_norm_kernel(residual, delta, weight, bias, out, width, eps, has_delta, post):
        t = cuda.threadIdx.x
        scratch = cuda.shared.array(threads, np.float32)
        base = np.int64(cuda.blockIdx.x) * width
        n = np.float32(width)
        # pass 1: the residual stream, rounded to the model's dtype as it is stored, and its sum (of squares)
        partial = np.float32(0)
        for c in range(t, width, threads):
            h = load(residual[base + c])
            if has_delta:
                bits = store(h + load(delta[base + c]))
                residual[base + c] = bits
                h = load(bits)
            partial += h * h if rms else h
        total = block_sum(scratch, partial, t)
        if rms:
            mean = np.float32(0)
            inv = np.float32(1) / math.sqrt(total / n + eps)
        else:
            mean = total / n
            partial = np.float32(0)
            for c in range(t, width, threads):
                d = load(residual[base + c]) - mean
                partial += d * d
            inv = np.float32(1) / math.sqrt(block_sum(scratch, partial, t) / n + eps)
        for c in range(t, width, threads):
            y = (load(residual[base + c]) - mean) * inv * load(weight[c])
            if not rms:
                y += load(bias[c])
            bits = store(y)
            out[base + c] = bits
            if post:
                residual[base + c] = bits

    return Kernel(add_norm_kernel, (_U16, _U16, _U16, _U16, _U16, _I32, _F32, _I32, _I32),
                  f"add_norm[{dtype}, {kind}]")


def add_norm(residual, delta, weight, bias, out, rows: int, width: int, eps: float, kind: str, dtype,
             post: bool = False, stream: int = 0) -> None:
    """Per row: ``residual += delta`` (skipped when ``delta`` is None), then ``out = norm(residual)``; with
    ``post`` the normalised row also replaces ``residual`` (OPT's post-LN layers). ``kind``: ``"layer"``
    (``bias`` required) or ``"rms"``."""
    _norm_kernel(_dtype_name(dtype), kind, NORM_THREADS)(
        (rows,), NORM_THREADS,
        (residual, residual if delta is None else delta, weight, weight if bias is None else bias, out, width,
         eps, int(delta is not None), int(post)), stream)


@functools.cache
def _add_kernel(dtype: str) -> Kernel:
    load, store = _converters(dtype)

    @cuda.jit
    def add_kernel(residual, delta, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            residual[i] = store(load(residual[i]) + load(delta[i]))

    return Kernel(add_kernel, (_U16, _U16, _I32), f"add[{dtype}]")


def add(residual, delta, n: int, dtype, stream: int = 0) -> None:
    """``residual[:n] += delta[:n]``, rounded once."""
    _add_kernel(_dtype_name(dtype))((_blocks(n),), ELEMENTWISE_THREADS, (residual, delta, n), stream)


# ---------------------------------------------------------------------------------------------- split_heads


@functools.cache
def _split_heads_kernel(dtype: str, head_dim: int, rope: bool) -> Kernel:
    load, store = _converters(dtype)
    half = head_dim // 2

    @cuda.jit
    def split_heads_kernel(qkv, q_out, k_cache, v_cache, slots, positions, inv_freq, n_heads, n_kv, max_len):
        token = cuda.blockIdx.x
        head = cuda.blockIdx.y  # 0 .. n_heads - 1: queries; then n_kv keys; then n_kv values
        width = (n_heads + 2 * n_kv) * head_dim
        src = np.int64(token) * width + head * head_dim
        pos = positions[token]
        slot = np.int64(slots[token])
        if head < n_heads:
            dst_array = q_out
            dst = (np.int64(token) * n_heads + head) * head_dim
        elif head < n_heads + n_kv:
            dst_array = k_cache
            dst = ((slot * n_kv + head - n_heads) * max_len + pos) * head_dim
        else:
            dst_array = v_cache
            dst = ((slot * n_kv + head - n_heads - n_kv) * max_len + pos) * head_dim
        rotate = rope and head < n_heads + n_kv
        for i in range(cuda.threadIdx.x, half, cuda.blockDim.x):
            if rotate:
                # The angle is a float32 product, as in Hugging Face's rotary embedding.
                angle = np.float32(pos) * inv_freq[i]
                c = math.cos(angle)
                s = math.sin(angle)
                x1 = load(qkv[src + i])
                x2 = load(qkv[src + i + half])
                dst_array[dst + i] = store(x1 * c - x2 * s)
                dst_array[dst + i + half] = store(x2 * c + x1 * s)
            else:
                dst_array[dst + i] = qkv[src + i]
                dst_array[dst + i + half] = qkv[src + i + half]

    return Kernel(split_heads_kernel, (_U16, _U16, _U16, _U16, _I32A, _I32A, _F32A, _I32, _I32, _I32),
                  f"split_heads[{dtype}, d={head_dim}, rope={rope}]")


def split_heads(qkv, q_out, k_cache, v_cache, slots, positions, inv_freq, tokens: int, n_heads: int, n_kv: int,
                head_dim: int, max_len: int, dtype, stream: int = 0) -> None:
    """Token t's fused projection ``qkv[t] = [q heads | k heads | v heads]``: queries to ``q_out[t, head]``, keys
    and values to the cache at ``(slots[t], kv_head, positions[t])``; rotary embedding (HF's rotate-half form) on
    queries and keys when ``inv_freq`` is given."""
    rope = inv_freq is not None
    _split_heads_kernel(_dtype_name(dtype), head_dim, rope)(
        (tokens, n_heads + 2 * n_kv), min(ROW_THREADS, max(32, head_dim // 2)),
        (qkv, q_out, k_cache, v_cache, slots, positions, inv_freq if rope else _dummy_f32(qkv), n_heads, n_kv,
         max_len), stream)


# ------------------------------------------------------------------------------------------------ attention


@functools.cache
def _attention_kernel(dtype: str, head_dim: int, threads: int, split: bool) -> Kernel:
    """Attention of one (token, head) over one span of its keys per block. ``split``: block z takes the z-th of
    ``gridDim.z`` equal spans and writes its unnormalised partial (running max, running sum, P.V row) to a float32
    workspace for ``_combine_kernel``; otherwise one block takes every key and writes the output."""
    load, store = _converters(dtype)
    block_sum = _block_reduce(threads, "sum")
    block_max = _block_reduce(threads, "max")
    groups = head_dim // VECTOR  # 16-byte column groups of a key or value row
    lanes = max(1, threads // groups)  # positions summed side by side in the P.V phase
    words = head_dim // 2  # uint32 words per row
    partial_size = lanes * head_dim  # a shared array's size must be one compile-time constant
    record = head_dim + 2  # a split's partial: max, sum, then the P.V row

    @cuda.jit(device=True)
    def pair(word):
        """The two float32 values of one 32-bit word of a key or value row."""
        low, high = ptx.unpack_u16x2(word)
        return load(low), load(high)

    @cuda.jit
    def attention_kernel(q, k_cache, v_cache, slots, positions, out, partials, n_heads, n_kv, max_len, window,
                         scale):
        token = cuda.blockIdx.x
        head = cuda.blockIdx.y
        t = cuda.threadIdx.x
        q_scaled = cuda.shared.array(head_dim, np.float32)
        probabilities = cuda.shared.array(threads, np.float32)
        scratch = cuda.shared.array(threads, np.float32)
        partial_out = cuda.shared.array(partial_size, np.float32)
        kv_head = head // (n_heads // n_kv)
        pos = positions[token]
        first = 0
        if window > 0 and pos - window + 1 > 0:
            first = pos - window + 1
        end = pos + 1
        if split:  # this block's span of the keys first..pos
            span = (end - first + cuda.gridDim.z - 1) // cuda.gridDim.z
            first = min(end, first + cuda.blockIdx.z * span)
            end = min(end, first + span)
        row0 = (np.int64(slots[token]) * n_kv + kv_head) * max_len  # cache row of position 0
        q_base = (np.int64(token) * n_heads + head) * head_dim
        for i in range(t, head_dim, threads):
            q_scaled[i] = load(q[q_base + i]) * scale
        cuda.syncthreads()
        group = t % groups
        lane = t // groups
        acc = cuda.local.array(VECTOR, np.float32)
        for e in range(VECTOR):
            acc[e] = 0
        running_max = np.float32(-np.inf)
        running_sum = np.float32(0)
        for chunk in range(first, end, threads):
            # scores: one key per thread, its row read 16 bytes at a time
            j = chunk + t
            score = np.float32(-np.inf)
            if j < end:
                word0 = (row0 + j) * words
                dot = np.float32(0)
                for w in range(0, words, 4):
                    vector = ptx.ld_global_nc_v4_u32(k_cache, word0 + w)
                    for u in range(4):
                        x, y = pair(vector[u])
                        dot += q_scaled[2 * (w + u)] * x + q_scaled[2 * (w + u) + 1] * y
                score = dot
            new_max = max(running_max, block_max(scratch, score, t))
            correction = math.exp(running_max - new_max)
            p = np.float32(0)
            if j < end:
                p = math.exp(score - new_max)
            probabilities[t] = p
            running_sum = running_sum * correction + block_sum(scratch, p, t)
            running_max = new_max
            for e in range(VECTOR):
                acc[e] *= correction
            # P.V: thread (lane, group) sums 8 columns of every lanes-th key of the chunk
            if lane < lanes:
                count = min(threads, end - chunk)
                for jj in range(lane, count, lanes):
                    pj = probabilities[jj]
                    vector = ptx.ld_global_nc_v4_u32(v_cache, (row0 + chunk + jj) * words + group * 4)
                    for u in range(4):
                        x, y = pair(vector[u])
                        acc[2 * u] += pj * x
                        acc[2 * u + 1] += pj * y
            cuda.syncthreads()  # the next chunk overwrites probabilities
        if lane < lanes:
            for e in range(VECTOR):
                partial_out[lane * head_dim + group * VECTOR + e] = acc[e]
        cuda.syncthreads()
        if split:
            base = ((np.int64(token) * n_heads + head) * cuda.gridDim.z + cuda.blockIdx.z) * record
            if t == 0:
                partials[base] = running_max  # -inf, with sum 0, for an empty span
                partials[base + 1] = running_sum
            for i in range(t, head_dim, threads):
                total = np.float32(0)
                for r in range(lanes):
                    total += partial_out[r * head_dim + i]
                partials[base + 2 + i] = total
            return
        inv_sum = np.float32(1) / running_sum
        for i in range(t, head_dim, threads):
            total = np.float32(0)
            for r in range(lanes):
                total += partial_out[r * head_dim + i]
            out[q_base + i] = store(total * inv_sum)

    return Kernel(attention_kernel, (_U16, _U32, _U32, _I32A, _I32A, _U16, _F32A, _I32, _I32, _I32, _I32, _F32),
                  f"attention[{dtype}, d={head_dim}{', split' if split else ''}]")


@functools.cache
def _combine_kernel(dtype: str, head_dim: int, threads: int) -> Kernel:
    """One block per (token, head): the splits' partials rescaled to their common maximum and summed."""
    _, store = _converters(dtype)
    record = head_dim + 2

    @cuda.jit
    def combine_kernel(partials, out, splits):
        cell = np.int64(cuda.blockIdx.x)
        base = cell * splits * record
        largest = np.float32(-np.inf)
        for s in range(splits):
            largest = max(largest, partials[base + s * record])
        total = np.float32(0)
        for s in range(splits):
            total += math.exp(partials[base + s * record] - largest) * partials[base + s * record + 1]
        inv_total = np.float32(1) / total
        for i in range(cuda.threadIdx.x, head_dim, threads):
            value = np.float32(0)
            for s in range(splits):
                value += math.exp(partials[base + s * record] - largest) * partials[base + s * record + 2 + i]
            out[cell * head_dim + i] = store(value * inv_total)

    return Kernel(combine_kernel, (_F32A, _U16, _I32), f"attention_combine[{dtype}, d={head_dim}]")


def attention_splits(tokens: int, n_heads: int, max_len: int) -> int:
    """Spans to split each (token, head)'s keys into: enough blocks for two waves over the GPU's multiprocessors
    when tokens x heads alone are fewer (decoding a small batch), at most one span per chunk of keys a block
    scores at once, at most ``MAX_ATTENTION_SPLITS``."""
    cells = max(1, tokens * n_heads)
    wanted = -(-2 * multiprocessors() // cells)
    return max(1, min(wanted, -(-max_len // ATTENTION_THREADS), MAX_ATTENTION_SPLITS))


def compile_attention(dtype, head_dim: int) -> None:
    """Compile both attention variants (whole and split, with its combine kernel) now. Which one a pass takes
    depends on the batch and the cache length (``attention_splits``): compiled here, before generation starts, the
    split variant is not compiled in the middle of a timed decode the first time a longer cache asks for it."""
    name = _dtype_name(dtype)
    _attention_kernel(name, head_dim, ATTENTION_THREADS, False).compile()
    _attention_kernel(name, head_dim, ATTENTION_THREADS, True).compile()
    _combine_kernel(name, head_dim, COMBINE_THREADS).compile()


def attention_workspace_size(tokens: int, n_heads: int, head_dim: int, splits: int) -> int:
    """float32 values of the partials a split attention writes (0 without a split)."""
    return 0 if splits <= 1 else tokens * n_heads * splits * (head_dim + 2)


def attention(q, k_cache, v_cache, slots, positions, out, tokens: int, n_heads: int, n_kv: int, head_dim: int,
              max_len: int, window: int, scale: float, dtype, stream: int = 0, splits: int = 1,
              workspace=None) -> None:
    """``out[t, h] = softmax(scale * q[t, h] . K[:p+1]) @ V[:p+1]`` over the cache rows of sequence ``slots[t]``
    up to its position ``p = positions[t]`` (from ``p - window + 1`` when ``window > 0``). Keys and values are
    read 16 bytes at a time from uint32 views of the cache; softmax runs online over chunks of keys in float32.

    With ``splits > 1`` each (token, head)'s keys are split into that many equal spans, one block each, whose
    partial results meet in ``workspace`` (a float32 array of ``attention_workspace_size`` values) and are combined
    by a second kernel: a small batch then fills the GPU."""
    name = _dtype_name(dtype)
    arguments = (q, k_cache.view(np.uint32), v_cache.view(np.uint32), slots, positions, out,
                 _dummy_f32(q) if splits <= 1 else workspace, n_heads, n_kv, max_len, window, scale)
    if splits <= 1:
        _attention_kernel(name, head_dim, ATTENTION_THREADS, False)((tokens, n_heads), ATTENTION_THREADS, arguments,
                                                                    stream)
        return
    _attention_kernel(name, head_dim, ATTENTION_THREADS, True)((tokens, n_heads, splits), ATTENTION_THREADS,
                                                               arguments, stream)
    _combine_kernel(name, head_dim, COMBINE_THREADS)((tokens * n_heads,), COMBINE_THREADS,
                                                     (workspace, out, splits), stream)


# ------------------------------------------------------------------------------------------ elementwise ops


@functools.cache
def _activation_kernel(dtype: str, kind: str) -> Kernel:
    load, store = _converters(dtype)
    glu = kind == "silu_glu"

    @cuda.jit
    def activation_kernel(x, out, rows, cols):
        n = np.int64(rows) * cols
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            if glu:
                r = i // cols
                c = i - r * cols
                gate = load(x[r * 2 * cols + c])
                up = load(x[r * 2 * cols + cols + c])
                out[i] = store(gate / (np.float32(1) + math.exp(-gate)) * up)
            else:
                v = load(x[i])
                out[i] = store(np.float32(0)) if v < 0 else x[i]  # NaN passes through, as in torch.relu

    return Kernel(activation_kernel, (_U16, _U16, _I32, _I32), f"activation[{dtype}, {kind}]")


def activation(x, out, rows: int, cols: int, kind: str, dtype, stream: int = 0) -> None:
    """``"relu"``: ``out = relu(x)`` over (rows, cols) (``out`` may be ``x``); ``"silu_glu"``: ``x`` is
    (rows, 2 * cols) = [gate | up] and ``out = silu(gate) * up`` is (rows, cols)."""
    _activation_kernel(_dtype_name(dtype), kind)((_blocks(rows * cols),), ELEMENTWISE_THREADS, (x, out, rows, cols),
                                                 stream)


@functools.cache
def _add_bias_kernel(dtype: str) -> Kernel:
    load, store = _converters(dtype)

    @cuda.jit
    def add_bias_kernel(y, bias, rows, cols):
        n = np.int64(rows) * cols
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            y[i] = store(load(y[i]) + load(bias[i % cols]))

    return Kernel(add_bias_kernel, (_U16, _U16, _I32, _I32), f"add_bias[{dtype}]")


def add_bias(y, bias, rows: int, cols: int, dtype, stream: int = 0) -> None:
    """``y[r, :] += bias`` for each of ``rows`` rows of ``cols`` values."""
    _add_bias_kernel(_dtype_name(dtype))((_blocks(rows * cols),), ELEMENTWISE_THREADS, (y, bias, rows, cols), stream)


# --------------------------------------------------------------------------------------------- greedy step


@functools.cache
def _argmax_kernel(dtype: str, threads: int) -> Kernel:
    load, _ = _converters(dtype)

    @cuda.jit
    def argmax_kernel(logits, out, vocab):
        row = cuda.blockIdx.x
        t = cuda.threadIdx.x
        values = cuda.shared.array(threads, np.float32)
        indices = cuda.shared.array(threads, np.int32)
        base = np.int64(row) * vocab
        best = np.float32(-np.inf)
        best_index = np.int32(vocab)
        for c in range(t, vocab, threads):
            v = load(logits[base + c])
            if math.isnan(v):
                v = np.float32(np.inf)  # NaN counts as +Inf
            if v > best or best_index == vocab:  # a thread's indices ascend: ties keep the lowest
                best = v
                best_index = c
        values[t] = best
        indices[t] = best_index
        cuda.syncthreads()
        stride = threads // 2
        while stride > 0:
            if t < stride:
                v, i = values[t + stride], indices[t + stride]
                if v > values[t] or (v == values[t] and i < indices[t]):
                    values[t] = v
                    indices[t] = i
            cuda.syncthreads()
            stride //= 2
        if t == 0:
            out[row] = indices[0]

    return Kernel(argmax_kernel, (_U16, _I32A, _I32), f"argmax[{dtype}]")


def argmax(logits, out, rows: int, vocab: int, dtype, stream: int = 0) -> None:
    """``out[r] = argmax(logits[r, :vocab])``, the lowest index on ties; NaN counts as +Inf."""
    _argmax_kernel(_dtype_name(dtype), ROW_THREADS)((rows,), ROW_THREADS, (logits, out, vocab), stream)


@functools.cache
def _finish_step_kernel() -> Kernel:
    @cuda.jit
    def finish_step_kernel(ids, positions, history, done, step, eos, n_eos, batch, columns):
        b = cuda.threadIdx.x
        column = step[0]
        if b < batch:
            token = ids[b]
            history[b * columns + column] = token
            for e in range(n_eos):
                if token == eos[e]:
                    done[b] = 1
            positions[b] += 1
        cuda.syncthreads()
        if b == 0:
            step[0] = column + 1

    return Kernel(finish_step_kernel, (_I32A, _I32A, _I32A, _I32A, _I32A, _I32A, _I32, _I32, _I32), "finish_step")


def finish_step(ids, positions, history, done, step, eos, batch: int, columns: int, stream: int = 0) -> None:
    """After a token per sequence is chosen (``ids``): ``history[b, step] = ids[b]``, ``done[b]`` set where it is
    an end-of-sequence id (``eos``, int32), ``positions[b] += 1`` and ``step += 1`` (a one-element array), all on
    the device so that a captured decode step moves on by itself. One block: ``batch`` <= 1024."""
    threads = max(32, -(-batch // 32) * 32)
    _finish_step_kernel()((1,), threads, (ids, positions, history, done, step, eos, int(eos.size), batch, columns),
                          stream)


# ----------------------------------------------------------------------------------------------------- expand


@functools.cache
def _expand_kernel() -> Kernel:
    @cuda.jit
    def expand_kernel(words, tile_offsets, out, rows, cols, n_tile_cols):
        tile = cuda.blockIdx.x
        t = cuda.threadIdx.x
        row0 = (tile // n_tile_cols) * TILE_M
        col0 = (tile % n_tile_cols) * TILE_K
        # zero the tile's part of the matrix, then scatter its entries (padding words hold value 0: skipped)
        for i in range(t, TILE_M * TILE_K, cuda.blockDim.x):
            r = row0 + i // TILE_K
            c = col0 + i % TILE_K
            if r < rows and c < cols:
                out[np.int64(r) * cols + c] = 0
        cuda.syncthreads()
        for w in range(4 * tile_offsets[tile] + t, 4 * tile_offsets[tile + 1], cuda.blockDim.x):
            word = words[w]
            if word & 0xFFFF:
                position = word >> 16
                r = position >> 6
                c = (position & 63) ^ ((r & 7) << 3)  # undo the swizzle
                out[np.int64(row0 + r) * cols + col0 + c] = word & 0xFFFF

    return Kernel(expand_kernel, (_U32, _I32A, _U16, _I32, _I32, _I32), "expand")


def expand(A, out, stream: int = 0) -> None:
    """The dense (M, K) bits of Tiled-CSL matrix ``A`` into the flat uint16 buffer ``out`` (``M * K`` values)."""
    rows, cols = A.shape
    _expand_kernel()((A.n_tiles,), EXPAND_THREADS, (A.words, A.tile_offsets, out, rows, cols, A.n_tile_cols), stream)


# ---------------------------------------------------------------------------------------------------- helpers


def _blocks(n: int) -> int:
    return max(1, min(ELEMENTWISE_BLOCKS, -(-n // ELEMENTWISE_THREADS)))


_DUMMIES: dict = {}


def _dummy_f32(like):
    """A one-element float32 array of ``like``'s module for arguments a configuration never reads."""
    module = type(like).__module__.split(".", 1)[0]
    dummy = _DUMMIES.get(module)
    if dummy is None:
        xp = np if module == "numpy" else __import__("cupy")
        dummy = _DUMMIES[module] = xp.zeros(1, np.float32)
    return dummy
