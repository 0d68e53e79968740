"""The Tensor-Core PTX layer: one function per PTX instruction, callable from ``@cuda.jit`` kernels and device
functions, on a GPU or in Numba's CUDA simulator.

Numba-CUDA has no Tensor-Core API; this module is flashllm_nb's: ``mma.sync`` m16n8k16 (f16/bf16 in, fp32
accumulate), ``ldmatrix``, ``cp.async``, a streaming 16-byte global load, and the packing and conversions around
them. A kernel imports everything from here and runs unchanged in either mode:

- with a GPU, the names are the inline-PTX ``@intrinsic`` wrappers of :mod:`flashllm_nb.kernels.ptx_asm`, whose
  docstrings give the exact instruction, the PTX ISA section, the operand/fragment layout and why we use it;
- under the simulator (``NUMBA_ENABLE_CUDASIM=1``) they are the Python twins of :mod:`flashllm_nb.kernels.ptx_sim`:
  warp-collective instructions gather the warp's 32 lanes and call :mod:`flashllm_nb.reference.fragments`, the
  lane-level NumPy emulator of the PTX fragment figures; ``cp.async`` is a synchronous copy.

``SIMULATOR`` says which was bound; ``inlined`` is the decorator of a kernel's own device functions in either
mode. ``SHARED_ALIGN`` is the ``alignment=`` to give every ``cuda.shared.array`` that
``ldmatrix`` or ``cp.async`` touches: 16 with a GPU (by default Numba aligns a float16 array to 2 bytes only, and
these instructions need 16-byte rows), ``None`` in the simulator (which refuses any other value). Import it by
name, as below: Numba types a module attribute (``ptx.SHARED_ALIGN``) as int64 and ``cuda.shared.array`` then
refuses it; a global name is a compile-time constant.

Example: one warp computes D = A @ B for row-major fp16 A (16 x 16) and B (16 x 8)::

    import numpy as np
    from numba import cuda
    from flashllm_nb.kernels import ptx
    from flashllm_nb.kernels.ptx import SHARED_ALIGN

    @cuda.jit
    def mma_16x8x16(a, b, d):
        lane = cuda.threadIdx.x
        sa = cuda.shared.array((16, 16), np.float16, alignment=SHARED_ALIGN)
        sb = cuda.shared.array((16, 8), np.float16, alignment=SHARED_ALIGN)
        for i in range(lane, 256, 32):
            sa[i // 16, i % 16] = a[i // 16, i % 16]
            if i < 128:
                sb[i // 8, i % 8] = b[i // 8, i % 8]
        cuda.syncthreads()
        # A: lanes 0-15 name rows 0-15 at column 0, lanes 16-31 the same rows at column 8.
        a0, a1, a2, a3 = ptx.ldmatrix_x4(sa, (lane % 16) * 16 + (lane // 16) * 8)
        # B: lanes 0-15 name rows k = 0-15; .trans hands each lane two k of one column n.
        b0, b1 = ptx.ldmatrix_x2_trans(sb, (lane % 16) * 8)
        zero = np.float32(0)
        d0, d1, d2, d3 = ptx.mma_m16n8k16_f16(a0, a1, a2, a3, b0, b1, zero, zero, zero, zero)
        g, t = lane // 4, lane % 4  # this lane's part of D: rows g and g + 8, columns 2t and 2t + 1
        d[g, 2 * t] = d0
        d[g, 2 * t + 1] = d1
        d[g + 8, 2 * t] = d2
        d[g + 8, 2 * t + 1] = d3

    rng = np.random.default_rng(0)
    a = rng.standard_normal((16, 16)).astype(np.float16)
    b = rng.standard_normal((16, 8)).astype(np.float16)
    d = np.zeros((16, 8), np.float32)
    mma_16x8x16[1, 32](a, b, d)
    np.testing.assert_allclose(d, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-4, atol=1e-4)

The API (every index is a flat element index into a C-contiguous array; ``g = lane // 4``, ``t = lane % 4``):

==============================================  =================================================================
``shared_addr(arr, i) -> uint32``               ``cvta.to.shared``: 32-bit shared address of ``arr[i]``
``mma_m16n8k16_f16(a0..a3, b0, b1, c0..c3)``    ``mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32`` -> 4 float32
``mma_m16n8k16_bf16(...)``                      the same with ``.bf16`` inputs
``ldmatrix_x{1,2,4}[_trans](arr, i)``           ``ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16`` -> uint32s
``cp_async_16(dst, di, src, si, src_bytes)``    ``cp.async.cg.shared.global [dst], [src], 16, src_bytes``
``cp_async_commit()``                           ``cp.async.commit_group``
``cp_async_wait_group(n)``                      ``cp.async.wait_group n`` (``n`` a compile-time int literal)
``cp_async_wait_all()``                         ``cp.async.wait_all``
``ld_global_nc_v4_u32(arr, i) -> 4 uint32``     ``ld.global.nc.L1::no_allocate.v4.u32``
``st_shared_v4_u32(arr, i, w0, w1, w2, w3)``    ``st.shared.v4.u32``: 16 bytes into shared memory
``pack_u16x2(lo, hi) -> uint32``                ``mov.b32 d, {lo, hi}``
``unpack_u16x2(x) -> (lo, hi)``                 ``mov.b32 {lo, hi}, x`` (uint16 each)
``f32_to_f16_bits(x)``, ``f32_to_bf16_bits``    ``cvt.rn.f16.f32``, ``cvt.rn.bf16.f32`` -> uint16
``f16_bits_to_f32(b)``, ``bf16_bits_to_f32``    ``cvt.f32.f16``; bf16 bits << 16 -> float32
``wgmma_m64n{8,16,32,64}k16_{f16,bf16}``         ``wgmma.mma_async.sync.aligned.m64nNk16.f32.{ab}.{ab}`` (sm_90a):
``(arr, a_index, b_index, acc, acc_offset)``    ``acc[acc_offset:+N/2] += A @ B``, K-major 128-byte-swizzled
                                                operands in ``arr``; one warpgroup (128 threads)
``wgmma_fence()``, ``wgmma_commit_group()``     ``wgmma.fence.sync.aligned``, ``wgmma.commit_group.sync.aligned``
``wgmma_wait_group(n, acc, count)``             ``wgmma.wait_group.sync.aligned n``; ``acc[:count]`` pass through
``fence_proxy_async_shared()``                  ``fence.proxy.async.shared::cta``: shared writes -> async proxy
``warp_sync()``                                 ``bar.warp.sync -1``: the warp's lanes meet (``__syncwarp``)
``mbarrier_init(arr, i, count)``                ``mbarrier.init.shared.b64``: an 8-byte barrier of ``count`` arrivals
``mbarrier_arrive(arr, i)``                     ``mbarrier.arrive.shared.b64``: arrive without waiting
``mbarrier_wait_parity(arr, i, parity)``        loop on ``mbarrier.test_wait.parity``: the phase of that parity is over
``griddepcontrol_wait()``                       ``griddepcontrol.wait`` (sm_90): the grids this one depends on are done
``griddepcontrol_launch_dependents()``          ``griddepcontrol.launch_dependents`` (sm_90): the next grid may start
``atom_add_acq_rel_gpu(arr, i, v) -> int32``    ``atom.acq_rel.gpu.global.add.u32``: a ticket that releases this
                                                block's writes and acquires the earlier blocks' (old value back)
``globaltimer_lo() -> uint32``                  ``mov.u32 d, %globaltimer_lo``: the GPU's nanosecond clock, low 32 bits
``smid() -> uint32``                            ``mov.u32 d, %smid``: the SM the thread runs on
==============================================  =================================================================

``WGMMA_SHARED_ALIGN`` is the ``alignment=`` of a shared array that wgmma reads (1024 on a GPU, ``None`` in the
simulator, whose byte offset 0 stands for a 1024-byte aligned address).

Simulator notes: ``cuda.syncwarp`` does not exist there (use ``warp_sync`` or ``cuda.syncthreads``); every lane of a
warp must reach each warp-collective call (as on the GPU; a lane stuck elsewhere is reported, not left to hang), and
a block's thread count must be a multiple of 32; ``cuda.shared.array`` calls are told apart by source line, so write
one per line.
"""

from __future__ import annotations

from numba import config

SIMULATOR: bool = bool(config.ENABLE_CUDASIM)

if SIMULATOR:
    from flashllm_nb.kernels import ptx_sim as _bound
    from flashllm_nb.kernels.ptx_sim import *  # noqa: F401,F403  (the Python twins)

    SHARED_ALIGN = None
    WGMMA_SHARED_ALIGN = None
else:
    from flashllm_nb.kernels import ptx_asm as _bound
    from flashllm_nb.kernels.ptx_asm import *  # noqa: F401,F403  (the inline-PTX intrinsics)

    SHARED_ALIGN = 16
    WGMMA_SHARED_ALIGN = 1024  # wgmma's 128-byte swizzle repeats every 1024 bytes of address



def inlined(function):
    """A ``cuda.jit`` device function inlined into every caller with a GPU (so that the caller's constant loop
    bounds, register arrays and branches stay visible across the call and nothing is passed through the stack), a
    plain device function under the simulator, which takes no ``forceinline``."""
    from numba import cuda

    if SIMULATOR:
        return cuda.jit(device=True)(function)
    return cuda.jit(device=True, forceinline=True)(function)


# The two implementations export the same names (ptx_asm.__all__ and ptx_sim.__all__ list them).
__all__ = ["SIMULATOR", "SHARED_ALIGN", "WGMMA_SHARED_ALIGN", "inlined", *_bound.__all__]
