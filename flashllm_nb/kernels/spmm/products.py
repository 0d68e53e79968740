"""The Tensor-Core side: one k-tile's products, ``acc += A_tile[rows] @ B_tile``, by ``ldmatrix`` + ``mma.sync``
(``mma="sync"``, any sm_80+ GPU) or by Hopper's ``wgmma.mma_async`` reading both operands from shared memory
(``mma="wgmma"``, sm_90a, "nk" activations).

Fragments (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"): lane l has group g = l // 4 and
thread-in-group t = l % 4; A registers {a0..a3} hold rows (g, g+8) x k (2t, 2t+1, 2t+8, 2t+9); B registers
{b0, b1} hold k (2t, 2t+1) and (2t+8, 2t+9) of column g; C holds rows (g, g+8) x columns (2t, 2t+1).
``ldmatrix.x4`` returns matrix j of the four 8x8 matrices whose rows lanes 8j..8j+7 addressed; the row/k order of
the lanes in ``fragment_rows`` makes those four registers exactly {a0..a3} (or {b0, b1} of two n8 fragments).

wgmma needs no new layout: the format's swizzled positions are exactly wgmma's K-major 128-byte swizzle when the
A buffer starts on a 1024-byte boundary, and the "nk" activation rows are unpadded and swizzled the same way. 4
warps are one warpgroup that multiplies both m64 halves of the tile, 8 warps two, one half each.

Both paths offer the same four calls to a k-step, so that the step is written once: ``start`` (wgmma issues the
tile's products and returns), ``multiply`` (mma.sync multiplies), ``finish`` (wgmma waits for the products) and
``after_reads`` (mma.sync: the warp's lanes meet before zeroing rows that other lanes addressed).
"""

from __future__ import annotations

from types import SimpleNamespace

from numba import cuda, uint32

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.ptx import inlined
from flashllm_nb.kernels.spmm.config import TILE_ELEMS, TILE_K
from flashllm_nb.kernels.spmm.geometry import Geometry

__all__ = ["product_stage"]

_WGMMA = {
    "float16": {8: ptx.wgmma_m64n8k16_f16, 16: ptx.wgmma_m64n16k16_f16, 32: ptx.wgmma_m64n32k16_f16,
                64: ptx.wgmma_m64n64k16_f16},
    "bfloat16": {8: ptx.wgmma_m64n8k16_bf16, 16: ptx.wgmma_m64n16k16_bf16, 32: ptx.wgmma_m64n32k16_bf16,
                 64: ptx.wgmma_m64n64k16_bf16},
}
_MMA = {"float16": ptx.mma_m16n8k16_f16, "bfloat16": ptx.mma_m16n8k16_bf16}


def product_stage(g: Geometry) -> SimpleNamespace:
    """Device functions of the products of one variant: ``fragment_rows``, ``start``, ``multiply``, ``finish``,
    ``after_reads`` and ``accumulator_of`` (each documented where it is defined below). ``fragments`` is the tuple
    ``(a_off, b_off, frag0, frag1)`` of register arrays the kernel allocates (unused by wgmma)."""
    return SimpleNamespace(fragment_rows=_fragment_rows(g), start=_start(g), multiply=_multiply(g),
                           finish=_finish(g), after_reads=_after_reads(g), accumulator_of=_accumulator_of(g))


def _fragment_rows(g: Geometry):
    NF, NPAIR, K_STEPS, WARP_ROWS, NK, WGMMA = g.n_frags, g.b_loads, g.k_steps, g.warp_rows, g.nk, g.wgmma
    B_ROW, TILE_N = g.b_row, g.tile_n
    KN_DIV_SHIFT, KN_MASK = g.kn_div.bit_length() - 1, g.kn_mask

    @inlined
    def fragment_rows(tid, a_off, b_off):
        """This lane's ldmatrix rows, computed once per block: ``a_off[ks]`` in an A buffer for k16 step ks (the
        format's XOR swizzle makes it differ per step), ``b_off[p]`` in an activation stage for B load p at ks = 0
        (later steps are a constant further). wgmma reads the tiles through descriptors and needs none."""
        if WGMMA:
            return
        lane = tid & 31
        q = lane >> 3  # which 8x8 matrix of an ldmatrix.x4 this lane addresses
        r = lane & 7  # which row of it
        # A rows: (rows 0-7 | 8-15) x (k 0-7 | 8-15) for q = 0..3; the chunk is XORed with the row (format).
        a_row = (tid >> 5) * WARP_ROWS + r + 8 * (q & 1)
        for ks in range(K_STEPS):
            a_off[ks] = a_row * TILE_K + (((2 * ks + (q >> 1)) ^ r) << 3)
        # B rows: "nk" token rows n (fragment 2p + q // 2) at k chunk q % 2; "kn" k rows at n chunk 2p + q // 2.
        nhalf = (q >> 1) if NF > 1 else 0
        if NK:
            b_off[0] = (8 * nhalf + r) * B_ROW + (q & 1) * 8
        else:
            b_k = 8 * (q & 1) + r
            for p in range(NPAIR):
                b_off[p] = b_k * TILE_N + (((2 * p + nhalf) ^ ((b_k >> KN_DIV_SHIFT) & KN_MASK)) << 3)

    return fragment_rows


def _load_fragments(g: Geometry):
    NF, NPAIR, MF, NK, B_ROW, TILE_N = g.n_frags, g.b_loads, g.m_frags, g.nk, g.b_row, g.tile_n

    @inlined
    def load_fragments(smem16, a_base, b_base, a_off, b_off, ks, frag):
        """ldmatrix this lane's A (MF x 4 registers) and B (NPAIR x 4) fragments of k16 step ks into ``frag``."""
        # A: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) = a0..a3;
        # the warp's second m16 band (4 warps) is 16 rows further down.
        for mf in range(MF):
            a0, a1, a2, a3 = ptx.ldmatrix_x4(smem16, a_base + a_off[ks] + mf * 16 * TILE_K)
            frag[4 * mf] = a0
            frag[4 * mf + 1] = a1
            frag[4 * mf + 2] = a2
            frag[4 * mf + 3] = a3
        for p in range(NPAIR):
            # B: matrices (n-frag 2p, k 0-7), (2p, k 8-15), (2p+1, k 0-7), (2p+1, k 8-15) = b0, b1 of two frags.
            # With one n8 fragment (tile_n = 8) an x2 load uses lanes 0-15; lanes 16-31 repeat their addresses,
            # which ldmatrix ignores but which must still point inside the tile.
            if NK:
                b_idx = b_base + b_off[0] + p * 16 * B_ROW + ks * 16
                if NF == 1:
                    b0, b1 = ptx.ldmatrix_x2(smem16, b_idx)
                    b2 = b3 = uint32(0)
                else:
                    b0, b1, b2, b3 = ptx.ldmatrix_x4(smem16, b_idx)
            else:
                b_idx = b_base + b_off[p] + ks * 16 * TILE_N
                if NF == 1:
                    b0, b1 = ptx.ldmatrix_x2_trans(smem16, b_idx)
                    b2 = b3 = uint32(0)
                else:
                    b0, b1, b2, b3 = ptx.ldmatrix_x4_trans(smem16, b_idx)
            frag[4 * MF + 4 * p] = b0
            frag[4 * MF + 4 * p + 1] = b1
            frag[4 * MF + 4 * p + 2] = b2
            frag[4 * MF + 4 * p + 3] = b3

    return load_fragments


def _mma_fragments(g: Geometry):
    NF, MF = g.n_frags, g.m_frags
    mma = _MMA[g.cfg.dtype]

    @inlined
    def mma_fragments(frag, acc):
        """acc += the MF x NF mma.sync products of one k16 step's fragments."""
        for f in range(NF):
            b = 4 * MF + 4 * (f // 2) + 2 * (f % 2)  # b0, b1 of n8 fragment f: registers 0-1 or 2-3 of its pair
            for mf in range(MF):
                c = (mf * NF + f) * 4  # accumulators of fragment (mf, f)
                d0, d1, d2, d3 = mma(frag[4 * mf], frag[4 * mf + 1], frag[4 * mf + 2], frag[4 * mf + 3],
                                     frag[b], frag[b + 1], acc[c], acc[c + 1], acc[c + 2], acc[c + 3])
                acc[c] = d0
                acc[c + 1] = d1
                acc[c + 2] = d2
                acc[c + 3] = d3

    return mma_fragments


def _multiply(g: Geometry):
    K_STEPS, WGMMA, B_ELEMS, B_BASE = g.k_steps, g.wgmma, g.b_elems, g.b_base
    load_fragments, mma_fragments = _load_fragments(g), _mma_fragments(g)

    @inlined
    def multiply(smem16, a_stage, b_stage, fragments, acc):
        """mma.sync: acc += A_tile[warp rows] @ B_tile for one 64-deep k-tile, 4 k16 steps of ldmatrix + mma.sync
        whose fragments are double-buffered: step ks + 1's ldmatrix loads are issued before step ks's mma, so
        their latency overlaps the Tensor-Core work instead of stalling it. wgmma: nothing (``start`` did it)."""
        if WGMMA:
            return
        a_off, b_off, frag0, frag1 = fragments
        a_base = a_stage * TILE_ELEMS
        b_base = B_BASE + b_stage * B_ELEMS
        load_fragments(smem16, a_base, b_base, a_off, b_off, 0, frag0)
        for ks in range(K_STEPS):
            if ks % 2 == 0:
                if ks + 1 < K_STEPS:
                    load_fragments(smem16, a_base, b_base, a_off, b_off, ks + 1, frag1)
                mma_fragments(frag0, acc)
            else:
                if ks + 1 < K_STEPS:
                    load_fragments(smem16, a_base, b_base, a_off, b_off, ks + 1, frag0)
                mma_fragments(frag1, acc)

    return multiply


def _start(g: Geometry):
    K_STEPS, WGMMA, B_ELEMS, B_BASE = g.k_steps, g.wgmma, g.b_elems, g.b_base
    HALF_ACC, HALVES_PER_WARPGROUP = g.half_accumulators, g.halves_per_warpgroup
    wgmma = _WGMMA[g.cfg.dtype][g.tile_n]

    @inlined
    def start(smem16, a_stage, b_stage, acc):
        """wgmma: start acc += A_tile @ B_tile for one k-tile on the Tensor Cores and return at once: 4 k16 steps
        times this warpgroup's m64 halves, one commit group. A k16 step is 32 bytes further along the swizzled
        rows, the lower m64 half 64 rows (8 atoms) further down; the four warps of a warpgroup share one read of
        the activation tile per half. mma.sync: nothing (``multiply`` does it)."""
        if not WGMMA:
            return
        a_base = a_stage * TILE_ELEMS  # this warpgroup's first m64 half: the tile's first (4 warps) ...
        if HALVES_PER_WARPGROUP == 1:  # ... or its own (8 warps); with 4 warps the index stays warp-uniform
            a_base += (cuda.threadIdx.x >> 7) * (64 * TILE_K)
        b_base = B_BASE + b_stage * B_ELEMS
        ptx.wgmma_fence()  # the accumulators were last written by the previous wait (or zeroed)
        for ks in range(K_STEPS):
            for mb in range(HALVES_PER_WARPGROUP):
                wgmma(smem16, a_base + mb * 64 * TILE_K + ks * 16, b_base + ks * 16, acc, mb * HALF_ACC)
        ptx.wgmma_commit_group()

    return start


def _finish(g: Geometry):
    WGMMA, ACC = g.wgmma, g.accumulators

    @inlined
    def finish(acc):
        """wgmma: wait until this warpgroup's products of the tile are in ``acc`` (before anything zeroes or
        refills what they read). mma.sync: nothing, its products are complete when it returns."""
        if WGMMA:
            ptx.wgmma_wait_group(0, acc, ACC)

    return finish


def _after_reads(g: Geometry):
    WGMMA = g.wgmma

    @inlined
    def after_reads():
        """mma.sync: a lane's zeroing stores may hit rows another lane addressed for the warp's ldmatrix, so every
        lane is past those reads first (compute-sanitizer racecheck flags the pair without it). wgmma: nothing,
        ``finish`` waited."""
        if not WGMMA:
            ptx.warp_sync()

    return after_reads


def _accumulator_of(g: Geometry):
    NF, WARP_ROWS, WGMMA, HALVES_PER_WARPGROUP = g.n_frags, g.warp_rows, g.wgmma, g.halves_per_warpgroup
    WARP_ROWS_SHIFT = WARP_ROWS.bit_length() - 1

    @inlined
    def accumulator_of(row, col):
        """(thread, accumulator index) holding tile element (row, col): the inverse of the C-fragment layout of
        mma.m16n8k16 (lane = 4 * (row % 8) + (col % 8) // 2; rows 8-15 of a fragment in accumulators 2 and 3).
        wgmma's m64 accumulators repeat that layout per warp over 16-row bands: warp w holds rows 16w..16w+15 of
        each m64 half, which plays the part of the m16 fragment index.

        Shifts and masks only (every divisor is a power of two, row and col are never negative): Numba's signed
        // and % round toward minus infinity at several instructions each, and this runs for every output element
        in the kernel's tail."""
        if WGMMA and HALVES_PER_WARPGROUP == 2:
            warp = (row & 63) >> 4
            mf = row >> 6
        elif WGMMA:  # warpgroup row // 64 holds that half
            warp = ((row >> 6) << 2) + ((row & 63) >> 4)
            mf = 0
        else:
            warp = row >> WARP_ROWS_SHIFT
            mf = (row & (WARP_ROWS - 1)) >> 4
        r16 = row & 15
        lane = ((r16 & 7) << 2) + ((col & 7) >> 1)
        i = ((mf * NF + (col >> 3)) << 2) + ((r16 >> 3) << 1) + (col & 1)
        return (warp << 5) + lane, i

    return accumulator_of
