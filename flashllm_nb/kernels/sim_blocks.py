"""Faster kernel launches in Numba's CUDA simulator: the block manager polls its threads with a pause.

The simulator runs each CUDA thread of a block as a Python thread, and a ``BlockManager`` releases them from
``syncthreads`` once all are waiting there. Its loop polls the threads without pause, so it holds the interpreter
lock for most of each switch interval while the block's threads queue for it. ``PoliteBlockManager`` is the same
loop (numba-cuda 0.30's ``BlockManager.run``) with a ``time.sleep`` of ``POLL_PAUSE_S`` per pass, which hands the
lock to the threads that do the work. Same results, several times sooner (the timings: ``docs/kernel-design.md``,
"Simulator and CI").

``polite_blocks()`` puts it in place for the launches made inside it. Where the installed numba-cuda's simulator
does not have the internals it mirrors (``BlockThread(f, manager, blockIdx, threadIdx, debug)``), it leaves the
simulator's own manager in place: slower, never wrong.
"""

from __future__ import annotations

import contextlib
import inspect
import time

import numpy as np
from numba.cuda.simulator import kernel as _simulator_kernel
from numba.cuda.simulator.kernel import BlockManager, BlockThread

__all__ = ["PoliteBlockManager", "polite_blocks", "POLL_PAUSE_S", "COMPATIBLE"]

# 0.1 ms: short against a simulated block's run (seconds), long enough to give the lock away on every pass.
POLL_PAUSE_S = 1e-4

def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


# The internals PoliteBlockManager.run relies on, as numba-cuda 0.30 defines them: the thread's constructor, and the
# manager's, which keeps f, block_dim and debug as _f, _block_dim and _debug.
COMPATIBLE = (_parameters(BlockThread.__init__) == ["self", "f", "manager", "blockIdx", "threadIdx", "debug"]
              and _parameters(BlockManager.__init__) == ["self", "f", "grid_dim", "block_dim", "debug"])


class PoliteBlockManager(BlockManager):
    """``BlockManager`` whose ``run`` pauses ``POLL_PAUSE_S`` between polls of its threads (module docstring).

    The loop is the simulator's: start one ``BlockThread`` per thread of the block; on each pass note the threads
    blocked at ``syncthreads``, abort every thread and raise the first exception as soon as one appears, release
    all blocked threads once every live thread is blocked, and drop the threads that have finished."""

    def run(self, grid_point, *args):
        threads = set()
        for block_point in np.ndindex(*self._block_dim):
            thread = BlockThread(lambda: self._f(*args), self, grid_point, block_point, self._debug)
            thread.start()
            threads.add(thread)
        live, blocked = set(threads), set()
        while live:
            for thread in live:
                if thread.syncthreads_blocked:
                    blocked.add(thread)
                elif thread.exception:
                    for other in threads:
                        other.abort = True
                        other.syncthreads_blocked = False
                        other.syncthreads_event.set()
                    raise thread.exception[0].with_traceback(thread.exception[1])
            if live == blocked:
                for thread in blocked:
                    thread.syncthreads_blocked = False
                    thread.syncthreads_event.set()
                blocked = set()
            live = {thread for thread in live if thread.is_alive()}
            time.sleep(POLL_PAUSE_S)
        for thread in threads:
            if thread.exception:
                raise thread.exception[0].with_traceback(thread.exception[1])


@contextlib.contextmanager
def polite_blocks():
    """Simulated launches inside use ``PoliteBlockManager`` (where ``COMPATIBLE``); the simulator's own manager
    is back afterwards."""
    if not COMPATIBLE:
        yield
        return
    saved = _simulator_kernel.BlockManager
    _simulator_kernel.BlockManager = PoliteBlockManager
    try:
        yield
    finally:
        _simulator_kernel.BlockManager = saved
