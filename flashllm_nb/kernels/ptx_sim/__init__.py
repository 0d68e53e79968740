"""Python twins of :mod:`flashllm_nb.kernels.ptx_asm`, bound by :mod:`flashllm_nb.kernels.ptx` when Numba's CUDA
simulator is on. Same names, arguments and results (NumPy scalars of the same dtypes); see ``ptx_asm`` for what each
instruction does.

The simulator runs every thread of a block as a Python thread (``numba.cuda.simulator.kernel.BlockThread``, all of
a block's threads at once, blocks one after another) and knows nothing of warps. So:

- a warp-collective instruction (``mma``, ``ldmatrix``) gathers the 32 lanes of its warp at a rendezvous keyed by
  (block, ``thread_id // 32``); the last lane to arrive runs the lane-level emulator
  :mod:`flashllm_nb.reference.fragments` once for the whole warp, and every lane takes its own result;
- ``wgmma`` gathers the 128 threads of its warpgroup the same way, reads both operands from the shared array
  through the 128-byte swizzle and adds the product to the accumulators at once: the twin is synchronous, so
  ``wgmma.fence``, ``commit_group``, ``wait_group`` and ``fence.proxy.async`` have nothing to do;
- ``cp.async`` is a synchronous copy, so ``commit_group`` and ``wait_group`` have nothing to do;
- kernels run one after another, so ``griddepcontrol`` has nothing to wait for or to start;
- everything else is element-wise NumPy on the bit patterns.

The twins also refuse what would be undefined on the GPU (a misaligned row, ``ldmatrix`` from a kernel argument,
``cp.async`` into one, a warp whose lanes are not all at the same collective), naming the instruction, so that a
kernel bug fails in CI rather than on the first GPU run.

One module per kind of instruction, mirroring :mod:`flashllm_nb.kernels.ptx_asm`: :mod:`.memory`, :mod:`.matrix`,
:mod:`.convert`, :mod:`.wgmma`, :mod:`.sync`, :mod:`.special`; and what they share: :mod:`.operands` (argument
checks, the bytes an address names) and :mod:`.rendezvous` (where a warp's lanes meet).
"""

from __future__ import annotations

from .convert import bf16_bits_to_f32, f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits, pack_u16x2, unpack_u16x2
from .matrix import (
    ldmatrix_x1,
    ldmatrix_x1_trans,
    ldmatrix_x2,
    ldmatrix_x2_trans,
    ldmatrix_x4,
    ldmatrix_x4_trans,
    mma_m16n8k16_bf16,
    mma_m16n8k16_f16,
)
from .memory import (
    cp_async_16,
    cp_async_commit,
    cp_async_wait_all,
    cp_async_wait_group,
    ld_global_nc_v4_u32,
    shared_addr,
    st_shared_v4_u32,
)
from .special import globaltimer_lo, smid
from .sync import (atom_add_acq_rel_gpu, griddepcontrol_launch_dependents, griddepcontrol_wait, mbarrier_arrive,
                   mbarrier_init, mbarrier_wait_parity, warp_sync)
from .wgmma import (
    fence_proxy_async_shared,
    wgmma_commit_group,
    wgmma_fence,
    wgmma_m64n8k16_bf16,
    wgmma_m64n8k16_f16,
    wgmma_m64n16k16_bf16,
    wgmma_m64n16k16_f16,
    wgmma_m64n32k16_bf16,
    wgmma_m64n32k16_f16,
    wgmma_m64n64k16_bf16,
    wgmma_m64n64k16_f16,
    wgmma_wait_group,
)

__all__ = [
    "shared_addr",
    "mma_m16n8k16_f16",
    "mma_m16n8k16_bf16",
    "ldmatrix_x1",
    "ldmatrix_x2",
    "ldmatrix_x4",
    "ldmatrix_x1_trans",
    "ldmatrix_x2_trans",
    "ldmatrix_x4_trans",
    "cp_async_16",
    "cp_async_commit",
    "cp_async_wait_group",
    "cp_async_wait_all",
    "ld_global_nc_v4_u32",
    "st_shared_v4_u32",
    "pack_u16x2",
    "unpack_u16x2",
    "f32_to_f16_bits",
    "f32_to_bf16_bits",
    "f16_bits_to_f32",
    "bf16_bits_to_f32",
    "wgmma_m64n8k16_f16",
    "wgmma_m64n16k16_f16",
    "wgmma_m64n32k16_f16",
    "wgmma_m64n64k16_f16",
    "wgmma_m64n8k16_bf16",
    "wgmma_m64n16k16_bf16",
    "wgmma_m64n32k16_bf16",
    "wgmma_m64n64k16_bf16",
    "wgmma_fence",
    "wgmma_commit_group",
    "wgmma_wait_group",
    "fence_proxy_async_shared",
    "warp_sync",
    "mbarrier_init",
    "mbarrier_arrive",
    "mbarrier_wait_parity",
    "griddepcontrol_wait",
    "griddepcontrol_launch_dependents",
    "atom_add_acq_rel_gpu",
    "globaltimer_lo",
    "smid",
]
