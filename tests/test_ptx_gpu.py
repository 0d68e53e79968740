"""Every inline-PTX wrapper of ``flashllm_nb.kernels.ptx`` on a real GPU, against NumPy and against the lane-level
emulator ``flashllm_nb.reference.fragments`` on the same inputs: the same checks (``ptx_kernels``) as the simulator
tests, over more seeds and every 16-bit pattern.

What only the hardware can tell, and these tests pin down: the fragment layouts of ``mma`` and ``ldmatrix`` (bit for
bit against the emulator), ``wgmma``'s descriptor, 128-byte swizzle and accumulator layout (on sm_90),
``cp.async``'s ``src_bytes`` zero-fill, the 32-bit ``.shared`` addressing, and ``cvt``'s rounding, overflow and NaN
behaviour.
"""

from __future__ import annotations

import numpy as np
import pytest

import ptx_kernels as pk
from flashllm_nb.kernels import ptx

pytestmark = pytest.mark.gpu

SEEDS = range(8)


def test_the_intrinsics_are_bound():
    assert not ptx.SIMULATOR and ptx.SHARED_ALIGN == 16 and ptx.WGMMA_SHARED_ALIGN == 1024


def test_docstring_example():
    pk.run_docstring_example()


def test_shared_addr():
    pk.check_shared_addr()


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("seed", SEEDS)
def test_mma(dtype, seed):
    pk.check_mma(dtype, seed)


@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True], ids=["plain", "trans"])
@pytest.mark.parametrize("seed", SEEDS)
def test_ldmatrix(num, trans, seed):
    pk.check_ldmatrix(num, trans, seed)


# The checks that take only a seed, by the name of their ptx_kernels function (check_<name>): cp_async tests the
# src_bytes zero-fill, gemm four warps accumulating, mbarrier phases ordering four warps.
SEEDED_CHECKS = ["ldmatrix_feeds_mma", "cp_async", "ld_global_nc", "st_shared", "warp_sync", "mbarrier", "pack", "gemm"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("check", SEEDED_CHECKS)
def test_seeded_check(check, seed):
    getattr(pk, f"check_{check}")(seed)


@pytest.mark.parametrize("kind", ["f16", "bf16"])
@pytest.mark.parametrize("seed", SEEDS)
def test_f32_to_16_bits(kind, seed):
    pk.check_f32_to_16_bits(kind, seed, n=1 << 14)


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_16_bits_to_f32_for_every_pattern(kind):
    pk.check_16_bits_to_f32(kind, np.arange(1 << 16, dtype=np.uint32).astype(np.uint16))


@pytest.mark.parametrize("n", [8, 16, 32, 64])
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_wgmma(n, dtype, seed):
    from numba import cuda

    if cuda.get_current_device().compute_capability[0] != 9:
        pytest.skip("wgmma exists only on sm_90 (Hopper); this GPU is "
                    f"sm_{''.join(map(str, cuda.get_current_device().compute_capability))}")
    pk.check_wgmma(n, dtype, seed)
