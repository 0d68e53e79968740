"""GPU timing for the whole project: the benchmark, the dev tools and the CLI all time device work through here.

Three ways to time device work; they answer different questions, so each caller picks by its question:

- :func:`time_calls`, *alone*: per sample ``spacer; event; call; event``. How long one product takes on its own,
  after unrelated work, launch ramp-up and drain included; median, p10 and p90. The kernel benchmark
  (``bench.sweep``) reports this.
- :func:`time_batched`, *queued*: per sample ``spacer; event; call; call; ...; event``, divided by the calls. How
  long a product takes in a stream of products, each launch overlapping its predecessor's tail: steadier, so small
  differences between kernel variants show. The A/B tools (``dev/kernel_dev``, ``kernel_ab``, ``layout_ab``,
  ``split_k``, ``word_order_ab``) and the CLI's ``demo``.
- :func:`time_graph`, *replayed*: ``event; replay; ...; event`` around replays of one captured CUDA graph, divided
  by the replays. A sequence of many launches (a decode step's parts) with no launch cost at all
  (``dev/profile_e2e``).

For a short kernel :func:`time_calls` is higher than :func:`time_batched` by the ramp-up and drain of one launch
(``dev/alone_vs_queued.py`` measures by how much); the shipped benchmark reports :func:`time_calls`.

Besides them, :func:`time_enqueue` measures the *host* time Python takes to issue one call (``dev/kernel_dev``,
``dev/launch_cost``, ``dev/torch_host_cost``), and :func:`copy_bandwidth` the device-to-device copy rate, the
denominator of every bandwidth bound (the benchmarks and the dev tools). Device times are in milliseconds (CUDA
events' unit), host times in seconds (``perf_counter``'s), the copy rate in GB/s.

The spacer: a one-thread kernel that spins on the GPU's clock. Queued before the first timed call, it keeps the
GPU busy while Python enqueues the timed calls, so the first event is reached only once the calls wait behind it:
the events then bracket the GPU's work, never the GPU waiting for Python. If it cannot be built (no NVRTC), timing
goes on without it and launch latency enters the first call of each sample.

:func:`time_calls` in detail, one provider on one case:

1. **warm-up**: ``warmup`` calls, cycling over the rotation slots (JIT compilation, handle creation and the
   memory pool's first allocations happen here, untimed);
2. **host loop**: calls back to back, one synchronisation at the end; wall time / calls = ``call_us``, the time a
   Python caller waits per product when it issues them in a stream (launch overhead included). The same loop
   measures how long one call takes to *enqueue* (``perf_counter`` around the bare call);
3. **device loop**: per repetition ``spacer; event; call; event``, the spacer spinning for about three enqueue
   times. Its median, p10 and p90 are the reported time.

Rotation: each slot is a full, separate copy of the provider's weights (and X and Y), and consecutive calls use
consecutive slots. With the slots' bytes together at least twice the L2 size, the weights one call reads were
evicted by the calls between, as in a real model where each layer's weights are read once per token.
:func:`time_batched` times the calls it is given, in order: its callers rotate by passing calls over separate
copies (``dev/kernel_dev.pruned_copies``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "Stats", "Timing", "summarize", "geometric_mean", "rotation_count", "device_reps", "time_calls", "time_batched",
    "time_graph", "time_enqueue", "copy_bandwidth", "synchronize",
]

#: At most this many rotation slots, and at most this many bytes in all of them (one slot is always allowed):
#: twice a 60 MB L2 needs 120 MB; the cap only stops tiny shapes from making thousands of copies.
MAX_SLOTS = 64
MAX_ROTATION_BYTES = 4 << 30
#: The spacer before each batch of :func:`time_batched`: longer than Python takes to enqueue a few hundred calls.
BATCH_SPACER_US = 10_000.0
#: The spacer before each round of :func:`time_enqueue`: longer than Python takes to issue its calls, so the GPU
#: is busy, never idle and never pushing back, while the host is timed.
ENQUEUE_SPACER_US = 100_000.0


@dataclass(frozen=True)
class Stats:
    """Summary of repeated timings, in milliseconds."""

    median: float
    p10: float
    p90: float
    mean: float
    n: int


@dataclass(frozen=True)
class Timing:
    """One provider's measurement on one case (see the module docstring)."""

    stats: Stats  # device loop, ms per call
    call_us: float  # host loop, microseconds per call, launch overhead included
    spacer_us: float  # spin-kernel length used to hide the launch (0 when no spacer could be built)
    slots: int  # rotation slots cycled over


def summarize(samples_ms: Sequence[float]) -> Stats:
    """Median, 10th and 90th percentiles (linear interpolation) and mean of a non-empty sample."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("Invalid value of samples_ms: expected at least one timing, got none")
    p10, median, p90 = np.percentile(a, [10, 50, 90])
    return Stats(float(median), float(p10), float(p90), float(a.mean()), int(a.size))


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean of positive numbers (the mean of ratios such as speedups); NaN for an empty sequence."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return float("nan")
    if (a <= 0).any():
        raise ValueError(f"Invalid value of values: expected positive numbers, got {a[a <= 0][:3].tolist()}")
    return float(np.exp(np.log(a).mean()))


def rotation_count(slot_bytes: int, l2_bytes: int, max_slots: int = MAX_SLOTS,
                   max_bytes: int = MAX_ROTATION_BYTES) -> int:
    """How many separate copies to cycle through so that together they are at least twice the L2 size.

    >>> rotation_count(34 << 20, 60 << 20)   # 34 MiB of weights, 60 MiB L2: 4 copies = 136 MiB >= 120 MiB
    4
    >>> rotation_count(1 << 30, 60 << 20)    # a 1 GiB weight never fits in L2
    1
    """
    if slot_bytes <= 0:
        raise ValueError(f"Invalid value of slot_bytes: expected > 0, got {slot_bytes}")
    wanted = max(1, math.ceil(2 * l2_bytes / slot_bytes))
    return max(1, min(wanted, max_slots, max_bytes // slot_bytes))


def device_reps(seconds_per_call: float, reps: int, budget_s: float, min_reps: int = 10) -> int:
    """Repetitions for the device loop: ``reps``, fewer for slow calls so one loop stays near ``budget_s``.

    >>> device_reps(50e-6, 200, 0.5), device_reps(10e-3, 200, 0.5), device_reps(1.0, 200, 0.5)
    (200, 50, 10)
    """
    affordable = int(budget_s / max(seconds_per_call, 1e-9))
    return max(min(reps, min_reps), min(reps, affordable))


# ---------------------------------------------------------------------------------------------- GPU (CuPy) part

_SPIN_SOURCE = r"""
extern "C" __global__ void spin(long long cycles) {
    // One thread that keeps the GPU busy for `cycles` SM clocks: work queued behind it waits on the device,
    // so the host has time to enqueue the next timed call before the GPU reaches it.
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


class _Spacer:
    """The spin kernel of the module docstring; ``None``-safe: if it cannot be compiled, timing goes on without."""

    def __init__(self) -> None:
        import cupy

        self.error = ""
        try:
            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            self._cycles_per_us = props["clockRate"] / 1000.0  # clockRate is in kHz
            self._kernel = cupy.RawKernel(_SPIN_SOURCE, "spin")
            self(1.0)  # compile (NVRTC) and load now, not inside a timed region
            synchronize()
        except Exception as exc:  # no NVRTC, no clock rate: the events then include launch latency
            self._kernel = None
            self.error = f"{type(exc).__name__}: {exc}"

    @property
    def available(self) -> bool:
        return self._kernel is not None

    def __call__(self, us: float) -> None:
        if self._kernel is not None:
            self._kernel((1,), (1,), (np.int64(us * self._cycles_per_us),))


_spacer: _Spacer | None = None


def spacer() -> _Spacer:
    """The process's spin kernel, built on first use."""
    global _spacer
    if _spacer is None:
        _spacer = _Spacer()
    return _spacer


def synchronize() -> None:
    """Wait for all work on the current device (every stream: CuPy's, PyTorch's and Numba's)."""
    import cupy

    cupy.cuda.Device().synchronize()


def time_calls(calls: Sequence[Callable[[], Any]], reps: int, warmup: int, budget_s: float = 0.5) -> Timing:
    """Time zero-argument calls that each run one product, cycling over them (one per rotation slot).

    Parameters
    ----------
    calls : sequence of callables
        One per rotation slot; each enqueues one product on the device.
    reps : int
        Device-loop repetitions (fewer for calls slower than ``budget_s / reps``, at least 10).
    warmup : int
        Untimed calls first.
    budget_s : float
        Rough wall-clock budget of each of the host and device loops.
    """
    import cupy

    n = len(calls)
    for r in range(warmup):
        calls[r % n]()
    synchronize()

    # Host loop: per-call wall time, and the enqueue time of each bare call (for the spacer's length).
    start = time.perf_counter()
    calls[0]()
    synchronize()
    one_call_s = time.perf_counter() - start
    host_reps = device_reps(one_call_s, reps, budget_s / 2, min_reps=3)
    enqueue = []
    start = time.perf_counter()
    for r in range(host_reps):
        t0 = time.perf_counter()
        calls[r % n]()
        enqueue.append(time.perf_counter() - t0)
    synchronize()
    call_s = (time.perf_counter() - start) / host_reps

    # Device loop.
    spin = spacer()
    spacer_us = min(max(3e6 * float(np.median(enqueue)) + 20.0, 20.0), 5000.0) if spin.available else 0.0
    dev_reps = device_reps(call_s + spacer_us * 1e-6, reps, budget_s)
    starts = [cupy.cuda.Event() for _ in range(dev_reps)]
    ends = [cupy.cuda.Event() for _ in range(dev_reps)]
    for r in range(dev_reps):
        spin(spacer_us)
        starts[r].record()
        calls[r % n]()
        ends[r].record()
    ends[-1].synchronize()
    samples = [cupy.cuda.get_elapsed_time(s, e) for s, e in zip(starts, ends)]
    return Timing(summarize(samples), call_s * 1e6, spacer_us, n)


def time_batched(calls: Sequence[Callable[[], Any]], batches: int = 15) -> float:
    """Median milliseconds per call of ``calls`` run back to back, queued behind the spacer, one event pair around
    the whole sequence (the *queued* method of the module docstring).

    ``calls`` is the sequence to time, in order (for rotation, calls over separate weight copies; ``[f] * 8``
    repeats one). Two of them run first as a warm-up; then each of ``batches`` samples is ``spacer; event; calls;
    event`` and counts the elapsed time divided by ``len(calls)``.
    """
    import cupy

    for call in calls[:2]:
        call()
    synchronize()
    spin = spacer()
    per_call = []
    for _ in range(batches):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        spin(BATCH_SPACER_US)
        start.record()
        for call in calls:
            call()
        stop.record()
        stop.synchronize()
        per_call.append(cupy.cuda.get_elapsed_time(start, stop) / len(calls))
    return summarize(per_call).median


def time_graph(launches: Callable[[], Any], stream: Any, replays: int = 20) -> float:
    """Milliseconds per replay of a CUDA graph captured from ``launches()`` on the CuPy ``stream`` (the *replayed*
    method of the module docstring): every launch in it runs back to back, with no host in between.

    ``launches`` must issue its work on ``stream``. It runs once eagerly first, so compilation, plans and
    allocations happen outside the capture; the first replay (which uploads the graph) is not timed either.
    """
    import cupy

    launches()
    stream.synchronize()
    stream.begin_capture()
    launches()
    graph = stream.end_capture()
    graph.launch(stream=stream)
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record(stream)
    for _ in range(replays):
        graph.launch(stream=stream)
    stop.record(stream)
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / replays


def time_enqueue(call: Callable[[], Any], calls: int = 200, rounds: int = 1,
                 spacer_us: float = ENQUEUE_SPACER_US) -> float:
    """Host seconds per call that Python takes to issue ``call()`` (its launch cost, not its GPU time): the best of
    ``rounds`` rounds, each ``calls`` calls back to back between two ``perf_counter`` reads.

    Each round starts behind a spacer of ``spacer_us`` microseconds, so the GPU is busy but never pushes back on the
    host; ``calls`` times the launches of one call must stay under the launch queue's depth (about a thousand), or
    the host waits for the GPU after all. ``spacer_us=0`` leaves the GPU free, for calls whose GPU work is shorter
    than their host cost (the GPU keeps up and the queue stays short). Twenty untimed calls warm up first.
    """
    for _ in range(20):
        call()
    synchronize()
    best = math.inf
    for _ in range(rounds):
        if spacer_us:
            spacer()(spacer_us)
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, time.perf_counter() - start)
        synchronize()
    return best / calls


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Device-to-device copy bandwidth in GB/s (10^9 B/s), counting bytes read plus bytes written; median."""
    import cupy

    src = cupy.full(nbytes, 0xA5, dtype=cupy.uint8)  # a copy does not care what it moves, but never time zeros
    dst = cupy.empty_like(src)
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    samples = []
    for r in range(reps + 3):  # the first three warm up
        start.record()
        dst.data.copy_from_device_async(src.data, nbytes)
        end.record()
        end.synchronize()
        if r >= 3:
            samples.append(cupy.cuda.get_elapsed_time(start, end))
    del src, dst
    return 2 * nbytes / (summarize(samples).median * 1e-3) / 1e9
