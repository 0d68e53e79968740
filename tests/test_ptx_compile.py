"""The inline-PTX wrappers of ``flashllm_nb.kernels.ptx_asm`` compiled with ``numba.cuda.compile_ptx`` for sm_80 and
sm_90 (no GPU needed): each test kernel of ``ptx_kernels`` contains the instruction text it is meant to emit,
``ptxas -v`` assembles it with no spills, and misuse fails to type with a message naming the instruction, what was
expected and what was given.

Compilation runs once per session in a subprocess with the simulator off (``ptx_compile_worker``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import ptx_kernels as pk
from flashllm_nb.kernels import ptx
from ptx_compile_worker import compile_ptx_in_subprocess

pytestmark = pytest.mark.ptx

CCS = [(8, 0), (9, 0)]
NAMES = sorted(pk.KERNELS) + ["docstring_example"]


@pytest.fixture(scope="session")
def compiled():
    results = compile_ptx_in_subprocess("ptx_kernels", "kernel", [{"name": n} for n in NAMES], CCS)
    return {(r.config["name"], r.cc): r for r in results}


WGMMA_CC = (9, 0, "a")


@pytest.fixture(scope="session")
def compiled_wgmma():
    results = compile_ptx_in_subprocess("ptx_kernels", "kernel", [{"name": n} for n in sorted(pk.WGMMA_KERNELS)],
                                        [WGMMA_CC])
    return {r.config["name"]: r for r in results}


@pytest.mark.parametrize("name", sorted(pk.GRID_KERNELS))
def test_griddepcontrol_compiles_for_sm90_in_program_order(name):
    """``griddepcontrol`` (sm_90): the instructions in the PTX, the consumer's wait before its first global load,
    assembled without spills."""
    (result,) = compile_ptx_in_subprocess("ptx_kernels", "kernel", [{"name": name}], [(9, 0)])
    assert result.error is None, result.error
    for text in pk.GRID_KERNELS[name][2]:
        assert text in result.ptx, f"{text!r} missing from the PTX of {name}"
    if name == "grid_consumer":
        assert result.ptx.index("griddepcontrol.wait;") < result.ptx.index("ld.global")
    if result.ptxas is None:
        pytest.skip(result.ptxas_skipped)
    assert result.ptxas.returncode == 0, result.ptxas.log
    assert result.ptxas.spill_bytes == 0 and result.ptxas.stack_frame == 0, result.ptxas.log


@pytest.mark.parametrize("name", sorted(pk.WGMMA_KERNELS))
def test_wgmma_compiles_for_sm90a_without_spills(compiled_wgmma, name):
    result = compiled_wgmma[name]
    assert result.error is None, result.error
    assert ".target sm_90a" in result.ptx
    for text in pk.WGMMA_KERNELS[name][2]:
        assert text in result.ptx, f"{text!r} missing from the PTX of {name}"
    # Program order survives: fence, barrier, wgmma fence, the four products, commit, wait.
    order = ["fence.proxy.async.shared::cta", "bar.sync", "wgmma.fence", "wgmma.mma_async", "wgmma.commit_group",
             "wgmma.wait_group"]
    positions = [result.ptx.index(word) for word in order]
    assert positions == sorted(positions), order
    assert result.ptx.count("wgmma.mma_async") == 4
    if result.ptxas is None:
        pytest.skip(result.ptxas_skipped)
    assert result.ptxas.returncode == 0, result.ptxas.log
    assert result.ptxas.spill_bytes == 0 and result.ptxas.stack_frame == 0, result.ptxas.log


@pytest.fixture(scope="session")
def typing_errors():
    results = compile_ptx_in_subprocess(
        "ptx_kernels", "typing_error", [{"case": c} for c in pk.TYPING_ERRORS], [(8, 0)], assemble=False
    )
    return {r.config["case"]: r for r in results}


def _expected_text(name: str) -> list[str]:
    if name == "docstring_example":
        return [
            "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
            "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16",
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
        ]
    return pk.KERNELS[name][2]


@pytest.mark.parametrize("cc", CCS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
@pytest.mark.parametrize("name", NAMES)
def test_ptx_contains_the_instruction(compiled, name, cc):
    result = compiled[name, cc]
    assert result.error is None, result.error
    assert f".target sm_{cc[0]}{cc[1]}" in result.ptx
    for text in _expected_text(name):
        assert text in result.ptx, f"{text!r} missing from the PTX of {name}"


@pytest.mark.parametrize("cc", CCS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
@pytest.mark.parametrize("name", NAMES)
def test_ptxas_assembles_without_spills(compiled, name, cc):
    result = compiled[name, cc]
    assert result.error is None, result.error
    if result.ptxas is None:
        pytest.skip(result.ptxas_skipped)
    assert result.ptxas.returncode == 0, result.ptxas.log
    assert result.ptxas.spill_bytes == 0 and result.ptxas.stack_frame == 0, result.ptxas.log


def test_shared_arrays_get_16_byte_alignment(compiled):
    """``alignment=SHARED_ALIGN`` reaches the PTX (Numba would otherwise align a float16 array to 2 bytes)."""
    text = compiled["docstring_example", (8, 0)].ptx
    shared = [line for line in text.splitlines() if line.startswith(".visible .shared")]
    assert len(shared) == 2 and all(".align 16 " in line for line in shared), shared


def test_memory_instructions_are_not_reordered_or_dropped(compiled):
    """The cp.async sequence stays in program order (each is ``sideeffect`` with a memory clobber)."""
    text = compiled["cp_async", (8, 0)].ptx
    order = [
        "cp.async.cg.shared.global",
        "cp.async.commit_group",
        "cp.async.wait_group 1",
        "cp.async.wait_group 0",
        "cp.async.wait_all",
        "bar.sync",
    ]
    positions = [text.index(word) for word in order]
    assert positions == sorted(positions)


@pytest.mark.parametrize("case", sorted(pk.TYPING_ERRORS))
def test_typing_errors_name_the_instruction(typing_errors, case):
    result = typing_errors[case]
    assert result.ptx is None and result.error is not None
    for words in pk.TYPING_ERRORS[case][2]:
        assert words in result.error, f"{words!r} missing from: {result.error}"


def test_every_wrapper_is_compiled_by_some_test_kernel():
    source = Path(pk.__file__).read_text()
    exported = _all_of(Path(ptx.__file__).with_name("ptx_asm") / "__init__.py")
    assert set(exported) == set(ptx.__all__) - {"SIMULATOR", "SHARED_ALIGN", "WGMMA_SHARED_ALIGN", "inlined"}
    assert [name for name in exported if not re.search(rf"ptx\.{name}\b", source)] == []


def _all_of(path: Path) -> list[str]:
    """A module's ``__all__``, read without importing it: this session may run the simulator, where ``ptx`` never
    binds ``ptx_asm``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no __all__ in {path}")
