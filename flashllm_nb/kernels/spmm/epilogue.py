"""The end of a block: the fix-up of an output tile that several blocks share (split-K, stream-K), and the store.

Each block of a shared tile writes its fp32 partial tile to a workspace (coalesced), then the last block of the output
tile to arrive (an atomic ticket per output tile taken by one thread: between two fences, or as one acquire-release add,
``SpmmConfig.ticket``) sums the partials in a fixed order (deterministic), rounds once, and resets the ticket to zero
for the next launch: one launch, no memset, no second kernel. That last block is the kernel's tail (the blocks of a wave
finish within a few microseconds of each other), so its work is kept short: several blocks' partials load per round
trip, and the store uses shifts and unsigned indices. ``docs/kernel-design.md`` has the tails that were tried and lost.
"""

from __future__ import annotations

from types import SimpleNamespace

from numba import cuda, float32, uint64

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.ptx import inlined
from flashllm_nb.kernels.spmm.config import TILE_M
from flashllm_nb.kernels.spmm.geometry import Geometry

__all__ = ["epilogue_stage"]


def epilogue_stage(g: Geometry, accumulator_of) -> SimpleNamespace:
    """Device functions of the end of a block of one variant: ``reduce_partials`` and ``store``. ``accumulator_of``
    is the product stage's inverse of its accumulator layout."""
    THREADS, ACC, TILE_N, NK = g.threads, g.accumulators, g.tile_n, g.nk
    ACC_STRIDE, OUT_ROUNDS, REDUCE_GROUP = g.acc_stride, g.out_rounds, g.reduce_group
    TILE_M_SHIFT, TILE_N_SHIFT = TILE_M.bit_length() - 1, TILE_N.bit_length() - 1
    RELU = g.cfg.relu
    ACQ_REL_TICKET = g.cfg.ticket == "acq_rel"
    if g.cfg.dtype == "bfloat16":
        to_bits, from_bits = ptx.f32_to_bf16_bits, ptx.bf16_bits_to_f32
    else:
        to_bits, from_bits = ptx.f32_to_f16_bits, ptx.f16_bits_to_f32

    @inlined
    def reduce_partials(tid, acc, group, workspace, tickets, out_tile, first_slot, slot_stride, index, count):
        """Publish this block's partial tile of output tile ``out_tile``, the ``index``-th of its ``count``, and
        take a ticket; return whether this block arrived last, in which case ``acc`` now holds the sum of all
        ``count`` partials in index order. Partial j lives in workspace slot ``first_slot + j * slot_stride`` (a
        slot is one tile's ``TILE_M * TILE_N`` floats): split-K passes the split and the grid's splits, stream-K
        the block's place among the blocks that share the tile."""
        tile_values = TILE_M * TILE_N
        # Accumulator i of thread t at i * THREADS + t: a warp's stores (and the last block's loads, by the same
        # thread index) are 128 contiguous bytes.
        first = first_slot * tile_values + tid
        stride = slot_stride * tile_values
        mine = uint64(first + index * stride)
        for i in range(ACC):
            workspace[mine + uint64(i * THREADS)] = acc[i]
        # One thread releases and acquires for the block, as CUTLASS's split-K semaphore does: the barrier orders
        # every thread's partials before thread 0's release (its first fence, or the acquire-release add), and a
        # release is cumulative (PTX memory model), so it covers them; on the other side thread 0's acquire (its
        # second fence, or the same add) plus the barrier order the reads of all threads.
        cuda.syncthreads()  # every thread's partials are written before the release
        last = 0
        if cuda.threadIdx.x == 0:
            if ACQ_REL_TICKET:
                # one add that releases the block's partials (behind the barrier) and acquires the earlier blocks'
                last = 1 if ptx.atom_add_acq_rel_gpu(tickets, out_tile, 1) == count - 1 else 0
            else:
                cuda.threadfence()  # release the block's partials
                last = 1 if cuda.atomic.add(tickets, out_tile, 1) == count - 1 else 0
                if last:
                    cuda.threadfence()  # acquire the other blocks' partials
        if cuda.syncthreads_or(last) == 0:  # broadcasts thread 0's verdict to the block
            return False
        # Sum in index order, so the result does not depend on which block arrived last. The partials are loaded
        # REDUCE_GROUP at a time into registers, all of a group's loads in flight together, and only then added:
        # one L2 round trip per group instead of one per partial. Loops of constant trip count are what LLVM
        # unrolls, keeping acc and the group in registers.
        for i in range(ACC):
            acc[i] = float32(0.0)
        for sp in range(0, count, REDUCE_GROUP):
            for gi in range(REDUCE_GROUP):
                if sp + gi < count:
                    partials = uint64(first + (sp + gi) * stride)  # unsigned: no negative-index wrap
                    for i in range(ACC):
                        group[gi * ACC + i] = workspace[partials + uint64(i * THREADS)]
            for gi in range(REDUCE_GROUP):
                if sp + gi < count:
                    for i in range(ACC):
                        acc[i] += group[gi * ACC + i]
        if cuda.threadIdx.x == 0:
            tickets[out_tile] = 0
        return True

    @inlined
    def store(acc, smemf, y, bias, has_bias, m0, n0, M, N):
        """Write the block's 128 x TILE_N result: fragments go to shared memory in thread order (a loop LLVM
        unrolls, so acc stays in registers), then all threads store the tile row by row of the output, coalesced,
        adding the bias (then, with ``relu``, zeroing what is negative) and rounding once. Unsigned indices (no
        negative-index wrap per access), shifts instead of // and %, the bias of an "nk" thread's one row read once,
        and a thread's accumulators ACC + 1 floats apart in shared memory, so that the lanes reading one output
        row's accumulators (4 threads apart) conflict at most 2-way."""
        cuda.syncthreads()  # the main loop's shared buffers are no longer read
        tid = cuda.threadIdx.x
        own = uint64(tid * ACC_STRIDE)
        for i in range(ACC):
            smemf[own + uint64(i)] = acc[i]
        cuda.syncthreads()
        row = tid & (TILE_M - 1)  # "nk": the thread's one row (THREADS is a multiple of TILE_M)
        bias_value = float32(0.0)
        if NK and has_bias and m0 + row < M:
            bias_value = from_bits(bias[uint64(m0 + row)])
        for j in range(OUT_ROUNDS):
            if NK:  # output (N, M): consecutive threads on consecutive m; a round covers THREADS // TILE_M columns
                col = j * (THREADS // TILE_M)
                if THREADS > TILE_M:
                    col += tid >> TILE_M_SHIFT  # with one row per thread (4 warps) the column is a constant
            else:  # output (M, N): consecutive threads on consecutive n
                o = tid + j * THREADS
                row = o >> TILE_N_SHIFT
                col = o & (TILE_N - 1)
            m = m0 + row
            n = n0 + col
            if m < M and n < N:
                thread, i = accumulator_of(row, col)
                value = smemf[uint64(thread * ACC_STRIDE + i)]
                if NK:
                    if has_bias:
                        value += bias_value
                    if RELU and value < float32(0.0):
                        value = float32(0.0)
                    y[uint64(n) * uint64(M) + uint64(m)] = to_bits(value)
                else:
                    if has_bias:
                        value += from_bits(bias[uint64(m)])
                    if RELU and value < float32(0.0):
                        value = float32(0.0)
                    y[uint64(m) * uint64(N) + uint64(n)] = to_bits(value)

    return SimpleNamespace(reduce_partials=reduce_partials, store=store)
