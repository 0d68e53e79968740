"""Simulator twins of the memory instructions of :mod:`flashllm_nb.kernels.ptx_asm.memory`: ``shared_addr``,
``cp.async`` (a synchronous copy, so its commit and waits have nothing to do), ``ld.global.nc`` and
``st.shared.v4``, on the bytes of the arrays.
"""

from __future__ import annotations

import numpy as np

from .operands import as_integer, device_array, element_size, raw_bytes, span


class SharedAddress(int):
    """What ``shared_addr`` gives in the simulator: the byte offset of the element in its array (an ``int``, so
    arithmetic and printing work), with the array in ``.array``. It is not a hardware address."""

    array: np.ndarray

    def __new__(cls, array: np.ndarray, offset: int):
        self = super().__new__(cls, offset)
        self.array = array
        return self


def shared_addr(arr, index):
    """Twin of ``cvta.to.shared``: a :class:`SharedAddress` (byte offset of ``arr[index]`` plus the array)."""
    raw = raw_bytes("cvta.to.shared", "arr", arr, "shared")
    itemsize = arr.dtype.itemsize
    return SharedAddress(arr, span("cvta.to.shared", "arr", raw, itemsize, index, itemsize, align=itemsize))


def cp_async_16(dst_arr, dst_index, src_arr, src_index, src_bytes):
    """Twin of ``cp.async.cg.shared.global [dst], [src], 16, src_bytes``: a synchronous copy of ``src_bytes`` bytes
    followed by zeros. With ``src_bytes == 0`` the source is not read (nor its index checked), as on the GPU."""
    instruction = "cp.async.cg.shared.global"
    size = as_integer(instruction, "src_bytes", src_bytes)
    if not 0 <= size <= 16:
        raise ValueError(f"{instruction}: src_bytes must be in [0, 16], got {size}")
    dst = raw_bytes(instruction, "dst_arr", dst_arr, "shared")
    d = span(instruction, "dst", dst, element_size(dst_arr), dst_index, 16)
    if size:
        src = raw_bytes(instruction, "src_arr", src_arr, "global")
        s = span(instruction, "src", src, element_size(src_arr), src_index, size)
        dst[d : d + size] = src[s : s + size]
    dst[d + size : d + 16] = 0


def cp_async_commit():
    """Twin of ``cp.async.commit_group``: nothing to do, the copies are already done."""


def cp_async_wait_group(n):
    """Twin of ``cp.async.wait_group n``: nothing to wait for; ``n`` is still checked."""
    if as_integer("cp.async.wait_group", "n", n) < 0:
        raise ValueError(f"cp.async.wait_group: n must be a non-negative integer, got {n}")


def cp_async_wait_all():
    """Twin of ``cp.async.wait_all``: nothing to wait for."""


def ld_global_nc_v4_u32(arr, index):
    """Twin of ``ld.global.nc.L1::no_allocate.v4.u32``: four uint32 of a device array, 16-byte aligned."""
    instruction = "ld.global.nc.L1::no_allocate.v4.u32"
    raw = raw_bytes(instruction, "arr", arr, "global")
    if device_array(arr).dtype != np.uint32:
        raise TypeError(f"{instruction}: the dtype of arr must be uint32, got {device_array(arr).dtype}")
    offset = span(instruction, "arr", raw, 4, index, 16)
    return tuple(raw[offset : offset + 16].view(np.uint32))


def st_shared_v4_u32(arr, index, w0, w1, w2, w3):
    """Twin of ``st.shared.v4.u32``: the low 32 bits of four integers into 16 aligned bytes of a shared array."""
    instruction = "st.shared.v4.u32"
    raw = raw_bytes(instruction, "arr", arr, "shared")
    offset = span(instruction, "arr", raw, arr.dtype.itemsize, index, 16)
    words = [as_integer(instruction, name, w) & 0xFFFFFFFF
             for name, w in zip(("w0", "w1", "w2", "w3"), (w0, w1, w2, w3))]
    raw[offset : offset + 16] = np.array(words, dtype=np.uint32).view(np.uint8)
