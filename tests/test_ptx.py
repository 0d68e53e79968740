"""Every wrapper of ``flashllm_nb.kernels.ptx`` inside a real ``@cuda.jit`` kernel, in whichever tier the session runs
(``tier``): the simulator's lane-level twins on CI, the inline PTX on a GPU. Each test runs one check of
``ptx_kernels`` against NumPy and against the lane-level emulator ``flashllm_nb.reference.fragments`` on the same
inputs; the GPU takes more seeds, longer conversions and every 16-bit pattern.

What only the hardware can tell, and these tests pin down there: the fragment layouts of ``mma`` and ``ldmatrix``
(bit for bit against the emulator), ``wgmma``'s descriptor, 128-byte swizzle and accumulator layout (on sm_90),
``cp.async``'s ``src_bytes`` zero-fill, the 32-bit ``.shared`` addressing, and ``cvt``'s rounding, overflow and NaN
behaviour. Under the simulator one block of 32 (a few checks: 128) threads per launch keeps each test to a fraction
of a second. What the twins alone do (their refusals, their deadlock reports) is in ``test_ptx_sim.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

import ptx_kernels as pk
from tier import SIMULATOR, by_tier

SEEDS = by_tier(sim=[0, 1], gpu=range(8))
ONE_SEED = by_tier(sim=[0], gpu=range(8))  # checks that the simulator runs on one seed, the GPU on eight


def test_docstring_example():
    """The example of ``flashllm_nb.kernels.ptx``'s docstring runs as written and passes its own check."""
    pk.run_docstring_example()


def test_shared_addr():
    """``shared_addr`` of elements 16 bytes apart gives addresses 16 bytes apart."""
    pk.check_shared_addr()


def test_globaltimer_and_smid():
    """``%globaltimer_lo`` moves forward within a block and ``%smid`` names one SM of this GPU for the block."""
    pk.check_timer()


@pytest.mark.parametrize("blocks", [1, 7, 40])
def test_acq_rel_ticket_hands_every_blocks_values_to_the_last(blocks):
    """``atom.acq_rel.gpu``: one ticket per block, and the block that comes last reads what every block published
    before its ticket (on a GPU the 40 blocks run at once, each on its own SM)."""
    pk.check_ticket(blocks)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("seed", SEEDS)
def test_mma(dtype, seed):
    """``mma.sync`` m16n8k16: D = A @ B + C within the fp32 bound, and close to the emulator."""
    pk.check_mma(dtype, seed)


@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True], ids=["plain", "trans"])
@pytest.mark.parametrize("seed", SEEDS)
def test_ldmatrix(num, trans, seed):
    """``ldmatrix`` x1/x2/x4, plain and transposed, from random rows: the emulator's registers bit for bit."""
    pk.check_ldmatrix(num, trans, seed)


@pytest.mark.parametrize("seed", ONE_SEED)
def test_ldmatrix_feeds_mma(seed):
    """``ldmatrix`` of row-major A and B gives exactly the ``mma`` fragments."""
    pk.check_ldmatrix_feeds_mma(seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_cp_async_zero_fills(seed):
    """``cp.async`` copies ``src_bytes`` bytes and zero-fills the rest of its 16."""
    pk.check_cp_async(seed)


@pytest.mark.parametrize("seed", ONE_SEED)
def test_ld_global_nc(seed):
    """``ld.global.nc.v4.u32`` reads four consecutive words."""
    pk.check_ld_global_nc(seed)


@pytest.mark.parametrize("seed", ONE_SEED)
def test_st_shared(seed):
    """``st.shared.v4.u32`` stores four words, the first lowest."""
    pk.check_st_shared(seed)


@pytest.mark.parametrize("seed", ONE_SEED)
def test_warp_sync(seed):
    """After ``bar.warp.sync`` every lane sees what the others stored, round after round."""
    pk.check_warp_sync(seed)


@pytest.mark.parametrize("seed", ONE_SEED)
def test_mbarrier(seed):
    """mbarrier phases alone order four warps across rounds, the parity wrapping."""
    pk.check_mbarrier(seed)


@pytest.mark.parametrize("seed", ONE_SEED)
def test_pack_unpack(seed):
    """``pack_u16x2`` and ``unpack_u16x2`` are each other's inverse, lo in the low half."""
    pk.check_pack(seed)


@pytest.mark.parametrize("kind", ["f16", "bf16"])
@pytest.mark.parametrize("seed", ONE_SEED)
def test_f32_to_16_bits(kind, seed):
    """``cvt.rn`` to f16 / bf16 on specials, ties, the overflow edge and random values (512 of them under the
    simulator, 16384 on the GPU): round to nearest even, overflow to Inf, NaN to a NaN, subnormals kept."""
    pk.check_f32_to_16_bits(kind, seed, n=by_tier(sim=512, gpu=1 << 14))


# Under the simulator a sample of the 16-bit patterns (every exponent, signs, NaNs, subnormals); on the GPU all 65536.
SIXTEEN_BIT_PATTERNS = by_tier(
    sim=np.unique(np.concatenate([np.arange(0, 1 << 16, 97), [0x0000, 0x8000, 0x0001, 0x7C00, 0x7F80, 0xFFFF]])),
    gpu=np.arange(1 << 16),
).astype(np.uint16)


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_16_bits_to_f32(kind):
    """f16 / bf16 bit patterns widen to float32 exactly (bf16 NaN payloads too)."""
    pk.check_16_bits_to_f32(kind, SIXTEEN_BIT_PATTERNS)


@pytest.mark.parametrize("seed", SEEDS)
def test_four_warps_reuse_their_rendezvous(seed):
    """A 16 x 64 x 32 GEMM by four warps, four ldmatrix/mma k-steps each back to back: D = A @ B within the fp32
    bound."""
    pk.check_gemm(seed)


@pytest.mark.parametrize("n", [8, 16, 32, 64])
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("seed", by_tier(sim=[0], gpu=[0, 1]))
def test_wgmma(n, dtype, seed):
    """``wgmma`` m64nNk16 four times in a row on 128-byte-swizzled shared operands (under the simulator four warps
    meet at one warpgroup rendezvous per wgmma): D = A @ B + C within the fp32 bound and close to the emulator."""
    if not SIMULATOR and cuda.get_current_device().compute_capability[0] != 9:
        cc = "".join(map(str, cuda.get_current_device().compute_capability))
        pytest.skip(f"wgmma exists only on sm_90 (Hopper); this GPU is sm_{cc}")
    pk.check_wgmma(n, dtype, seed)
