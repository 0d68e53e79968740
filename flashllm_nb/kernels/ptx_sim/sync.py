"""Simulator twins of the synchronization instructions of :mod:`flashllm_nb.kernels.ptx_asm.sync`:
``bar.warp.sync`` (a rendezvous of the warp's lanes), the ``mbarrier`` barriers, ``griddepcontrol`` and the
acquire-release ``atom.add`` (an add under a lock: the simulator's threads see every write at once).

The barrier lives in its 8 shared bytes, as on the GPU: word 0 the arrivals still missing in the current phase,
word 1 the expected arrivals per phase (bits 0-30) and the current phase's parity (bit 31). One condition per block
(``rendezvous.new_condition``) guards its mbarriers (arrivals are atomic) and wakes the waiters when a phase
completes. A wait that no running
thread can end raises instead of hanging, timed by ``rendezvous.POLL_S`` and ``rendezvous.GONE_S``.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
from numba.cuda.simulator.kernel import BlockThread

from . import rendezvous
from .operands import as_integer, device_array, raw_bytes, span
from .rendezvous import collective


def warp_sync():
    """Twin of ``bar.warp.sync -1``: the warp's 32 lanes meet (a lane that never arrives is reported)."""
    collective("bar.warp.sync", (), lambda lanes: [None] * len(lanes))


_MBARRIER_WAITERS: set = set()  # threads inside mbarrier_wait_parity, for the deadlock check
_MBARRIER_CONDITIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # BlockManager -> its condition
_MBARRIER_CONDITIONS_LOCK = threading.Lock()


def _mbarrier_condition(instruction: str) -> threading.Condition:
    """The condition that guards every mbarrier of the calling thread's block (arrivals are atomic under it) and
    wakes its waiters when a phase completes."""
    thread = threading.current_thread()
    if not isinstance(thread, BlockThread):
        raise RuntimeError(f"{instruction}: called outside a kernel running in the CUDA simulator")
    with _MBARRIER_CONDITIONS_LOCK:
        condition = _MBARRIER_CONDITIONS.get(thread._manager)
        if condition is None:
            condition = _MBARRIER_CONDITIONS[thread._manager] = rendezvous.new_condition()
    return condition


def _mbarrier_words(instruction: str, arr, index) -> np.ndarray:
    raw = raw_bytes(instruction, "arr", arr, "shared")
    offset = span(instruction, "arr", raw, arr.dtype.itemsize, index, 8, align=8)
    return raw[offset : offset + 8].view(np.uint32)


def mbarrier_init(arr, index, count):
    """Twin of ``mbarrier.init.shared.b64``: phase 0 (parity 0) awaits ``count`` arrivals (1 .. 2**20 - 1)."""
    instruction = "mbarrier.init.shared.b64"
    count = as_integer(instruction, "count", count)
    if not 0 < count < 1 << 20:
        raise ValueError(f"{instruction}: count must be in [1, 2**20 - 1], got {count}")
    words = _mbarrier_words(instruction, arr, index)
    with _mbarrier_condition(instruction):
        words[0], words[1] = count, count


def mbarrier_arrive(arr, index):
    """Twin of ``mbarrier.arrive.shared.b64``: one arrival; the last one of a phase flips its parity and re-arms it."""
    instruction = "mbarrier.arrive.shared.b64"
    words = _mbarrier_words(instruction, arr, index)
    condition = _mbarrier_condition(instruction)
    with condition:
        count = int(words[1]) & 0x7FFFFFFF
        if count == 0 or not 0 < int(words[0]) <= count:
            raise RuntimeError(f"{instruction}: the barrier at byte {index * arr.dtype.itemsize} is not initialized")
        words[0] -= 1
        if words[0] == 0:
            words[0] = count
            words[1] ^= np.uint32(1 << 31)
            condition.notify_all()


def mbarrier_wait_parity(arr, index, parity):
    """Twin of the ``mbarrier.test_wait.parity`` loop: block until the current phase's parity differs from
    ``parity``. Raises instead of hanging when no thread of the block that could still arrive is running."""
    instruction = "mbarrier.test_wait.parity.shared.b64"
    parity = as_integer(instruction, "parity", parity)
    if parity not in (0, 1):
        raise ValueError(f"{instruction}: parity must be 0 or 1, got {parity}")
    words = _mbarrier_words(instruction, arr, index)
    me = threading.current_thread()
    waited = 0.0
    condition = _mbarrier_condition(instruction)
    with condition:
        _MBARRIER_WAITERS.add(me)
        try:
            while int(words[1]) >> 31 == parity:
                if condition.wait(rendezvous.POLL_S):
                    continue
                waited += rendezvous.POLL_S
                # Test the phase again first: the last arrival may have come between the timeout and this thread
                # taking the lock back, and the threads it woke still count as waiters until they run.
                if waited >= rendezvous.GONE_S and int(words[1]) >> 31 == parity:
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


def griddepcontrol_wait():
    """Twin of ``griddepcontrol.wait``: the simulator runs one kernel at a time, so the grids before this one are
    complete."""


def griddepcontrol_launch_dependents():
    """Twin of ``griddepcontrol.launch_dependents``: the simulator starts the next kernel after this one ends."""


_ATOMIC = threading.Lock()


def atom_add_acq_rel_gpu(arr, index, value) -> np.int32:
    """Twin of ``atom.acq_rel.gpu.global.add.u32``: add ``value`` to ``arr[index]`` (an int32 array, wrapping as
    the GPU's 32-bit add does) and return the old value."""
    instruction = "atom.acq_rel.gpu.global.add.u32"
    raw = raw_bytes(instruction, "arr", arr, "global")
    if device_array(arr).dtype != np.int32:
        raise TypeError(f"{instruction}: the dtype of arr must be int32, got {device_array(arr).dtype}")
    i = span(instruction, "arr", raw, 4, index, 4, align=4) // 4
    v = as_integer(instruction, "value", value)
    words = raw.view(np.int32)
    with _ATOMIC:
        old = words[i]
        words[i] = np.int32((int(old) + v + 2**31) % 2**32 - 2**31)
    return np.int32(old)

