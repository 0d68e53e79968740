"""The simulator's block manager with a pause (``flashllm_nb.kernels.sim_blocks``): same results as the simulator's
own, exceptions still raised from the launch, the simulator's manager back afterwards, and a launch still runs where
the installed simulator's internals differ."""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda
from numba.cuda.simulator import kernel as simulator_kernel

from flashllm_nb.kernels import sim_blocks

pytestmark = pytest.mark.sim

THREADS = 64
BLOCKS = 3


@cuda.jit
def _rotate_rounds(values, out):
    """Each round every thread takes its right neighbour's value from shared memory: correct only if every
    syncthreads holds every thread of the block."""
    shared = cuda.shared.array(THREADS, np.float64)
    tid = cuda.threadIdx.x
    value = values[cuda.blockIdx.x * THREADS + tid]
    for _ in range(5):
        shared[tid] = value
        cuda.syncthreads()
        value = shared[(tid + 1) % THREADS] * 2.0
        cuda.syncthreads()
    out[cuda.blockIdx.x * THREADS + tid] = value


@cuda.jit
def _raise_in_one_thread(out):
    if cuda.blockIdx.x == 1 and cuda.threadIdx.x == 7:
        raise ValueError("thread 7 of block 1 failed")
    cuda.syncthreads()
    out[cuda.threadIdx.x] = 1


def _expected(values):
    blocks = values.reshape(BLOCKS, THREADS)
    return (np.roll(blocks, -5, axis=1) * 2.0**5).reshape(-1)


def test_syncthreads_rounds_give_the_same_result_as_the_simulator():
    values = np.random.default_rng(0).standard_normal(BLOCKS * THREADS)
    polite, stock = np.zeros_like(values), np.zeros_like(values)
    assert sim_blocks.COMPATIBLE, "the installed simulator's internals changed: PoliteBlockManager needs a look"
    with sim_blocks.polite_blocks():
        assert simulator_kernel.BlockManager is sim_blocks.PoliteBlockManager
        _rotate_rounds[BLOCKS, THREADS](values, polite)
    assert simulator_kernel.BlockManager is not sim_blocks.PoliteBlockManager
    _rotate_rounds[BLOCKS, THREADS](values, stock)
    np.testing.assert_array_equal(polite, _expected(values))
    np.testing.assert_array_equal(stock, polite)


def test_an_exception_in_a_thread_is_raised_from_the_launch():
    with sim_blocks.polite_blocks(), pytest.raises(ValueError, match="thread 7 of block 1 failed"):
        _raise_in_one_thread[BLOCKS, 32](np.zeros(32, np.int32))
    assert simulator_kernel.BlockManager is not sim_blocks.PoliteBlockManager


def test_incompatible_simulator_keeps_its_own_manager(monkeypatch):
    monkeypatch.setattr(sim_blocks, "COMPATIBLE", False)
    values = np.random.default_rng(1).standard_normal(BLOCKS * THREADS)
    out = np.zeros_like(values)
    with sim_blocks.polite_blocks():
        assert simulator_kernel.BlockManager is not sim_blocks.PoliteBlockManager
        _rotate_rounds[BLOCKS, THREADS](values, out)
    np.testing.assert_array_equal(out, _expected(values))
