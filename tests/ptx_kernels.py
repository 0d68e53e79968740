"""One small kernel per PTX wrapper and the check of its output, shared by the simulator, PTX and GPU tests of
``flashllm_nb.kernels.ptx``.

Each kernel is one block of 32 threads (one warp; ``gemm_kernel`` four) that moves its inputs through one wrapper
into an output array, so that the same source runs in the simulator, compiles to PTX, and runs on a GPU:

- ``check_*`` launch a kernel on seeded random inputs and compare the result with NumPy and with the lane-level
  emulator ``flashllm_nb.reference.fragments``; ``tests/test_ptx.py`` calls them in whichever tier the session
  runs (simulator or GPU), and ``tests/test_ptx_sim.py`` launches its misuses through ``launch``;
- ``KERNELS`` maps a name to ``(python function, Numba signature, the PTX text it must contain)``, and ``kernel``
  and ``typing_error`` are the factories ``tests/ptx_compile_worker.py`` calls for ``tests/test_ptx_compile.py``.
"""

from __future__ import annotations

import functools
import textwrap

import ml_dtypes
import numpy as np
from numba import cuda

import flashllm_nb.reference.fragments as fr
from flashllm_nb.formats.tiled_csl import swizzle
from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.ptx import SHARED_ALIGN, WGMMA_SHARED_ALIGN

WAIT_GROUPS = 1  # a Python int global is a compile-time literal for cp_async_wait_group


def shared_addr_kernel(out):
    """out[lane] = the shared address of element 8 * lane (16 bytes apart) of a float16 array."""
    lane = cuda.threadIdx.x
    s = cuda.shared.array(256, np.float16, alignment=SHARED_ALIGN)
    out[lane] = ptx.shared_addr(s, lane * 8)


def timer_kernel(times, sms):
    """Each lane reads the GPU's clock, syncs with the block, reads it again (times[2 lane], times[2 lane + 1]) and
    records its SM."""
    lane = cuda.threadIdx.x
    before = ptx.globaltimer_lo()
    cuda.syncthreads()
    after = ptx.globaltimer_lo()
    times[2 * lane] = before
    times[2 * lane + 1] = after
    sms[lane] = ptx.smid()


def ticket_kernel(tickets, order, values, sums):
    """The split-K hand-off: every thread of every block publishes a value, the block meets at a barrier, thread 0
    takes a ticket (``order[block]``); the block whose ticket says it came last sums every block's values per lane."""
    lane, block, blocks = cuda.threadIdx.x, cuda.blockIdx.x, cuda.gridDim.x
    values[block * 32 + lane] = block * 32 + lane + 1
    cuda.syncthreads()
    last = 0
    if lane == 0:
        ticket = ptx.atom_add_acq_rel_gpu(tickets, 0, 1)
        order[block] = ticket
        last = 1 if ticket == blocks - 1 else 0
    if cuda.syncthreads_or(last):
        total = 0
        for b in range(blocks):
            total += values[b * 32 + lane]
        sums[lane] = total


def _mma_kernel(mma):
    def kernel(a, b, c, d):
        """d[lane] = mma(a[lane], b[lane], c[lane]): registers in, registers out (row = lane)."""
        lane = cuda.threadIdx.x
        a0, a1, a2, a3 = a[lane, 0], a[lane, 1], a[lane, 2], a[lane, 3]
        c0, c1, c2, c3 = c[lane, 0], c[lane, 1], c[lane, 2], c[lane, 3]
        d0, d1, d2, d3 = mma(a0, a1, a2, a3, b[lane, 0], b[lane, 1], c0, c1, c2, c3)
        d[lane, 0] = d0
        d[lane, 1] = d1
        d[lane, 2] = d2
        d[lane, 3] = d3

    return kernel


mma_f16_kernel = _mma_kernel(ptx.mma_m16n8k16_f16)
mma_bf16_kernel = _mma_kernel(ptx.mma_m16n8k16_bf16)

SMEM_U16 = 512  # the shared memory ldmatrix reads: 64 rows of 8 uint16


def _ldmatrix_kernel(load, num):
    def kernel(memory, rows, out):
        """memory (512 uint16) -> shared; out[lane, :num] = load(shared, rows[lane])."""
        lane = cuda.threadIdx.x
        s = cuda.shared.array(SMEM_U16, np.uint16, alignment=SHARED_ALIGN)
        for i in range(lane, SMEM_U16, 32):
            s[i] = memory[i]
        cuda.syncthreads()
        regs = load(s, rows[lane])
        for j in range(num):
            out[lane, j] = regs[j]

    return kernel


def _ldmatrix_x1_kernel(load):
    def kernel(memory, rows, out):
        """As for x2/x4, but x1 returns one uint32, not a tuple."""
        lane = cuda.threadIdx.x
        s = cuda.shared.array(SMEM_U16, np.uint16, alignment=SHARED_ALIGN)
        for i in range(lane, SMEM_U16, 32):
            s[i] = memory[i]
        cuda.syncthreads()
        out[lane, 0] = load(s, rows[lane])

    return kernel


LDMATRIX = {
    (1, False): _ldmatrix_x1_kernel(ptx.ldmatrix_x1),
    (2, False): _ldmatrix_kernel(ptx.ldmatrix_x2, 2),
    (4, False): _ldmatrix_kernel(ptx.ldmatrix_x4, 4),
    (1, True): _ldmatrix_x1_kernel(ptx.ldmatrix_x1_trans),
    (2, True): _ldmatrix_kernel(ptx.ldmatrix_x2_trans, 2),
    (4, True): _ldmatrix_kernel(ptx.ldmatrix_x4_trans, 4),
}


def cp_async_kernel(src, src_index, src_bytes, out):
    """Lane l copies 16 bytes from src (float32, element src_index[l], src_bytes[l] of them) to shared bytes
    16 l .. 16 l + 15; then out (256 uint16) = the shared array. Exercises commit, wait_group and wait_all."""
    lane = cuda.threadIdx.x
    s = cuda.shared.array(256, np.uint16, alignment=SHARED_ALIGN)
    ptx.cp_async_16(s, lane * 8, src, src_index[lane], src_bytes[lane])
    ptx.cp_async_commit()
    ptx.cp_async_wait_group(WAIT_GROUPS)
    ptx.cp_async_wait_group(0)
    ptx.cp_async_wait_all()
    cuda.syncthreads()
    for i in range(lane, 256, 32):
        out[i] = s[i]


def ld_global_nc_kernel(words, index, out):
    """out[lane] = the four uint32 at words[index[lane]:index[lane] + 4]."""
    lane = cuda.threadIdx.x
    w0, w1, w2, w3 = ptx.ld_global_nc_v4_u32(words, index[lane])
    out[lane, 0] = w0
    out[lane, 1] = w1
    out[lane, 2] = w2
    out[lane, 3] = w3


def st_shared_kernel(words, out):
    """Lane l stores words[l, :] into shared bytes 16 l .. 16 l + 15 of a uint32 array; out = that array."""
    lane = cuda.threadIdx.x
    s = cuda.shared.array(128, np.uint32, alignment=SHARED_ALIGN)
    ptx.st_shared_v4_u32(s, lane * 4, words[lane, 0], words[lane, 1], words[lane, 2], words[lane, 3])
    cuda.syncthreads()
    for i in range(lane, 128, 32):
        out[i] = s[i]


def warp_sync_kernel(words, out):
    """Two rounds of: lane l writes shared word l, the warp meets, lane l reads word 31 - l (another lane's)."""
    lane = cuda.threadIdx.x
    s = cuda.shared.array(32, np.uint32)
    for r in range(2):
        s[lane] = words[r, lane]
        ptx.warp_sync()
        out[r, lane] = s[31 - lane]
        ptx.warp_sync()  # every lane has read before the next round overwrites


MBARRIER_ROUNDS = 3  # phases 0, 1, 0 of each barrier: the parity wraps


def mbarrier_kernel(words, out):
    """Rounds of: thread t writes shared word t, arrives on barrier 0 and waits for the round's phase, reads word
    127 - t (another warp's), then arrives on barrier 1 and waits, so that no thread overwrites a word before every
    thread has read it. 128 threads, 4 warps: what orders them is the mbarriers alone."""
    t = cuda.threadIdx.x
    s = cuda.shared.array(128, np.uint32, alignment=SHARED_ALIGN)
    bars = cuda.shared.array(4, np.uint32, alignment=SHARED_ALIGN)  # two 8-byte barriers
    if t == 0:
        ptx.mbarrier_init(bars, 0, 128)
        ptx.mbarrier_init(bars, 2, 128)
    cuda.syncthreads()
    for r in range(MBARRIER_ROUNDS):
        s[t] = words[r, t]
        ptx.mbarrier_arrive(bars, 0)
        ptx.mbarrier_wait_parity(bars, 0, r & 1)
        out[r, t] = s[127 - t]
        ptx.mbarrier_arrive(bars, 2)
        ptx.mbarrier_wait_parity(bars, 2, r & 1)


def pack_kernel(lo, hi, packed, lo_out, hi_out):
    """packed = pack(lo, hi) and (lo_out, hi_out) = unpack(packed), element-wise with a lane stride."""
    for i in range(cuda.threadIdx.x, lo.size, 32):
        word = ptx.pack_u16x2(lo[i], hi[i])
        packed[i] = word
        lo_out[i], hi_out[i] = ptx.unpack_u16x2(word)


def _convert_kernel(convert):
    def kernel(x, out):
        """out = convert(x), element-wise with a lane stride."""
        for i in range(cuda.threadIdx.x, x.size, 32):
            out[i] = convert(x[i])

    return kernel


CONVERT = {
    "f32_to_f16_bits": _convert_kernel(ptx.f32_to_f16_bits),
    "f32_to_bf16_bits": _convert_kernel(ptx.f32_to_bf16_bits),
    "f16_bits_to_f32": _convert_kernel(ptx.f16_bits_to_f32),
    "bf16_bits_to_f32": _convert_kernel(ptx.bf16_bits_to_f32),
}


def gemm_kernel(a, b, d):
    """D (16 x 32, fp32) = A (16 x 64) @ B (64 x 32), both f16 row-major, by 4 warps: warp w owns columns 8w..8w+7
    and walks k in 4 steps of ldmatrix_x4 (A), ldmatrix_x2_trans (B) and mma, accumulating in registers."""
    tid = cuda.threadIdx.x
    lane, warp = tid % 32, tid // 32
    sa = cuda.shared.array((16, 64), np.float16, alignment=SHARED_ALIGN)
    sb = cuda.shared.array((64, 32), np.float16, alignment=SHARED_ALIGN)
    for i in range(tid, 16 * 64, 128):
        sa[i // 64, i % 64] = a[i // 64, i % 64]
    for i in range(tid, 64 * 32, 128):
        sb[i // 32, i % 32] = b[i // 32, i % 32]
    cuda.syncthreads()
    d0 = d1 = d2 = d3 = np.float32(0)
    for ks in range(4):
        a0, a1, a2, a3 = ptx.ldmatrix_x4(sa, (lane % 16) * 64 + ks * 16 + (lane // 16) * 8)
        b0, b1 = ptx.ldmatrix_x2_trans(sb, (ks * 16 + lane % 16) * 32 + warp * 8)
        d0, d1, d2, d3 = ptx.mma_m16n8k16_f16(a0, a1, a2, a3, b0, b1, d0, d1, d2, d3)
    g, t = lane // 4, lane % 4
    d[g, warp * 8 + 2 * t] = d0
    d[g, warp * 8 + 2 * t + 1] = d1
    d[g + 8, warp * 8 + 2 * t] = d2
    d[g + 8, warp * 8 + 2 * t + 1] = d3


WGMMA_K = 64  # four k16 steps of accumulation
WGMMA_SMEM_U16 = 2 * 64 * WGMMA_K  # A (64 rows) then B (up to 64 rows), 128-byte rows


def _wgmma_kernel(wgmma, n):
    count = n // 2

    def kernel(memory, c, d):
        """One warpgroup: shared = memory (A's 64 rows, then B's n rows, 128-byte swizzled as the host laid them
        out); acc = c[thread]; four wgmma k16 steps along the rows; d[thread] = acc."""
        tid = cuda.threadIdx.x
        smem = cuda.shared.array(WGMMA_SMEM_U16, np.uint16, alignment=WGMMA_SHARED_ALIGN)
        acc = cuda.local.array(count, np.float32)
        for i in range(tid, WGMMA_SMEM_U16, 128):
            smem[i] = memory[i]
        for i in range(count):
            acc[i] = c[tid, i]
        ptx.fence_proxy_async_shared()  # the plain stores above, visible to the Tensor Cores' reads
        cuda.syncthreads()
        ptx.wgmma_fence()
        for ks in range(WGMMA_K // 16):
            wgmma(smem, ks * 16, 64 * WGMMA_K + ks * 16, acc, 0)
        ptx.wgmma_commit_group()
        ptx.wgmma_wait_group(0, acc, count)
        for i in range(count):
            d[tid, i] = acc[i]

    return kernel


_WGMMA_INSTRUCTIONS = {
    (8, "f16"): ptx.wgmma_m64n8k16_f16,
    (16, "f16"): ptx.wgmma_m64n16k16_f16,
    (32, "f16"): ptx.wgmma_m64n32k16_f16,
    (64, "f16"): ptx.wgmma_m64n64k16_f16,
    (8, "bf16"): ptx.wgmma_m64n8k16_bf16,
    (16, "bf16"): ptx.wgmma_m64n16k16_bf16,
    (32, "bf16"): ptx.wgmma_m64n32k16_bf16,
    (64, "bf16"): ptx.wgmma_m64n64k16_bf16,
}
WGMMA = {(n, ab): _wgmma_kernel(wgmma, n) for (n, ab), wgmma in _WGMMA_INSTRUCTIONS.items()}


def docstring_example() -> str:
    """The example of ``flashllm_nb.kernels.ptx``'s docstring, as source."""
    block = ptx.__doc__.split("Example: ", 1)[1].split("::\n\n", 1)[1].split("\n\nThe API", 1)[0]
    return textwrap.dedent(block)


def docstring_example_kernel():
    """The kernel of the docstring example (its source up to the host code), as a Python function."""
    namespace: dict = {}
    exec(compile(docstring_example().split("\nrng = ")[0], "<ptx docstring example>", "exec"), namespace)
    kernel = namespace["mma_16x8x16"]
    return getattr(kernel, "py_func", kernel)


_U32_2D, _F32_2D = "uint32[:, ::1]", "float32[:, ::1]"
KERNELS = {
    "shared_addr": (shared_addr_kernel, "void(uint32[::1])", ["cvta.to.shared.u64"]),
    "timer": (timer_kernel, "void(uint32[::1], uint32[::1])", ["mov.u32 %r", "%globaltimer_lo", "%smid"]),
    "ticket": (ticket_kernel, "void(int32[::1], int32[::1], int32[::1], int32[::1])",
               ["atom.acq_rel.gpu.global.add.u32"]),
    "mma_f16": (
        mma_f16_kernel,
        f"void({_U32_2D}, {_U32_2D}, {_F32_2D}, {_F32_2D})",
        ["mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"],
    ),
    "mma_bf16": (
        mma_bf16_kernel,
        f"void({_U32_2D}, {_U32_2D}, {_F32_2D}, {_F32_2D})",
        ["mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"],
    ),
    **{
        f"ldmatrix_x{num}{'_trans' if trans else ''}": (
            LDMATRIX[num, trans],
            f"void(uint16[::1], int32[::1], {_U32_2D})",
            [f"ldmatrix.sync.aligned.m8n8.x{num}{'.trans' if trans else ''}.shared.b16"],
        )
        for num, trans in LDMATRIX
    },
    "cp_async": (
        cp_async_kernel,
        "void(float32[::1], int32[::1], int32[::1], uint16[::1])",
        [
            "cp.async.cg.shared.global [",
            "cp.async.commit_group;",
            f"cp.async.wait_group {WAIT_GROUPS};",
            "cp.async.wait_group 0;",
            "cp.async.wait_all;",
        ],
    ),
    "ld_global_nc": (
        ld_global_nc_kernel,
        f"void(uint32[::1], int32[::1], {_U32_2D})",
        ["ld.global.nc.L1::no_allocate.v4.u32"],
    ),
    "st_shared": (st_shared_kernel, f"void({_U32_2D}, uint32[::1])", ["st.shared.v4.u32"]),
    "warp_sync": (warp_sync_kernel, f"void({_U32_2D}, {_U32_2D})", ["bar.warp.sync -1;"]),
    "mbarrier": (
        mbarrier_kernel,
        f"void({_U32_2D}, {_U32_2D})",
        ["mbarrier.init.shared.b64", "mbarrier.arrive.shared.b64", "mbarrier.test_wait.parity.shared.b64"],
    ),
    "gemm": (
        gemm_kernel,
        "void(float16[:, ::1], float16[:, ::1], float32[:, ::1])",
        ["ldmatrix.sync.aligned.m8n8.x4.shared.b16", "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"],
    ),
    "pack": (
        pack_kernel,
        "void(uint16[::1], uint16[::1], uint32[::1], uint16[::1], uint16[::1])",
        ["mov.b32 %r", "mov.b32 {"],
    ),
    "f32_to_f16_bits": (CONVERT["f32_to_f16_bits"], "void(float32[::1], uint16[::1])", ["cvt.rn.f16.f32"]),
    "f32_to_bf16_bits": (CONVERT["f32_to_bf16_bits"], "void(float32[::1], uint16[::1])", ["cvt.rn.bf16.f32"]),
    "f16_bits_to_f32": (CONVERT["f16_bits_to_f32"], "void(uint16[::1], float32[::1])", ["cvt.f32.f16"]),
    "bf16_bits_to_f32": (CONVERT["bf16_bits_to_f32"], "void(uint16[::1], float32[::1])", ["shl.b32"]),
}


# Compiled for sm_90a only (wgmma does not exist before it).
WGMMA_KERNELS = {
    f"wgmma_m64n{n}k16_{ab}": (
        WGMMA[n, ab],
        f"void(uint16[::1], {_F32_2D}, {_F32_2D})",
        [
            f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ab}.{ab}",
            "wgmma.fence.sync.aligned",
            "wgmma.commit_group.sync.aligned",
            "wgmma.wait_group.sync.aligned 0",
            "fence.proxy.async.shared::cta",
            ".shared .align 1024",
        ],
    )
    for n, ab in WGMMA
}


GRID_DEPENDENCY_ROUNDS = 1 << 16  # the producer's busy rounds before it writes: long enough to be still running


def grid_producer_kernel(out, spin):
    """Spin a while (a linear congruential sequence, kept in ``spin``), then write ``out[i] = i + 1``; lets the
    next grid be scheduled before it starts spinning."""
    ptx.griddepcontrol_launch_dependents()
    i = cuda.grid(1)
    value = np.uint32(i)
    for r in range(GRID_DEPENDENCY_ROUNDS):
        value = value * np.uint32(1664525) + np.uint32(1013904223)
    if i < out.size:
        spin[i] = value
        out[i] = np.uint32(i + 1)


def grid_consumer_kernel(x, out):
    """Wait for the grid before it (``griddepcontrol.wait``), then copy what it wrote."""
    ptx.griddepcontrol_launch_dependents()
    ptx.griddepcontrol_wait()
    i = cuda.grid(1)
    if i < x.size:
        out[i] = x[i]


# Compiled for sm_90 (griddepcontrol does not exist before it).
GRID_KERNELS = {
    "grid_producer": (grid_producer_kernel, "void(uint32[::1], uint32[::1])", ["griddepcontrol.launch_dependents;"]),
    "grid_consumer": (grid_consumer_kernel, "void(uint32[::1], uint32[::1])",
                      ["griddepcontrol.launch_dependents;", "griddepcontrol.wait;"]),
}


def kernel(name: str):
    """The ``ptx_compile_worker`` factory: ``(function, signature)`` of ``KERNELS[name]``, ``WGMMA_KERNELS[name]``,
    ``GRID_KERNELS[name]`` or the docstring example."""
    if name in WGMMA_KERNELS:
        function, signature, _ = WGMMA_KERNELS[name]
        return function, signature
    if name in GRID_KERNELS:
        function, signature, _ = GRID_KERNELS[name]
        return function, signature
    if name == "docstring_example":
        return docstring_example_kernel(), "void(float16[:, ::1], float16[:, ::1], float32[:, ::1])"
    function, signature, _ = KERNELS[name]
    return function, signature


# Misuses that must fail to compile, each with the words the typing error must contain: the instruction, what was
# expected and what was given.
def _wait_group_not_literal(n):
    ptx.cp_async_wait_group(n[0])


def _mma_float64_accumulator(out):
    zero = np.uint32(0)
    d0, d1, d2, d3 = ptx.mma_m16n8k16_f16(zero, zero, zero, zero, zero, zero, 0.0, 0.0, 0.0, 0.0)
    out[0] = d0


def _mma_float_operand(out):
    c = np.float32(0)
    d0, d1, d2, d3 = ptx.mma_m16n8k16_bf16(c, c, c, c, c, c, c, c, c, c)
    out[0] = d0


def _ldmatrix_of_a_scalar(out):
    out[0] = ptx.ldmatrix_x4(out[0], 0)[0]


def _ld_global_nc_of_float32(x, out):
    out[0] = ptx.ld_global_nc_v4_u32(x, 0)[0]


def _ticket_of_uint32(tickets):
    tickets[1] = ptx.atom_add_acq_rel_gpu(tickets, 0, 1)


def _convert_float64(out):
    out[0] = ptx.f32_to_f16_bits(1.5)


def _cp_async_strided(x, out):
    s = cuda.shared.array(64, np.uint16, alignment=SHARED_ALIGN)
    ptx.cp_async_16(s, 0, x[::2], 0, 16)
    out[0] = s[0]


def _mbarrier_wait_float_parity(out):
    bars = cuda.shared.array(2, np.uint32, alignment=SHARED_ALIGN)
    ptx.mbarrier_wait_parity(bars, 0, 0.5)
    out[0] = bars[0]


TYPING_ERRORS = {
    "wait_group_not_literal": (
        _wait_group_not_literal,
        "void(int32[::1])",
        ["cp.async.wait_group", "compile-time integer literal", "int32"],
    ),
    "mma_float64_accumulator": (
        _mma_float64_accumulator,
        "void(float32[::1])",
        ["mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", "c0 must be a float32", "float64"],
    ),
    "mma_float_operand": (
        _mma_float_operand,
        "void(float32[::1])",
        ["mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", "a0 must be a 32-bit integer", "float32"],
    ),
    "ldmatrix_of_a_scalar": (
        _ldmatrix_of_a_scalar,
        "void(uint32[::1])",
        ["ldmatrix.sync.aligned.m8n8.x4.shared.b16", "arr must be a C-contiguous array", "uint32"],
    ),
    "ld_global_nc_of_float32": (
        _ld_global_nc_of_float32,
        "void(float32[::1], float32[::1])",
        ["ld.global.nc.L1::no_allocate.v4.u32", "the dtype of arr must be uint32", "float32"],
    ),
    "ticket_of_uint32": (
        _ticket_of_uint32,
        "void(uint32[::1])",
        ["atom.acq_rel.gpu.global.add.u32", "the dtype of arr must be int32", "uint32"],
    ),
    "convert_float64": (
        _convert_float64,
        "void(uint16[::1])",
        ["cvt.rn.f16.f32", "x must be a float32", "float64"],
    ),
    "cp_async_strided": (
        _cp_async_strided,
        "void(float32[::1], uint16[::1])",
        ["cp.async.cg.shared.global", "src_arr must be a C-contiguous array", "array(float32, 1d, A)"],
    ),
    "mbarrier_wait_float_parity": (
        _mbarrier_wait_float_parity,
        "void(uint32[::1])",
        ["mbarrier.test_wait.parity.shared.b64", "parity must be", "float64"],
    ),
}


def typing_error(case: str):
    """The ``ptx_compile_worker`` factory for ``TYPING_ERRORS[case]``: ``(function, signature)``."""
    function, signature, _ = TYPING_ERRORS[case]
    return function, signature


# --- checks: launch on seeded random inputs, compare with NumPy and with the emulator ---------------------------------


@functools.cache
def _compiled(function):
    return cuda.jit(function)


def launch(function, *args, threads: int = 32, blocks: int = 1) -> None:
    """Run ``function`` as a kernel of ``blocks`` blocks; NumPy arguments are copied in and back out."""
    _compiled(function)[blocks, threads](*args)


def assert_within(got, reference, bound, what: str) -> None:
    """Elementwise ``|got - reference| <= bound``, listing the worst elements otherwise."""
    error = np.abs(np.asarray(got, np.float64) - reference)
    bad = np.argwhere(~(error <= bound))
    if bad.size:
        worst = [
            f"{tuple(map(int, i))}: got {got[tuple(i)]!r}, want {reference[tuple(i)]!r} +- {bound[tuple(i)]:.3g}"
            for i in bad[:8]
        ]
        raise AssertionError(f"{what}: {len(bad)} elements outside the bound\n  " + "\n  ".join(worst))


def random_bits16(rng, shape, dtype: str) -> np.ndarray:
    """Bit patterns of random finite f16/bf16 values spread over 2**-8 .. 2**8, with some exact zeros."""
    values = rng.standard_normal(shape) * 2.0 ** rng.integers(-8, 8, shape)
    values[rng.random(shape) < 0.1] = 0.0
    as_type = np.float16 if dtype == "f16" else ml_dtypes.bfloat16
    return values.astype(np.float32).astype(as_type).view(np.uint16)


def check_shared_addr() -> None:
    """Lanes naming elements 8 l of a float16 shared array get addresses 16 bytes apart."""
    out = np.zeros(32, np.uint32)
    launch(shared_addr_kernel, out)
    np.testing.assert_array_equal(out - out[0], np.arange(32, dtype=np.uint32) * 16)


def check_timer() -> None:
    """Every lane's second clock read is not before its first and at most a second after it (the clock wraps at
    2**32 ns), and all lanes of the block report one SM, a valid one."""
    times, sms = np.zeros(64, np.uint32), np.full(32, 2**32 - 1, np.uint32)
    launch(timer_kernel, times, sms)
    before, after = times[0::2].astype(np.int64), times[1::2].astype(np.int64)
    assert ((after - before) % 2**32 < 10**9).all(), f"clock went back or jumped: {before} -> {after}"
    assert (sms == sms[0]).all(), f"one block on several SMs: {sms}"
    sm_count = 1 if ptx.SIMULATOR else cuda.get_current_device().MULTIPROCESSOR_COUNT  # the simulator's one SM
    assert sms[0] < sm_count, f"SM {sms[0]} beyond the GPU's {sm_count}"


def check_ticket(blocks: int) -> None:
    """The tickets are 0 .. blocks - 1, one per block, the counter ends at ``blocks``, and the last block's sums
    include every block's published values."""
    tickets, order = np.zeros(1, np.int32), np.full(blocks, -1, np.int32)
    values, sums = np.zeros(32 * blocks, np.int32), np.zeros(32, np.int32)
    launch(ticket_kernel, tickets, order, values, sums, blocks=blocks)
    assert sorted(order.tolist()) == list(range(blocks)), f"tickets {order}"
    assert tickets[0] == blocks, f"counter {tickets[0]} after {blocks} blocks"
    want = np.arange(blocks)[:, None] * 32 + np.arange(32)[None, :] + 1
    np.testing.assert_array_equal(sums, want.sum(axis=0))


def check_mma(dtype: str, seed: int) -> None:
    """D registers = A @ B + C (float64 NumPy) within the fp32-accumulation bound, and close to the emulator."""
    rng = np.random.default_rng(seed)
    a, b = random_bits16(rng, (16, 16), dtype), random_bits16(rng, (16, 8), dtype)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    a_regs, b_regs, c_regs = fr.fragment_a_from_matrix(a), fr.fragment_b_from_matrix(b), fr.fragment_c_from_matrix(c)
    d_regs = np.zeros((32, 4), np.float32)
    launch(mma_f16_kernel if dtype == "f16" else mma_bf16_kernel, a_regs, b_regs, c_regs, d_regs)
    a64, b64 = fr.decode16(a, dtype), fr.decode16(b, dtype)
    bound = fr.mma_error_bound(a64, b64, c)
    d = fr.matrix_from_fragment_c(d_regs)
    assert_within(d, a64 @ b64 + c, bound, f"mma {dtype} vs A @ B + C")
    emulated = fr.matrix_from_fragment_c(fr.mma_m16n8k16(a_regs, b_regs, c_regs, dtype)).astype(np.float64)
    assert_within(d, emulated, 2 * bound, f"mma {dtype} vs the emulator")


def check_ldmatrix(num: int, trans: bool, seed: int) -> None:
    """Random rows of random shared memory: registers equal the emulator's, bit for bit."""
    rng = np.random.default_rng(seed)
    memory = rng.integers(0, 1 << 16, SMEM_U16, dtype=np.uint16)
    rows = (rng.integers(0, SMEM_U16 // 8, 32) * 8).astype(np.int32)
    out = np.zeros((32, num), np.uint32)
    launch(LDMATRIX[num, trans], memory, rows, out)
    np.testing.assert_array_equal(out, fr.ldmatrix(memory, rows, num, trans))


def check_ldmatrix_feeds_mma(seed: int) -> None:
    """ldmatrix_x4 of a row-major A and ldmatrix_x2_trans of a row-major B give exactly the mma fragments."""
    rng = np.random.default_rng(seed)
    memory = rng.integers(0, 1 << 16, SMEM_U16, dtype=np.uint16)
    lane = np.arange(32)
    out = np.zeros((32, 4), np.uint32)
    launch(LDMATRIX[4, False], memory, ((lane % 16) * 16 + (lane // 16) * 8).astype(np.int32), out)
    np.testing.assert_array_equal(out, fr.fragment_a_from_matrix(memory[:256].reshape(16, 16)))
    out = np.zeros((32, 2), np.uint32)
    launch(LDMATRIX[2, True], memory, ((lane % 16) * 8).astype(np.int32), out)
    np.testing.assert_array_equal(out, fr.fragment_b_from_matrix(memory[:128].reshape(16, 8)))


def check_cp_async(seed: int) -> None:
    """Each lane's 16 destination bytes hold its src_bytes source bytes, then zeros (src_bytes 0, 8, 16 and more)."""
    rng = np.random.default_rng(seed)
    src = rng.standard_normal(64).astype(np.float32)
    sizes = rng.choice([0, 4, 8, 12, 16], 32).astype(np.int32)
    sizes[:3] = [0, 8, 16]
    src_index = (rng.integers(0, 16, 32) * 4).astype(np.int32)
    out = np.full(256, 0xABCD, np.uint16)
    launch(cp_async_kernel, src, src_index, sizes, out)
    expected = np.zeros((32, 16), np.uint8)
    for lane in range(32):
        start = src_index[lane] * 4
        expected[lane, : sizes[lane]] = src.view(np.uint8)[start : start + sizes[lane]]
    np.testing.assert_array_equal(out.view(np.uint8).reshape(32, 16), expected)


def check_ld_global_nc(seed: int) -> None:
    """Lane l gets words[index[l] : index[l] + 4]."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 1 << 32, 128, dtype=np.uint32)
    index = (rng.integers(0, 32, 32) * 4).astype(np.int32)
    out = np.zeros((32, 4), np.uint32)
    launch(ld_global_nc_kernel, words, index, out)
    np.testing.assert_array_equal(out, words[index[:, None] + np.arange(4)])


def check_st_shared(seed: int) -> None:
    """Lane l's four words land in shared bytes 16 l .. 16 l + 15, w0 lowest."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 1 << 32, (32, 4), dtype=np.uint32)
    out = np.zeros(128, np.uint32)
    launch(st_shared_kernel, words, out)
    np.testing.assert_array_equal(out, words.reshape(-1))


def check_warp_sync(seed: int) -> None:
    """After warp_sync every lane sees the words the other lanes stored before it, in each of two rounds."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 1 << 32, (2, 32), dtype=np.uint32)
    out = np.zeros((2, 32), np.uint32)
    launch(warp_sync_kernel, words, out)
    np.testing.assert_array_equal(out, words[:, ::-1])


def check_mbarrier(seed: int) -> None:
    """In every round each thread reads what the mirror thread of another warp wrote in that round."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 1 << 32, (MBARRIER_ROUNDS, 128), dtype=np.uint32)
    out = np.zeros((MBARRIER_ROUNDS, 128), np.uint32)
    launch(mbarrier_kernel, words, out, threads=128)
    np.testing.assert_array_equal(out, words[:, ::-1])


def check_pack(seed: int) -> None:
    """pack(lo, hi) = lo | hi << 16, and unpack gives (lo, hi) back."""
    rng = np.random.default_rng(seed)
    lo, hi = rng.integers(0, 1 << 16, (2, 256), dtype=np.uint16)
    packed, lo_out, hi_out = np.zeros(256, np.uint32), np.zeros(256, np.uint16), np.zeros(256, np.uint16)
    launch(pack_kernel, lo, hi, packed, lo_out, hi_out)
    np.testing.assert_array_equal(packed, lo.astype(np.uint32) | hi.astype(np.uint32) << 16)
    np.testing.assert_array_equal(lo_out, lo)
    np.testing.assert_array_equal(hi_out, hi)


def f32_inputs(seed: int, n: int) -> np.ndarray:
    """float32 values that exercise rounding to 16 bits: specials, exact ties, the overflow edge, random values of
    every magnitude, and random bit patterns (NaN payloads, subnormals)."""
    rng = np.random.default_rng(seed)
    specials = np.array(
        [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0,
         1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8,  # f16 and bf16 ties: to even
         65504.0, 65519.99, 65520.0, -65520.0, 1e5,  # f16: largest, rounds down, rounds to Inf
         3.3895e38, 3.4e38, 3.4028235e38,  # bf16: largest, rounds to Inf
         2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 2.0**-14, 6e-8, 1e-40, -1e-45],
        np.float32,
    )
    magnitudes = (rng.standard_normal(n // 2) * 2.0 ** rng.integers(-40, 40, n // 2)).astype(np.float32)
    patterns = rng.integers(0, 1 << 32, n - n // 2 - specials.size, dtype=np.uint32).view(np.float32)
    return np.concatenate([specials, magnitudes, patterns])


def _assert_bits16(got: np.ndarray, x: np.ndarray, as_type, what: str) -> None:
    """got (uint16) = x rounded to ``as_type`` (NumPy / ml_dtypes), except that any NaN pattern is accepted for NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(as_type)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan].view(np.uint16), err_msg=what)
    assert np.isnan(got[nan].view(as_type)).all(), f"{what}: NaN did not stay NaN"


def check_f32_to_16_bits(kind: str, seed: int, n: int) -> None:
    """cvt.rn to f16 / bf16: round to nearest even, overflow to Inf, NaN to a NaN, subnormals kept."""
    x = f32_inputs(seed, n)
    out = np.zeros(x.size, np.uint16)
    launch(CONVERT[f"f32_to_{kind}_bits"], x, out)
    _assert_bits16(out, x, np.float16 if kind == "f16" else ml_dtypes.bfloat16, f"f32_to_{kind}_bits")


def check_16_bits_to_f32(kind: str, bits: np.ndarray) -> None:
    """f16 / bf16 bit patterns to float32: exact (same bits for every non-NaN, and for bf16 even NaN payloads)."""
    out = np.zeros(bits.size, np.float32)
    launch(CONVERT[f"{kind}_bits_to_f32"], bits, out)
    if kind == "f16":  # NaN payloads may change (the GPU may return its canonical NaN)
        want = bits.view(np.float16).astype(np.float32)
        nan = np.isnan(want)
    else:  # a shift: every bit pattern, NaN included, is kept
        want = (bits.astype(np.uint32) << 16).view(np.float32)
        nan = np.zeros(bits.size, bool)
    np.testing.assert_array_equal(out[~nan].view(np.uint32), want[~nan].view(np.uint32), err_msg=f"{kind}_bits_to_f32")
    assert np.isnan(out[nan]).all(), f"{kind}_bits_to_f32: NaN did not stay NaN"


def check_gemm(seed: int) -> None:
    """4 warps, 4 k-steps each (the warp rendezvous reused back to back): D = A @ B within the fp32 bound."""
    rng = np.random.default_rng(seed)
    a = random_bits16(rng, (16, 64), "f16").view(np.float16)
    b = random_bits16(rng, (64, 32), "f16").view(np.float16)
    d = np.zeros((16, 32), np.float32)
    launch(gemm_kernel, a, b, d, threads=128)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert_within(d, a64 @ b64, fr.mma_error_bound(a64, b64, np.zeros((16, 32))), "gemm vs A @ B")


def sw128_layout(rows) -> np.ndarray:
    """Flat uint16 index of element (r, c) of a rows x 64 K-major operand with the 128-byte swizzle (chunk c // 8
    XOR r % 8): the Tiled-CSL position of (r, c), ``formats.tiled_csl.swizzle``."""
    return swizzle(np.arange(rows * 64)).reshape(rows, 64)


def check_wgmma(n: int, dtype: str, seed: int) -> None:
    """D = A (64 x 64) @ B (64 x n) + C in four k16 steps, operands laid out in shared memory with the 128-byte
    swizzle: within the fp32 bound of float64 NumPy, and of the emulator reading the same memory."""
    rng = np.random.default_rng(seed)
    a = random_bits16(rng, (64, WGMMA_K), dtype)
    b_t = random_bits16(rng, (n, WGMMA_K), dtype)  # B stored K-major: row n holds B[:, n]
    memory = np.zeros(WGMMA_SMEM_U16, np.uint16)
    memory[sw128_layout(64)] = a
    memory[64 * WGMMA_K + sw128_layout(n)] = b_t
    table = fr.wgmma_d_fragment(n)
    c = rng.standard_normal((64, n)).astype(np.float32)
    c_regs = np.ascontiguousarray(c[table[..., 0], table[..., 1]])
    d_regs = np.zeros_like(c_regs)
    launch(WGMMA[n, dtype], memory, c_regs, d_regs, threads=128)
    d = np.empty((64, n), np.float32)
    d[table[..., 0], table[..., 1]] = d_regs
    a64, b64 = fr.decode16(a, dtype), fr.decode16(b_t, dtype).T
    bound = fr.mma_error_bound(a64, b64, c)
    assert_within(d, a64 @ b64 + c, bound, f"wgmma m64n{n}k16 {dtype} vs A @ B + C")
    emulated = c_regs
    for ks in range(WGMMA_K // 16):
        emulated = fr.wgmma_m64nNk16(fr.sw128_k_major_operand(memory, 32 * ks, 64),
                                     fr.sw128_k_major_operand(memory, 2 * 64 * WGMMA_K + 32 * ks, n), emulated, dtype)
    em = np.empty((64, n), np.float64)
    em[table[..., 0], table[..., 1]] = emulated
    assert_within(d, em, 2 * bound, f"wgmma m64n{n}k16 {dtype} vs the emulator")


def run_docstring_example() -> None:
    """Execute the example of ``flashllm_nb.kernels.ptx``'s docstring exactly as written (it checks itself)."""
    exec(compile(docstring_example(), "<ptx docstring example>", "exec"), {})
