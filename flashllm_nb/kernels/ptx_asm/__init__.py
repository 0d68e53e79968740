"""The Tensor-Core PTX layer on a real GPU: one Numba ``@intrinsic`` per PTX instruction, each one ``ir.InlineAsm``.

Import these through :mod:`flashllm_nb.kernels.ptx`, which binds this package when the CUDA simulator is off and
the Python twins of :mod:`flashllm_nb.kernels.ptx_sim` when it is on. Modelled on numba-cuda's
``numba/cuda/cache_hints.py``. One module per kind of instruction, each naming its PTX ISA sections:

- :mod:`.memory`: ``cvta.to.shared`` (``shared_addr``), ``cp.async`` with its commit and waits, ``ld.global.nc``,
  ``st.shared.v4``;
- :mod:`.matrix`: the warp's Tensor-Core instructions, ``mma.sync`` m16n8k16 and ``ldmatrix``;
- :mod:`.convert`: register packing (``mov``) and the f16/bf16 conversions (``cvt``);
- :mod:`.wgmma`: the warpgroup's, ``wgmma.mma_async`` (sm_90a) with its fence, commit and wait, and
  ``fence.proxy.async``;
- :mod:`.sync`: ``bar.warp.sync``, the ``mbarrier`` barriers and ``griddepcontrol``;
- :mod:`.special`: the special registers a kernel times itself with, ``%globaltimer_lo`` and ``%smid``;
- :mod:`.emit`: what the wrappers share: typing checks, call-site attributes (which tell LLVM what each kind of
  instruction does) and the ``call asm`` emitter with its address operands.
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
