"""What the decoder's kernels (``llm.kernels``, ``llm.attention``) share: dtype converters, argument types, the
entry every kernel begins with, and reductions over a warp and over a block.

Reductions go through shared memory and ``ptx.warp_sync`` (``bar.warp.sync``), which the simulator has a twin
for, rather than warp shuffles, which it has not; within a warp they cost a few shared-memory round trips, and a
block reduction adds only two block barriers to its warp reductions.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, types

from flashllm_nb.kernels import ptx

__all__ = ["WARP", "U16", "U32", "I32A", "F32A", "I32", "F32", "converters", "dtype_name", "bounded_kernel",
           "kernel_entry", "kernel_release", "pair_converter", "warp_reduce", "block_reduce"]

WARP = 32

U16 = types.Array(types.uint16, 1, "C")
U32 = types.Array(types.uint32, 1, "C")
I32A = types.Array(types.int32, 1, "C")
F32A = types.Array(types.float32, 1, "C")
I32, F32 = types.int32, types.float32


def converters(dtype: str):
    """(bits -> float32, float32 -> bits) for ``"float16"`` or ``"bfloat16"``."""
    if dtype == "bfloat16":
        return ptx.bf16_bits_to_f32, ptx.f32_to_bf16_bits
    return ptx.f16_bits_to_f32, ptx.f32_to_f16_bits


def pair_converter(dtype: str):
    """A device function ``pair(word) -> (low, high)``: the two float32 values of one 32-bit word holding two
    ``dtype`` values (the lower address first)."""
    load, _ = converters(dtype)

    @cuda.jit(device=True)
    def pair(word):
        low, high = ptx.unpack_u16x2(word)
        return load(low), load(high)

    return pair


def dtype_name(dtype) -> str:
    """``"bfloat16"`` or ``"float16"``: the key the kernels are built and cached under."""
    return "bfloat16" if np.dtype(dtype).name == "bfloat16" else "float16"


def bounded_kernel(threads: int):
    """``cuda.jit`` with ``threads`` as the kernel's launch bound (PTX ``.maxntid``): ptxas then keeps a thread's
    registers within what a block of that many threads may hold, instead of a launch failing for lack of them.
    The simulator has no launch bounds."""
    return cuda.jit if ptx.SIMULATOR else cuda.jit(launch_bounds=threads)


def _only_if(dependent: bool, instruction):
    """An inlined device function of no arguments that executes ``instruction`` if ``dependent``, else nothing."""
    if dependent:
        @ptx.inlined
        def device_function():
            instruction()
    else:
        @ptx.inlined
        def device_function():
            pass
    return device_function


def kernel_entry(dependent: bool):
    """A device function ``enter()`` that a decoder kernel calls before anything else. Built ``dependent``, it
    waits until the previous kernel in the stream has completed (``griddepcontrol.wait``): launched as that
    kernel's dependent, a decoder kernel's launch and start overlap its predecessor's drain. Otherwise it does
    nothing."""
    return _only_if(dependent, ptx.griddepcontrol_wait)


def kernel_release(dependent: bool):
    """A device function ``release()`` that a decoder kernel calls, in every thread, once its work is done but for
    its last stores. Built ``dependent``, it lets the next kernel in the stream launch
    (``griddepcontrol.launch_dependents``): that kernel's blocks are placed and started (an SpMM kernel streams its
    weights) while this one stores, and they wait for its completion before they read its output. Released at the
    start instead, the next kernel's blocks would sit on the SMs through the whole of this kernel, and behind a
    kernel that does the same through the one before (the cascade measured in docs/e2e-results.md). Otherwise it
    does nothing."""
    return _only_if(dependent, ptx.griddepcontrol_launch_dependents)


def _combiner(op: str):
    if op == "sum":
        @cuda.jit(device=True)
        def combine(a, b):
            return a + b
    else:
        @cuda.jit(device=True)
        def combine(a, b):
            return a if a >= b else b
    return combine


def warp_reduce(op: str):
    """A device function ``reduce(scratch, value, t)``: the sum or max (``op``) of ``value`` over thread ``t``'s
    warp, returned to each of its lanes. ``scratch`` is a float32 shared array with a slot per thread of the block;
    every lane of the warp must call it."""
    combine = _combiner(op)

    @cuda.jit(device=True)
    def reduce(scratch, value, t):
        lane = t % WARP
        scratch[t] = value
        ptx.warp_sync()
        stride = WARP // 2
        while stride > 0:
            if lane < stride:
                scratch[t] = combine(scratch[t], scratch[t + stride])
            ptx.warp_sync()
            stride //= 2
        total = scratch[t - lane]
        ptx.warp_sync()
        return total

    return reduce


def block_reduce(threads: int, op: str):
    """A device function ``reduce(scratch, value, t)``: the sum or max of ``value`` over the block's ``threads``
    threads (a multiple of 32), returned to every thread. ``scratch`` is a float32 shared array of ``threads``."""
    combine = _combiner(op)
    in_warp = warp_reduce(op)
    warps = threads // WARP

    @cuda.jit(device=True)
    def reduce(scratch, value, t):
        in_warp(scratch, value, t)  # each warp's total now sits in its first slot
        cuda.syncthreads()
        total = scratch[0]
        for w in range(1, warps):
            total = combine(total, scratch[w * WARP])
        cuda.syncthreads()  # the next reduction may overwrite scratch
        return total

    return reduce
