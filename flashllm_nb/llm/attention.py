"""Attention over the KV cache: the fused QKV output split into heads and the cache, then causal softmax attention
of each query token over its sequence's cached keys (grouped-query heads, a sliding window).

=====================  ==============================================================================================
``split_heads``        the fused QKV output into per-head queries and the KV cache, RoPE applied to q and k
``attention``          one block per (token, head[, span of keys]); split over spans, whose last block combines
                       them, when the batch is too small to fill the GPU (``attention_splits``)
=====================  ==============================================================================================

The attention kernel gives each warp of a block its own chunks of 32 keys and its own online softmax, so a chunk
needs no block barrier: a lane scores one key (its row read 16 bytes at a time), the warp shares the chunk's
maximum and sum, and then sums probability times value rows, each lane 8 columns of a row, the chunk's rows read
as independent loads. The warps' partial results meet once, at the end. Decoding one token reads each key and
value row once; its time is the latency of a few such rounds, not the bytes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numba import cuda

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.driver import Kernel, grid_dependency_supported, placeholder
from flashllm_nb.kernels.spmm.plan import multiprocessors
from flashllm_nb.llm import device
from flashllm_nb.llm.kernel_support import (F32, F32A, I32, I32A, U16, U32, WARP, converters,
                                            dtype_name, kernel_entry, kernel_release, pair_converter, warp_reduce)

__all__ = ["Heads", "AttentionSplit", "split_heads", "attention", "attention_splits", "attention_workspace_size",
           "compile_attention", "ATTENTION_THREADS", "MAX_ATTENTION_SPLITS"]

_SIM = ptx.SIMULATOR
ATTENTION_THREADS = 64 if _SIM else 128  # warps of a block, each with its own chunks of keys (two in the simulator)
SPLIT_THREADS = 32 if _SIM else 64
MAX_ATTENTION_SPLITS = 16
VECTOR = 8  # values per 16-byte load of a key or value row
ROWS_IN_FLIGHT = 8  # value rows a lane loads before it uses the first: independent loads cover the latency


@dataclass(frozen=True)
class Heads:
    """The attention geometry of a model and its cache: query and key/value heads, their width, the cache's
    positions per sequence, the sliding window (0: none), the score scale and the activations' dtype."""

    n_heads: int
    n_kv: int
    head_dim: int
    max_len: int
    window: int
    scale: float
    dtype: object

    @property
    def kernel_dtype(self) -> str:
        return dtype_name(self.dtype)


# ---------------------------------------------------------------------------------------------- split_heads


@functools.cache
def _split_heads_kernel(dtype: str, head_dim: int, rope: bool, dependent: bool) -> Kernel:
    load, store = converters(dtype)
    half = head_dim // 2

    enter = kernel_entry(dependent)

    @cuda.jit
    def split_heads_kernel(qkv, q_out, k_cache, v_cache, slots, positions, inv_freq, n_heads, n_kv, max_len):
        enter()
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

    return Kernel(split_heads_kernel, (U16, U16, U16, U16, I32A, I32A, F32A, I32, I32, I32),
                  f"split_heads[{dtype}, d={head_dim}, rope={rope}]", dependent=dependent)


def split_heads(qkv, q_out, k_cache, v_cache, slots, positions, inv_freq, tokens: int, heads: Heads,
                stream: int = 0) -> None:
    """Token t's fused projection ``qkv[t] = [q heads | k heads | v heads]``: queries to ``q_out[t, head]``, keys
    and values to the cache at ``(slots[t], kv_head, positions[t])``; rotary embedding (HF's rotate-half form) on
    queries and keys when ``inv_freq`` is given."""
    rope = inv_freq is not None
    threads = min(SPLIT_THREADS, max(32, heads.head_dim // 2))
    _split_heads_kernel(heads.kernel_dtype, heads.head_dim, rope, grid_dependency_supported())(
        (tokens, heads.n_heads + 2 * heads.n_kv), threads,
        (qkv, q_out, k_cache, v_cache, slots, positions, inv_freq if rope else placeholder(device.xp(), np.float32),
         heads.n_heads, heads.n_kv, heads.max_len), stream)


# ------------------------------------------------------------------------------------------------ attention


@functools.cache
def _attention_kernel(dtype: str, head_dim: int, threads: int, split: bool, dependent: bool) -> Kernel:
    """Attention of one (token, head) over one span of its keys per block. ``split``: block z takes the z-th of
    ``gridDim.z`` equal spans and writes its unnormalised partial (maximum, sum, P.V row) to a float32 workspace;
    the last of a (token, head)'s blocks to finish (an atomic ticket per (token, head), one fence by one thread on
    each side, as the SpMM kernel's split-K) combines the partials in span order and writes the output, then
    resets the ticket for the next launch. Otherwise one block takes every key and writes the output."""
    load, store = converters(dtype)
    warp_sum = warp_reduce("sum")
    warp_max = warp_reduce("max")
    warps = threads // WARP
    groups = head_dim // VECTOR  # lanes that read one value row, 16 bytes each
    rows_per_step = WARP // groups  # value rows a warp reads side by side
    steps = -(-WARP // rows_per_step)  # side-by-side reads that cover a chunk of 32 value rows
    batches = -(-steps // ROWS_IN_FLIGHT)
    words = head_dim // 2  # uint32 words per row
    partial_size = warps * rows_per_step * head_dim  # a shared array's size must be one compile-time constant
    record = head_dim + 2  # a split's partial: maximum, sum, then the P.V row

    pair = pair_converter(dtype)  # the two values of one 32-bit word of a key or value row
    enter, release = kernel_entry(dependent), kernel_release(dependent)

    @cuda.jit
    def attention_kernel(q, k_cache, v_cache, slots, positions, out, partials, tickets, n_heads, n_kv, max_len,
                         window, scale):
        enter()
        token = cuda.blockIdx.x
        head = cuda.blockIdx.y
        t = cuda.threadIdx.x
        warp = t // WARP
        lane = t % WARP
        q_scaled = cuda.shared.array(head_dim, np.float32)
        probabilities = cuda.shared.array(threads, np.float32)
        scratch = cuda.shared.array(threads, np.float32)
        partial_out = cuda.shared.array(partial_size, np.float32)
        warp_maxima = cuda.shared.array(warps, np.float32)
        warp_sums = cuda.shared.array(warps, np.float32)
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
        group = lane % groups
        row_in_step = lane // groups  # rows_per_step or more: a lane left over, idle in the P.V sum
        acc = cuda.local.array(VECTOR, np.float32)
        for e in range(VECTOR):
            acc[e] = 0
        vectors = cuda.local.array((ROWS_IN_FLIGHT, 4), np.uint32)
        running_max = np.float32(-np.inf)
        running_sum = np.float32(0)
        for chunk in range(first + warp * WARP, end, threads):  # this warp's chunks of 32 keys
            j = chunk + lane
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
            new_max = max(running_max, warp_max(scratch, score, t))  # finite: lane 0's key is in the span
            correction = math.exp(running_max - new_max)
            p = np.float32(0)
            if j < end:
                p = math.exp(score - new_max)
            probabilities[t] = p
            running_sum = running_sum * correction + warp_sum(scratch, p, t)  # its barrier publishes p too
            running_max = new_max
            for e in range(VECTOR):
                acc[e] *= correction
            # P.V: lane (row_in_step, group) sums 8 columns of rows row_in_step, + rows_per_step, ... of the chunk
            count = min(WARP, end - chunk)
            if row_in_step < rows_per_step:
                for batch in range(batches):
                    for r in range(ROWS_IN_FLIGHT):  # loads first, each of a row inside the span
                        jj = row_in_step + (batch * ROWS_IN_FLIGHT + r) * rows_per_step
                        row = row0 + chunk + min(jj, count - 1)
                        loaded = ptx.ld_global_nc_v4_u32(v_cache, row * words + group * 4)
                        for u in range(4):
                            vectors[r, u] = loaded[u]
                    for r in range(ROWS_IN_FLIGHT):
                        jj = row_in_step + (batch * ROWS_IN_FLIGHT + r) * rows_per_step
                        if jj < count:
                            pj = probabilities[warp * WARP + jj]
                            for u in range(4):
                                x, y = pair(vectors[r, u])
                                acc[2 * u] += pj * x
                                acc[2 * u + 1] += pj * y
            ptx.warp_sync()  # the next chunk overwrites probabilities
        if row_in_step < rows_per_step:
            for e in range(VECTOR):
                partial_out[(warp * rows_per_step + row_in_step) * head_dim + group * VECTOR + e] = acc[e]
        if lane == 0:
            warp_maxima[warp] = running_max  # -inf, with sum 0 and a zero row, for a warp without keys
            warp_sums[warp] = running_sum
        cuda.syncthreads()
        # Every warp has read its last key and value row (a block's first launch_dependents is the one that
        # counts, so it goes after the barrier): what is left is the warps' meeting and the store.
        release()
        largest = warp_maxima[0]
        for w in range(1, warps):
            largest = max(largest, warp_maxima[w])
        total = np.float32(0)
        for w in range(warps):
            if warp_maxima[w] > -np.inf:
                total += math.exp(warp_maxima[w] - largest) * warp_sums[w]
        base = np.int64(0)
        if split:
            base = ((np.int64(token) * n_heads + head) * cuda.gridDim.z + cuda.blockIdx.z) * record
            if t == 0:
                partials[base] = largest  # -inf, with sum 0, for an empty span
                partials[base + 1] = total
        for i in range(t, head_dim, threads):
            value = np.float32(0)
            for w in range(warps):
                if warp_maxima[w] > -np.inf:
                    rows = np.float32(0)
                    for r in range(rows_per_step):
                        rows += partial_out[(w * rows_per_step + r) * head_dim + i]
                    value += math.exp(warp_maxima[w] - largest) * rows
            if split:
                partials[base + 2 + i] = value
            else:
                out[q_base + i] = store(value / total)
        if split:
            # The barrier orders every thread's share of the partial before thread 0's fence, whose release covers
            # them (a fence is cumulative); on the other side thread 0's acquiring fence and the barrier order the
            # reads of all threads.
            cuda.syncthreads()
            cell = np.int64(token) * n_heads + head
            spans = cuda.gridDim.z
            last = 0
            if t == 0:
                cuda.threadfence()  # release this span's partial
                last = 1 if cuda.atomic.add(tickets, cell, 1) == spans - 1 else 0
                if last:
                    cuda.threadfence()  # acquire the other spans' partials
            if cuda.syncthreads_or(last) != 0:
                first_record = cell * spans * record
                overall_max = np.float32(-np.inf)
                for z in range(spans):
                    overall_max = max(overall_max, partials[first_record + z * record])
                overall_sum = np.float32(0)
                for z in range(spans):
                    overall_sum += math.exp(partials[first_record + z * record] - overall_max) * \
                        partials[first_record + z * record + 1]
                inv_sum = np.float32(1) / overall_sum
                for i in range(t, head_dim, threads):
                    value = np.float32(0)
                    for z in range(spans):  # in span order: the result does not depend on which block came last
                        value += math.exp(partials[first_record + z * record] - overall_max) * \
                            partials[first_record + z * record + 2 + i]
                    out[q_base + i] = store(value * inv_sum)
                if t == 0:
                    tickets[cell] = 0

    return Kernel(attention_kernel, (U16, U32, U32, I32A, I32A, U16, F32A, I32A, I32, I32, I32, I32, F32),
                  f"attention[{dtype}, d={head_dim}{', split' if split else ''}]", dependent=dependent)


def attention_splits(tokens: int, n_heads: int, max_len: int) -> int:
    """Spans to split each (token, head)'s keys into: enough blocks for two waves over the GPU's multiprocessors
    when tokens x heads alone are fewer (decoding a small batch), at most one span per round of keys a block
    scores at once (a chunk per warp), at most ``MAX_ATTENTION_SPLITS``."""
    cells = max(1, tokens * n_heads)
    wanted = -(-2 * multiprocessors() // cells)
    return max(1, min(wanted, -(-max_len // ATTENTION_THREADS), MAX_ATTENTION_SPLITS))


def compile_attention(dtype, head_dim: int) -> None:
    """Compile both attention variants (whole and split) now. Which one a pass takes depends on the batch and the
    cache length (``attention_splits``): compiled here, before generation starts, the split variant is not
    compiled in the middle of a timed decode the first time a longer cache asks for it."""
    name, dependent = dtype_name(dtype), grid_dependency_supported()
    _attention_kernel(name, head_dim, ATTENTION_THREADS, False, dependent).compile()
    _attention_kernel(name, head_dim, ATTENTION_THREADS, True, dependent).compile()


def attention_workspace_size(tokens: int, n_heads: int, head_dim: int, splits: int) -> int:
    """float32 values of the partials a split attention writes (0 without a split)."""
    return 0 if splits <= 1 else tokens * n_heads * splits * (head_dim + 2)


@dataclass(frozen=True)
class AttentionSplit:
    """Each (token, head)'s keys split into ``spans`` equal spans, one block each, whose partial results meet in
    ``partials`` (a float32 array of at least ``attention_workspace_size`` values), counted in ``tickets`` (an
    int32 array of a zero per (token, head); the kernel leaves them zero): a small batch then fills the GPU
    (``attention_splits``)."""

    spans: int
    partials: object
    tickets: object


def attention(q, k_cache, v_cache, slots, positions, out, tokens: int, heads: Heads, stream: int = 0,
              split: AttentionSplit | None = None) -> None:
    """``out[t, h] = softmax(scale * q[t, h] . K[:p+1]) @ V[:p+1]`` over the cache rows of sequence ``slots[t]``
    up to its position ``p = positions[t]`` (from ``p - window + 1`` when ``window > 0``). Keys and values are
    read 16 bytes at a time from uint32 views of the cache; softmax runs online in float32. Without ``split`` one
    block takes all of a (token, head)'s keys."""
    name, dependent = heads.kernel_dtype, grid_dependency_supported()
    whole = split is None or split.spans <= 1
    if not whole:
        _check_split(split, tokens, heads)
    xp = device.xp()
    arguments = (q, k_cache.view(np.uint32), v_cache.view(np.uint32), slots, positions, out,
                 placeholder(xp, np.float32) if whole else split.partials,
                 placeholder(xp, np.int32) if whole else split.tickets, heads.n_heads, heads.n_kv, heads.max_len,
                 heads.window, heads.scale)
    grid = (tokens, heads.n_heads) if whole else (tokens, heads.n_heads, split.spans)
    _attention_kernel(name, heads.head_dim, ATTENTION_THREADS, not whole, dependent)(grid, ATTENTION_THREADS,
                                                                                     arguments, stream)


def _check_split(split: AttentionSplit, tokens: int, heads: Heads) -> None:
    """Refuse a workspace too small or of the wrong dtype for ``tokens`` tokens of ``heads`` split ``split.spans``
    ways: the kernel would write past it, or never find its tickets at zero."""
    needed = attention_workspace_size(tokens, heads.n_heads, heads.head_dim, split.spans)
    for name, array, dtype, size in (("split.partials", split.partials, np.float32, needed),
                                     ("split.tickets", split.tickets, np.int32, tokens * heads.n_heads)):
        if array.dtype != dtype or array.size < size:
            raise ValueError(f"Invalid {name}: expected {size} or more {np.dtype(dtype).name} values, got "
                             f"{array.size} {array.dtype} values")
