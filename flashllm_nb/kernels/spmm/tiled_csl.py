"""The Tiled-CSL SpMM kernel: load as sparse, compute as dense.

``C[m, n] = sum_k A[m, k] * B[k, n]`` with A (M x K) in Tiled-CSL and B the dense activations, fp32 accumulation,
one rounding to fp16/bf16 at the end (plus an optional bias per row m). B is X of shape (N, K) ("nk": ``linear``,
the output (N, M)) or (K, N) ("kn": ``spmm``, the output (M, N)), fixed per compiled kernel.

One thread block (4 or 8 warps) owns a 128-row tile row of A, a ``tile_n``-wide slice of the N columns and a
contiguous range of the 64-wide k-tiles (split-K); with ``stream_k`` a block's range runs on into the next tile row,
and it makes a pass of the pseudo-code below over each of the two. This module composes the stages; each is its
own module:

* :mod:`.activations`: tiles of X by ``cp.async`` into ``stages`` shared stages, ``stages - 1`` ahead;
* :mod:`.words`: a tile's words by 16-byte loads into registers two k-tiles ahead, scattered into one of two dense
  shared A buffers, zeroed again after the products (by rows, or by entries);
* :mod:`.products`: ``ldmatrix`` + ``mma.sync``, or ``wgmma`` on Hopper;
* :mod:`.epilogue`: split-K's fix-up and the output store.

The block, in pseudo-code (step i multiplies tile i while tile i+1's words wait in registers and tile i+2's and
i+3's are in flight)::

    prologue: [dependent launch: let the next kernel start]
              tile offsets -> shared; zero A[0] and A[1]; issue activations 0 .. STAGES-2;
              load words(0), words(1); scatter words(0) -> A[0]; load words(2)
              [dependent launch: the activations are issued after the word loads, behind griddepcontrol.wait]
    for i in the block's k-tiles (unrolled by two: the two word buffers alternate):
        wait for activation tile i; barrier        # A[i%2] expanded, everyone's copies visible
        start products of A[i%2] (wgmma)
        issue activations i+STAGES-1 into tile i-1's stage
        multiply A[i%2] (mma.sync)
        clear and scatter, one of three ways (below); load words(i+3) into the buffer words(i+1) left
    split-K: publish the partial tile; the last block of the output tile sums them
    store the tile (bias, one rounding)

The three ways a step clears and scatters (``SpmmConfig.clear`` and ``mma``)::

    rows:            scatter words(i+1) -> A[(i+1)%2]; load words(i+3); finish products;
                     each warp zeroes the rows of A[i%2] it read          # ordered by the next step's barrier
    entries, sync:   multiply; arrive on mbarrier[i%2]; scatter words(i+1) -> A[(i+1)%2];
                     wait for mbarrier[i%2]; zero A[i%2] at positions(i); keep positions(i+1); load words(i+3)
    entries, wgmma:  zero A[(i+1)%2] at positions(i-1); barrier;          # zero first, while wgmma runs on tile i
                     scatter words(i+1) -> A[(i+1)%2]; keep positions(i+1); load words(i+3); finish products

Why each piece is the way it is, with the measurements behind it (registers instead of shared memory for the
words, one barrier per step, zero first, where the proxy fence goes, the split-K tail): ``docs/kernel-design.md``.
"""

from __future__ import annotations

import functools

from numba import cuda, float32, int32, int64, uint16, uint32

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.ptx import inlined
from flashllm_nb.kernels.spmm import stream_k
from flashllm_nb.kernels.spmm.activations import activation_stage
from flashllm_nb.kernels.spmm.bitmaps import BITMAP_VECTORS, bitmap_stage
from flashllm_nb.kernels.spmm.config import TILE_K, TILE_M, TIMELINE_FIELDS, SpmmConfig
from flashllm_nb.kernels.spmm.epilogue import epilogue_stage
from flashllm_nb.kernels.spmm.geometry import Geometry, geometry
from flashllm_nb.kernels.spmm.products import product_stage
from flashllm_nb.kernels.spmm.words import word_stage

__all__ = ["build_kernel"]


@functools.cache
def build_kernel(cfg: SpmmConfig):
    """The ``cuda.jit`` kernel of one configuration (compiled on first use; every constant frozen into the code).

    Arguments (``config.kernel_signature``; all device arrays flat and C-contiguous):

    * ``words`` uint32[nnz_stored]: Tiled-CSL entries; ``tile_offsets`` int32[n_tiles + 2] in 4-word vectors.
    * ``x`` uint16: activation bits, row-major with leading dimension ``ldx`` (a multiple of 8, so that every
      16-byte chunk is aligned): (N, ldx >= K) for ``"nk"``, (K, ldx >= N) for ``"kn"``.
    * ``y`` uint16[M*N]: output bits, (N, M) for ``"nk"``, (M, N) for ``"kn"``.
    * ``bias`` uint16[>=1]: bias bits per output row m, read only when ``has_bias``.
    * ``workspace`` float32[``Plan.partial_tiles`` * TILE_M * tile_n] and ``tickets`` int32[n_tiles_m * n_tiles_n]
      (all zero before the first launch; the kernel leaves them zero): used only when ``cfg.splits``.
      With ``cfg.timeline`` the tickets are followed by a record of ``TIMELINE_FIELDS`` per block
      (``driver.timeline_tickets``), which thread 0 writes.
    * ``M, N, K``: logical sizes; ``n_tile_cols``: k-tiles per tile row; ``k_tiles_per_split``: k-tiles per block
      (split-K; a stream-K block finds its range from the grid).
    """
    g = geometry(cfg)
    activations, sparse, products = activation_stage(g), word_stage(g), product_stage(g)
    epilogue = epilogue_stage(g, products.accumulator_of)
    if g.bitmap:
        bitmaps = bitmap_stage(g)
        load_first_words, expand_first_tile = _fill_bitmap_tiles(g, activations, sparse, bitmaps)
        k_step = _clearing_rows_bitmap(_begin(g, activations, sparse, products), sparse, bitmaps, products)
    else:
        load_first_words, expand_first_tile = _fill_words(g, activations, sparse)
        k_step = _k_step(g, activations, sparse, products)
    mark, record, tally = _timeline_records(cfg.stream_k)
    units_of, block_range = inlined(stream_k.units_of), inlined(stream_k.block_range)
    tile_row_of = inlined(stream_k.tile_row_of)
    tile_row_pass = _tile_row_pass(g, activations, sparse, products, epilogue, load_first_words, expand_first_tile,
                                   k_step, mark, tally)
    # Numba calls device functions by name, not through a namespace.
    ACC, WORDS, POSITIONS, FRAG = g.accumulators, g.word_registers, g.position_registers, g.frag_registers
    K_STEPS, NPAIR, SMEM_ALIGN = g.k_steps, g.b_loads, g.smem_align
    REDUCE_VALUES = g.reduce_group * ACC
    STREAM_K = cfg.stream_k
    GRID_DEPENDENCY = cfg.grid_dependency
    TIMELINE = cfg.timeline
    T_START, T_END, F_SM, F_WROTE = (TIMELINE_FIELDS.index(name) for name in ("start", "end", "sm", "wrote"))

    # The simulator's cuda.jit takes no launch bounds (they only steer ptxas).
    @(cuda.jit if ptx.SIMULATOR else cuda.jit(launch_bounds=cfg.launch_bounds))
    def spmm_tiled_csl(words, tile_offsets, x, ldx, y, bias, has_bias, workspace, tickets, M, N, K, n_tile_cols,
                       k_tiles_per_split):
        # One dynamic shared-memory block, seen as uint16 (A and activation tiles) and uint32 (tile offsets):
        # [A 0 | A 1 | act 0 .. act STAGES-1 | mbarriers | tile offsets of this block]
        smem16 = cuda.shared.array(0, uint16, alignment=SMEM_ALIGN)
        smem32 = cuda.shared.array(0, uint32, alignment=SMEM_ALIGN)
        # The epilogue's view: the A buffers reused (and, at tile_n 64, the first activation stage).
        smemf = cuda.shared.array(0, float32, alignment=SMEM_ALIGN)
        acc = cuda.local.array(ACC, float32)
        w_a = cuda.local.array(WORDS, uint32)  # register buffers of words, alternating (see _k_step)
        w_b = cuda.local.array(WORDS, uint32)
        # "entries": the next tile to zero's (wgmma: even tiles'); "bitmap": even tiles' bitmap shares
        positions = cuda.local.array(POSITIONS, uint32)
        positions_odd = cuda.local.array(POSITIONS, uint32)  # wgmma "entries": odd tiles' positions; "bitmap" too
        a_off = cuda.local.array(K_STEPS, int64)
        b_off = cuda.local.array(NPAIR, int64)
        frag0 = cuda.local.array(FRAG, uint32)  # one k16 step's A and B fragments, double-buffered (products)
        frag1 = cuda.local.array(FRAG, uint32)
        group = cuda.local.array(REDUCE_VALUES, float32)  # the reducing block's partials of several blocks
        if TIMELINE:
            mark(tickets, M, T_START)
            record(tickets, M, F_SM, int32(ptx.smid()))
            record(tickets, M, F_WROTE, int32(0))  # each pass that stores its tile adds one
        if GRID_DEPENDENCY:
            ptx.griddepcontrol_launch_dependents()

        inputs = (words, tile_offsets, x, ldx, y, bias, has_bias, M, N, K, n_tile_cols)
        shared = (smem16, smem32, smemf)
        registers = (acc, w_a, w_b, positions, positions_odd, a_off, b_off, frag0, frag1, group)
        if STREAM_K:
            # Every tile row's k-tiles in one sequence, cut into gridDim.x equal contiguous ranges (``stream_k``)
            # no longer than a tile row (the plan's grid has at least as many blocks as tile rows): this block's
            # range meets one tile row or two, a pass each, written out twice rather than looped.
            n_cols = int64(n_tile_cols)
            units = units_of(M, n_cols)
            unit, units_end = block_range(int64(cuda.blockIdx.x), int64(cuda.gridDim.x), units)
            tile_row = tile_row_of(unit, n_cols)
            row_end = (tile_row + 1) * n_cols
            in_next_row = int32(max(units_end - row_end, 0))  # all that stays live across the first pass
            tile_row_pass(inputs, shared, registers, (workspace, tickets), tile_row, unit, unit - tile_row * n_cols,
                          min(units_end, row_end) - unit, True)
            if in_next_row > 0:
                cuda.syncthreads()  # the first pass's store has read its staged tile from shared memory
                next_row = tile_row_of(unit, n_cols) + 1
                tile_row_pass(inputs, shared, registers, (workspace, tickets), next_row, next_row * n_cols, 0,
                              in_next_row, False)
        else:
            tile_row = cuda.blockIdx.x
            kt_begin = cuda.blockIdx.z * k_tiles_per_split
            tile_row_pass(inputs, shared, registers, (workspace, tickets), tile_row, tile_row * n_tile_cols + kt_begin,
                          kt_begin, min(k_tiles_per_split, n_tile_cols - kt_begin), True)
        if TIMELINE:
            mark(tickets, M, T_END)

    return spmm_tiled_csl


def _timeline_records(stream: bool):
    """``mark(tickets, M, field)``, ``record(tickets, M, field, value)`` and ``tally(tickets, M, field)`` of a
    ``timeline`` kernel: thread 0 writes the time now (%globaltimer_lo's low 31 bits, so that it fits an int32) or
    an int32 value into, or adds one to, a field of this block's record of ``TIMELINE_FIELDS``. The records follow
    the grid's per-tile tickets: split-K's grid has a tile row per block row, a ``stream`` grid counts them from
    ``M``."""
    N_FIELDS = len(TIMELINE_FIELDS)
    STREAM_K, TILE_M_SHIFT = stream, TILE_M.bit_length() - 1

    @inlined
    def place(M, field):
        """Where this block's ``field`` is in ``tickets``."""
        tile_rows = ((M + (TILE_M - 1)) >> TILE_M_SHIFT) if STREAM_K else cuda.gridDim.x
        block = (cuda.blockIdx.z * cuda.gridDim.y + cuda.blockIdx.y) * cuda.gridDim.x + cuda.blockIdx.x
        return tile_rows * cuda.gridDim.y + block * N_FIELDS + field

    @inlined
    def record(tickets, M, field, value):
        if cuda.threadIdx.x == 0:
            tickets[place(M, field)] = value

    @inlined
    def mark(tickets, M, field):
        record(tickets, M, field, int32(ptx.globaltimer_lo() & uint32(0x7FFFFFFF)))

    @inlined
    def tally(tickets, M, field):
        if cuda.threadIdx.x == 0:
            tickets[place(M, field)] += 1

    return mark, record, tally


def _tile_row_pass(g: Geometry, activations, sparse, products, epilogue, load_first_words, expand_first_tile, k_step,
                   mark, tally):
    """One pass of a block over a contiguous range of one tile row's k-tiles, from its prologue to its output tile:
    ``tile_row_pass(inputs, shared, registers, fix_up_arrays, tile_row, first_tile, kt_begin, n_tiles_block,
    first_pass)``.

    ``first_tile`` is the format's index of the range's first tile (tiles of a tile row are consecutive, and tile
    rows follow each other), ``kt_begin`` its k-tile within the row. Split-K's pass shares its output tile with the
    other splits of the grid's z dimension; a stream-K pass with the blocks whose ranges meet the same tile row
    (``stream_k``), and stores it at once where there are none. ``first_pass`` says whether the block's timeline
    marks of the prologue are this pass's; the caller meets the block at a barrier before any later pass, whose
    prologue rewrites the shared memory the last store staged its tile in. What the epilogue needs besides the tile
    row is recomputed there from the grid and the kernel's arguments, so that it holds no registers across the
    main loop."""
    fragment_rows, copy_plan, issue_activations = products.fragment_rows, activations.copy_plan, activations.issue
    stage_offsets, zero_buffer = sparse.stage_offsets, sparse.zero_buffer
    reduce_partials, store_tile = epilogue.reduce_partials, epilogue.store
    units_of, block_of = inlined(stream_k.units_of), inlined(stream_k.block_of)
    TILE_N, THREADS, STAGES, WGMMA, ENTRIES, BITMAP = g.tile_n, g.threads, g.stages, g.wgmma, g.entries, g.bitmap
    ACC, SPLITS, STREAM_K = g.accumulators, g.splits, g.cfg.stream_k
    WORDS, POSITIONS, FRAG = g.word_registers, g.position_registers, g.frag_registers
    REDUCE_VALUES = g.reduce_group * g.accumulators
    CLEAR_WARP_ROWS, MBARRIER_BASE32 = g.clear_warp_rows, g.mbarrier_base32
    GRID_DEPENDENCY = g.cfg.grid_dependency
    TIMELINE = g.cfg.timeline
    T_OFFSETS, T_WAITED, T_LOOP_END, T_TICKET, F_WROTE = (
        TIMELINE_FIELDS.index(name) for name in ("offsets", "waited", "loop_end", "ticket", "wrote"))

    @inlined
    def tile_row_pass(inputs, shared, registers, fix_up_arrays, tile_row, first_tile, kt_begin, n_tiles_block,
                      first_pass):
        words, tile_offsets, x, ldx, y, bias, has_bias, M, N, K, n_tile_cols = inputs
        smem16, smem32, smemf = shared
        acc, w_a, w_b, positions, positions_odd, a_off, b_off, frag0, frag1, group = registers
        workspace, tickets = fix_up_arrays
        for i in range(ACC):
            acc[i] = float32(0.0)
        if STREAM_K and not first_pass:
            # The first pass's words and fragments are dead here; saying so (every register written before this
            # pass reads any) keeps them from living across that pass's epilogue into this one.
            for i in range(WORDS):
                w_a[i] = uint32(0)
                w_b[i] = uint32(0)
            for i in range(POSITIONS):
                positions[i] = uint32(0)
                positions_odd[i] = uint32(0)
            for i in range(FRAG):
                frag0[i] = uint32(0)
                frag1[i] = uint32(0)
            for i in range(REDUCE_VALUES):  # written and read under the same conditions, which LLVM cannot see
                group[i] = float32(0.0)
        n0 = cuda.blockIdx.y * TILE_N
        m0 = tile_row * TILE_M
        if n_tiles_block > 0:
            tid = cuda.threadIdx.x
            lane = tid & 31
            fragment_rows(tid, a_off, b_off)
            cp_dst, cp_src, cp_rows_left, cp_cols_left = copy_plan(n0, ldx, N, K)
            stage_offsets(tid, smem32, tile_offsets, first_tile, n_tiles_block)
            zero_buffer(smem16, 0)
            zero_buffer(smem16, 1)  # for tile 1, scattered by step 0 (later steps clear what they used)
            clear_first = ((tid >> 5) * CLEAR_WARP_ROWS + (lane >> 3)) * TILE_K + (lane & 7) * 8
            if ENTRIES and not WGMMA and tid == 0:  # wgmma clears by entries behind a barrier instead
                ptx.mbarrier_init(smem32, MBARRIER_BASE32, THREADS)
                ptx.mbarrier_init(smem32, MBARRIER_BASE32 + 2, THREADS)
            cuda.syncthreads()  # offsets, zeros and mbarriers visible
            if TIMELINE and first_pass:
                mark(tickets, M, T_OFFSETS)
            if not GRID_DEPENDENCY:
                for t in range(STAGES - 1):
                    issue_activations(x, ldx, smem16, t, n_tiles_block, kt_begin, cp_dst, cp_src, cp_rows_left,
                                      cp_cols_left)
            o0, o1, o2, o3 = load_first_words(words, smem32, n_tiles_block, w_a, w_b, (positions, positions_odd))
            if GRID_DEPENDENCY:
                # Everything so far read only A, which no kernel writes: a dependent launch got here while the
                # kernel before it drained. X is that kernel's output. (A later pass finds the wait over.)
                ptx.griddepcontrol_wait()
                for t in range(STAGES - 1):
                    issue_activations(x, ldx, smem16, t, n_tiles_block, kt_begin, cp_dst, cp_src, cp_rows_left,
                                      cp_cols_left)
            if TIMELINE and first_pass:
                mark(tickets, M, T_WAITED)
            om1, o0, o1, o2, o3 = expand_first_tile(words, (smem16, smem32), n_tiles_block, w_a,
                                                    (positions, positions_odd), o0, o1, o2, o3)

            # Unrolled by two, so that each word buffer is a fixed set of registers: they alternate between tile
            # i+1's words and tile i+2's in flight. Step i's w_cur ("entries") holds the positions it zeroes, of
            # tile i (mma.sync, one buffer) or of tile i-1 (wgmma: tile t's in positions if t is even, else in
            # positions_odd); "rows" passes its w_next there, unused; "bitmap" the bitmap shares of tiles of i's
            # parity (even: positions, odd: positions_odd).
            step_inputs = (words, x, ldx)
            step_shared = (smem16, smem32)
            block = (n_tiles_block, kt_begin, clear_first)
            fragments = (a_off, b_off, frag0, frag1)
            i = 0
            while i < n_tiles_block:
                copy = (cp_dst, cp_src, cp_rows_left, cp_cols_left)
                om1, o0, o1, o2, o3 = k_step(i, step_inputs, step_shared, block, copy, fragments, acc,
                                             (positions_odd if WGMMA else positions) if ENTRIES else
                                             positions if BITMAP else w_b, w_b, (om1, o0, o1, o2, o3))
                if i + 1 < n_tiles_block:
                    om1, o0, o1, o2, o3 = k_step(i + 1, step_inputs, step_shared, block, copy, fragments, acc,
                                                 positions if ENTRIES else positions_odd if BITMAP else w_a, w_a,
                                                 (om1, o0, o1, o2, o3))
                i += 2
            ptx.cp_async_wait_all()
        elif GRID_DEPENDENCY:
            ptx.griddepcontrol_wait()  # nothing to multiply, but the epilogue writes
        if TIMELINE:
            if n_tiles_block <= 0:  # no k-tiles: the prologue's phases are empty
                mark(tickets, M, T_OFFSETS)
                mark(tickets, M, T_WAITED)
            mark(tickets, M, T_LOOP_END)

        out_tile = tile_row * cuda.gridDim.y + cuda.blockIdx.y
        if STREAM_K:
            # The blocks sharing this tile row: from the one holding its first k-tile to its last's. This pass's
            # partial goes to workspace slot (block + tile row) of its column block: along the sequence each new
            # pass moves to the next block or the next tile row or both, so no two passes share a slot.
            n_cols = int64(n_tile_cols)
            units = units_of(M, n_cols)
            blocks = int64(cuda.gridDim.x)
            row_start = int64(tile_row) * n_cols
            sharer_first = block_of(row_start, blocks, units)
            count = block_of(row_start + n_cols - 1, blocks, units) - sharer_first + 1
            first_slot = (sharer_first + tile_row) * cuda.gridDim.y + cuda.blockIdx.y
            slot_stride = cuda.gridDim.y
            index = int64(cuda.blockIdx.x) - sharer_first
        else:
            first_slot, slot_stride, index, count = out_tile, cuda.gridDim.x * cuda.gridDim.y, cuda.blockIdx.z, \
                cuda.gridDim.z
        if SPLITS and (count > 1 or not STREAM_K):
            wrote = reduce_partials(cuda.threadIdx.x, acc, group, workspace, tickets, out_tile, first_slot,
                                    slot_stride, index, count)
            if TIMELINE:
                mark(tickets, M, T_TICKET)
            if not wrote:
                return
        elif TIMELINE:
            mark(tickets, M, T_TICKET)
        store_tile(acc, smemf, y, bias, has_bias, m0, n0, M, N)
        if TIMELINE:
            tally(tickets, M, F_WROTE)

    return tile_row_pass


def _fill_words(g: Geometry, activations, sparse):
    """The prologue's word pipeline, in two parts: a dependent launch waits for the previous kernel between them.

    ``load_first_words`` starts tiles 0 and 1 travelling into ``w_a`` and ``w_b`` and returns the vector offsets of
    tiles 0 .. 3; ``expand_first_tile`` scatters tile 0 into A buffer 0 (its load latency exposed once per block),
    starts tile 2 into ``w_a`` ("entries": tile 0's positions kept in ``positions``, the first of ``position_sets``)
    and returns the first window of tile offsets (``_k_step``): tiles 0, 1 and 2 are o0 .. o1, o1 .. o2 and o2 ..
    o3; it starts at tile -1, an empty range that step 0 does not clear."""
    ENTRIES, FENCE_BEFORE_LOADS = g.entries, g.fence_before_loads
    publish_shared_writes, tile_offset = activations.publish, sparse.tile_offset
    load_words, scatter_tile, keep_positions = sparse.load, sparse.scatter, sparse.keep_positions

    @inlined
    def load_first_words(words, smem32, n_tiles_block, w_a, w_b, position_sets):
        o0 = tile_offset(smem32, 0)
        o1 = tile_offset(smem32, min(1, n_tiles_block))
        o2 = tile_offset(smem32, min(2, n_tiles_block))
        o3 = tile_offset(smem32, min(3, n_tiles_block))
        load_words(words, o0, o1, w_a)
        if n_tiles_block > 1:
            load_words(words, o1, o2, w_b)
        return o0, o1, o2, o3

    @inlined
    def expand_first_tile(words, shared, n_tiles_block, w_a, position_sets, o0, o1, o2, o3):
        smem16, smem32 = shared
        positions = position_sets[0]
        scatter_tile(words, smem16, o0, o1, 0, w_a)
        if FENCE_BEFORE_LOADS:
            publish_shared_writes()  # for step 0 (activation tile 0, the first scatter)
        if n_tiles_block > 2:
            if ENTRIES:
                keep_positions(o0, o1, w_a, positions)
            load_words(words, o2, o3, w_a)
        return o0, o0, o1, o2, o3

    return load_first_words, expand_first_tile


def _fill_bitmap_tiles(g: Geometry, activations, sparse, bitmaps):
    """The prologue of a "bitmap" variant, in the two parts of ``_fill_words``. ``bitmaps`` is the pair of register
    sets that hold bitmap shares, even tiles' and odd tiles'. ``load_first_words`` also starts the bitmaps of tiles
    0 and 1; ``expand_first_tile`` stores both into their shared buffers, meets the block at a barrier (every
    thread's share is needed by all), expands tile 0 and starts tile 2's values and the bitmaps of tiles 2 and 3
    (stored by steps 0 and 1)."""
    FENCE_BEFORE_LOADS = g.fence_before_loads
    publish_shared_writes, tile_offset, load_words = activations.publish, sparse.tile_offset, sparse.load
    load_bitmap, store_bitmap, scatter_tile = bitmaps.load_bitmap, bitmaps.store_bitmap, bitmaps.scatter

    @inlined
    def load_first_words(words, smem32, n_tiles_block, w_a, w_b, bitmap_sets):
        even, odd = bitmap_sets
        o0 = tile_offset(smem32, 0)
        o1 = tile_offset(smem32, min(1, n_tiles_block))
        o2 = tile_offset(smem32, min(2, n_tiles_block))
        o3 = tile_offset(smem32, min(3, n_tiles_block))
        load_bitmap(words, o0, o1, even)
        load_words(words, o0 + BITMAP_VECTORS, o1, w_a)
        if n_tiles_block > 1:
            load_bitmap(words, o1, o2, odd)
            load_words(words, o1 + BITMAP_VECTORS, o2, w_b)
        return o0, o1, o2, o3

    @inlined
    def expand_first_tile(words, shared, n_tiles_block, w_a, bitmap_sets, o0, o1, o2, o3):
        smem16, smem32 = shared
        even, odd = bitmap_sets
        store_bitmap(smem32, 0, o0, o1, even)
        if n_tiles_block > 1:
            store_bitmap(smem32, 1, o1, o2, odd)
        cuda.syncthreads()
        scatter_tile(words, smem16, smem32, o0, o1, 0, w_a)
        if FENCE_BEFORE_LOADS:
            publish_shared_writes()
        if n_tiles_block > 2:
            load_bitmap(words, o2, o3, even)
            load_words(words, o2 + BITMAP_VECTORS, o3, w_a)
        if n_tiles_block > 3:
            load_bitmap(words, o3, tile_offset(smem32, min(4, n_tiles_block)), odd)
        return o0, o0, o1, o2, o3

    return load_first_words, expand_first_tile


def _clearing_rows_bitmap(begin, sparse, bitmaps, products):
    tile_offset, load_words, clear_own_rows = sparse.tile_offset, sparse.load, sparse.clear_own_rows
    load_bitmap, store_bitmap, scatter_tile = bitmaps.load_bitmap, bitmaps.store_bitmap, bitmaps.scatter
    finish_products, after_reads = products.finish, products.after_reads

    @inlined
    def clearing_rows_bitmap(i, inputs, shared, block, copy, fragments, acc, bitmap, w_next, window):
        """The "rows" step of a Tiled-Bitmap variant: as ``_clearing_rows``, and first tile i+2's bitmap share goes
        from registers ``bitmap`` (the set of tiles of i's parity) to shared buffer i % 2 (tile i's, whose
        expansion ended before this step's barrier), and tile i+4's starts into the registers it leaves: two
        k-tiles for its loads to land, as the values have."""
        om1, o0, o1, o2, o3 = window
        o4 = begin(i, inputs, shared, block, copy, fragments, acc, window)
        words, x, ldx = inputs
        smem16, smem32 = shared
        n_tiles_block, kt_begin, clear_first = block
        if i + 2 < n_tiles_block:
            store_bitmap(smem32, i & 1, o2, o3, bitmap)
        if i + 4 < n_tiles_block:
            load_bitmap(words, o4, tile_offset(smem32, min(i + 5, n_tiles_block)), bitmap)
        if i + 1 < n_tiles_block:
            scatter_tile(words, smem16, smem32, o1, o2, 1 - (i & 1), w_next)
        if i + 3 < n_tiles_block:
            load_words(words, o3 + BITMAP_VECTORS, o4, w_next)
        finish_products(acc)
        if i + 2 < n_tiles_block:
            after_reads()
            clear_own_rows(smem16, i & 1, clear_first)  # zeros for tile i+2
        return o0, o1, o2, o3, o4

    return clearing_rows_bitmap


def _k_step(g: Geometry, activations, sparse, products):
    """Step i of the main loop for one variant: ``k_step(i, inputs, shared, block, copy, fragments, acc, w_cur,
    w_next, window) -> window``.

    On entry A tile i is expanded, tile i+1's words are in ``w_next``, tile i+2's are in flight into the other word
    buffer, and the other A buffer is zero if tile i+1 exists ("rows", and "entries" with mma.sync) or still holds
    tile i-1 ("entries" with wgmma, zeroed by this step before its scatter). ``w_cur`` ("entries") holds the
    positions this step zeroes. On exit tile i+1 is expanded, ``w_cur`` holds tile i+1's positions and tile i+3's
    loads are in flight into ``w_next``.

    ``window`` holds the vector offsets of tiles i-1 .. i+3 (indices clamped to ``[0, n_tiles_block]``), carried
    from step to step: a step reads only the next one from shared memory, and tile t's vectors are o_t .. o_{t+1}
    - 1, so the window gives the ranges of the tiles it clears, scatters and starts loading. ``inputs`` is
    (words, x, ldx), ``shared`` (smem16, smem32), ``block`` (n_tiles_block, kt_begin, clear_first)."""
    begin = _begin(g, activations, sparse, products)
    if not g.entries:
        return _clearing_rows(begin, sparse, products)
    if g.wgmma:
        return _clearing_entries_wgmma(g, begin, activations, sparse, products)
    return _clearing_entries_sync(g, begin, sparse)


def _begin(g: Geometry, activations, sparse, products):
    STAGES, FENCE_BEFORE_LOADS = g.stages, g.fence_before_loads
    issue_activations, publish_shared_writes = activations.issue, activations.publish
    tile_offset = sparse.tile_offset
    start_products, multiply = products.start, products.multiply

    @inlined
    def begin(i, inputs, shared, block, copy, fragments, acc, window):
        """The part of a step every variant shares: the next tile offset, the barrier, the products of tile i and
        the copy of activation tile i+STAGES-1. Returns that offset."""
        words, x, ldx = inputs
        smem16, smem32 = shared
        n_tiles_block, kt_begin, _ = block
        # Read before the barrier: next to its use its latency would stall each thread in front of the loads.
        o4 = tile_offset(smem32, min(i + 4, n_tiles_block))
        if not FENCE_BEFORE_LOADS:  # else the previous step (or the prologue) did this before its word loads
            publish_shared_writes()
        # The step's barrier: A tile i is expanded, the other A buffer is cleared where tile i+1 will be scattered
        # (or, zero first, holds tile i-1, whose products everyone has waited for), everyone's copies of activation
        # tile i are visible, and everyone is done with tile i-1's activation stage and its products.
        cuda.syncthreads()
        start_products(smem16, i & 1, i & (STAGES - 1), acc)  # wgmma works on tile i while the threads go on
        cp_dst, cp_src, cp_rows_left, cp_cols_left = copy
        issue_activations(x, ldx, smem16, i + STAGES - 1, n_tiles_block, kt_begin, cp_dst, cp_src, cp_rows_left,
                          cp_cols_left)
        multiply(smem16, i & 1, i & (STAGES - 1), fragments, acc)
        return o4

    return begin


def _clearing_rows(begin, sparse, products):
    scatter_tile, load_words, clear_own_rows = sparse.scatter, sparse.load, sparse.clear_own_rows
    finish_products, after_reads = products.finish, products.after_reads

    @inlined
    def clearing_rows(i, inputs, shared, block, copy, fragments, acc, w_cur, w_next, window):
        """Each warp zeroes the rows it read, once its products are complete; the next barrier orders that
        before the scatter into this buffer."""
        om1, o0, o1, o2, o3 = window
        o4 = begin(i, inputs, shared, block, copy, fragments, acc, window)
        words, x, ldx = inputs
        smem16, smem32 = shared
        n_tiles_block, kt_begin, clear_first = block
        if i + 1 < n_tiles_block:
            scatter_tile(words, smem16, o1, o2, 1 - (i & 1), w_next)
        if i + 3 < n_tiles_block:
            load_words(words, o3, o4, w_next)
        # The warp's products of tile i are complete before it clears the rows it read, and before the next
        # barrier, after which tile i's activation stage is refilled.
        finish_products(acc)
        if i + 2 < n_tiles_block:
            after_reads()
            clear_own_rows(smem16, i & 1, clear_first)  # zeros for tile i+2
        return o0, o1, o2, o3, o4

    return clearing_rows


def _clearing_entries_sync(g: Geometry, begin, sparse):
    MBARRIER_BASE32 = g.mbarrier_base32
    scatter_tile, load_words = sparse.scatter, sparse.load
    unscatter_tile, keep_positions = sparse.unscatter, sparse.keep_positions

    @inlined
    def clearing_entries_sync(i, inputs, shared, block, copy, fragments, acc, w_cur, w_next, window):
        """mma.sync, clear="entries": a per-buffer mbarrier stands in for a second barrier. Each thread arrives
        when its reads of A[i%2] are over and waits on the phase after its scatter of tile i+1, by when the others
        have normally arrived; then it zeroes tile i's positions."""
        om1, o0, o1, o2, o3 = window
        o4 = begin(i, inputs, shared, block, copy, fragments, acc, window)
        words, x, ldx = inputs
        smem16, smem32 = shared
        n_tiles_block, kt_begin, _ = block
        a_stage = i & 1
        # Steps 0 .. n_tiles_block - 3 arrive on their buffer's mbarrier, so step i is use i >> 1 of buffer i & 1:
        # phase i >> 1, waited for by its parity.
        mbarrier = MBARRIER_BASE32 + 2 * a_stage
        if i + 2 < n_tiles_block:
            ptx.mbarrier_arrive(smem32, mbarrier)  # this thread's reads of A tile i are done
        if i + 1 < n_tiles_block:
            scatter_tile(words, smem16, o1, o2, 1 - a_stage, w_next)
        if i + 2 < n_tiles_block:
            # Everyone has read A tile i: zero it where this thread scattered it, for tile i+2 (scattered into this
            # buffer after the next barrier, which orders these zeros before it).
            ptx.mbarrier_wait_parity(smem32, mbarrier, (i >> 1) & 1)
            unscatter_tile(smem16, o0, o1, a_stage, w_cur)
        if i + 3 < n_tiles_block:
            # Tile i's positions are used: tile i+1's take their place, and tile i+1's word buffer takes tile
            # i+3's loads.
            keep_positions(o1, o2, w_next, w_cur)
            load_words(words, o3, o4, w_next)
        return o0, o1, o2, o3, o4

    return clearing_entries_sync


def _clearing_entries_wgmma(g: Geometry, begin, activations, sparse, products):
    FENCE_BEFORE_LOADS = g.fence_before_loads
    publish_shared_writes, finish_products = activations.publish, products.finish
    scatter_tile, load_words = sparse.scatter, sparse.load
    unscatter_tile, keep_positions = sparse.unscatter, sparse.keep_positions

    @inlined
    def clearing_entries_wgmma(i, inputs, shared, block, copy, fragments, acc, w_cur, w_next, window):
        """wgmma, clear="entries", zero first: every thread waited for tile i-1's products before this step's
        barrier, so the other A buffer is free. Each thread zeroes where it scattered tile i-1, a barrier orders
        all those zeros before anyone's scatter of tile i+1 into the same buffer, and the products of tile i run
        meanwhile, waited for only at the end of the step."""
        om1, o0, o1, o2, o3 = window
        o4 = begin(i, inputs, shared, block, copy, fragments, acc, window)
        words, x, ldx = inputs
        smem16, smem32 = shared
        n_tiles_block, kt_begin, _ = block
        if i + 1 < n_tiles_block:
            if i >= 1:
                unscatter_tile(smem16, om1, o0, 1 - (i & 1), w_cur)
                cuda.syncthreads()  # conditions uniform across the block
            scatter_tile(words, smem16, o1, o2, 1 - (i & 1), w_next)
        if i + 3 < n_tiles_block:
            keep_positions(o1, o2, w_next, w_cur)  # tile i-1's positions are used: tile i+1's take their place
        if FENCE_BEFORE_LOADS:
            publish_shared_writes()  # for step i+1: activation tile i+1, these zeros and this scatter
        if i + 3 < n_tiles_block:
            load_words(words, o3, o4, w_next)  # tile i+1's word buffer takes tile i+3's loads
        # Tile i's products are complete before the next barrier, after which tile i's activation stage is
        # refilled and its A buffer zeroed.
        finish_products(acc)
        return o0, o1, o2, o3, o4

    return clearing_entries_wgmma
