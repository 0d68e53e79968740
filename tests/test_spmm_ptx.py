"""Every SpMM kernel configuration the launcher can pick, compiled to PTX for sm_80 and sm_90 (the ``mma.sync``
family; on sm_90 built for dependent launch, as the plan builds every kernel there) or sm_90a (the ``wgmma``
family, Hopper only) and assembled by ``ptxas -v`` without a GPU: it must contain
the Tensor-Core and async-copy instructions it is built on, and use no local memory (no spills, no stack frame: an
accumulator array that Numba failed to keep in registers shows up here as a stack frame).

The registers and shared memory of each configuration are printed (``pytest -s``) and recorded in
``docs/kernel-results.md`` (Registers).
"""

from __future__ import annotations

import itertools

import pytest

from flashllm_nb.kernels.spmm.config import TILE_N_CHOICES, SpmmConfig
from flashllm_nb.kernels.spmm.plan import DEFAULT_WARPS, PREFETCH_MORE_TILE_N, warps_for
from ptx_compile_worker import compile_ptx_in_subprocess

pytestmark = pytest.mark.ptx

CCS = [(8, 0)]
CONFIGS = [
    dict(tile_n=t, dtype=d, x_layout=layout, splits=s, warps=DEFAULT_WARPS)
    for t, d, layout, s in itertools.product(TILE_N_CHOICES, ("float16", "bfloat16"), ("nk", "kn"), (False, True))
]
# The larger register prefetch (dense matrices, 4 warps up to PREFETCH_MORE_TILE_N) adds up to 8 registers:
# checked on the split-K variant (the most registers) of each such block width and layout, fp16 (bf16 differs
# only in the mma type).
CONFIGS += [
    dict(tile_n=t, dtype="float16", x_layout=layout, splits=True, warps=DEFAULT_WARPS, prefetch_vectors=640)
    for t, layout in itertools.product(TILE_N_CHOICES, ("nk", "kn")) if t <= PREFETCH_MORE_TILE_N
]
# clear="entries" (sparse matrices, 4 warps up to tile_n 16): a positions buffer and the mbarriers; with each
# register buffer it can be planned with, on the split-K variant, fp16.
ENTRIES = [(16, "nk", 384), (16, "kn", 256), (8, "nk", 256)]
CONFIGS += [
    dict(tile_n=t, dtype="float16", x_layout=layout, splits=True, warps=4, prefetch_vectors=p, clear="entries")
    for t, layout, p in ENTRIES
]
# Stream-K (Force(stream_k=True): a block per resident slot, its range of k-tiles crossing tile rows) on the
# mma.sync path, "kn" (so also built for dependent launch on sm_90 below).
CONFIGS += [dict(tile_n=16, dtype="bfloat16", x_layout="kn", splits=True, stream_k=True, warps=DEFAULT_WARPS)]
# ReLU in the epilogue (linear(..., activation="relu")) on the mma.sync path.
CONFIGS += [dict(tile_n=16, dtype="bfloat16", x_layout="nk", splits=True, warps=DEFAULT_WARPS, relu=True)]
# Tiled-Bitmap A (sparse="bitmap": shared bitmap buffers and the walk), with the value buffers the plan gives at
# 80 % (256) and 70 % (384).
CONFIGS += [
    dict(tile_n=8, dtype="float16", x_layout="nk", splits=True, warps=4, prefetch_vectors=256, sparse="bitmap"),
    dict(tile_n=16, dtype="bfloat16", x_layout="kn", splits=False, warps=4, prefetch_vectors=384, sparse="bitmap"),
]
# On sm_90 the plan builds every kernel for dependent launch (griddepcontrol) and takes the mma.sync family for "kn"
# activations only ("nk" goes to wgmma): each "kn" configuration above, so built.
DEPENDENT_CC = (9, 0)
DEPENDENT_CONFIGS = [dict(config, grid_dependency=True) for config in CONFIGS if config["x_layout"] == "kn"]
# wgmma exists only on sm_90a, and only for "nk" activations (both operands K-major); one or two warpgroups per block.
# Hopper is also where the plan builds for dependent launch, so each is built so.
WGMMA_CC = (9, 0, "a")
WGMMA_CONFIGS = [
    dict(tile_n=t, dtype=d, x_layout="nk", splits=s, warps=warps_for("wgmma", t), mma="wgmma")
    for t, d, s in itertools.product(TILE_N_CHOICES, ("float16", "bfloat16"), (False, True))
] + [
    dict(tile_n=t, dtype="float16", x_layout="nk", splits=True, warps=4, mma="wgmma", prefetch_vectors=640)
    for t in TILE_N_CHOICES if warps_for("wgmma", t) == 4 and t <= PREFETCH_MORE_TILE_N
] + [
    dict(tile_n=t, dtype="float16", x_layout="nk", splits=True, warps=4, mma="wgmma", prefetch_vectors=p,
         clear="entries")
    for t, p in ((16, 512), (16, 384), (16, 256), (8, 512), (8, 384), (8, 256))
] + [
    # The largest entries buffer the plan gives (77-84 % sparse), also in bf16 without split-K.
    dict(tile_n=16, dtype="bfloat16", x_layout="nk", splits=False, warps=4, mma="wgmma", prefetch_vectors=512,
         clear="entries")
] + [
    # Two activation stages and a promise of 6 blocks per SM hold ptxas to 80 registers: the plan's only such
    # configuration (stages_for), both dtypes, with and without split-K.
    dict(tile_n=16, dtype=d, x_layout="nk", splits=s, warps=4, mma="wgmma", prefetch_vectors=256, clear="entries",
         stages=2)
    for d, s in itertools.product(("float16", "bfloat16"), (False, True))
]
# Tiled-Bitmap A on what Hopper plans for it at one and 16 tokens (80 %, 70 %) and on 8 warps (one bitmap word a
# thread), ReLU included.
WGMMA_CONFIGS += [
    dict(tile_n=8, dtype="float16", x_layout="nk", splits=True, warps=4, mma="wgmma", prefetch_vectors=256,
         sparse="bitmap"),
    dict(tile_n=16, dtype="bfloat16", x_layout="nk", splits=False, warps=4, mma="wgmma", prefetch_vectors=384,
         sparse="bitmap"),
    dict(tile_n=32, dtype="float16", x_layout="nk", splits=True, warps=8, mma="wgmma", prefetch_vectors=256,
         sparse="bitmap", relu=True),
]
# ReLU in the epilogue (the FFN-in product of ReLU models), on what Hopper plans for it at batch 1 and 16.
WGMMA_CONFIGS += [
    dict(tile_n=t, dtype="float16", x_layout="nk", splits=s, warps=4, mma="wgmma", prefetch_vectors=512,
         clear="entries", relu=True) for t, s in ((8, False), (16, True))
]
# Stream-K on what Hopper plans at one and 16 tokens at 80 %, and on Tiled-Bitmap at one token.
WGMMA_CONFIGS += [
    dict(tile_n=t, dtype="float16", x_layout="nk", splits=True, stream_k=True, warps=4, mma="wgmma",
         prefetch_vectors=512, clear="entries") for t in (8, 16)
] + [
    dict(tile_n=8, dtype="float16", x_layout="nk", splits=True, stream_k=True, warps=4, mma="wgmma",
         prefetch_vectors=256, sparse="bitmap"),
]
WGMMA_CONFIGS = [dict(config, grid_dependency=True) for config in WGMMA_CONFIGS]
# The development variant that records per-block timelines (dev/block_timeline.py), on what Hopper plans at one
# token for OPT's 7168 x 7168 at 80 %.
TIMELINE_CONFIG = dict(tile_n=8, dtype="float16", x_layout="nk", splits=True, warps=4, mma="wgmma",
                       prefetch_vectors=512, clear="entries", grid_dependency=True, timeline=True)
TIMELINE_REGISTERS = ["%globaltimer_lo", "%smid"]
STREAM_K_TIMELINE_CONFIG = dict(TIMELINE_CONFIG, stream_k=True)
# The A/B alternative to the plan's split-K ticket (SpmmConfig.ticket="fences": two membar.gl around a relaxed add
# instead of one acquire-release add), on the configuration of TIMELINE_CONFIG and on an mma.sync one for sm_80.
FENCES_WGMMA_CONFIG = dict(TIMELINE_CONFIG, timeline=False, ticket="fences")
FENCES_SYNC_CONFIG = dict(tile_n=16, dtype="bfloat16", x_layout="kn", splits=True, warps=4, mma="sync",
                          prefetch_vectors=512, clear="rows", ticket="fences")
ACQ_REL_TICKET, FENCE = "atom.acq_rel.gpu.global.add.u32", "membar.gl"
GRID_DEPENDENCY_INSTRUCTIONS = ["griddepcontrol.launch_dependents;", "griddepcontrol.wait;"]
WGMMA_INSTRUCTIONS = [
    "wgmma.fence.sync.aligned",
    "wgmma.commit_group.sync.aligned",
    "wgmma.wait_group.sync.aligned 0",
    "fence.proxy.async.shared::cta",
    "cp.async.cg.shared.global",
    "cp.async.commit_group",
    "cp.async.wait_group",
]
INSTRUCTIONS = [
    "mma.sync.aligned.m16n8k16.row.col.f32",
    "ldmatrix.sync.aligned.m8n8",
    "cp.async.cg.shared.global",
    "cp.async.commit_group",
    "cp.async.wait_group",
]
# How a consumed A buffer is cleared with mma.sync: a warp's own rows after a bar.warp.sync (its ldmatrix rows), or
# each thread's scattered positions after an mbarrier phase. The wgmma path orders its zeros with barriers only.
CLEAR_INSTRUCTIONS = {
    "rows": ["bar.warp.sync"],
    "entries": ["mbarrier.init.shared.b64", "mbarrier.arrive.shared.b64", "mbarrier.test_wait.parity.shared.b64"],
}


@pytest.fixture(scope="module")
def compiled():
    results = compile_ptx_in_subprocess("spmm_ptx_factory", "spmm_kernel", CONFIGS + [FENCES_SYNC_CONFIG], CCS)
    results += compile_ptx_in_subprocess("spmm_ptx_factory", "spmm_kernel", DEPENDENT_CONFIGS, [DEPENDENT_CC])
    results += compile_ptx_in_subprocess("spmm_ptx_factory", "spmm_kernel",
                                         WGMMA_CONFIGS + [TIMELINE_CONFIG, STREAM_K_TIMELINE_CONFIG,
                                                          FENCES_WGMMA_CONFIG], [WGMMA_CC])
    return {(tuple(sorted(r.config.items())), tuple(r.cc)): r for r in results}


def _id(config, cc):
    return (f"n{config['tile_n']}-{config['dtype']}-{config['x_layout']}-{'split' if config['splits'] else 'whole'}"
            f"-{config.get('mma', 'sync')}-p{config.get('prefetch_vectors', 512)}-{config.get('clear', 'rows')}"
            f"-s{config.get('stages', 4)}{'-relu' if config.get('relu') else ''}"
            f"{'-bitmap' if config.get('sparse') == 'bitmap' else ''}{'-stream' if config.get('stream_k') else ''}"
            f"{'-dependent' if config.get('grid_dependency') else ''}"
            f"-sm{''.join(str(c) for c in cc)}")


def _assembled_without_local_memory(result, config, cc):
    if result.ptxas is None:
        pytest.skip(result.ptxas_skipped)
    report = result.ptxas
    assert report.returncode == 0, report.log
    assert report.spill_bytes == 0, report.log
    assert report.stack_frame == 0, f"{_id(config, cc)} keeps {report.stack_frame} bytes in local memory\n{report.log}"
    print(f"{_id(config, cc)}: {report.registers} registers")


def _check_no_timeline(result, config, cc):
    """The kernels the plan launches read no timer."""
    for register in TIMELINE_REGISTERS:
        assert register not in result.ptx, f"{register} in {_id(config, cc)}"


def _check_ticket(result, config, cc):
    """A split-K kernel takes its ticket with the acquire-release add, or between two fences when built so; a
    kernel without split-K does neither."""
    acq_rel = config.get("ticket", SpmmConfig.ticket) == "acq_rel"
    assert (ACQ_REL_TICKET in result.ptx) == (config["splits"] and acq_rel), f"{ACQ_REL_TICKET} in {_id(config, cc)}"
    assert (result.ptx.count(FENCE) == 2) == (config["splits"] and not acq_rel), \
        f"{result.ptx.count(FENCE)} {FENCE} in {_id(config, cc)}"


def _check_grid_dependency(result, config, cc):
    """griddepcontrol in the kernel exactly when it is built for dependent launch."""
    for instruction in GRID_DEPENDENCY_INSTRUCTIONS:
        assert (instruction in result.ptx) == config.get("grid_dependency", False), \
            f"{instruction} {'missing from' if config.get('grid_dependency') else 'in'} {_id(config, cc)}"


SYNC_CASES = [(c, cc) for c in CONFIGS for cc in CCS] + [(c, DEPENDENT_CC) for c in DEPENDENT_CONFIGS]


@pytest.mark.parametrize("config,cc", SYNC_CASES, ids=[_id(c, cc) for c, cc in SYNC_CASES])
def test_configuration_compiles_to_tensor_core_code_without_local_memory(compiled, config, cc):
    result = compiled[(tuple(sorted(config.items())), cc)]
    assert result.error is None, result.error
    _check_grid_dependency(result, config, cc)
    for instruction in INSTRUCTIONS + CLEAR_INSTRUCTIONS[config.get("clear", "rows")]:
        assert instruction in result.ptx, f"{instruction} missing from {_id(config, cc)}"
    mma_type = "bf16" if config["dtype"] == "bfloat16" else "f16"
    assert f"m16n8k16.row.col.f32.{mma_type}.{mma_type}.f32" in result.ptx
    if config["x_layout"] == "kn":
        assert "ldmatrix.sync.aligned.m8n8" in result.ptx and ".trans" in result.ptx
    assert "wgmma" not in result.ptx and "fence.proxy.async" not in result.ptx
    _check_no_timeline(result, config, cc)
    _check_ticket(result, config, cc)
    _assembled_without_local_memory(result, config, cc)


@pytest.mark.parametrize("config", WGMMA_CONFIGS, ids=[_id(c, WGMMA_CC) for c in WGMMA_CONFIGS])
def test_wgmma_configuration_compiles_for_sm90a_without_local_memory(compiled, config):
    result = compiled[(tuple(sorted(config.items())), WGMMA_CC)]
    assert result.error is None, result.error
    assert ".target sm_90a" in result.ptx
    _check_grid_dependency(result, config, WGMMA_CC)
    for instruction in WGMMA_INSTRUCTIONS:
        assert instruction in result.ptx, f"{instruction} missing from {_id(config, WGMMA_CC)}"
    # clear="entries" zeroes first, behind a second barrier per step (spmm.tiled_csl): no mbarrier on this path.
    assert "mbarrier" not in result.ptx
    mma_type = "bf16" if config["dtype"] == "bfloat16" else "f16"
    products = result.ptx.count(f"wgmma.mma_async.sync.aligned.m64n{config['tile_n']}k16.f32.{mma_type}.{mma_type} ")
    # 4 k16 steps x the m64 halves of the warpgroup (both with 4 warps, one each with 8) per k-tile, and the main
    # loop is unrolled by two k-tiles (one per word buffer), with either clearing.
    # A stream-K block's range meets at most two tile rows, a copy of the pass each.
    halves = 2 if config["warps"] == 4 else 1
    passes = 2 if config.get("stream_k") else 1
    assert products == passes * 2 * 4 * halves, \
        f"{products} wgmma in the main loop, expected {passes} x 2 x 4 x {halves}"
    # The operands are read by the Tensor Cores from shared memory: no ldmatrix, no mma.sync.
    assert "ldmatrix" not in result.ptx and "mma.sync" not in result.ptx
    _check_no_timeline(result, config, WGMMA_CC)
    _check_ticket(result, config, WGMMA_CC)
    _assembled_without_local_memory(result, config, WGMMA_CC)


@pytest.mark.parametrize("config", [TIMELINE_CONFIG, STREAM_K_TIMELINE_CONFIG], ids=["split-k", "stream-k"])
def test_timeline_variant_reads_the_timer_and_compiles_without_local_memory(compiled, config):
    """The development variant (SpmmConfig.timeline) reads %globaltimer_lo and %smid, and ptxas assembles it
    without local memory, like the kernel it instruments. The stream-K kernel sits at the 96 registers of 5 blocks
    an SM, and its timeline's marks in two passes spill a few bytes (16 with CUDA 13's ptxas): that variant shows
    where blocks land and the order of their phases, not their durations to the microsecond."""
    result = compiled[(tuple(sorted(config.items())), WGMMA_CC)]
    assert result.error is None, result.error
    for register in TIMELINE_REGISTERS:
        assert register in result.ptx, f"{register} missing from the timeline variant"
    if config.get("stream_k"):
        if result.ptxas is None:
            pytest.skip(result.ptxas_skipped)
        assert result.ptxas.returncode == 0 and result.ptxas.spill_bytes <= 64, result.ptxas.log
        return
    _assembled_without_local_memory(result, config, WGMMA_CC)


FENCES_CASES = [(FENCES_WGMMA_CONFIG, WGMMA_CC)] + [(FENCES_SYNC_CONFIG, cc) for cc in CCS]


@pytest.mark.parametrize("config,cc", FENCES_CASES, ids=[_id(c, cc) for c, cc in FENCES_CASES])
def test_fences_ticket_has_both_fences_and_compiles_without_local_memory(compiled, config, cc):
    """The A/B alternative ticket (SpmmConfig.ticket="fences") is two membar.gl and no acquire-release add, and
    ptxas assembles it without local memory, on both instruction paths."""
    result = compiled[(tuple(sorted(config.items())), cc)]
    assert result.error is None, result.error
    _check_ticket(result, config, cc)
    _assembled_without_local_memory(result, config, cc)

