"""The two modes end to end: the GPU benchmark (time, check, report) and the simulator's correctness check."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from . import report
from .providers import PROVIDERS, module_unavailable
from .sweep import ERROR, OK, WRONG, Result, Sweep, SweepAborted, environment, measure_copy_bandwidth, run_gpu, \
    run_simulator

__all__ = ["run_gpu_benchmark", "run_simulator_check"]

SIMULATOR_BANNER = """\
==============================================================================================================
SIMULATOR MODE: no GPU here (or NUMBA_ENABLE_CUDASIM=1). Numba's CUDA simulator runs every GPU thread as a
Python thread, so timings would be meaningless: none are taken and no speedups are printed. This run only
checks flashllm_nb's kernels against the float64 reference (flashllm_nb.reference.linear_reference) on tiny
shapes. Run on a CUDA GPU with CuPy installed for the benchmark.
=============================================================================================================="""


def _exit_status(rows: list[dict], aborted: str | None) -> int:
    """1 when one of flashllm_nb's own kernels was WRONG or raised, or the sweep stopped early; else 0.

    A peer's failure (cuSPARSE in fp16 through PyTorch is not accurate enough, say) is reported, not fatal.
    """
    ours_failed = any(r["status"] in (WRONG, ERROR) and PROVIDERS[r["provider"]].ours for r in rows)
    return 1 if aborted or ours_failed else 0


def run_gpu_benchmark(sweep: Sweep, argv: Sequence[str], out_dir: Path) -> int:
    """Measure, then print the report on stdout and write it into ``out_dir``; the progress bar goes to stderr."""
    try:
        import cupy

        cupy.cuda.Device().compute_capability  # noqa: B018 - raises here if the CUDA runtime cannot start
    except Exception as exc:
        print(f"error: the GPU benchmark needs CuPy on a working CUDA device "
              f"(pip install 'flashllm_nb[cu13]'); {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if sweep.dtype == "bf16" and module_unavailable("torch"):
        print(f"error: --dtype bf16 needs PyTorch (bf16 arrays travel as torch tensors): {module_unavailable('torch')}",
              file=sys.stderr)
        return 2

    progress = report.Progress(sweep.size)
    copy_gbps = measure_copy_bandwidth(progress.log)
    meta = environment(argv, sweep, simulator=False, copy_gbps=copy_gbps)
    progress.log(f"{meta['device']['name']}: {len(sweep.shapes)} shapes x {len(sweep.sparsities)} sparsities x "
                 f"{len(sweep.ns)} N x {len(sweep.providers)} providers = {sweep.size} measurements")
    results: list[Result] = []
    aborted = None
    try:
        run_gpu(sweep, progress.advance, progress.log, results)
    except SweepAborted as exc:
        aborted = str(exc)
    except KeyboardInterrupt:
        aborted = "interrupted (Ctrl-C)"
    if aborted:
        meta["aborted"] = aborted
        progress.log(f"sweep stopped early: {aborted}; writing the {len(results)} results so far")

    rows = [r.as_row() for r in results]
    report.derive_metrics(rows, copy_gbps)
    paths = report.write_all(out_dir, meta, rows)
    print(report.markdown_report(meta, rows))
    progress.log("written: " + ", ".join(str(p) for p in paths.values()))
    return _exit_status(rows, aborted)


def run_simulator_check(sweep: Sweep, argv: Sequence[str]) -> int:
    """Correctness only (see :data:`SIMULATOR_BANNER`); prints a table, writes no files."""
    print(SIMULATOR_BANNER)
    print("SIMULATOR MODE: correctness checks only, no timings (see the banner on stdout)", file=sys.stderr)
    if not sweep.providers:
        print("no provider runs in the simulator among those selected")
        return 0
    progress = report.Progress(sweep.size)
    results = run_simulator(sweep, progress.advance, progress.log)
    rows = [r.as_row() for r in results]
    print(report.simulator_table(rows))
    notes = report.notes_lines(rows)
    if notes:
        print("\n" + "\n".join(f"- {n}" for n in notes))
    n_ok = sum(r["status"] == OK for r in rows)
    print(f"\n{n_ok} of {len(rows)} checks passed; SIMULATOR: no timings, no speedups.")
    return _exit_status(rows, None)
