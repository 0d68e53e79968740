"""The activation pipeline: tiles of X travel by ``cp.async`` into ``stages`` shared-memory stages, ``stages - 1``
k-tiles ahead of the one being multiplied.

An activation tile is the 64 k-values of ``tile_n`` columns of the product. For ``"nk"`` (X is (N, K)) a
shared-memory row is one token's 64 k-values, padded to 72 for ``ldmatrix`` (conflict-free, and the row of each
k16 step a constant offset) or 128-byte swizzled for ``wgmma``; for ``"kn"`` (X is (K, N)) a row is one k's
``tile_n`` values with its 16-byte chunks XOR-swizzled (``geometry._kn_chunk_xor``). Chunks outside X are
zero-filled by the copy itself, so no shape needs to be a multiple of a tile.
"""

from __future__ import annotations

from types import SimpleNamespace

from numba import cuda

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.ptx import inlined
from flashllm_nb.kernels.spmm.config import TILE_K
from flashllm_nb.kernels.spmm.geometry import Geometry

__all__ = ["activation_stage"]


def activation_stage(g: Geometry) -> SimpleNamespace:
    """Device functions of the activation pipeline of one variant:

    * ``copy_plan(n0, ldx, N, K) -> copy``: this thread's chunk of every tile (destination, source and the rows
      and columns of X left from it), computed once per block;
    * ``issue(x, ldx, smem16, t, n_tiles_block, kt_begin, *copy)``: start copying the block's t-th tile;
    * ``publish()``: wait for the next tile's copies and make this thread's shared writes visible to the Tensor
      Cores (the step's barrier then publishes them to the other threads).
    """
    THREADS, STAGES, NK, WGMMA = g.threads, g.stages, g.nk, g.wgmma
    B_ROW, B_ELEMS, B_BASE = g.b_row, g.b_elems, g.b_base
    ROUNDS, LAST_ROUND_CHUNKS, ROUND_ROWS = g.copy_rounds, g.last_round_chunks, g.round_rows
    PENDING_IN_LOOP = g.pending_in_loop
    CPR = g.chunks_per_row
    CPR_SHIFT = CPR.bit_length() - 1
    KN_DIV_SHIFT, KN_MASK = g.kn_div.bit_length() - 1, g.kn_mask

    @inlined
    def copy_plan_nk(n0, ldx, N, K):
        """"nk" (rows are tokens): (shared destination, source index in X, rows of X left, columns of X left) of
        this thread's chunk in copy round 0; a round moves every one by a constant (``issue``)."""
        tid = cuda.threadIdx.x
        cp_row = tid >> 3  # token
        cp_col = (tid & 7) * 8  # k within the tile
        if WGMMA:  # 128-byte swizzle: chunk XOR row % 8 (a round moves 16 rows, which keeps row % 8)
            cp_dst = B_BASE + cp_row * B_ROW + (((tid & 7) ^ (cp_row & 7)) << 3)
        else:
            cp_dst = B_BASE + cp_row * B_ROW + cp_col
        cp_src = (n0 + cp_row) * ldx + cp_col
        return cp_dst, cp_src, N - n0 - cp_row, K - cp_col

    @inlined
    def copy_plan_kn(n0, ldx, N, K):
        """"kn" (rows are k): as ``copy_plan_nk``."""
        tid = cuda.threadIdx.x
        cp_row = tid >> CPR_SHIFT  # k within the tile
        nc = tid & (CPR - 1)
        cp_dst = B_BASE + cp_row * B_ROW + ((nc ^ ((cp_row >> KN_DIV_SHIFT) & KN_MASK)) << 3)
        cp_src = cp_row * ldx + n0 + nc * 8
        return cp_dst, cp_src, K - cp_row, N - n0 - nc * 8

    @inlined
    def issue(x, ldx, smem16, t, n_tiles_block, kt_begin, cp_dst, cp_src, cp_rows_left, cp_cols_left):
        """Start the copy of the block's t-th activation tile into stage t % STAGES as one cp.async group (empty
        past the block's last tile, so that ``cp.async.wait_group`` counts the same groups in every thread).
        Chunks outside X are zero-filled: a partial last chunk copies only its valid bytes. ``cp_*`` are this
        thread's ``copy_plan``."""
        if t < n_tiles_block:
            k0 = (kt_begin + t) * TILE_K
            stage_base = (t & (STAGES - 1)) * B_ELEMS
            for j in range(ROUNDS):
                if j < ROUNDS - 1 or LAST_ROUND_CHUNKS == THREADS or cuda.threadIdx.x < LAST_ROUND_CHUNKS:
                    if NK:  # rows are tokens: the row bound is fixed per thread, the k bound moves with k0
                        ok = j * ROUND_ROWS < cp_rows_left and k0 < cp_cols_left
                        nbytes = min(cp_cols_left - k0, 8) * 2
                        src = cp_src + j * ROUND_ROWS * ldx + k0
                    else:  # rows are k: the row bound moves with k0, the column bound is fixed per thread
                        ok = k0 + j * ROUND_ROWS < cp_rows_left and cp_cols_left > 0
                        nbytes = min(cp_cols_left, 8) * 2
                        src = cp_src + (k0 + j * ROUND_ROWS) * ldx
                    if not ok:
                        nbytes = 0
                        src = 0
                    ptx.cp_async_16(smem16, cp_dst + stage_base + j * ROUND_ROWS * B_ROW, x, src, nbytes)
        ptx.cp_async_commit()

    @inlined
    def publish():
        """Wait for this thread's copies of the next activation tile to be multiplied, then make them and this
        thread's scatter and zeros visible to the async proxy, through which wgmma reads. With mma.sync only the
        wait."""
        ptx.cp_async_wait_group(PENDING_IN_LOOP)
        if WGMMA:
            ptx.fence_proxy_async_shared()

    return SimpleNamespace(copy_plan=copy_plan_nk if NK else copy_plan_kn, issue=issue, publish=publish)
