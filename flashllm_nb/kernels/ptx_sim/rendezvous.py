"""Where the simulated threads of one warp (32) or warpgroup (128) meet at a collective instruction.

The simulator runs every thread of a block as a Python thread (``numba.cuda.simulator.kernel.BlockThread``, all of
a block's threads at once, blocks one after another) and knows nothing of warps. :func:`collective` gathers the
lanes of the calling thread's warp at a rendezvous keyed by (block, ``thread_id // size``); the last lane to arrive
computes every lane's result at once, and each lane takes its own. A lane that can never arrive (exited, or waiting
at a ``syncthreads``) is reported instead of left to hang.

``POLL_S`` and ``GONE_S`` time that check here and in the mbarrier twins (:mod:`.sync` reads them through this
module, so that a test may shorten both at once). Every condition a simulated thread waits on (here and in
:mod:`.sync`) is made by :func:`new_condition`, which a test may replace to delay wake-ups and so widen the races
those waits must survive.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
from numba.cuda.simulator.kernel import BlockThread

from flashllm_nb.reference.fragments import WARP


POLL_S = 0.25  # how often a waiting lane checks that its warp can still arrive
GONE_S = 2.0  # a missing lane absent (no live thread, or at a barrier) this long has exited or is stuck


def new_condition() -> threading.Condition:
    """The condition of one rendezvous, or of one block's mbarriers: made when a launch first needs it."""
    return threading.Condition()


class Rendezvous:
    """Where the threads of one simulated warp (32) or warpgroup (128) meet at each collective instruction.

    Reusable by construction: a generation counter tells a waiting lane that its round is over, and the next round
    cannot complete (and overwrite the results) before every lane, the slowest included, has come back for it.
    """

    def __init__(self, group: int, size: int):
        self._group = group
        self._size = size
        self._name = f"{'warp' if size == WARP else 'warpgroup'} {group}"
        self._condition = new_condition()
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
                    if self._condition.wait(POLL_S):
                        continue
                    waited += POLL_S
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
        if waited < GONE_S:
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


_RENDEZVOUS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # BlockManager -> {(size, group): Rendezvous}
_RENDEZVOUS_LOCK = threading.Lock()


def collective(instruction: str, args: tuple, compute, size: int = WARP):
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
            rendezvous = groups[size, group] = Rendezvous(group, size)
    return rendezvous.exchange(lane, instruction, args, compute)
