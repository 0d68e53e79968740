"""Simulator twins of the warpgroup instructions of :mod:`flashllm_nb.kernels.ptx_asm.wgmma`: ``wgmma`` gathers
the 128 threads of its warpgroup (:func:`.rendezvous.collective`), reads both operands from the shared array through
the 128-byte swizzle and adds the product to the accumulators at once. The twin is synchronous, so ``wgmma.fence``,
``commit_group``, ``wait_group`` and ``fence.proxy.async`` have nothing to do.
"""

from __future__ import annotations

import numpy as np

from flashllm_nb.reference.fragments import WARPGROUP, sw128_k_major_operand, wgmma_m64nNk16

from .operands import as_integer, raw_bytes, span
from .rendezvous import collective


def _make_wgmma(n: int, ab: str):
    instruction = f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ab}.{ab}"
    count = n // 2

    def compute(threads):
        arr, a_index, b_index, _ = threads[0]
        raw = raw_bytes(instruction, "arr", arr, "shared")
        itemsize = arr.dtype.itemsize
        base = arr.__array_interface__["data"][0]  # each thread may hold its own view of the block's shared array
        for t, (other, ai, bi, _) in enumerate(threads):
            if other.__array_interface__["data"][0] != base or ai != a_index or bi != b_index:
                raise RuntimeError(f"{instruction}: every thread of the warpgroup must name the same operands; "
                                   f"thread {t} differs from thread 0")
        a_offset = span(instruction, "A", raw, itemsize, a_index, 16)
        b_offset = span(instruction, "B", raw, itemsize, b_index, 16)
        a = sw128_k_major_operand(raw, a_offset, 64)
        b = sw128_k_major_operand(raw, b_offset, n)
        c = np.array([acc for *_, acc in threads], dtype=np.float32)
        return list(wgmma_m64nNk16(a, b, c, ab))

    def twin(arr, a_index, b_index, acc, acc_offset):
        offset = as_integer(instruction, "acc_offset", acc_offset)
        if not isinstance(acc, np.ndarray) or acc.dtype != np.float32 or offset < 0 or offset + count > acc.size:
            raise TypeError(f"{instruction}: acc must be a float32 array with {count} elements from acc_offset "
                            f"{offset}, got {getattr(acc, 'dtype', type(acc).__name__)} of size {np.size(acc)}")
        c = tuple(acc[offset:offset + count])
        d = collective(instruction, (arr, as_integer(instruction, "a_index", a_index),
                                     as_integer(instruction, "b_index", b_index), c), compute, size=WARPGROUP)
        acc[offset:offset + count] = d

    twin.__name__ = twin.__qualname__ = f"wgmma_m64n{n}k16_{ab}"
    twin.__doc__ = (f"Twin of ``{instruction}``: the warpgroup's operands read through the 128-byte swizzle, "
                    "through ``fragments.wgmma_m64nNk16``, at once.")
    return twin


wgmma_m64n8k16_f16 = _make_wgmma(8, "f16")
wgmma_m64n16k16_f16 = _make_wgmma(16, "f16")
wgmma_m64n32k16_f16 = _make_wgmma(32, "f16")
wgmma_m64n64k16_f16 = _make_wgmma(64, "f16")
wgmma_m64n8k16_bf16 = _make_wgmma(8, "bf16")
wgmma_m64n16k16_bf16 = _make_wgmma(16, "bf16")
wgmma_m64n32k16_bf16 = _make_wgmma(32, "bf16")
wgmma_m64n64k16_bf16 = _make_wgmma(64, "bf16")


def wgmma_fence():
    """Twin of ``wgmma.fence.sync.aligned``: nothing to order, the twins are synchronous."""


def wgmma_commit_group():
    """Twin of ``wgmma.commit_group.sync.aligned``: nothing to group, the products are done."""


def wgmma_wait_group(n, acc, count):
    """Twin of ``wgmma.wait_group.sync.aligned n``: nothing to wait for; ``n`` and ``count`` are still checked."""
    if as_integer("wgmma.wait_group", "n", n) < 0:
        raise ValueError(f"wgmma.wait_group: n must be a non-negative integer, got {n}")
    if not 0 < as_integer("wgmma.wait_group", "count", count) <= np.size(acc):
        raise ValueError(f"wgmma.wait_group: count must be in [1, acc.size = {np.size(acc)}], got {count}")


def fence_proxy_async_shared():
    """Twin of ``fence.proxy.async.shared::cta``: the twins read shared memory directly; nothing to make visible."""
