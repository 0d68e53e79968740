"""Every decoder kernel (flashllm_nb.llm.kernels and .attention), as the GPU runs it, compiled to PTX for sm_80 and sm_90 and
assembled by ``ptxas -v`` without a GPU: no local memory (a per-thread array Numba failed to keep in registers shows
up as a stack frame), 16-byte loads where keys and values are read, no float64 arithmetic in the kernels that do
the most arithmetic. On sm_90 every kernel is built for dependent launch and begins with ``griddepcontrol.wait``; the
norm and attention kernels also let the next kernel launch (``griddepcontrol.launch_dependents``)."""

from __future__ import annotations

import pytest

from ptx_compile_worker import compile_ptx_in_subprocess

pytestmark = pytest.mark.ptx

CCS = [(8, 0), (9, 0)]
RELEASING = ("norm", "attention")
CONFIGS = [dict(name="embed", dtype=d) for d in ("float16", "bfloat16")]
CONFIGS += [dict(name="norm", dtype=d, kind=k, threads=1024) for d in ("float16", "bfloat16") for k in ("layer", "rms")]
CONFIGS += [dict(name="add", dtype="float16")]
CONFIGS += [dict(name="split_heads", dtype=d, head_dim=h, rope=r)
            for d, h, r in (("float16", 128, False), ("bfloat16", 128, True), ("float16", 80, True))]
CONFIGS += [dict(name="attention", dtype=d, head_dim=h, threads=128, split=split)
            for d, h in (("float16", 128), ("bfloat16", 128), ("float16", 64), ("float16", 80), ("bfloat16", 256))
            for split in (False, True)]
CONFIGS += [dict(name="activation", dtype=d, kind=k) for d in ("float16", "bfloat16") for k in ("relu", "silu_glu")]
CONFIGS += [dict(name="add_bias", dtype="bfloat16"), dict(name="argmax", dtype="float16", threads=256),
            dict(name="finish_step"), dict(name="expand")]


def _id(config, cc):
    rest = "-".join(f"{v}" for k, v in config.items() if k != "name")
    return f"{config['name']}-{rest}-sm{''.join(str(c) for c in cc)}"


def _dependent(cc) -> bool:
    """What ``kernels.driver.grid_dependency_supported`` says on a GPU of compute capability ``cc``."""
    return tuple(cc) >= (9, 0)


@pytest.fixture(scope="module")
def compiled():
    results = []
    for cc in CCS:
        configs = [dict(config, dependent=_dependent(cc)) for config in CONFIGS]
        results += compile_ptx_in_subprocess("llm_ptx_factory", "llm_kernel", configs, [cc])
    return {(tuple(sorted((k, v) for k, v in r.config.items() if k != "dependent")), tuple(r.cc)): r
            for r in results}


@pytest.mark.parametrize("config,cc", [(c, cc) for c in CONFIGS for cc in CCS],
                         ids=[_id(c, cc) for c in CONFIGS for cc in CCS])
def test_decoder_kernel_compiles_without_local_memory(compiled, config, cc):
    result = compiled[(tuple(sorted(config.items())), cc)]
    assert result.error is None, result.error
    assert ("griddepcontrol.wait;" in result.ptx) == _dependent(cc), f"griddepcontrol.wait in {_id(config, cc)}"
    # The norm and attention kernels let the next kernel launch before their last stores; the others when done.
    releases = config["name"] in RELEASING and _dependent(cc)
    assert ("griddepcontrol.launch_dependents;" in result.ptx) == releases, \
        f"griddepcontrol.launch_dependents in {_id(config, cc)}"
    if config["name"] == "attention":
        assert "ld.global.nc.L1::no_allocate.v4.u32" in result.ptx
    if config["name"] in ("attention", "norm", "activation"):
        # float32 throughout: a float64 operation here would run at a fraction of the rate (split_heads is left
        # out: libdevice's sinf/cosf reduce very large angles in float64, on a path taken only for those)
        assert not [line for line in result.ptx.splitlines() if ".f64" in line and "cvt" not in line], \
            f"float64 arithmetic in {_id(config, cc)}"
    if result.ptxas is None:
        pytest.skip(result.ptxas_skipped)
    assert result.ptxas.returncode == 0, result.ptxas.log
    assert result.ptxas.spill_bytes == 0, result.ptxas.log
    # libdevice's cosf/sinf keep a 28-byte table in local memory for angles beyond ~1e5 radians (Payne-Hanek
    # reduction), a path the rotary embedding takes only past position ~1e5; every other kernel has no stack
    rope = config["name"] == "split_heads" and config["rope"]
    assert result.ptxas.stack_frame == (32 if rope else 0), result.ptxas.log
    print(f"{_id(config, cc)}: {result.ptxas.registers} registers")
