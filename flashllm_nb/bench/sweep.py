"""Running the declared sweep: data, pruning, reference, and one measurement per (shape, sparsity, provider, N).

Loop order, and why::

    for shape:                       random normal W (M x K) and X (N x K) per N, drawn once
        for sparsity:                W pruned to exactly round(sparsity * M * K) zeros
            reference Y = X @ W.T    cuBLAS, itself checked on sampled columns against float64 on the host
            for provider:            weights encoded once per rotation slot (encode once, multiply many)
                for N:               bind X, check Y against the reference, time

Every case of every provider ends as one :class:`Result` row: ``ok``, ``WRONG`` (timed, but no speedup),
``skipped`` (with the reason) or ``error`` (the exception). A CUDA error that kills the context aborts the sweep
(:class:`SweepAborted`) and the rows so far are still written.
"""

from __future__ import annotations

import dataclasses
import importlib
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from flashllm_nb.reference.tolerance import Check, check_close, dtype_name

from . import providers as P
from .shapes import Shape
from .timing import copy_bandwidth, rotation_count, synchronize, time_calls

__all__ = ["Sweep", "Result", "SweepAborted", "OK", "WRONG", "SKIPPED", "ERROR", "run_gpu", "run_simulator",
           "prune_random", "environment"]

OK, WRONG, SKIPPED, ERROR = "ok", "WRONG", "skipped", "error"

#: How long each of a measurement's two timing loops may take (slow peers get fewer repetitions, at least 10).
BUDGET_S = 0.5
#: Output columns the cuBLAS baseline is checked on against float64 on the host.
SAMPLED_COLUMNS = 256


@dataclass(frozen=True)
class Sweep:
    """The declared benchmark: x = shapes and sparsities, lines = providers, y = speedup over cuBLAS; a panel per N."""

    shapes: tuple[Shape, ...]
    ns: tuple[int, ...]
    sparsities: tuple[float, ...]
    providers: tuple[str, ...]  # registry names; the baseline is always run
    dtype: str = "fp16"  # "fp16" or "bf16"
    reps: int = 100
    warmup: int = 10
    seed: int = 0

    @property
    def size(self) -> int:
        """Number of (shape, sparsity, provider, N) measurements."""
        return len(self.shapes) * len(self.sparsities) * len(self.providers) * len(self.ns)


@dataclass
class Result:
    """One row of the result files: a provider on one (shape, N, sparsity) case."""

    model: str
    layer: str
    M: int
    K: int
    N: int
    sparsity: float
    dtype: str
    provider: str
    label: str
    status: str  # OK, WRONG, SKIPPED or ERROR
    reason: str = ""  # why skipped / the exception / where the check failed
    note: str = ""  # the provider's note (fallback types, what is and is not timed)
    time_ms: float | None = None  # median of the device loop
    p10_ms: float | None = None
    p90_ms: float | None = None
    call_us: float | None = None  # host loop: per call, launch overhead included
    reps: int | None = None
    slots: int | None = None  # rotation slots
    spacer_us: float | None = None
    weight_bytes: int | None = None  # the provider's weight representation
    bytes: int | None = None  # weight_bytes + activations read + output written
    worst_error: float | None = None  # max |y - ref| / tolerance
    # Filled by report.derive_metrics from the rows above and the copy bandwidth:
    speedup: float | None = None
    tflops: float | None = None
    gbps: float | None = None
    bound_fraction: float | None = None

    def as_row(self) -> dict:
        return dataclasses.asdict(self)


class SweepAborted(RuntimeError):
    """The CUDA context is unusable (e.g. an illegal address in a kernel); later measurements cannot run."""


# ------------------------------------------------------------------------------------------------ input data

def random_normal(xp: Any, shape: tuple[int, int], seed: int) -> Any:
    """Standard normal fp16 values (never all zero; an element is 0 with probability ~1e-8)."""
    return xp.random.default_rng(seed).standard_normal(shape, dtype=xp.float32).astype(xp.float16)


_prune_source: list[str] = []


def prune_random(W: Any, sparsity: float, seed: int, log: Callable[[str], None] = print) -> Any:
    """``flashllm_nb.prune.random(W, sparsity, seed)``: exactly ``round(sparsity * W.size)`` zeros, at random.

    Where the library's pruner is missing or refuses the array (it may take NumPy only), the same contract is
    met here on W's own device: zero the elements whose random keys sort first. A host round trip instead would
    cost minutes at OPT-66B sizes, most of a GPU session. Which one ran is logged once.
    """
    try:
        import flashllm_nb.prune

        pruned = flashllm_nb.prune.random(W, sparsity, seed=seed)
        if type(pruned) is not type(W) or tuple(pruned.shape) != tuple(W.shape):
            raise TypeError(f"returned {type(pruned).__name__} {tuple(pruned.shape)}")
        source = "flashllm_nb.prune.random"
    except (ImportError, AttributeError, TypeError, ValueError, NotImplementedError) as exc:
        xp = importlib.import_module(P.array_kind(W))
        keys = xp.random.default_rng(seed).random(W.size, dtype=xp.float32)
        pruned = W.copy()
        pruned.reshape(-1)[xp.argsort(keys)[: int(round(sparsity * W.size))]] = 0
        source = f"the bench's own exact-count pruner (flashllm_nb.prune.random: {type(exc).__name__}: {exc})"
    if source not in _prune_source:
        _prune_source.append(source)
        log(f"pruning with {source}")
    return pruned


def to_run_dtype(a16: Any, dtype: str) -> Any:
    """The run's native array for an fp16 one: itself for fp16; for bf16 a torch bf16 tensor (GPU) or an
    ml_dtypes one (NumPy). Converting after pruning keeps the zeros exactly: every nonzero fp16 is a normal bf16."""
    if dtype == "fp16":
        return a16
    if P.array_kind(a16) == "numpy":
        import ml_dtypes

        return a16.astype(np.float32).astype(ml_dtypes.bfloat16)
    import torch

    return P.as_torch(a16).to(torch.bfloat16)


def row_norms(a: Any, chunk: int = 8192) -> Any:
    """Euclidean norm of each row, float32 (CuPy on the GPU, NumPy on the host), in row chunks to bound memory."""
    if P.array_kind(a) == "numpy":
        return np.linalg.norm(a.astype(np.float64), axis=1)
    import cupy

    return cupy.concatenate([cupy.linalg.norm(P.to_cupy_float32(a[i:i + chunk]), axis=1)
                             for i in range(0, a.shape[0], chunk)])


def _itemsize(a: Any) -> int:
    return int(a.element_size()) if P.array_kind(a) == "torch" else int(a.itemsize)


def _copy(a: Any) -> Any:
    return a.clone() if P.array_kind(a) == "torch" else a.copy()


# --------------------------------------------------------------------------------------------------- checks

def sampled_float64_check(y: Any, X: Any, W: Any, seed: int) -> Check:
    """Check a product on :data:`SAMPLED_COLUMNS` random output columns against float64 on the host."""
    import cupy

    m = W.shape[0]
    cols = np.sort(np.random.default_rng(seed).choice(m, size=min(m, SAMPLED_COLUMNS), replace=False))
    w_rows = W[P.as_torch(cupy.asarray(cols)) if P.array_kind(W) == "torch" else cupy.asarray(cols)]
    w64 = cupy.asnumpy(P.to_cupy_float32(w_rows)).astype(np.float64)  # synchronize!
    x64 = cupy.asnumpy(P.to_cupy_float32(X)).astype(np.float64)
    y_cols = cupy.asnumpy(P.to_cupy_float32(y)[:, cupy.asarray(cols)])
    ref = x64 @ w64.T
    return check_close(y_cols, ref, np.linalg.norm(x64, axis=1), np.linalg.norm(w64, axis=1), X.shape[1],
                       dtype_name(y.dtype), "float64")


def _device_alive() -> bool:
    import cupy

    try:
        synchronize()
        return float(cupy.ones(4, dtype=cupy.float32).sum()) == 4.0  # synchronize!
    except Exception:
        return False


def _failure(exc: BaseException) -> tuple[str, str]:
    """(status, reason) for an exception: a missing kernel or feature is a skip, anything else an error."""
    status = SKIPPED if isinstance(exc, (NotImplementedError, ImportError)) else ERROR
    return status, f"{type(exc).__name__}: {exc}".strip()


# ------------------------------------------------------------------------------------------------ GPU sweep

def run_gpu(sweep: Sweep, advance: Callable[[int, str], None], log: Callable[[str], None] = print,
            rows: list[Result] | None = None) -> list[Result]:
    """Run ``sweep`` on the GPU; returns (and appends to ``rows``, so a caller keeps them after an abort) the results.

    ``advance(k, what)`` is called after every k measurements, for the progress bar.
    """
    import cupy

    rows = [] if rows is None else rows
    l2_bytes = int(cupy.cuda.Device().attributes["L2CacheSize"])
    for shape_index, shape in enumerate(sweep.shapes):
        seed = sweep.seed + 1000 * shape_index
        w16 = random_normal(cupy, (shape.M, shape.K), seed)
        x16 = {n: random_normal(cupy, (n, shape.K), seed + 1 + n) for n in sweep.ns}
        X = {n: to_run_dtype(x, sweep.dtype) for n, x in x16.items()}
        x_norm = {n: row_norms(x) for n, x in X.items()}
        for sparsity in sweep.sparsities:
            W = to_run_dtype(prune_random(w16, sparsity, seed, log), sweep.dtype)
            w_norm = row_norms(W)
            ref = {}
            for n in sweep.ns:
                y = P.dense_product(X[n], W, P.empty_rows(X[n], (n, shape.M)))
                ref[n] = (P.to_cupy_float32(y), dtype_name(y.dtype),
                          sampled_float64_check(y, X[n], W, seed + n))
            for name in sweep.providers:
                provider = P.PROVIDERS[name]
                rows.extend(_measure(provider, sweep, shape, sparsity, W, w_norm, X, x_norm, ref, l2_bytes))
                advance(len(sweep.ns), f"{shape.label} {sparsity:.0%} {name}")
            del W, ref
        del w16, x16, X
        _free_memory()
    return rows


def _measure(provider: P.Provider, sweep: Sweep, shape: Shape, sparsity: float, W: Any, w_norm: Any,
             X: dict, x_norm: dict, ref: dict, l2_bytes: int) -> list[Result]:
    """All N of one provider on one pruned W."""
    base = dict(model=shape.model, layer=shape.layer, M=shape.M, K=shape.K, sparsity=sparsity, dtype=sweep.dtype,
                provider=provider.name, label=provider.label)
    reason = provider.unavailable(sweep.dtype, sparsity)
    if reason:
        return [Result(N=n, status=SKIPPED, reason=reason, **base) for n in sweep.ns]
    try:
        slots = [provider.prepare(W)]
        itemsize = slots[0].act_itemsize or _itemsize(W)
        io_bytes = itemsize * max(sweep.ns) * (shape.M + shape.K)
        n_slots = rotation_count(slots[0].nbytes + io_bytes, l2_bytes)
        slots += [provider.prepare(W) for _ in range(n_slots - 1)]
    except Exception as exc:
        status, why = _failure(exc)
        _abort_if_dead(provider, exc)
        return [Result(N=n, status=status, reason=f"prepare: {why}", **base) for n in sweep.ns]

    first = slots[0]
    results = []
    for n in sweep.ns:
        row = Result(N=n, status=ERROR, note=first.note, weight_bytes=first.nbytes,
                     bytes=first.nbytes + itemsize * n * (shape.M + shape.K), slots=len(slots), **base)
        try:
            calls = [slot.bind(X[n] if i == 0 else _copy(X[n])) for i, slot in enumerate(slots)]
            y = calls[0]()
            synchronize()
            ref_y, ref_dtype, ref_check = ref[n]
            if provider.name == P.BASELINE:
                check = ref_check
            elif first.weight is not None:  # the provider multiplies its own W (2:4): compare with cuBLAS on it
                w_eff = first.weight if P.array_kind(W) == "torch" else P.as_cupy(first.weight)
                y_eff = P.dense_product(X[n], w_eff, P.empty_rows(X[n], (n, shape.M)))
                check = check_close(P.to_cupy_float32(y), P.to_cupy_float32(y_eff), x_norm[n], row_norms(w_eff),
                                    shape.K, dtype_name(y.dtype), dtype_name(y_eff.dtype), xp=_cupy())
            else:
                check = check_close(P.to_cupy_float32(y), ref_y, x_norm[n], w_norm, shape.K, dtype_name(y.dtype),
                                    ref_dtype, xp=_cupy())
            del y
            timing = time_calls(calls, sweep.reps, sweep.warmup, BUDGET_S)
            row.status = OK if check.ok else WRONG
            row.reason = check.message
            row.worst_error = check.worst
            row.time_ms, row.p10_ms, row.p90_ms = timing.stats.median, timing.stats.p10, timing.stats.p90
            row.call_us, row.reps, row.spacer_us = timing.call_us, timing.stats.n, timing.spacer_us
        except Exception as exc:
            row.status, row.reason = _failure(exc)
            _abort_if_dead(provider, exc)
        results.append(row)
    return results


def _cupy():
    import cupy

    return cupy


def _abort_if_dead(provider: P.Provider, exc: BaseException) -> None:
    if not _device_alive():
        raise SweepAborted(f"the CUDA context died in {provider.name} ({type(exc).__name__}: {exc}); "
                           "later measurements cannot run") from exc


def _free_memory() -> None:
    import cupy

    synchronize()
    cupy.get_default_memory_pool().free_all_blocks()
    if "torch" in sys.modules:
        sys.modules["torch"].cuda.empty_cache()


# ------------------------------------------------------------------------------------------ simulator sweep

def run_simulator(sweep: Sweep, advance: Callable[[int, str], None], log: Callable[[str], None] = print,
                  rows: list[Result] | None = None) -> list[Result]:
    """Correctness only, under Numba's CUDA simulator: each ``simulator=True`` provider's Y (NumPy) against
    ``flashllm_nb.reference.linear_reference(X, A)`` (float64), with the same tolerance rule. No timing."""
    rows = [] if rows is None else rows
    for shape_index, shape in enumerate(sweep.shapes):
        seed = sweep.seed + 1000 * shape_index
        w16 = random_normal(np, (shape.M, shape.K), seed)
        X = {n: to_run_dtype(random_normal(np, (n, shape.K), seed + 1 + n), sweep.dtype) for n in sweep.ns}
        for sparsity in sweep.sparsities:
            W = to_run_dtype(prune_random(w16, sparsity, seed, log), sweep.dtype)
            for name in sweep.providers:
                provider = P.PROVIDERS[name]
                base = dict(model=shape.model, layer=shape.layer, M=shape.M, K=shape.K, sparsity=sparsity,
                            dtype=sweep.dtype, provider=name, label=provider.label)
                reason = provider.unavailable(sweep.dtype, sparsity)
                for n in sweep.ns:
                    row = Result(N=n, status=SKIPPED, reason=reason or "", **base)
                    if not reason:
                        _simulate_one(provider, W, X[n], row)
                    rows.append(row)
                advance(len(sweep.ns), f"{shape.label} {sparsity:.0%} {name}")
    return rows


def _simulate_one(provider: P.Provider, W: Any, X: Any, row: Result) -> None:
    try:
        from flashllm_nb.reference import linear_reference

        prepared = provider.prepare(W)
        y = prepared.bind(X)()
        ref = np.asarray(linear_reference(X, prepared.encoded), dtype=np.float64)
        check = check_close(np.asarray(y).astype(np.float64), ref, row_norms(X), row_norms(W), row.K,
                            dtype_name(y.dtype), "float64")
        row.status, row.reason, row.worst_error = (OK if check.ok else WRONG), check.message, check.worst
        row.note, row.weight_bytes = prepared.note, prepared.nbytes
    except Exception as exc:
        row.status, row.reason = _failure(exc)


# ------------------------------------------------------------------------------------------------ metadata

def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:
        return None


def _command_line(argv: Sequence[str]) -> str:
    """The command as typed: ``python -m flashllm_nb.bench ...`` (whose sys.argv[0] is __main__.py's path), or
    the console script (``flashllm-nb bench ...``)."""
    if sys.argv and sys.argv[0].endswith("__main__.py"):
        return shlex.join([Path(sys.executable).name, "-m", "flashllm_nb.bench", *argv])
    return shlex.join(sys.argv)


def environment(argv: Sequence[str], sweep: Sweep, simulator: bool, copy_gbps: float | None) -> dict:
    """Everything a reader needs to trust or reproduce the numbers: card, versions, command line, date."""
    meta: dict[str, Any] = {
        "tool": "flashllm_nb.bench",
        "schema": 1,
        "sample": False,
        "simulator": simulator,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": _command_line(argv),
        "argv": list(argv),
        "sweep": dataclasses.asdict(sweep),
        "copy_bandwidth_gbps": copy_gbps,
        "versions": {"python": platform.python_version(),
                     **{m: _version(m) for m in ("flashllm_nb", "numpy", "numba", "numba_cuda", "cupy", "torch")}},
    }
    if simulator:
        meta["device"] = {"name": "Numba CUDA simulator (no GPU; no timings)"}
        return meta
    import cupy

    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"]
    meta["device"] = {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": dev.compute_capability,
        "sm_count": int(props["multiProcessorCount"]),
        "l2_bytes": int(props["l2CacheSize"]),
        "memory_bytes": int(props["totalGlobalMem"]),
        "clock_khz": int(props["clockRate"]),
    }
    meta["driver_version"] = int(cupy.cuda.runtime.driverGetVersion())
    meta["runtime_version"] = int(cupy.cuda.runtime.runtimeGetVersion())
    return meta


def measure_copy_bandwidth(log: Callable[[str], None] = print) -> float:
    """The device-to-device copy bandwidth of this run (GB/s, read + written), logged."""
    start = time.perf_counter()
    gbps = copy_bandwidth()
    log(f"device-to-device copy: {gbps:.0f} GB/s (bytes read + written, median of 20 x 1 GiB; "
        f"{time.perf_counter() - start:.1f} s)")
    return gbps
