"""Python twins of :mod:`flashllm_nb.kernels.ptx_asm`, bound by :mod:`flashllm_nb.kernels.ptx` when Numba's CUDA
simulator is on. Same names, arguments and results (NumPy scalars of the same dtypes); see ``ptx_asm`` for what each
instruction does.

The simulator runs every thread of a block as a Python thread (``numba.cuda.simulator.kernel.BlockThread``, all of
a block's threads at once, blocks one after another) and knows nothing of warps. So:

- a warp-collective instruction (``mma``, ``ldmatrix``) gathers the 32 lanes of its warp at a rendezvous keyed by
  (block, ``thread_id // 32``); the last lane to arrive runs the lane-level emulator
  :mod:`flashllm_nb.reference.fragments` once for the whole warp, and every lane takes its own result;
- ``wgmma`` gathers the 128 threads of its warpgroup the same way, reads both operands from the shared array
  through the 128-byte swizzle and adds the product to the accumulators at once: the twin is synchronous, so
  ``wgmma.fence``, ``commit_group``, ``wait_group`` and ``fence.proxy.async`` have nothing to do;
- ``cp.async`` is a synchronous copy, so ``commit_group`` and ``wait_group`` have nothing to do;
- everything else is element-wise NumPy on the bit patterns.

The twins also refuse what would be undefined on the GPU (a misaligned row, ``ldmatrix`` from a kernel argument,
``cp.async`` into one, a warp whose lanes are not all at the same collective), naming the instruction, so that a
kernel bug fails in CI rather than on the first GPU run.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray, FakeWithinKernelCUDAArray
from numba.cuda.simulator.kernel import BlockThread

from flashllm_nb.reference.fragments import (
    WARP,
    WARPGROUP,
    ldmatrix,
    mma_m16n8k16,
    sw128_k_major_operand,
    wgmma_m64nNk16,
)

__all__ = [
    "shared_addr",
    "mma_m16n8k16_f16",
    "mma_m16n8k16_bf16",
    "ldmatrix_x1",
    "ldmatrix_x2",
    "ldmatrix_x4",
    "ldmatrix_x1_trans",
    "ldmatrix_x2_trans",
    "ldmatrix_x4_trans",
    "cp_async_16",
    "cp_async_commit",
    "cp_async_wait_group",
    "cp_async_wait_all",
    "ld_global_nc_v4_u32",
    "st_shared_v4_u32",
    "pack_u16x2",
    "unpack_u16x2",
    "f32_to_f16_bits",
    "f32_to_bf16_bits",
    "f16_bits_to_f32",
    "bf16_bits_to_f32",
    "wgmma_m64n8k16_f16",
    "wgmma_m64n16k16_f16",
    "wgmma_m64n32k16_f16",
    "wgmma_m64n64k16_f16",
    "wgmma_m64n8k16_bf16",
    "wgmma_m64n16k16_bf16",
    "wgmma_m64n32k16_bf16",
    "wgmma_m64n64k16_bf16",
    "wgmma_fence",
    "wgmma_commit_group",
    "wgmma_wait_group",
    "fence_proxy_async_shared",
    "warp_sync",
    "mbarrier_init",
    "mbarrier_arrive",
    "mbarrier_wait_parity",
]


# --- argument checks, mirroring the typing errors of ptx_asm ---------------------------------------------------------


def _integer(instruction: str, name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{instruction}: {name} must be an integer, got {type(value).__name__}")
    return int(value)


def _float32(instruction: str, name: str, value) -> np.float32:
    if not isinstance(value, np.float32):
        raise TypeError(
            f"{instruction}: {name} must be a float32 (write np.float32(x); a Python float is float64), "
            f"got {type(value).__name__}"
        )
    return value


def _device_array(value) -> np.ndarray | None:
    """The NumPy array behind a kernel argument as the simulator passes it, or None if ``value`` is not one."""
    if isinstance(value, FakeWithinKernelCUDAArray):
        value = value.__dict__["_item"]
    return value._ary if isinstance(value, FakeCUDAArray) else None


def _raw_bytes(instruction: str, name: str, value, space: str) -> np.ndarray:
    """The bytes of a ``space`` array ("shared": a NumPy array, "global": a kernel argument), as a flat uint8 view."""
    device = _device_array(value)
    if space == "global" and device is None:
        raise TypeError(f"{instruction}: {name} must be a device array (a kernel argument), got {type(value).__name__}")
    if space == "shared" and (device is not None or not isinstance(value, np.ndarray)):
        raise TypeError(f"{instruction}: {name} must be a cuda.shared.array, got a device array (kernel argument)")
    array = value if device is None else device
    if not array.flags.c_contiguous:
        raise TypeError(f"{instruction}: {name} must be C-contiguous, got strides {array.strides}")
    return array.reshape(-1).view(np.uint8)


def _span(instruction: str, name: str, raw: np.ndarray, itemsize: int, index, nbytes: int, align: int = 16):
    """The byte offset of flat element ``index``, checked to be ``align``-aligned with ``nbytes`` bytes in bounds."""
    offset = _integer(instruction, f"{name} index", index) * itemsize
    if offset % align or offset < 0 or offset + nbytes > raw.size:
        raise IndexError(
            f"{instruction}: {name} must address {nbytes} bytes, {align}-byte aligned, inside its {raw.size} bytes; "
            f"got byte offset {offset}"
        )
    return offset


def _itemsize(value) -> int:
    device = _device_array(value)
    return (value if device is None else device).dtype.itemsize


# --- the per-warp rendezvous -----------------------------------------------------------------------------------------

_POLL_S = 0.25  # how often a waiting lane checks that its warp can still arrive
_GONE_S = 2.0  # a missing lane absent (no live thread, or at a barrier) this long has exited or is stuck


class _Rendezvous:
    """Where the threads of one simulated warp (32) or warpgroup (128) meet at each collective instruction.

    Reusable by construction: a generation counter tells a waiting lane that its round is over, and the next round
    cannot complete (and overwrite the results) before every lane, the slowest included, has come back for it.
    """

    def __init__(self, group: int, size: int):
        self._group = group
        self._size = size
        self._name = f"{'warp' if size == WARP else 'warpgroup'} {group}"
        self._condition = threading.Condition()
        self._generation = 0
        self._arrived: dict[int, tuple] = {}  # lane -> (instruction, args, compute)
        self._results: list | BaseException = []

    def exchange(self, lane: int, instruction: str, args: tuple, compute):
        with self._condition:
            generation = self._generation
            self._arrived[lane] = (instruction, args, compute)
            if len(self._arrived) == self._size:
                self._results = self._run(self._arrived)
                self._arrived = {}
                self._generation += 1
                self._condition.notify_all()
            else:
                waited = 0.0
                while self._generation == generation:
                    if self._condition.wait(_POLL_S):
                        continue
                    waited += _POLL_S
                    # The round may have completed between the timeout and this lane taking the lock back (then
                    # the lanes are no longer "missing"): test again before looking for lanes that cannot come.
                    if self._generation == generation:
                        self._check_progress(instruction, waited)
            results = self._results
        if isinstance(results, BaseException):
            raise type(results)(*results.args)
        return results[lane]

    def _run(self, arrived: dict):
        """All lanes' results from one call of the emulator, or the exception every lane will raise."""
        names = {instruction for instruction, _, _ in arrived.values()}
        if len(names) > 1:
            by_name = {n: sorted(lane for lane, (i, _, _) in arrived.items() if i == n) for n in sorted(names)}
            return RuntimeError(
                f"{self._name} diverged at a collective instruction; lanes by instruction: {by_name}"
            )
        compute = arrived[0][2]
        try:
            return compute([arrived[lane][1] for lane in range(self._size)])
        except Exception as error:  # every lane re-raises it
            return error

    def _check_progress(self, instruction: str, waited: float) -> None:
        """Raise instead of hanging when the missing lanes can never arrive (the GPU would hang or be undefined)."""
        me = threading.current_thread()
        if me.abort:  # another thread of the block failed; the kernel is over
            raise RuntimeError(f"{instruction}: aborted because another thread of the block raised")
        threads = {
            t.thread_id % self._size: t
            for t in threading.enumerate()
            if isinstance(t, BlockThread) and t._manager is me._manager and t.thread_id // self._size == self._group
        }
        if waited < _GONE_S:
            # A lane just released from a barrier keeps its "blocked" flag until it next holds the GIL, which with
            # 128-256 Python threads can take longer than one poll: only a lane stuck this long is reported.
            return
        missing = [lane for lane in range(self._size) if lane not in self._arrived]
        at_barrier = [lane for lane in missing if lane in threads and threads[lane].syncthreads_blocked]
        exited = [lane for lane in missing if lane not in threads]
        if at_barrier or exited:
            raise RuntimeError(
                f"{instruction}: every lane of {self._name} must execute it, but lanes {at_barrier} wait at "
                f"syncthreads and lanes {exited} have exited"
            )


_RENDEZVOUS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # BlockManager -> {(size, group): _Rendezvous}
_RENDEZVOUS_LOCK = threading.Lock()


def _collective(instruction: str, args: tuple, compute, size: int = WARP):
    """Run ``compute(per_lane_args) -> per_lane_results`` once for the calling thread's warp (``size`` 32) or
    warpgroup (128); return this lane's."""
    thread = threading.current_thread()
    if not isinstance(thread, BlockThread):
        raise RuntimeError(f"{instruction}: called outside a kernel running in the CUDA simulator")
    manager, group, lane = thread._manager, thread.thread_id // size, thread.thread_id % size
    threads_in_block = int(np.prod(manager._block_dim))
    if (group + 1) * size > threads_in_block:
        unit, what = ("lanes", "warp") if size == WARP else ("threads", "warpgroup")
        raise RuntimeError(
            f"{instruction}: needs all {size} {unit} of a {what}{'' if size == WARP else ' (4 warps)'}, but a block of "
            f"{threads_in_block} threads leaves {what} {group} with {threads_in_block - group * size}"
        )
    with _RENDEZVOUS_LOCK:
        groups = _RENDEZVOUS.setdefault(manager, {})
        rendezvous = groups.get((size, group))
        if rendezvous is None:
            rendezvous = groups[size, group] = _Rendezvous(group, size)
    return rendezvous.exchange(lane, instruction, args, compute)


# --- shared_addr -----------------------------------------------------------------------------------------------------


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
    raw = _raw_bytes("cvta.to.shared", "arr", arr, "shared")
    itemsize = arr.dtype.itemsize
    return SharedAddress(arr, _span("cvta.to.shared", "arr", raw, itemsize, index, itemsize, align=itemsize))


# --- mma ------------------------------------------------------------------------------------------------------------


def _make_mma(ab: str):
    instruction = f"mma.sync.aligned.m16n8k16.row.col.f32.{ab}.{ab}.f32"

    def compute(lanes):
        a = np.array([args[0:4] for args in lanes], dtype=np.uint32)
        b = np.array([args[4:6] for args in lanes], dtype=np.uint32)
        c = np.array([args[6:10] for args in lanes], dtype=np.float32)
        d = mma_m16n8k16(a, b, c, ab)
        return [tuple(row) for row in d]

    def twin(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        ab_regs = tuple(
            _integer(instruction, name, v) & 0xFFFFFFFF
            for name, v in zip(("a0", "a1", "a2", "a3", "b0", "b1"), (a0, a1, a2, a3, b0, b1))
        )
        c_regs = tuple(_float32(instruction, name, v) for name, v in zip(("c0", "c1", "c2", "c3"), (c0, c1, c2, c3)))
        return _collective(instruction, ab_regs + c_regs, compute)

    twin.__name__ = twin.__qualname__ = f"mma_m16n8k16_{ab}"
    twin.__doc__ = f"Twin of ``{instruction}``: the warp's fragments through ``fragments.mma_m16n8k16``."
    return twin


mma_m16n8k16_f16 = _make_mma("f16")
mma_m16n8k16_bf16 = _make_mma("bf16")


# --- ldmatrix -------------------------------------------------------------------------------------------------------


def _make_ldmatrix(num: int, trans: bool):
    instruction = f"ldmatrix.sync.aligned.m8n8.x{num}{'.trans' if trans else ''}.shared.b16"

    def compute(lanes):
        rows = np.zeros((WARP, 8), np.uint16)  # lanes past 8 * num supply no row
        for lane in range(8 * num):
            arr, index = lanes[lane]
            raw = _raw_bytes(instruction, f"arr of lane {lane}", arr, "shared")
            offset = _span(instruction, f"the row of lane {lane}", raw, arr.dtype.itemsize, index, 16)
            rows[lane] = raw[offset : offset + 16].view(np.uint16)
        regs = ldmatrix(rows, np.arange(WARP) * 8, num, trans)
        if num == 1:
            return list(regs[:, 0])
        return [tuple(row) for row in regs]

    def twin(arr, index):
        return _collective(instruction, (arr, _integer(instruction, "index", index)), compute)

    twin.__name__ = twin.__qualname__ = f"ldmatrix_x{num}{'_trans' if trans else ''}"
    twin.__doc__ = f"Twin of ``{instruction}``: the rows the lanes name, through ``fragments.ldmatrix``."
    return twin


ldmatrix_x1 = _make_ldmatrix(1, False)
ldmatrix_x2 = _make_ldmatrix(2, False)
ldmatrix_x4 = _make_ldmatrix(4, False)
ldmatrix_x1_trans = _make_ldmatrix(1, True)
ldmatrix_x2_trans = _make_ldmatrix(2, True)
ldmatrix_x4_trans = _make_ldmatrix(4, True)


# --- cp.async and ld.global.nc --------------------------------------------------------------------------------------


def cp_async_16(dst_arr, dst_index, src_arr, src_index, src_bytes):
    """Twin of ``cp.async.cg.shared.global [dst], [src], 16, src_bytes``: a synchronous copy of ``src_bytes`` bytes
    followed by zeros. With ``src_bytes == 0`` the source is not read (nor its index checked), as on the GPU."""
    instruction = "cp.async.cg.shared.global"
    size = _integer(instruction, "src_bytes", src_bytes)
    if not 0 <= size <= 16:
        raise ValueError(f"{instruction}: src_bytes must be in [0, 16], got {size}")
    dst = _raw_bytes(instruction, "dst_arr", dst_arr, "shared")
    d = _span(instruction, "dst", dst, _itemsize(dst_arr), dst_index, 16)
    if size:
        src = _raw_bytes(instruction, "src_arr", src_arr, "global")
        s = _span(instruction, "src", src, _itemsize(src_arr), src_index, size)
        dst[d : d + size] = src[s : s + size]
    dst[d + size : d + 16] = 0


def cp_async_commit():
    """Twin of ``cp.async.commit_group``: nothing to do, the copies are already done."""


def cp_async_wait_group(n):
    """Twin of ``cp.async.wait_group n``: nothing to wait for; ``n`` is still checked."""
    if _integer("cp.async.wait_group", "n", n) < 0:
        raise ValueError(f"cp.async.wait_group: n must be a non-negative integer, got {n}")


def cp_async_wait_all():
    """Twin of ``cp.async.wait_all``: nothing to wait for."""


def ld_global_nc_v4_u32(arr, index):
    """Twin of ``ld.global.nc.L1::no_allocate.v4.u32``: four uint32 of a device array, 16-byte aligned."""
    instruction = "ld.global.nc.L1::no_allocate.v4.u32"
    raw = _raw_bytes(instruction, "arr", arr, "global")
    if _device_array(arr).dtype != np.uint32:
        raise TypeError(f"{instruction}: the dtype of arr must be uint32, got {_device_array(arr).dtype}")
    offset = _span(instruction, "arr", raw, 4, index, 16)
    return tuple(raw[offset : offset + 16].view(np.uint32))


def st_shared_v4_u32(arr, index, w0, w1, w2, w3):
    """Twin of ``st.shared.v4.u32``: the low 32 bits of four integers into 16 aligned bytes of a shared array."""
    instruction = "st.shared.v4.u32"
    raw = _raw_bytes(instruction, "arr", arr, "shared")
    offset = _span(instruction, "arr", raw, arr.dtype.itemsize, index, 16)
    words = [_integer(instruction, name, w) & 0xFFFFFFFF for name, w in zip(("w0", "w1", "w2", "w3"), (w0, w1, w2, w3))]
    raw[offset : offset + 16] = np.array(words, dtype=np.uint32).view(np.uint8)


# --- packing and conversions ----------------------------------------------------------------------------------------


def pack_u16x2(lo, hi):
    """Twin of ``mov.b32 d, {lo, hi}``: ``lo | hi << 16`` of the low 16 bits of each, as uint32."""
    lo = _integer("mov.b32 (pack)", "lo", lo) & 0xFFFF
    hi = _integer("mov.b32 (pack)", "hi", hi) & 0xFFFF
    return np.uint32(lo | hi << 16)


def unpack_u16x2(x):
    """Twin of ``mov.b32 {lo, hi}, x``: the two halves of the low 32 bits, as uint16."""
    x = _integer("mov.b32 (unpack)", "x", x) & 0xFFFFFFFF
    return np.uint16(x & 0xFFFF), np.uint16(x >> 16)


# What the hardware gives for any NaN (seen on an H200, sm_90; the CUDA headers' host conversions agree for f16/bf16).
_CANONICAL_NAN16 = np.uint16(0x7FFF)
_CANONICAL_NAN32 = np.uint32(0x7FFFFFFF).view(np.float32)


def f32_to_f16_bits(x):
    """Twin of ``cvt.rn.f16.f32``: NumPy's round-to-nearest-even cast (overflow to Inf); NaN gives 0x7FFF."""
    x = _float32("cvt.rn.f16.f32", "x", x)
    if np.isnan(x):
        return _CANONICAL_NAN16
    with np.errstate(over="ignore"):
        return np.float16(x).view(np.uint16)


def f32_to_bf16_bits(x):
    """Twin of ``cvt.rn.bf16.f32``: round to nearest even on the bits (overflow to Inf); NaN gives 0x7FFF."""
    x = _float32("cvt.rn.bf16.f32", "x", x)
    if np.isnan(x):
        return _CANONICAL_NAN16
    bits = int(x.view(np.uint32))
    # Adding 0x7FFF plus the lowest kept bit rounds the dropped 16 bits half-to-even; a carry into the exponent is
    # the right rounding too, up to Inf for values that round above the largest bf16.
    return np.uint16((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)


def f16_bits_to_f32(b):
    """Twin of ``cvt.f32.f16``: the exact float32 value of the low 16 bits, read as f16; NaN gives 0x7FFFFFFF."""
    value = np.float32(np.uint16(_integer("cvt.f32.f16", "b", b) & 0xFFFF).view(np.float16))
    return _CANONICAL_NAN32 if np.isnan(value) else value


def bf16_bits_to_f32(b):
    """Twin of the bf16-to-float32 shift: the low 16 bits become the high half of a float32."""
    bits = np.uint32((_integer("bf16 to f32 (shl 16)", "b", b) & 0xFFFF) << 16)
    return bits.view(np.float32)


# --- wgmma -------------------------------------------------------------------------------------------------------------


def _make_wgmma(n: int, ab: str):
    instruction = f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ab}.{ab}"
    count = n // 2

    def compute(threads):
        arr, a_index, b_index, _ = threads[0]
        raw = _raw_bytes(instruction, "arr", arr, "shared")
        itemsize = arr.dtype.itemsize
        base = arr.__array_interface__["data"][0]  # each thread may hold its own view of the block's shared array
        for t, (other, ai, bi, _) in enumerate(threads):
            if other.__array_interface__["data"][0] != base or ai != a_index or bi != b_index:
                raise RuntimeError(f"{instruction}: every thread of the warpgroup must name the same operands; "
                                   f"thread {t} differs from thread 0")
        a_offset = _span(instruction, "A", raw, itemsize, a_index, 16)
        b_offset = _span(instruction, "B", raw, itemsize, b_index, 16)
        a = sw128_k_major_operand(raw, a_offset, 64)
        b = sw128_k_major_operand(raw, b_offset, n)
        c = np.array([acc for *_, acc in threads], dtype=np.float32)
        return list(wgmma_m64nNk16(a, b, c, ab))

    def twin(arr, a_index, b_index, acc, acc_offset):
        offset = _integer(instruction, "acc_offset", acc_offset)
        if not isinstance(acc, np.ndarray) or acc.dtype != np.float32 or offset < 0 or offset + count > acc.size:
            raise TypeError(f"{instruction}: acc must be a float32 array with {count} elements from acc_offset "
                            f"{offset}, got {getattr(acc, 'dtype', type(acc).__name__)} of size {np.size(acc)}")
        c = tuple(acc[offset:offset + count])
        d = _collective(instruction, (arr, _integer(instruction, "a_index", a_index),
                                      _integer(instruction, "b_index", b_index), c), compute, size=WARPGROUP)
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
    if _integer("wgmma.wait_group", "n", n) < 0:
        raise ValueError(f"wgmma.wait_group: n must be a non-negative integer, got {n}")
    if not 0 < _integer("wgmma.wait_group", "count", count) <= np.size(acc):
        raise ValueError(f"wgmma.wait_group: count must be in [1, acc.size = {np.size(acc)}], got {count}")


def fence_proxy_async_shared():
    """Twin of ``fence.proxy.async.shared::cta``: the twins read shared memory directly; nothing to make visible."""


def warp_sync():
    """Twin of ``bar.warp.sync -1``: the warp's 32 lanes meet (a lane that never arrives is reported)."""
    _collective("bar.warp.sync", (), lambda lanes: [None] * len(lanes))


# --- mbarrier ---------------------------------------------------------------------------------------------------------
# The barrier lives in its 8 shared bytes, as on the GPU: word 0 the arrivals still missing in the current phase,
# word 1 the expected arrivals per phase (bits 0-30) and the current phase's parity (bit 31). One condition guards
# every simulated mbarrier (arrivals are atomic) and wakes the waiters when a phase completes.

_MBARRIER = threading.Condition()
_MBARRIER_WAITERS: set = set()  # threads inside mbarrier_wait_parity, for the deadlock check


def _mbarrier_words(instruction: str, arr, index) -> np.ndarray:
    raw = _raw_bytes(instruction, "arr", arr, "shared")
    offset = _span(instruction, "arr", raw, arr.dtype.itemsize, index, 8, align=8)
    return raw[offset : offset + 8].view(np.uint32)


def mbarrier_init(arr, index, count):
    """Twin of ``mbarrier.init.shared.b64``: phase 0 (parity 0) awaits ``count`` arrivals (1 .. 2**20 - 1)."""
    instruction = "mbarrier.init.shared.b64"
    count = _integer(instruction, "count", count)
    if not 0 < count < 1 << 20:
        raise ValueError(f"{instruction}: count must be in [1, 2**20 - 1], got {count}")
    words = _mbarrier_words(instruction, arr, index)
    with _MBARRIER:
        words[0], words[1] = count, count


def mbarrier_arrive(arr, index):
    """Twin of ``mbarrier.arrive.shared.b64``: one arrival; the last one of a phase flips its parity and re-arms it."""
    instruction = "mbarrier.arrive.shared.b64"
    words = _mbarrier_words(instruction, arr, index)
    with _MBARRIER:
        count = int(words[1]) & 0x7FFFFFFF
        if count == 0 or not 0 < int(words[0]) <= count:
            raise RuntimeError(f"{instruction}: the barrier at byte {index * arr.dtype.itemsize} is not initialized")
        words[0] -= 1
        if words[0] == 0:
            words[0] = count
            words[1] ^= np.uint32(1 << 31)
            _MBARRIER.notify_all()


def mbarrier_wait_parity(arr, index, parity):
    """Twin of the ``mbarrier.test_wait.parity`` loop: block until the current phase's parity differs from
    ``parity``. Raises instead of hanging when no thread of the block that could still arrive is running."""
    instruction = "mbarrier.test_wait.parity.shared.b64"
    parity = _integer(instruction, "parity", parity)
    if parity not in (0, 1):
        raise ValueError(f"{instruction}: parity must be 0 or 1, got {parity}")
    words = _mbarrier_words(instruction, arr, index)
    me = threading.current_thread()
    waited = 0.0
    with _MBARRIER:
        _MBARRIER_WAITERS.add(me)
        try:
            while int(words[1]) >> 31 == parity:
                if _MBARRIER.wait(_POLL_S):
                    continue
                waited += _POLL_S
                # Test the phase again first: the last arrival may have come between the timeout and this thread
                # taking the lock back, and the threads it woke still count as waiters until they run.
                if waited >= _GONE_S and int(words[1]) >> 31 == parity:
                    _check_mbarrier_progress(instruction, me)
        finally:
            _MBARRIER_WAITERS.discard(me)


def _check_mbarrier_progress(instruction: str, me) -> None:
    """The phase can still complete only if some other thread of the block is running (not at a syncthreads, not
    waiting on an mbarrier itself)."""
    if getattr(me, "abort", False):
        raise RuntimeError(f"{instruction}: aborted because another thread of the block raised")
    running = [
        t for t in threading.enumerate()
        if isinstance(t, BlockThread) and t._manager is me._manager and t is not me
        and not t.syncthreads_blocked and t not in _MBARRIER_WAITERS
    ]
    if not running:
        raise RuntimeError(f"{instruction}: the phase cannot complete: every other thread of the block waits at "
                           "syncthreads or on an mbarrier, or has exited")
