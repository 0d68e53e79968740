"""Lane-level NumPy emulator of ``mma.m16n8k16`` (f16/bf16 in, fp32 accumulate), ``ldmatrix`` m8n8 and Hopper's
``wgmma.mma_async`` m64nNk16 (operands in shared memory): the executable spec of the PTX ISA's fragment figures.

PTX ISA (https://docs.nvidia.com/cuda/parallel-thread-execution/index.html):

- "Matrix Fragments for mma.m16n8k16 with floating point type" (``#warp-level-matrix-fragment-mma-16816-float``);
- "Warp-level matrix load instruction: ldmatrix" (``#warp-level-matrix-instructions-ldmatrix``);
- "Asynchronous Warpgroup Level Matrix Shared Memory Layout" (the 128-byte swizzle) and "Register Fragments and
  Shared Memory Matrix Layouts" for ``wgmma .m64nNk16`` (``#asynchronous-warpgroup-level-matrix-instructions``).

A warp is 32 lanes; with ``g = lane // 4`` (the PTX "groupID") and ``t = lane % 4`` ("threadID_in_group"), each
32-bit register holds two 16-bit elements, the lower column (A, ldmatrix) or lower k (B) in the low half::

    A (16 x 16, row-major "row")      a0: A[g, 2t:2t+2]    a1: A[g+8, 2t:2t+2]
                                      a2: A[g, 2t+8:2t+10] a3: A[g+8, 2t+8:2t+10]
    B (16 x 8, K x N, "col")          b0: B[2t:2t+2, g]    b1: B[2t+8:2t+10, g]
    C, D (16 x 8, one fp32 each)      c0: C[g, 2t]  c1: C[g, 2t+1]  c2: C[g+8, 2t]  c3: C[g+8, 2t+1]
    ldmatrix, matrix j (8 x 8)        lane 8j + r supplies the address of row r;
                                      register j of lane l: M_j[g, 2t:2t+2] (.trans: M_j[2t:2t+2, g])

The tables ``A_FRAGMENT``, ``B_FRAGMENT`` and ``C_FRAGMENT`` below are those formulas, written once; everything else
here gathers or scatters through them. The simulator twins of :mod:`flashllm_nb.kernels.ptx_sim` call this module,
and the GPU tests compare the hardware with it.

Arithmetic: ``mma_m16n8k16`` forms each product exactly in float64 (a product of two f16 or bf16 values always
fits), sums the 16 products and C in float64, and rounds to float32 once. The hardware accumulates in fp32 with
its own (unspecified, truncating) order and alignment, so it may differ by a few fp32 ulps of the sum of
magnitudes: ``mma_error_bound`` is the tolerance a correct implementation meets.
"""

from __future__ import annotations

import numpy as np

from flashllm_nb._checks import check_int_in_range, check_shape, invalid

__all__ = [
    "WARP",
    "A_FRAGMENT",
    "B_FRAGMENT",
    "C_FRAGMENT",
    "bits16",
    "decode16",
    "fragment_a_from_matrix",
    "fragment_b_from_matrix",
    "fragment_c_from_matrix",
    "matrix_from_fragment_c",
    "mma_m16n8k16",
    "mma_error_bound",
    "ldmatrix",
    "WARPGROUP",
    "wgmma_d_fragment",
    "sw128_k_major_operand",
    "wgmma_m64nNk16",
]

WARP = 32
_LANE = np.arange(WARP)
_G, _T = _LANE // 4, _LANE % 4


def _pairs(rows, cols):
    """Stack per-lane (row, col) index arrays of shape (32, 2) into (32, 2, 2): [lane, half, (row, col)]."""
    return np.stack([np.broadcast_to(rows, cols.shape), cols], axis=-1)


# A_FRAGMENT[lane, register, half] = (row, col) of A held there; half 0 is bits 0-15.
_TWO = np.stack([2 * _T, 2 * _T + 1], axis=-1)  # (32, 2): columns (A) or k (B) 2t, 2t + 1
A_FRAGMENT = np.stack(
    [
        _pairs(_G[:, None], _TWO),  # a0
        _pairs(_G[:, None] + 8, _TWO),  # a1
        _pairs(_G[:, None], _TWO + 8),  # a2
        _pairs(_G[:, None] + 8, _TWO + 8),  # a3
    ],
    axis=1,
)
# B_FRAGMENT[lane, register, half] = (k, n) of B held there.
B_FRAGMENT = np.stack(
    [
        _pairs(_TWO, np.broadcast_to(_G[:, None], (WARP, 2))),  # b0
        _pairs(_TWO + 8, np.broadcast_to(_G[:, None], (WARP, 2))),  # b1
    ],
    axis=1,
)
# C_FRAGMENT[lane, register] = (row, col) of C (and D) held there.
C_FRAGMENT = np.stack(
    [
        np.stack([_G, 2 * _T], axis=-1),  # c0
        np.stack([_G, 2 * _T + 1], axis=-1),  # c1
        np.stack([_G + 8, 2 * _T], axis=-1),  # c2
        np.stack([_G + 8, 2 * _T + 1], axis=-1),  # c3
    ],
    axis=1,
)

_DTYPES = ("f16", "bf16")


def bits16(x) -> np.ndarray:
    """The 16-bit patterns of ``x`` (float16, bfloat16 from ml_dtypes, uint16 or int16) as uint16."""
    x = np.asarray(x)
    if x.dtype.itemsize != 2:
        raise invalid("dtype", "x", "a 16-bit type (float16, bfloat16, uint16)", x.dtype, TypeError)
    return x.view(np.uint16)


def decode16(bits, dtype: str) -> np.ndarray:
    """The float64 values of 16-bit patterns read as ``dtype``: ``"f16"`` (IEEE binary16) or ``"bf16"``."""
    bits = np.asarray(bits, dtype=np.uint16)
    if dtype == "f16":
        return bits.view(np.float16).astype(np.float64)
    if dtype == "bf16":  # bf16 is the high half of a float32
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    raise invalid("value", "dtype", " or ".join(repr(d) for d in _DTYPES), repr(dtype))


def _pack(lo, hi) -> np.ndarray:
    return lo.astype(np.uint32) | (hi.astype(np.uint32) << 16)


def _halves(regs) -> np.ndarray:
    """(..., 2) uint16: the low and high halves of uint32 registers."""
    regs = np.asarray(regs, dtype=np.uint32)
    return np.stack([regs & 0xFFFF, regs >> 16], axis=-1).astype(np.uint16)


def fragment_a_from_matrix(a) -> np.ndarray:
    """The (32, 4) uint32 registers ``a0..a3`` of every lane for a 16 x 16 matrix of 16-bit values."""
    check_shape(a, "a", (16, 16))
    bits = bits16(a)
    gathered = bits[A_FRAGMENT[..., 0], A_FRAGMENT[..., 1]]  # (32, 4, 2)
    return _pack(gathered[..., 0], gathered[..., 1])


def fragment_b_from_matrix(b) -> np.ndarray:
    """The (32, 2) uint32 registers ``b0, b1`` of every lane for a 16 x 8 (K x N) matrix of 16-bit values."""
    check_shape(b, "b", (16, 8))
    bits = bits16(b)
    gathered = bits[B_FRAGMENT[..., 0], B_FRAGMENT[..., 1]]  # (32, 2, 2)
    return _pack(gathered[..., 0], gathered[..., 1])


def fragment_c_from_matrix(c) -> np.ndarray:
    """The (32, 4) float32 registers ``c0..c3`` of every lane for a 16 x 8 matrix."""
    check_shape(c, "c", (16, 8))
    return np.asarray(c, dtype=np.float32)[C_FRAGMENT[..., 0], C_FRAGMENT[..., 1]]


def matrix_from_fragment_c(regs) -> np.ndarray:
    """The 16 x 8 float32 matrix that the (32, 4) C/D registers of a warp hold."""
    check_shape(regs, "regs", (WARP, 4))
    out = np.empty((16, 8), np.float32)
    out[C_FRAGMENT[..., 0], C_FRAGMENT[..., 1]] = regs
    return out


def _matrix_from_fragment(regs, table, shape, dtype) -> np.ndarray:
    out = np.empty(shape, np.float64)
    out[table[..., 0], table[..., 1]] = decode16(_halves(regs), dtype)
    return out


def mma_m16n8k16(a_regs, b_regs, c_regs, dtype: str) -> np.ndarray:
    """``mma.sync.aligned.m16n8k16.row.col.f32.{dtype}.{dtype}.f32`` for one warp: the (32, 4) float32 D registers.

    ``a_regs`` (32, 4) and ``b_regs`` (32, 2) are uint32 registers of packed ``dtype`` (``"f16"`` or ``"bf16"``)
    values, ``c_regs`` (32, 4) float32; row ``l`` is lane ``l``. D = A @ B + C, exact products and sum in float64,
    rounded to float32 once (see the module docstring for how the hardware differs).
    """
    check_shape(a_regs, "a_regs", (WARP, 4))
    check_shape(b_regs, "b_regs", (WARP, 2))
    check_shape(c_regs, "c_regs", (WARP, 4))
    a = _matrix_from_fragment(a_regs, A_FRAGMENT, (16, 16), dtype)
    b = _matrix_from_fragment(b_regs, B_FRAGMENT, (16, 8), dtype)
    c = matrix_from_fragment_c(np.asarray(c_regs, dtype=np.float32)).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # Inf and NaN propagate as in IEEE arithmetic, silently
        return fragment_c_from_matrix((a @ b + c).astype(np.float32))


def mma_error_bound(a, b, c) -> np.ndarray:
    """Elementwise bound on |D - (A @ B + C)| for float64 ``a`` (M x K), ``b`` (K x N), ``c`` (M x N).

    fp32 accumulation of K products and C: each of the K + 1 additions rounded or truncated (relative error at most
    2 ** -23 of the running sum of magnitudes), one final rounding, and fp32 subnormals possibly flushed to zero:
    ``(K + 2) * (2 ** -23 * (|A| @ |B| + |C|) + 2 ** -126)``.
    """
    a, b, c = (np.asarray(x, dtype=np.float64) for x in (a, b, c))
    return (a.shape[1] + 2) * (2.0**-23 * (np.abs(a) @ np.abs(b) + np.abs(c)) + 2.0**-126)


def ldmatrix(memory, row_indices, num: int, trans: bool) -> np.ndarray:
    """``ldmatrix.sync.aligned.m8n8.x{num}{.trans}.shared.b16`` for one warp: the (32, num) uint32 registers.

    ``memory`` is the shared memory as a C-contiguous array of any dtype; ``row_indices[l]`` is the flat element
    index (in ``memory``'s elements) of the 16-byte row lane ``l`` supplies. Only lanes ``0 .. 8 * num - 1`` are
    read; their rows must be 16-byte aligned and inside ``memory``.
    """
    num = check_int_in_range(num, "num", 1, 4)
    if num == 3:
        raise invalid("value", "num", "1, 2 or 4", num)
    check_shape(row_indices, "row_indices", (WARP,))
    memory = np.asarray(memory)
    if not memory.flags.c_contiguous:
        raise invalid("memory layout", "memory", "a C-contiguous array", f"strides {memory.strides}")
    raw = memory.reshape(-1).view(np.uint8)
    offsets = np.asarray(row_indices, dtype=np.int64)[: 8 * num] * memory.dtype.itemsize
    bad = (offsets % 16 != 0) | (offsets < 0) | (offsets + 16 > raw.size)
    if bad.any():
        lane = int(np.argmax(bad))
        raise invalid(
            "row address", f"lane {lane}", f"a 16-byte aligned row inside {raw.size} bytes", f"byte {offsets[lane]}"
        )
    rows = np.stack([raw[o : o + 16].view(np.uint16) for o in offsets])  # (8 * num, 8)
    matrices = rows.reshape(num, 8, 8)
    if trans:
        matrices = matrices.transpose(0, 2, 1)
    lo = matrices[:, _G, 2 * _T]  # (num, 32)
    hi = matrices[:, _G, 2 * _T + 1]
    return _pack(lo, hi).T.copy()


# --- wgmma (sm_90a) ---------------------------------------------------------------------------------------------------

WARPGROUP = 128  # threads of a warpgroup: four consecutive warps


def wgmma_d_fragment(n: int) -> np.ndarray:
    """(128, n // 2, 2) int table: [thread, register] -> (row, col) of the 64 x n accumulator D of ``wgmma
    .m64nNk16`` with an fp32 D. Warp ``w = thread // 32`` of the warpgroup holds rows 16w..16w+15; within them each
    n8 column block j repeats the ``mma.m16n8`` C layout: register ``4j + 2h + e`` of lane (g, t) is
    D[16w + g + 8h, 8j + 2t + e]."""
    n = check_int_in_range(n, "n", 8, 256)
    if n % 8:
        raise invalid("value", "n", "a multiple of 8", n)
    thread = np.arange(WARPGROUP)[:, None]
    register = np.arange(n // 2)[None, :]
    warp, lane = thread // WARP, thread % WARP
    g, t = lane // 4, lane % 4
    j, h, e = register // 4, (register % 4) // 2, register % 2
    return np.stack(np.broadcast_arrays(16 * warp + g + 8 * h, 8 * j + 2 * t + e), axis=-1)


def sw128_k_major_operand(memory, byte_offset: int, rows: int) -> np.ndarray:
    """The rows x 16 matrix of 16-bit patterns that a K-major wgmma operand with the 128-byte swizzle names.

    The descriptor's start address is ``byte_offset`` (bytes from a 1024-byte aligned base, which ``memory[0]``
    stands for), its stride byte offset 1024 (one 8-row atom to the next). Element (r, k) is at the unswizzled byte
    address ``u = byte_offset + (r // 8) * 1024 + (r % 8) * 128 + 2k``, then the swizzle XORs address bits 4-6
    (the 16-byte chunk) with bits 7-9 (the row within the atom): ``u ^ ((u >> 7) & 7) << 4``.
    """
    memory = np.asarray(memory)
    if not memory.flags.c_contiguous:
        raise invalid("memory layout", "memory", "a C-contiguous array", f"strides {memory.strides}")
    raw = memory.reshape(-1).view(np.uint8)
    if byte_offset % 16 or byte_offset < 0:
        raise invalid("start address", "byte_offset", "a non-negative multiple of 16", byte_offset)
    r, k = np.meshgrid(np.arange(rows), np.arange(16), indexing="ij")
    unswizzled = byte_offset + (r // 8) * 1024 + (r % 8) * 128 + 2 * k
    address = unswizzled ^ (((unswizzled >> 7) & 7) << 4)
    if address.max() + 2 > raw.size:
        raise invalid("operand extent", "byte_offset", f"rows inside {raw.size} bytes", f"byte {address.max()}")
    return raw[address] | (raw[address + 1].astype(np.uint16) << 8)


def wgmma_m64nNk16(a_bits, b_bits, c_regs, dtype: str) -> np.ndarray:
    """``wgmma.mma_async.sync.aligned.m64nNk16.f32.{dtype}.{dtype}`` for one warpgroup: the (128, n // 2) float32
    D registers from A (64 x 16 patterns), B given as its transpose (n x 16 patterns: row n holds B[:, n], as a
    K-major operand stores it) and the C registers (128, n // 2). Exact products and sum in float64, one rounding
    to float32 (see ``mma_error_bound`` for how far the hardware may differ)."""
    check_shape(a_bits, "a_bits", (64, 16))
    n = np.shape(b_bits)[0]
    check_shape(b_bits, "b_bits", (n, 16))
    table = wgmma_d_fragment(n)
    check_shape(c_regs, "c_regs", (WARPGROUP, n // 2))
    a = decode16(a_bits, dtype)
    b = decode16(b_bits, dtype).T
    c = np.empty((64, n), np.float64)
    c[table[..., 0], table[..., 1]] = np.asarray(c_regs, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # Inf and NaN propagate as in IEEE arithmetic, silently
        d = (a @ b + c).astype(np.float32)
    return d[table[..., 0], table[..., 1]]
