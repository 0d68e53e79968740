"""What the simulator twins of ``flashllm_nb.kernels.ptx`` alone do, in Numba's CUDA simulator: they are bound in
place of the inline PTX, they refuse what the GPU's typing or hardware would refuse, and they turn a kernel bug (a
split warp, a lane that exited or waits at a barrier, an mbarrier phase that cannot complete) into an error that
says why instead of a hang or a wrong answer, without reporting races that resolve in time.

The checks that the twins and the inline PTX share (each wrapper against NumPy and the emulator) are in
``test_ptx.py``, which runs them in whichever tier the session has.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from numba import cuda

import flashllm_nb.kernels.ptx_sim as ptx_sim
from flashllm_nb.kernels.ptx_sim import rendezvous
import ptx_kernels as pk
from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.ptx import SHARED_ALIGN

pytestmark = pytest.mark.sim


def test_the_twins_are_bound_and_complete():
    """Under the simulator ``ptx`` binds every twin of ``ptx_sim`` (and nothing else), with no alignments."""
    assert ptx.SIMULATOR and ptx.SHARED_ALIGN is None
    assert ptx.WGMMA_SHARED_ALIGN is None
    assert set(ptx_sim.__all__) == set(ptx.__all__) - {"SIMULATOR", "SHARED_ALIGN", "WGMMA_SHARED_ALIGN", "inlined"}
    for name in ptx_sim.__all__:
        assert getattr(ptx, name) is getattr(ptx_sim, name)


def test_mbarrier_wait_that_cannot_complete_raises():
    """64 arrivals expected, 32 threads: on the GPU a hang; in the simulator an error that says why."""

    @cuda.jit
    def short_of_arrivals(out):
        bars = cuda.shared.array(2, np.uint32)
        if cuda.threadIdx.x == 0:
            ptx.mbarrier_init(bars, 0, 64)
        cuda.syncthreads()
        ptx.mbarrier_arrive(bars, 0)
        ptx.mbarrier_wait_parity(bars, 0, 0)
        out[cuda.threadIdx.x] = 1

    with pytest.raises(RuntimeError, match="phase cannot complete"):
        short_of_arrivals[1, 32](np.zeros(32, np.int32))


class _LateWaker:
    """Stands in for a condition of the simulator (``rendezvous.new_condition``): after every wait, lets the other
    threads run for a while (without the lock) and then reports a timeout, as a real wait does when the last arrival
    comes between its timeout and its taking the lock back."""

    def __init__(self, condition):
        self._condition = condition

    def __enter__(self):
        return self._condition.__enter__()

    def __exit__(self, *exc):
        return self._condition.__exit__(*exc)

    def notify_all(self):
        self._condition.notify_all()

    def wait(self, timeout):
        self._condition.wait(timeout)
        self._condition.release()
        try:
            time.sleep(0.05)
        finally:
            self._condition.acquire()
        return False


@pytest.fixture
def quick_deadlock_checks(monkeypatch):
    """Waits poll every 10 ms and report a missing thread after 20 ms, so that a race test takes a fraction of a
    second."""
    monkeypatch.setattr(rendezvous, "POLL_S", 0.01)
    monkeypatch.setattr(rendezvous, "GONE_S", 0.02)


@pytest.mark.usefixtures("quick_deadlock_checks")
def test_mbarrier_wait_sees_a_phase_that_completed_as_it_timed_out(monkeypatch):
    """Thread 0 waits; thread 1 arrives late and goes on to a syncthreads, where every other thread already is.
    The waiter's timeouts all race with that arrival: it must see the phase complete, not report a deadlock (it
    once did, about one run in three of an 8-warp kernel test)."""
    make_condition = rendezvous.new_condition
    monkeypatch.setattr(rendezvous, "new_condition", lambda: _LateWaker(make_condition()))

    @cuda.jit
    def late_arrival(out):
        bars = cuda.shared.array(2, np.uint32)
        if cuda.threadIdx.x == 0:
            ptx.mbarrier_init(bars, 0, 1)
        cuda.syncthreads()
        if cuda.threadIdx.x == 0:
            ptx.mbarrier_wait_parity(bars, 0, 0)
        if cuda.threadIdx.x == 1:
            time.sleep(0.1)
            ptx.mbarrier_arrive(bars, 0)
        cuda.syncthreads()
        out[cuda.threadIdx.x] = 1

    out = np.zeros(32, np.int32)
    late_arrival[1, 32](out)
    assert out.tolist() == [1] * 32


@pytest.mark.usefixtures("quick_deadlock_checks")
def test_warp_collective_sees_a_round_that_completed_as_it_timed_out(monkeypatch):
    """The same race at a warp-collective instruction: lane 1 comes last and goes on to a syncthreads; the lanes
    that timed out as it came must see their round complete, not report lane 1 as stuck at the barrier."""
    make_condition = rendezvous.new_condition
    monkeypatch.setattr(rendezvous, "new_condition", lambda: _LateWaker(make_condition()))

    @cuda.jit
    def late_lane(out):
        if cuda.threadIdx.x == 1:
            time.sleep(0.3)
        ptx.warp_sync()
        cuda.syncthreads()
        out[cuda.threadIdx.x] = 1

    out = np.zeros(32, np.int32)
    late_lane[1, 32](out)
    assert out.tolist() == [1] * 32


# --- what the twins refuse ------------------------------------------------------------------------------------------


def test_float64_accumulator_is_refused_as_on_the_gpu():
    """A Python float is float64 in a Numba kernel: the GPU typing refuses it (``test_ptx_compile`` compiles the same
    kernel), so the twin does too, naming the instruction and what it expected."""
    kernel, _, (instruction, expected, _) = pk.TYPING_ERRORS["mma_float64_accumulator"]
    with pytest.raises(TypeError, match=f"{re.escape(instruction)}: {expected}"):
        pk.launch(kernel, np.zeros(32, np.float32))


@cuda.jit
def _ldmatrix_at(rows, out):
    s = cuda.shared.array(256, np.uint16, alignment=SHARED_ALIGN)
    out[cuda.threadIdx.x] = ptx.ldmatrix_x1(s, rows[cuda.threadIdx.x])


def test_misaligned_ldmatrix_row_is_refused():
    """A lane whose ldmatrix row is not 16-byte aligned is named in an IndexError."""
    rows = np.zeros(32, np.int32)
    rows[5] = 4  # 8 bytes into the array: not 16-byte aligned
    with pytest.raises(IndexError, match=r"ldmatrix\.sync\.aligned\.m8n8\.x1\.shared\.b16: the row of lane 5"):
        _ldmatrix_at[1, 32](rows, np.zeros(32, np.uint32))


def test_ldmatrix_ignores_the_lanes_it_does_not_read():
    """ldmatrix .x1 reads the rows of lanes 0-7 only: out-of-range rows of the other lanes are no error."""
    rows = np.full(32, 10_000, np.int32)  # out of range, but only lanes 0-7 matter for .x1
    rows[:8] = np.arange(8) * 8
    _ldmatrix_at[1, 32](rows, np.zeros(32, np.uint32))


@cuda.jit
def _ldmatrix_of_global(x, out):
    out[cuda.threadIdx.x] = ptx.ldmatrix_x1(x, 0)


def test_ldmatrix_from_global_memory_is_refused():
    """ldmatrix of a global array is refused: it reads shared memory only."""
    with pytest.raises(TypeError, match=r"ldmatrix.*arr of lane 0 must be a cuda\.shared\.array"):
        _ldmatrix_of_global[1, 32](np.zeros(64, np.uint16), np.zeros(32, np.uint32))


@cuda.jit
def _cp_async_from_shared(out):
    s = cuda.shared.array(256, np.uint16, alignment=SHARED_ALIGN)
    t = cuda.shared.array(256, np.uint16, alignment=SHARED_ALIGN)
    ptx.cp_async_16(s, cuda.threadIdx.x * 8, t, 0, 16)
    out[cuda.threadIdx.x] = s[0]


def test_cp_async_from_shared_memory_is_refused():
    """cp.async of a shared array as source is refused: its source is global memory."""
    with pytest.raises(TypeError, match=r"cp\.async\.cg\.shared\.global: src_arr must be a device array"):
        _cp_async_from_shared[1, 32](np.zeros(32, np.uint16))


@cuda.jit
def _ticket_in_shared_memory(out):
    s = cuda.shared.array(1, np.int32)
    s[0] = 0
    out[cuda.threadIdx.x] = ptx.atom_add_acq_rel_gpu(s, 0, 1)


def test_ticket_in_shared_memory_is_refused():
    """atom.acq_rel.gpu.global of a shared array is refused: its ticket lives in global memory."""
    with pytest.raises(TypeError, match=r"atom\.acq_rel\.gpu\.global\.add\.u32: arr must be a device array"):
        _ticket_in_shared_memory[1, 32](np.zeros(32, np.int32))


@cuda.jit
def _cp_async_nothing_from_anywhere(x, out):
    s = cuda.shared.array(256, np.uint16, alignment=SHARED_ALIGN)
    ptx.cp_async_16(s, cuda.threadIdx.x * 8, x, 1_000_003, 0)  # src_bytes 0: the index is never used
    ptx.cp_async_wait_all()
    out[cuda.threadIdx.x] = s[cuda.threadIdx.x * 8 + 7]


def test_cp_async_with_zero_bytes_reads_nothing():
    """cp.async with src_bytes 0 zero-fills its 16 bytes without reading the source index, which may be anything."""
    out = np.ones(32, np.uint16)
    _cp_async_nothing_from_anywhere[1, 32](np.zeros(4, np.float32), out)
    assert (out == 0).all()


@cuda.jit
def _diverging_warp(out):
    s = cuda.shared.array(256, np.uint16, alignment=SHARED_ALIGN)
    lane = cuda.threadIdx.x
    if lane < 16:
        out[lane] = ptx.ldmatrix_x1(s, 0)
    else:
        out[lane] = ptx.ldmatrix_x1_trans(s, 0)


def test_a_warp_split_between_two_collectives_is_reported():
    """Half a warp at one collective and half at another is reported as a diverged warp."""
    with pytest.raises(RuntimeError, match=r"warp 0 diverged"):
        _diverging_warp[1, 32](np.zeros(32, np.uint32))


@cuda.jit
def _half_warp_at_syncthreads(out):
    s = cuda.shared.array(256, np.uint16, alignment=SHARED_ALIGN)
    lane = cuda.threadIdx.x
    if lane < 16:
        out[lane] = ptx.ldmatrix_x1(s, 0)
    cuda.syncthreads()


def test_lanes_waiting_at_syncthreads_are_reported_not_hung():
    """Lanes that wait at syncthreads while the rest of their warp waits at a collective are named."""
    with pytest.raises(RuntimeError, match=r"lanes \[16, .*31\] wait at syncthreads"):
        _half_warp_at_syncthreads[1, 32](np.zeros(32, np.uint32))


@cuda.jit
def _half_warp_returns(out):
    s = cuda.shared.array(256, np.uint16, alignment=SHARED_ALIGN)
    lane = cuda.threadIdx.x
    if lane >= 16:
        return
    out[lane] = ptx.ldmatrix_x1(s, 0)


def test_lanes_that_exited_are_reported_not_hung():
    """Lanes that returned while the rest of their warp waits at a collective are named."""
    with pytest.raises(RuntimeError, match=r"lanes \[16, .*31\] have exited"):
        _half_warp_returns[1, 32](np.zeros(32, np.uint32))


def test_a_partial_warpgroup_is_refused():
    """wgmma in a block of 64 threads is refused: it needs a whole warpgroup of 128."""
    memory, c, d = np.zeros(pk.WGMMA_SMEM_U16, np.uint16), np.zeros((64, 8), np.float32), np.zeros((64, 8), np.float32)
    with pytest.raises(RuntimeError, match=r"needs all 128 threads of a warpgroup \(4 warps\), but a block of 64"):
        pk.launch(pk.WGMMA[16, "f16"], memory, c, d, threads=64)


def test_a_partial_warp_is_refused():
    """A warp-collective in a block of 48 threads is refused: the second warp has 16 lanes."""
    a, c, d = np.zeros((48, 4), np.uint32), np.zeros((48, 4), np.float32), np.zeros((48, 4), np.float32)
    b = np.zeros((48, 2), np.uint32)
    with pytest.raises(RuntimeError, match=r"needs all 32 lanes of a warp, but a block of 48 threads"):
        pk.launch(pk.mma_f16_kernel, a, b, c, d, threads=48)


def test_twins_refuse_the_wrong_kinds_of_value():
    """Outside the warp-collectives the twins need no kernel; they mirror the GPU typing errors."""
    with pytest.raises(TypeError, match=r"cvt\.rn\.bf16\.f32: x must be a float32"):
        ptx.f32_to_bf16_bits(1.0)
    with pytest.raises(TypeError, match=r"mov\.b32 \(pack\): lo must be an integer, got float"):
        ptx.pack_u16x2(1.0, 2)
    with pytest.raises(ValueError, match=r"cp\.async\.wait_group: n must be a non-negative integer"):
        ptx.cp_async_wait_group(-1)
