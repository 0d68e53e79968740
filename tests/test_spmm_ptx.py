"""Every SpMM kernel configuration the launcher can pick, compiled to PTX for sm_80 and sm_90 and assembled by
``ptxas -v`` without a GPU: it must contain the Tensor-Core and async-copy instructions it is built on, and use
no local memory (no spills, no stack frame: an accumulator array that Numba failed to keep in registers shows up
here as a stack frame).

The registers and shared memory of each configuration are printed (``pytest -s``) and recorded in
``bench/RESULTS.md``.
"""

from __future__ import annotations

import itertools

import pytest

from flashllm_nb.kernels.launch import DEFAULT_WARPS
from flashllm_nb.kernels.spmm_tiled_csl import TILE_N_CHOICES
from ptx_compile_worker import compile_ptx_in_subprocess

pytestmark = pytest.mark.ptx

CCS = [(8, 0), (9, 0)]
CONFIGS = [
    dict(tile_n=t, dtype=d, x_layout=layout, splits=s, warps=DEFAULT_WARPS)
    for t, d, layout, s in itertools.product(TILE_N_CHOICES, ("float16", "bfloat16"), ("nk", "kn"), (False, True))
]
INSTRUCTIONS = [
    "mma.sync.aligned.m16n8k16.row.col.f32",
    "ldmatrix.sync.aligned.m8n8",
    "cp.async.cg.shared.global",
    "cp.async.commit_group",
    "cp.async.wait_group",
]


@pytest.fixture(scope="module")
def compiled():
    results = compile_ptx_in_subprocess("spmm_ptx_factory", "spmm_kernel", CONFIGS, CCS)
    return {(tuple(sorted(r.config.items())), r.cc): r for r in results}


def _id(config, cc):
    return f"n{config['tile_n']}-{config['dtype']}-{config['x_layout']}-{'split' if config['splits'] else 'whole'}-sm{cc[0]}{cc[1]}"


@pytest.mark.parametrize("config,cc", [(c, cc) for c in CONFIGS for cc in CCS],
                         ids=[_id(c, cc) for c in CONFIGS for cc in CCS])
def test_configuration_compiles_to_tensor_core_code_without_local_memory(compiled, config, cc):
    result = compiled[(tuple(sorted(config.items())), cc)]
    assert result.error is None, result.error
    for instruction in INSTRUCTIONS:
        assert instruction in result.ptx, f"{instruction} missing from {_id(config, cc)}"
    mma_type = "bf16" if config["dtype"] == "bfloat16" else "f16"
    assert f"m16n8k16.row.col.f32.{mma_type}.{mma_type}.f32" in result.ptx
    if config["x_layout"] == "kn":
        assert "ldmatrix.sync.aligned.m8n8" in result.ptx and ".trans" in result.ptx
    if result.ptxas is None:
        pytest.skip(result.ptxas_skipped)
    report = result.ptxas
    assert report.returncode == 0, report.log
    assert report.spill_bytes == 0, report.log
    assert report.stack_frame == 0, f"{_id(config, cc)} keeps {report.stack_frame} bytes in local memory\n{report.log}"
    print(f"{_id(config, cc)}: {report.registers} registers")
