"""Using the library on a machine without a GPU: the mode ``import flashllm_nb`` chooses, the documented switch
(``use_simulator``), the array-module seam (``xp``), and errors that say there is no GPU and how to use the simulator.

Numba fixes its mode when ``numba.cuda`` is first imported, and this session has imported it long ago, so every
test of a mode runs a fresh interpreter. Tests that need the machine to have no GPU skip on a GPU machine, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import flashllm_nb as fl
from flashllm_nb._runtime import gpu_available

ROOT = Path(__file__).resolve().parents[1]
no_gpu_only = pytest.mark.skipif(gpu_available(), reason="checks the no-GPU path; this machine has a GPU")


def _python(code: str, switch: str | None) -> dict:
    """Run ``code`` in a fresh interpreter with NUMBA_ENABLE_CUDASIM set to ``switch`` (unset for None); the code
    prints one JSON object as its last line, which is returned."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if switch is not None:
        env["NUMBA_ENABLE_CUDASIM"] = switch
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@no_gpu_only
def test_import_chooses_the_simulator_without_a_gpu():
    got = _python("""
        import json, os, sys
        import flashllm_nb as fl
        chosen = os.environ.get("NUMBA_ENABLE_CUDASIM")
        from numba import cuda
        print(json.dumps({"switch": chosen, "simulator": fl.simulator_enabled(), "xp": fl.xp.__name__,
                          "numba_cuda_simulated": "numba.cuda.simulator_init" in sys.modules}))
    """, switch=None)
    assert got == {"switch": "1", "simulator": True, "xp": "numpy", "numba_cuda_simulated": True}


def test_an_explicit_switch_wins_and_use_simulator_turns_it_on_before_numba_cuda():
    got = _python("""
        import json
        import flashllm_nb as fl
        before = fl.simulator_enabled()
        fl.use_simulator()
        from flashllm_nb.kernels import ptx
        print(json.dumps({"before": before, "after": fl.simulator_enabled(), "ptx": ptx.SIMULATOR}))
    """, switch="0")
    assert got == {"before": False, "after": True, "ptx": True}


def test_use_simulator_after_numba_cuda_for_the_gpu_says_why_it_cannot():
    got = _python("""
        import json
        import flashllm_nb as fl
        from numba import cuda
        try:
            fl.use_simulator()
            error = None
        except RuntimeError as exc:
            error = str(exc)
        print(json.dumps({"error": error, "simulator": fl.simulator_enabled()}))
    """, switch="0")
    assert got["simulator"] is False and got["error"] is not None
    assert "already imported" in got["error"] and "before anything imports numba.cuda" in got["error"]


@no_gpu_only
def test_every_gpu_path_without_a_gpu_says_so_and_how_to_use_the_simulator():
    """Simulator off (NUMBA_ENABLE_CUDASIM=0) on a machine without a GPU: ``linear`` on host arrays,
    ``A.to_device()`` and ``fl.xp`` each name the missing GPU and the simulator's switch, and no longer advise
    ``A.to_device()``."""
    got = _python("""
        import json
        import numpy as np
        import flashllm_nb as fl
        A = fl.TiledCSL.from_dense(np.eye(128, 64, dtype=np.float16))
        X = np.ones((4, 64), np.float16)
        errors = {}
        for name, call in [("linear", lambda: fl.linear(X, A)), ("to_device", A.to_device), ("xp", lambda: fl.xp)]:
            try:
                call()
                errors[name] = None
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(errors))
    """, switch="0")
    assert got["linear"].startswith("ValueError: Invalid device of A: expected on the device, got host")
    assert got["to_device"].startswith("RuntimeError: TiledCSL.to_device() needs a CUDA GPU")
    assert got["xp"].startswith("RuntimeError: flashllm_nb.xp (CuPy) needs a CUDA GPU")
    for message in got.values():
        assert "no usable CUDA GPU" in message and "flashllm_nb.use_simulator()" in message, message
        assert "NUMBA_ENABLE_CUDASIM=1" in message and "A.to_device()" not in message, message


# ------------------------------------------------------------------------------------ in this session's mode

@pytest.mark.sim
def test_under_the_simulator_xp_is_numpy_and_to_device_is_the_host_matrix():
    A = fl.TiledCSL.from_dense(np.eye(128, 64, dtype=np.float16))
    assert fl.simulator_enabled() and fl.xp is np
    assert A.to_device() is A and not A.on_device


@pytest.mark.sim
@pytest.mark.parametrize("product", ["linear", "spmm", "prepare_linear"])
def test_read_only_out_is_refused_before_the_kernel_runs(product):
    rng = np.random.default_rng(0)
    A = fl.TiledCSL.from_dense(fl.prune.random(rng.standard_normal((128, 64)).astype(np.float16), 0.5, seed=0))
    X = rng.standard_normal((8, 64)).astype(np.float16)
    args, shape = ((A, X.T.copy()), (128, 8)) if product == "spmm" else ((X, A), (8, 128))
    out = np.zeros(shape, np.float16)
    out.flags.writeable = False
    with pytest.raises(ValueError, match=r"^Invalid writability of out: expected a writeable array, got a read-only"):
        getattr(fl, product)(*args, out=out)
    assert not out.any()
