"""Compile kernels to PTX in a subprocess with Numba's CUDA simulator off, then assemble them with ``ptxas -v``.

Why a subprocess: ``numba.cuda.compile_ptx`` needs no GPU, but it needs the real ``numba.cuda``, and a test session
without a GPU runs the simulator (``tests/conftest.py``). Numba reads ``NUMBA_ENABLE_CUDASIM`` once per process, so
the compilation runs in a fresh interpreter with ``NUMBA_ENABLE_CUDASIM=0``. Assembly runs here, in the caller.

Use (``tests/`` is on ``sys.path`` during a pytest session)::

    from ptx_compile_worker import compile_ptx_in_subprocess

    results = compile_ptx_in_subprocess(
        "flashllm_nb.kernels.spmm.tiled_csl", "build_kernel", [{"tile_n": 8}, {"tile_n": 64}], ccs=[(8, 0), (9, 0)]
    )
    for r in results:  # one per (config, cc), configs outer
        assert r.error is None, r.error
        assert "mma.sync.aligned.m16n8k16" in r.ptx
        if r.ptxas is None:
            pytest.skip(r.ptxas_skipped)
        assert r.ptxas.returncode == 0, r.ptxas.log
        assert r.ptxas.spill_bytes == 0, r.ptxas.log

The factory is a module-level function called in the subprocess as ``factory(**config)`` (configs must be JSON:
dicts of str, int, float, bool, None, lists). It returns ``(function, signature)`` or ``(function, signature,
options)``: ``function`` a Python function or a lazily compiled ``cuda.jit`` dispatcher (its ``py_func`` is used),
``signature`` a Numba signature or its string (``"void(float16[:, ::1], int32)"``), ``options`` keyword arguments
of ``numba.cuda.compile_ptx`` (``launch_bounds``, ``fastmath``, ``lineinfo``, ...). An exception in the factory or
the compiler (a typing error, say) is returned as ``error`` text, not raised.

ptxas: the one of the ``nvidia`` CUDA wheels installed with this interpreter (``nvidia/cu13/bin``, then
``nvidia/cuda_nvcc/bin``), which matches the NVVM numba-cuda uses, else the first on ``PATH``. A ptxas older than
the PTX (``Unsupported .version``) or none at all leaves ``ptxas`` None and says why in ``ptxas_skipped``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["PtxasReport", "PtxResult", "compile_ptx_in_subprocess", "find_ptxas", "run_ptxas"]

_TESTS = Path(__file__).resolve().parent
_ROOT = _TESTS.parent


@dataclass(frozen=True)
class PtxasReport:
    """What ``ptxas -v`` said about one PTX module; sizes in bytes."""

    ptxas: str
    returncode: int
    log: str
    registers: int | None  # the most registers any function uses
    spill_stores: int  # summed over functions
    spill_loads: int
    stack_frame: int  # the largest

    @property
    def spill_bytes(self) -> int:
        return self.spill_stores + self.spill_loads


@dataclass(frozen=True)
class PtxResult:
    """One (config, compute capability): the PTX or the compile error, and the ptxas report or why there is none."""

    config: dict
    cc: tuple[int, int]
    ptx: str | None
    error: str | None
    ptxas: PtxasReport | None = None
    ptxas_skipped: str | None = field(default=None)


def compile_ptx_in_subprocess(
    module: str,
    factory: str,
    configs: Sequence[Mapping],
    ccs: Sequence[tuple[int, int]] = ((8, 0), (9, 0)),
    *,
    assemble: bool = True,
    timeout: float = 600,
    jobs: int | None = None,
) -> list[PtxResult]:
    """Compile ``module.factory(**config)`` for every config and cc; results configs-major.

    The configs are shared out among ``jobs`` worker processes (default: one per CPU) that compile at the same time,
    and ``ptxas`` runs as many at once: compiling every kernel configuration one after another was the longest part
    of the CI run (217 s of 12.6 min on two cores)."""
    configs = list(configs)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(configs)))
    chunks = [configs[i::jobs] for i in range(jobs)]  # dealt round-robin: neighbouring configs cost alike
    with tempfile.TemporaryDirectory(prefix="flashllm_ptx_") as tmp:
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), str(_TESTS), env.get("PYTHONPATH")]))
        workers = []
        for i, chunk in enumerate(chunks):
            request, response = Path(tmp, f"request{i}.json"), Path(tmp, f"response{i}.json")
            request.write_text(json.dumps({"module": module, "factory": factory, "configs": chunk, "ccs": ccs}))
            process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), str(request), str(response)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            workers.append((process, response))
        per_config = [None] * len(configs)
        deadline = time.monotonic() + timeout  # for the whole call, as with one worker
        try:
            for i, (process, response) in enumerate(workers):
                _, stderr = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
                if process.returncode != 0:
                    raise RuntimeError(f"the PTX compile worker failed ({process.returncode}):\n{stderr[-4000:]}")
                # A worker answers len(ccs) results per config of its chunk, in the chunk's order.
                answered = json.loads(response.read_text())
                for j in range(len(chunks[i])):
                    per_config[i + j * jobs] = answered[j * len(ccs):(j + 1) * len(ccs)]
        finally:  # on a failure or a timeout, no worker outlives the call (or its temporary directory)
            for process, _ in workers:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
    raw = [r for answers in per_config for r in answers]
    results = [PtxResult(r["config"], tuple(r["cc"]), r["ptx"], r["error"]) for r in raw]
    if not assemble:
        return results
    ptxas, reason = find_ptxas()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda r: _assemble(r, ptxas, reason), results))


def _assemble(r: PtxResult, ptxas: str | None, reason: str | None) -> PtxResult:
    """``r`` with its ptxas report, or with why there is none."""
    if r.ptx is None:
        return r
    if ptxas is None:
        return PtxResult(r.config, r.cc, r.ptx, r.error, None, reason)
    report = run_ptxas(ptxas, r.ptx, r.cc)
    too_old = re.search(r"Unsupported \.version.*", report.log)
    if too_old:
        skipped = (
            f"{ptxas} cannot assemble this PTX ({too_old.group(0).strip()}); install the ptxas of "
            "numba-cuda's NVVM release (pip install 'cuda-toolkit[nvcc]==13.*' for numba-cuda[cu13])"
        )
        return PtxResult(r.config, r.cc, r.ptx, r.error, None, skipped)
    return PtxResult(r.config, r.cc, r.ptx, r.error, report)


def find_ptxas() -> tuple[str | None, str | None]:
    """``(path, None)`` of the ptxas to use, or ``(None, why there is none)``."""
    roots = []
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        roots += list(spec.submodule_search_locations)
    roots.append(str(Path(sysconfig.get_paths()["purelib"], "nvidia")))
    for root in roots:
        for sub in ("cu13", "cuda_nvcc"):
            candidate = Path(root, sub, "bin", "ptxas")
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate), None
    on_path = shutil.which("ptxas")
    if on_path:
        return on_path, None
    return None, "no ptxas: neither nvidia/cu13/bin nor nvidia/cuda_nvcc/bin in site-packages, nor on PATH"


def run_ptxas(ptxas: str, ptx: str, cc: tuple) -> PtxasReport:
    """Assemble ``ptx`` for ``sm_{cc}`` with ``ptxas -v`` and read registers, spills and stack from its log."""
    with tempfile.TemporaryDirectory(prefix="flashllm_ptxas_") as tmp:
        source = Path(tmp, "kernel.ptx")
        source.write_text(ptx)
        arch = f"-arch=sm_{cc[0]}{cc[1]}{cc[2] if len(cc) > 2 else ''}"  # (9, 0, "a"): sm_90a
        done = subprocess.run(
            [ptxas, "-v", arch, str(source), "-o", str(Path(tmp, "kernel.cubin"))], capture_output=True, text=True
        )
    log = done.stdout + done.stderr
    registers = [int(n) for n in re.findall(r"Used (\d+) registers", log)]
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return PtxasReport(
        ptxas=ptxas,
        returncode=done.returncode,
        log=log,
        registers=max(registers) if registers else None,
        spill_stores=sum(int(f[1]) for f in frames),
        spill_loads=sum(int(f[2]) for f in frames),
        stack_frame=max((int(f[0]) for f in frames), default=0),
    )


def _compile_device_functions_without_a_gpu(cc: tuple[int, int]) -> None:
    """Let kernels that call ``@cuda.jit(device=True)`` functions compile on a machine with no CUDA driver.

    numba-cuda compiles a device function on first call for the *current device's* compute capability, which
    needs a driver even under ``compile_ptx``. Where there is none, stand in a device of the requested capability;
    the device function is inlined into the kernel, whose PTX is then produced for each requested ``cc`` as usual.
    """
    from flashllm_nb._runtime import gpu_available

    if gpu_available():
        return
    import numba.cuda.dispatcher as dispatcher

    class _TargetDevice:
        compute_capability = cc

    dispatcher.get_current_device = _TargetDevice


def _worker(request_path: str, response_path: str) -> None:
    """The subprocess: compile every (config, cc) of the request, errors as text."""
    from numba import config as numba_config, cuda

    if numba_config.ENABLE_CUDASIM:
        raise RuntimeError("the PTX compile worker must run with NUMBA_ENABLE_CUDASIM=0")
    request = json.loads(Path(request_path).read_text())
    _compile_device_functions_without_a_gpu(tuple(request["ccs"][-1]))
    factory = getattr(importlib.import_module(request["module"]), request["factory"])
    results = []
    for config in request["configs"]:
        try:
            built = factory(**config)
            function, signature, options = (*built, {}) if len(built) == 2 else built
            function = getattr(function, "py_func", function)
        except Exception as error:  # reported per config, like a compile error
            failure = f"{type(error).__name__}: {error}"
            results += [{"config": config, "cc": cc, "ptx": None, "error": failure} for cc in request["ccs"]]
            continue
        for cc in request["ccs"]:
            try:
                ptx, _ = cuda.compile_ptx(function, signature, cc=tuple(cc), **options)
                results.append({"config": config, "cc": cc, "ptx": ptx, "error": None})
            except Exception as error:
                results.append({"config": config, "cc": cc, "ptx": None, "error": f"{type(error).__name__}: {error}"})
    Path(response_path).write_text(json.dumps(results))


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
