"""The PTX layer binds one of two implementations; both must offer the same names, or a kernel that runs in the
simulator could fail to compile for the GPU (or the reverse)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_twins_and_intrinsics_export_the_same_names():
    code = (
        "import json; from flashllm_nb.kernels import ptx_asm, ptx_sim; "
        "print(json.dumps([sorted(ptx_asm.__all__), sorted(ptx_sim.__all__)]))"
    )
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")  # ptx_asm needs the real numba.cuda
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    intrinsics, twins = json.loads(done.stdout)
    assert intrinsics == twins
    assert "mma_m16n8k16_f16" in intrinsics
