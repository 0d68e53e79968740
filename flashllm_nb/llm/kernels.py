"""The decoder's own kernels apart from attention (``llm.attention``): everything of a transformer step that is
neither a linear layer nor attention.

Each function here launches one Numba kernel on flat (1-D, C-contiguous) arrays through
:class:`flashllm_nb.kernels.driver.Kernel`: on a GPU without Numba's dispatcher (so a decode step can be captured in
a CUDA graph), under the simulator on NumPy arrays. Activations are the uint16 bit patterns of the model's dtype
(float16 or bfloat16), widened to float32 for arithmetic and rounded once per stored result, as the Tensor-Core
products are. Kernels are built once per (dtype, compile-time shape) and cached.

=====================  ==============================================================================================
``embed``              token rows of the embedding table (plus OPT's learned positions): one block per token
``add_norm``           ``residual += delta`` then LayerNorm or RMSNorm of it (or, post-LN, the norm replaces it)
``add``                ``residual += delta`` alone (a model without a final norm)
``activation``         ReLU in place, or SiLU-GLU ``silu(gate) * up`` of a fused [gate | up] row
``add_bias``           a bias row added to a dense product (cuBLAS has no bias epilogue here)
``argmax``             the index of each row's largest logit (greedy decoding inside the captured step)
``finish_step``        record the chosen tokens, mark finished sequences, move positions on (inside the captured step)
``expand``             a Tiled-CSL matrix scattered into a dense buffer (prefill through cuBLAS)
=====================  ==============================================================================================

Threads per block are a multiple of 32 and a power of two; under the simulator every kernel runs with 32, because
each simulated thread is a Python thread.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numba import cuda

from flashllm_nb.formats.tiled_csl import TILE_K, TILE_M
from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.driver import Kernel, grid_dependency_supported
from flashllm_nb.llm.kernel_support import (F32, I32, I32A, U16, U32, block_reduce, bounded_kernel, converters,
                                            dtype_name, kernel_entry, kernel_release, pair_converter)

__all__ = [
    "embed", "LearnedPositions", "add_norm", "NormWeights", "add", "activation", "add_bias", "argmax", "finish_step",
    "expand", "NORM_THREADS", "NORM_MAX_WIDTH",
]

_SIM = ptx.SIMULATOR
NORM_THREADS = 32 if _SIM else 1024  # one block per row
NORM_PAIRS_PER_THREAD = 8  # a row's values stay in registers between the passes: width <= 2 * 8 * NORM_THREADS
NORM_MAX_WIDTH = 2 * NORM_PAIRS_PER_THREAD * NORM_THREADS
ROW_THREADS = 32 if _SIM else 256  # embed, argmax
ELEMENTWISE_THREADS = 32 if _SIM else 256
ELEMENTWISE_BLOCKS = 4 if _SIM else 1024  # grid-stride loops: enough blocks to fill the GPU, few in the simulator
EXPAND_THREADS = 32 if _SIM else 256


# ------------------------------------------------------------------------------------------------------ embed


@functools.cache
def _embed_kernel(dtype: str, dependent: bool) -> Kernel:
    load, store = converters(dtype)

    enter = kernel_entry(dependent)

    @cuda.jit
    def embed_kernel(ids, table, positions, pos_table, out, width, row_offset, has_positions, pos_offset):
        enter()
        token = cuda.blockIdx.x
        row = np.int64(ids[token] + row_offset) * width
        pos_row = np.int64(positions[token] + pos_offset) * width
        base = np.int64(token) * width
        for c in range(cuda.threadIdx.x, width, cuda.blockDim.x):
            if has_positions:
                out[base + c] = store(load(table[row + c]) + load(pos_table[pos_row + c]))
            else:
                out[base + c] = table[row + c]

    return Kernel(embed_kernel, (I32A, U16, I32A, U16, U16, I32, I32, I32, I32), f"embed[{dtype}]",
                  dependent=dependent)


@dataclass(frozen=True)
class LearnedPositions:
    """OPT's learned positions for :func:`embed`: token t adds row ``positions[t] + offset`` of ``table``."""

    positions: object
    table: object
    offset: int


def embed(ids, table, out, width: int, dtype, learned: LearnedPositions | None = None, row_offset: int = 0,
          tokens: int | None = None, stream: int = 0) -> None:
    """``out[t] = table[ids[t] + row_offset]`` (plus the learned position row, given ``learned``) for the first
    ``tokens`` tokens (all of ``ids`` by default), rows of ``width`` values."""
    has = learned is not None
    kernel = _embed_kernel(dtype_name(dtype), grid_dependency_supported())
    kernel((ids.size if tokens is None else tokens,), ROW_THREADS,
           (ids, table, learned.positions if has else ids, learned.table if has else table, out, width, row_offset,
            int(has), learned.offset if has else 0), stream)


# ------------------------------------------------------------------------------------------------------- norms


@functools.cache
def _norm_kernel(dtype: str, kind: str, threads: int, dependent: bool) -> Kernel:
    """One block per row, on uint32 views (two values a word). Every load of a row is issued before the first
    value is used and the row stays in registers between the passes, so a row costs a few memory latencies and
    two block reductions (LayerNorm: the mean, then the variance about it)."""
    _, store = converters(dtype)
    pair = pair_converter(dtype)
    block_sum = block_reduce(threads, "sum")
    rms = kind == "rms"
    per_thread = NORM_PAIRS_PER_THREAD
    values_per_thread = 2 * per_thread  # a local array's size must be one compile-time constant

    enter, release = kernel_entry(dependent), kernel_release(dependent)

    @bounded_kernel(threads)
    def add_norm_kernel(residual, delta, weight, bias, out, pairs, eps, has_delta, post):
        enter()
        t = cuda.threadIdx.x
        scratch = cuda.shared.array(threads, np.float32)
        base = np.int64(cuda.blockIdx.x) * pairs
        n = np.float32(2 * pairs)
        stream_words = cuda.local.array(per_thread, np.uint32)
        delta_words = cuda.local.array(per_thread, np.uint32)
        weight_words = cuda.local.array(per_thread, np.uint32)
        bias_words = cuda.local.array(per_thread, np.uint32)
        h = cuda.local.array(values_per_thread, np.float32)
        for i in range(per_thread):  # every load first: independent, in flight together
            c = t + i * threads
            if c < pairs:
                stream_words[i] = residual[base + c]
                if has_delta:
                    delta_words[i] = delta[base + c]
                weight_words[i] = weight[c]
                if not rms:
                    bias_words[i] = bias[c]
        # pass 1: the residual stream, rounded to the model's dtype as it is stored, and its sum (of squares)
        partial = np.float32(0)
        for i in range(per_thread):
            h[2 * i] = 0
            h[2 * i + 1] = 0
            c = t + i * threads
            if c < pairs:
                low, high = pair(stream_words[i])
                if has_delta:
                    d_low, d_high = pair(delta_words[i])
                    word = ptx.pack_u16x2(store(low + d_low), store(high + d_high))
                    residual[base + c] = word
                    low, high = pair(word)
                h[2 * i] = low
                h[2 * i + 1] = high
                partial += low * low + high * high if rms else low + high
        total = block_sum(scratch, partial, t)
        if rms:
            mean = np.float32(0)
            inv = np.float32(1) / math.sqrt(total / n + eps)
        else:
            mean = total / n
            partial = np.float32(0)
            for i in range(per_thread):
                if t + i * threads < pairs:
                    d_low = h[2 * i] - mean
                    d_high = h[2 * i + 1] - mean
                    partial += d_low * d_low + d_high * d_high
            inv = np.float32(1) / math.sqrt(block_sum(scratch, partial, t) / n + eps)
        release()  # the next kernel (a product) may start streaming its weights while the row is stored
        for i in range(per_thread):
            c = t + i * threads
            if c < pairs:
                w_low, w_high = pair(weight_words[i])
                y_low = (h[2 * i] - mean) * inv * w_low
                y_high = (h[2 * i + 1] - mean) * inv * w_high
                if not rms:
                    b_low, b_high = pair(bias_words[i])
                    y_low += b_low
                    y_high += b_high
                word = ptx.pack_u16x2(store(y_low), store(y_high))
                out[base + c] = word
                if post:
                    residual[base + c] = word

    return Kernel(add_norm_kernel, (U32, U32, U32, U32, U32, I32, F32, I32, I32),
                  f"add_norm[{dtype}, {kind}]", dependent=dependent)


@dataclass(frozen=True)
class NormWeights:
    """A norm's parameters: ``kind`` ``"layer"`` (LayerNorm: ``weight`` and ``bias``) or ``"rms"`` (RMSNorm:
    ``weight``, ``bias`` None), both flat bit arrays of the row's width, and ``eps``."""

    weight: object
    bias: object
    eps: float
    kind: str


def add_norm(residual, delta, out, rows: int, width: int, norm: NormWeights, dtype, post: bool = False,
             stream: int = 0) -> None:
    """Per row: ``residual += delta`` (skipped when ``delta`` is None), then ``out = norm(residual)``; with
    ``post`` the normalised row also replaces ``residual`` (OPT's post-LN layers). ``width`` is even and at most
    ``NORM_MAX_WIDTH``."""
    if width % 2 or width > NORM_MAX_WIDTH:
        raise ValueError(f"add_norm: width must be even and at most {NORM_MAX_WIDTH}, got {width}")
    words = [a.view(np.uint32) for a in (residual, residual if delta is None else delta, norm.weight,
                                         norm.weight if norm.bias is None else norm.bias, out)]
    _norm_kernel(dtype_name(dtype), norm.kind, NORM_THREADS, grid_dependency_supported())(
        (rows,), NORM_THREADS, (*words, width // 2, norm.eps, int(delta is not None), int(post)), stream)


@functools.cache
def _add_kernel(dtype: str, dependent: bool) -> Kernel:
    load, store = converters(dtype)

    enter = kernel_entry(dependent)

    @cuda.jit
    def add_kernel(residual, delta, n):
        enter()
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            residual[i] = store(load(residual[i]) + load(delta[i]))

    return Kernel(add_kernel, (U16, U16, I32), f"add[{dtype}]", dependent=dependent)


def add(residual, delta, n: int, dtype, stream: int = 0) -> None:
    """``residual[:n] += delta[:n]``, rounded once."""
    kernel = _add_kernel(dtype_name(dtype), grid_dependency_supported())
    kernel((_blocks(n),), ELEMENTWISE_THREADS, (residual, delta, n), stream)


# ------------------------------------------------------------------------------------------ elementwise ops


@functools.cache
def _activation_kernel(dtype: str, kind: str, dependent: bool) -> Kernel:
    load, store = converters(dtype)
    glu = kind == "silu_glu"

    enter = kernel_entry(dependent)

    @cuda.jit
    def activation_kernel(x, out, rows, cols):
        enter()
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

    return Kernel(activation_kernel, (U16, U16, I32, I32), f"activation[{dtype}, {kind}]", dependent=dependent)


def activation(x, out, rows: int, cols: int, kind: str, dtype, stream: int = 0) -> None:
    """``"relu"``: ``out = relu(x)`` over (rows, cols) (``out`` may be ``x``); ``"silu_glu"``: ``x`` is
    (rows, 2 * cols) = [gate | up] and ``out = silu(gate) * up`` is (rows, cols)."""
    kernel = _activation_kernel(dtype_name(dtype), kind, grid_dependency_supported())
    kernel((_blocks(rows * cols),), ELEMENTWISE_THREADS, (x, out, rows, cols), stream)


@functools.cache
def _add_bias_kernel(dtype: str, dependent: bool) -> Kernel:
    load, store = converters(dtype)

    enter = kernel_entry(dependent)

    @cuda.jit
    def add_bias_kernel(y, bias, rows, cols):
        enter()
        n = np.int64(rows) * cols
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            y[i] = store(load(y[i]) + load(bias[i % cols]))

    return Kernel(add_bias_kernel, (U16, U16, I32, I32), f"add_bias[{dtype}]", dependent=dependent)


def add_bias(y, bias, rows: int, cols: int, dtype, stream: int = 0) -> None:
    """``y[r, :] += bias`` for each of ``rows`` rows of ``cols`` values."""
    kernel = _add_bias_kernel(dtype_name(dtype), grid_dependency_supported())
    kernel((_blocks(rows * cols),), ELEMENTWISE_THREADS, (y, bias, rows, cols), stream)


# --------------------------------------------------------------------------------------------- greedy step


@functools.cache
def _argmax_kernel(dtype: str, threads: int, dependent: bool) -> Kernel:
    load, _ = converters(dtype)

    enter = kernel_entry(dependent)

    @cuda.jit
    def argmax_kernel(logits, out, vocab):
        enter()
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

    return Kernel(argmax_kernel, (U16, I32A, I32), f"argmax[{dtype}]", dependent=dependent)


def argmax(logits, out, rows: int, vocab: int, dtype, stream: int = 0) -> None:
    """``out[r] = argmax(logits[r, :vocab])``, the lowest index on ties; NaN counts as +Inf."""
    kernel = _argmax_kernel(dtype_name(dtype), ROW_THREADS, grid_dependency_supported())
    kernel((rows,), ROW_THREADS, (logits, out, vocab), stream)


@functools.cache
def _finish_step_kernel(dependent: bool) -> Kernel:
    enter = kernel_entry(dependent)

    @cuda.jit
    def finish_step_kernel(ids, positions, history, done, step, eos, n_eos, batch, columns):
        enter()
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

    return Kernel(finish_step_kernel, (I32A, I32A, I32A, I32A, I32A, I32A, I32, I32, I32), "finish_step",
                  dependent=dependent)


def finish_step(ids, positions, history, done, step, eos, batch: int, columns: int, stream: int = 0) -> None:
    """After a token per sequence is chosen (``ids``): ``history[b, step] = ids[b]``, ``done[b]`` set where it is
    an end-of-sequence id (``eos``, int32), ``positions[b] += 1`` and ``step += 1`` (a one-element array), all on
    the device so that a captured decode step moves on by itself. One block: ``batch`` <= 1024."""
    threads = max(32, -(-batch // 32) * 32)
    kernel = _finish_step_kernel(grid_dependency_supported())
    kernel((1,), threads, (ids, positions, history, done, step, eos, int(eos.size), batch, columns), stream)


# ----------------------------------------------------------------------------------------------------- expand


@functools.cache
def _expand_kernel(dependent: bool) -> Kernel:
    enter = kernel_entry(dependent)

    @cuda.jit
    def expand_kernel(words, tile_offsets, out, rows, cols, n_tile_cols):
        enter()
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

    return Kernel(expand_kernel, (U32, I32A, U16, I32, I32, I32), "expand", dependent=dependent)


def expand(A, out, stream: int = 0) -> None:
    """The dense (M, K) bits of Tiled-CSL matrix ``A`` into the flat uint16 buffer ``out`` (``M * K`` values)."""
    rows, cols = A.shape
    kernel = _expand_kernel(grid_dependency_supported())
    kernel((A.n_tiles,), EXPAND_THREADS, (A.words, A.tile_offsets, out, rows, cols, A.n_tile_cols), stream)


def _blocks(n: int) -> int:
    return max(1, min(ELEMENTWISE_BLOCKS, -(-n // ELEMENTWISE_THREADS)))
