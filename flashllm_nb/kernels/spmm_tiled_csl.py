"""The Tiled-CSL SpMM kernel: load as sparse, compute as dense.

What this computes
------------------
``C[m, n] = sum_k A[m, k] * B[k, n]`` with A (M x K) in Tiled-CSL and B the dense activations, fp32 accumulation,
one rounding to fp16/bf16 at the end (plus an optional bias per row m). B comes in one of two memory layouts, fixed
per compiled kernel:

* ``"nk"``: B is stored as X of shape (N, K) row-major, i.e. ``linear(X, A) = X @ A.T``; the output is written
  as (N, M) row-major. This is the LLM path.
* ``"kn"``: B is stored as X of shape (K, N) row-major, i.e. ``spmm(A, X) = A @ X``; the output is (M, N).

Work decomposition
------------------
One thread block (4 or 8 warps) owns a 128-row tile row of A (one row of the format's tile grid), a
``tile_n``-wide slice of the N columns, and a contiguous range of the 64-wide k-tiles (split-K). With 8 warps each
owns 16 rows: one m16 fragment times ``tile_n / 8`` n8 fragments of ``mma.m16n8k16`` (with 4 warps, 32 rows: two)::

            k-tile kt (64 wide)                 activation tile (64 x tile_n)
        +-------------------------+            +-----------------+
  warp0 | rows   0.. 15           |            |                 |
  warp1 | rows  16.. 31           |     x      |  cp.async'ed    |
   ...  |          ...            |            |  into shared    |
  warp7 | rows 112..127           |            |                 |
        +-------------------------+            +-----------------+
        expanded from the tile's sparse words into shared memory, zeros everywhere else

Pipeline
--------
Activation tiles travel by ``cp.async`` into ``STAGES`` shared stages, ``STAGES - 1`` k-tiles ahead; a tile's
sparse words travel by 16-byte ``ld.global.nc`` loads straight into registers, one k-tile ahead, and are scattered
from there into one of two dense shared A tiles. At step i tile i is multiplied while tile i+1's words are in flight
and then expanded::

    prologue: tile offsets of the block -> shared; zero A[0]; issue activations 0 .. STAGES-2;
              load words(0) -> registers; scatter -> A[0]
    for i in the block's k-tiles:
        wait for activation tile i; barrier      # A[i%2] expanded; everyone is done with tile i-1's buffers
        issue activations i+STAGES-1 into tile i-1's stage
        load words(i+1) -> registers             # in flight during the zeroing and the mma
        zero A[(i+1)%2]
        ldmatrix + mma.sync on A[i%2] and activations(i)     # fp32 accumulators in registers
        barrier                                  # the zeroing is complete
        scatter the registered words(i+1) -> A[(i+1)%2]; a tile denser than the register budget (25 %) loads
        and scatters its remaining words here, unhidden

Two barriers per k-tile: one publishes the expansion (and the copies) before the mma reads them, one orders the
zeroing before any thread's scatter. Any tile density is legal: the register budget only decides how much of a
tile's words load ahead of time.

Why words go to registers and not through shared memory: both were measured on an H200 (``bench/RESULTS.md``).
Staging the words in shared memory with ``cp.async`` lets them run several tiles ahead, but costs a copy, a
shared-memory read per word and 7-16 KB per stage, which halves the blocks per SM; the kernel is bound by
instruction issue and occupancy, not by memory latency, so the register path was 1.3-1.6x faster.

Shared-memory layout and swizzle
--------------------------------
A tile element (r, c) lives at ``r * 64 + ((c // 8) ^ (r % 8)) * 8 + c % 8``: the 16-byte chunk of the column is
XORed with the row, exactly the position the format stores in each word's high half, so the scatter is a single
store and the eight rows an ``ldmatrix`` reads for one 8x8 matrix fall in eight different 16-byte bank groups.
B tiles use the same idea: for ``"nk"`` a row is one token's 64 k-values (128 bytes) and is swizzled exactly like A;
for ``"kn"`` a row is one k's ``tile_n`` values and the chunk is XORed so that eight consecutive k rows hit eight
different bank groups (see ``_kn_chunk_xor``).

Fragments (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"): lane l has group g = l // 4 and
thread-in-group t = l % 4; A registers {a0..a3} hold rows (g, g+8) x k (2t, 2t+1, 2t+8, 2t+9); B registers
{b0, b1} hold k (2t, 2t+1) and (2t+8, 2t+9) of column g; C holds rows (g, g+8) x columns (2t, 2t+1).
``ldmatrix.x4`` returns matrix j of the four 8x8 matrices whose rows lanes 8j..8j+7 addressed; the row/k order of
the lanes below makes those four registers exactly {a0..a3} (or {b0, b1} of two n8 fragments).

Split-K
-------
With ``splits > 1`` each block writes its fp32 partial tile to a workspace, then the last block of an output tile to
arrive (an atomic ticket per output tile) sums the partials in split order (deterministic), rounds once, and resets
the ticket to zero for the next launch. One launch, no memset, no second kernel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from numba import cuda, float32, int32, uint16, uint32, uint64

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.ptx import SHARED_ALIGN

__all__ = ["SpmmConfig", "TILE_M", "TILE_K", "build_kernel", "kernel_signature", "TILE_N_CHOICES", "WARP_CHOICES"]

TILE_M = 128  # rows of A per block: one tile row of the Tiled-CSL grid
TILE_K = 64  # k per pipeline step: one tile column of the grid
TILE_ELEMS = TILE_M * TILE_K  # 8192 fp16 values = 16 KiB of shared memory per A buffer
WARP_CHOICES = (4, 8)  # warps per block: 4 warps own two m16 row bands each, 8 warps one each
TILE_N_CHOICES = (8, 16, 32, 64)
# Activation tiles in flight: STAGES - 1 k-tiles of X are copied ahead of the one being multiplied. They are small
# (64 x tile_n fp16) and read from L2, so depth costs little shared memory and hides their latency completely.
STAGES = 4
# cp.async.wait_group takes an immediate: the number of most recent groups that may still be in flight. At step i
# activation tiles 0 .. i+STAGES-2 have been issued; tile i must have landed.
_PENDING_IN_LOOP = STAGES - 2
# Word vectors a block keeps in flight per k-tile, in registers: 512 vectors = 2048 entries, a 25 %-dense tile.
PREFETCH_VECTORS = 512


if ptx.SIMULATOR:
    _device = cuda.jit(device=True)
else:
    _device = cuda.jit(device=True, forceinline=True)


@dataclass(frozen=True)
class SpmmConfig:
    """One compiled kernel variant.

    Attributes
    ----------
    tile_n : int
        Columns of the output per block, one of ``TILE_N_CHOICES``.
    dtype : str
        ``"float16"`` or ``"bfloat16"``: the dtype of A's values, of X and of the output.
    x_layout : str
        ``"nk"`` (X is (N, K) row-major, output (N, M): ``linear``) or ``"kn"`` (X is (K, N), output (M, N): ``spmm``).
    splits : bool
        Whether the kernel does split-K fix-up (a workspace and per-tile tickets) or writes the output directly.
    warps : int
        Warps per block, one of ``WARP_CHOICES``. Fewer warps repeat the per-k-tile bookkeeping (activation copies,
        loop control) fewer times; more warps hide more latency per block.
    """

    tile_n: int
    dtype: str = "float16"
    x_layout: str = "nk"
    splits: bool = False
    warps: int = 4

    @property
    def threads(self) -> int:
        return 32 * self.warps

    def __post_init__(self):
        if self.tile_n not in TILE_N_CHOICES:
            raise ValueError(f"Invalid tile_n of SpmmConfig: expected one of {TILE_N_CHOICES}, got {self.tile_n}")
        if self.dtype not in ("float16", "bfloat16"):
            raise ValueError(f"Invalid dtype of SpmmConfig: expected 'float16' or 'bfloat16', got {self.dtype!r}")
        if self.x_layout not in ("nk", "kn"):
            raise ValueError(f"Invalid x_layout of SpmmConfig: expected 'nk' or 'kn', got {self.x_layout!r}")
        if self.warps not in WARP_CHOICES:
            raise ValueError(f"Invalid warps of SpmmConfig: expected one of {WARP_CHOICES}, got {self.warps}")

    def shared_bytes(self, k_tiles_per_split: int) -> int:
        """Dynamic shared memory of one block: two A tiles (32 KiB, reused by the epilogue), STAGES activation
        tiles, and the block's tile offsets."""
        return 2 * TILE_ELEMS * 2 + STAGES * TILE_K * self.tile_n * 2 + 4 * (k_tiles_per_split + 1)


def _kn_chunk_xor(tile_n: int):
    """The XOR applied to a "kn" B row's 16-byte chunk index, as a function of the row k.

    A row holds ``cpr = tile_n / 8`` chunks. ``ldmatrix`` reads one chunk from each of eight consecutive rows; they
    are conflict-free when their chunks land in eight different 16-byte bank groups, ``(k * cpr + chunk) % 8``.
    With cpr >= 8 XORing the chunk with k % 8 does that; with fewer chunks per row, consecutive rows already differ
    by cpr groups and rows ``8 / cpr`` apart collide, so XOR with ``(k // (8 / cpr)) % cpr``.
    """
    cpr = tile_n // 8
    if cpr >= 8:
        return 1, 7
    return 8 // cpr, cpr - 1


def kernel_signature() -> tuple:
    """The one argument signature every configuration is compiled for (flat C-contiguous arrays, int32 scalars):
    words, tile_offsets, x, ldx, y, bias, has_bias, workspace, tickets, M, N, K, n_tile_cols, k_tiles_per_split."""
    from numba import types

    u16, i32 = types.Array(types.uint16, 1, "C"), types.int32
    return (types.Array(types.uint32, 1, "C"), types.Array(types.int32, 1, "C"), u16, i32, u16, u16, i32,
            types.Array(types.float32, 1, "C"), types.Array(types.int32, 1, "C"), i32, i32, i32, i32, i32)


@functools.cache
def build_kernel(cfg: SpmmConfig):
    """Compile-on-first-use kernel for one configuration; constants below are frozen into the code.

    Kernel arguments (all device arrays are flat, C-contiguous):

    * ``words`` uint32[nnz_stored]: Tiled-CSL entries; ``tile_offsets`` int32[n_tiles + 2] in 4-word vectors.
    * ``x`` uint16: activation bits, row-major with leading dimension ``ldx`` (a multiple of 8, so that every
      16-byte chunk is aligned): (N, ldx >= K) for ``"nk"``, (K, ldx >= N) for ``"kn"``.
    * ``y`` uint16[M*N]: output bits, (N, M) for ``"nk"``, (M, N) for ``"kn"``.
    * ``bias`` uint16[>=1]: bias bits per output row m, read only when ``has_bias``.
    * ``workspace`` float32[splits * n_tiles_m * n_tiles_n * TILE_M * tile_n] and ``tickets`` int32[n_tiles_m *
      n_tiles_n] (all zero before the first launch; the kernel leaves them zero): used only when ``cfg.splits``.
    * ``M, N, K``: logical sizes; ``n_tile_cols``: k-tiles per tile row; ``k_tiles_per_split``: k-tiles per block.
    """
    TILE_N = cfg.tile_n
    NF = TILE_N // 8  # n8 fragments per warp
    NPAIR = max(NF // 2, 1)  # ldmatrix.x4 loads of B per k16 step (x2 when tile_n == 8)
    THREADS = cfg.threads
    WARP_ROWS = TILE_M // cfg.warps  # 32 rows (two m16 fragments) with 4 warps, 16 (one) with 8
    MF = WARP_ROWS // 16  # m16 fragments per warp
    ACC = MF * NF * 4  # fp32 accumulators per thread: MF x NF fragments x 4 (tile_n = 64, 4 warps: 64 registers)
    OUT_ROUNDS = TILE_M * TILE_N // THREADS  # output elements each thread stores (128 * 64 / 256 = 32)
    B_ELEMS = TILE_K * TILE_N  # 64 * 64 = 4096 values for tile_n = 64
    B_BASE = 2 * TILE_ELEMS  # uint16 index of the first activation stage, after the two A tiles
    OFFSETS_BASE32 = (B_BASE + STAGES * B_ELEMS) // 2  # uint32 index of the block's tile offsets
    R = PREFETCH_VECTORS // THREADS  # 16-byte word vectors each thread holds in registers (8 warps: 2)
    WORDS = 4 * R
    B_CHUNKS = B_ELEMS // 8  # 16-byte cp.async chunks per B tile
    B_ROUNDS = (B_CHUNKS + THREADS - 1) // THREADS
    NK = cfg.x_layout == "nk"
    CPR = TILE_N // 8  # "kn": 16-byte chunks per B row
    KN_DIV, KN_MASK = _kn_chunk_xor(TILE_N)
    SPLITS = cfg.splits
    if cfg.dtype == "bfloat16":
        mma = ptx.mma_m16n8k16_bf16
        to_bits = ptx.f32_to_bf16_bits
        from_bits = ptx.bf16_bits_to_f32
    else:
        mma = ptx.mma_m16n8k16_f16
        to_bits = ptx.f32_to_f16_bits
        from_bits = ptx.f16_bits_to_f32

    # The per-k-tile copy and scatter loops below run in unsigned 64-bit arithmetic: Numba wraps every signed array
    # index for negative values and rounds signed division toward minus infinity, which costs several instructions
    # per index; with unsigned operands both disappear (and / % by powers of two become shifts and masks). Every
    # operand is cast, since Numba turns mixed signed/unsigned 64-bit arithmetic into float64.
    @_device
    def load_b_tile(x, ldx, bs, stage, n0, k0, N, K):
        """cp.async one 64 x TILE_N activation tile into activation stage ``stage``; chunks outside X are
        zero-filled."""
        for j in range(B_ROUNDS):
            c = uint64(cuda.threadIdx.x + j * THREADS)
            if c < uint64(B_CHUNKS):
                if NK:
                    # chunk c = (token n, k-chunk kc); a token row of 64 k is swizzled like an A row
                    n = c >> uint64(3)
                    kc = c & uint64(7)
                    gn = uint64(n0) + n
                    gk = uint64(k0) + (kc << uint64(3))
                    dst = uint64(B_BASE + stage * B_ELEMS) + n * uint64(TILE_K) + ((kc ^ (n & uint64(7))) << uint64(3))
                    nbytes = uint64(0)
                    src = uint64(0)
                    if gn < uint64(N) and gk < uint64(K):
                        nbytes = min(uint64(K) - gk, uint64(8)) << uint64(1)
                        src = gn * uint64(ldx) + gk
                else:
                    # chunk c = (row k, n-chunk nc) of a (K, N) row-major X
                    k = c // uint64(CPR)
                    nc = c % uint64(CPR)
                    gk = uint64(k0) + k
                    gn = uint64(n0) + (nc << uint64(3))
                    swz = (k // uint64(KN_DIV)) & uint64(KN_MASK)
                    dst = uint64(B_BASE + stage * B_ELEMS) + k * uint64(TILE_N) + ((nc ^ swz) << uint64(3))
                    nbytes = uint64(0)
                    src = uint64(0)
                    if gk < uint64(K) and gn < uint64(N):
                        nbytes = min(uint64(N) - gn, uint64(8)) << uint64(1)
                        src = gk * uint64(ldx) + gn
                ptx.cp_async_16(bs, dst, x, src, nbytes)

    @_device
    def load_words(words, v0, v1, wbuf):
        """Issue this thread's 16-byte ``ld.global.nc`` loads of the first R * THREADS vectors of a tile into
        registers (vectors past the tile read as zero words, which the scatter skips). The loads are consumed only
        after the mma of the current tile, which hides their latency."""
        v = uint64(v0) + uint64(cuda.threadIdx.x)
        for j in range(R):
            if v < uint64(v1):
                w0, w1, w2, w3 = ptx.ld_global_nc_v4_u32(words, v << uint64(2))
            else:
                w0 = w1 = w2 = w3 = uint32(0)
            wbuf[4 * j] = w0
            wbuf[4 * j + 1] = w1
            wbuf[4 * j + 2] = w2
            wbuf[4 * j + 3] = w3
            v += uint64(THREADS)

    @_device
    def scatter_word(a_s, base, w):
        """Write one entry's value to its swizzled slot; a zero value (padding) is skipped, so it can never
        overwrite a real entry that shares its position."""
        value = w & uint32(0xFFFF)
        if value != 0:
            a_s[base + uint64(w >> uint32(16))] = uint16(value)

    @_device
    def scatter_tile(words, a_s, a_stage, v0, v1, wbuf):
        """Scatter a tile's registered words into A tile ``a_stage``; vectors beyond the register budget (tiles
        denser than R * THREADS vectors, 25 %) are loaded and scattered here, without the latency hidden."""
        base = uint64(a_stage * TILE_ELEMS)
        for j in range(4 * R):
            scatter_word(a_s, base, wbuf[j])
        v = uint64(v0 + R * THREADS + cuda.threadIdx.x)
        while v < uint64(v1):
            w0, w1, w2, w3 = ptx.ld_global_nc_v4_u32(words, v << uint64(2))
            scatter_word(a_s, base, w0)
            scatter_word(a_s, base, w1)
            scatter_word(a_s, base, w2)
            scatter_word(a_s, base, w3)
            v += uint64(THREADS)

    @_device
    def issue_activations(x, ldx, smem16, i, n_tiles_block, n0, kt_begin, N, K):
        """Start the copy of the block's i-th activation tile into stage i % STAGES, as one cp.async group. Past
        the block's last tile the group is empty, so every thread's group count stays the same and
        ``cp.async.wait_group`` means the same tile everywhere."""
        if i < n_tiles_block:
            load_b_tile(x, ldx, smem16, i % STAGES, n0, (kt_begin + i) * TILE_K, N, K)
        ptx.cp_async_commit()

    @_device
    def zero_a_tile(a_s, stage):
        """Zero one A buffer: 16 KiB, eight 16-byte stores per thread."""
        tid = cuda.threadIdx.x
        for j in range(TILE_ELEMS // 8 // THREADS):
            ptx.st_shared_v4_u32(a_s, stage * TILE_ELEMS + (tid + j * THREADS) * 8, 0, 0, 0, 0)

    @_device
    def mma_tile(a_s, bs, stage, b_stage, acc):
        """acc += A_tile[warp rows] @ B_tile for one 64-deep k-tile: 4 k16 steps of ldmatrix + mma.sync."""
        lane = cuda.threadIdx.x % 32
        warp = cuda.threadIdx.x // 32
        q = lane // 8  # which 8x8 matrix of an ldmatrix.x4 this lane addresses
        r = lane % 8  # which row of it
        a_base = stage * TILE_ELEMS
        b_base = B_BASE + b_stage * B_ELEMS
        for ks in range(TILE_K // 16):
            # A: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) = a0..a3
            row = warp * WARP_ROWS + r + 8 * (q % 2)
            kchunk = 2 * ks + q // 2
            a0, a1, a2, a3 = ptx.ldmatrix_x4(a_s, a_base + row * TILE_K + ((kchunk ^ r) * 8))
            if MF == 2:  # the warp's second m16 band, 16 rows further down
                a4, a5, a6, a7 = ptx.ldmatrix_x4(a_s, a_base + (row + 16) * TILE_K + ((kchunk ^ r) * 8))
            else:
                a4 = a5 = a6 = a7 = uint32(0)
            for p in range(NPAIR):
                # B: matrices (n-frag 2p, k 0-7), (2p, k 8-15), (2p+1, k 0-7), (2p+1, k 8-15) = b0, b1 of two
                # frags. With one n8 fragment (tile_n = 8) an x2 load uses lanes 0-15; lanes 16-31 repeat their
                # addresses, which ldmatrix ignores but which must still point inside the tile.
                khalf = q % 2
                nhalf = q // 2 if NF > 1 else 0
                if NK:
                    n = 16 * p + 8 * nhalf + r
                    kc = 2 * ks + khalf
                    b_idx = b_base + n * TILE_K + ((kc ^ (n % 8)) * 8)
                    if NF == 1:
                        b0, b1 = ptx.ldmatrix_x2(bs, b_idx)
                        b2 = b3 = uint32(0)
                    else:
                        b0, b1, b2, b3 = ptx.ldmatrix_x4(bs, b_idx)
                else:
                    k = 16 * ks + 8 * khalf + r
                    nc = 2 * p + nhalf
                    b_idx = b_base + k * TILE_N + ((nc ^ ((k // KN_DIV) & KN_MASK)) * 8)
                    if NF == 1:
                        b0, b1 = ptx.ldmatrix_x2_trans(bs, b_idx)
                        b2 = b3 = uint32(0)
                    else:
                        b0, b1, b2, b3 = ptx.ldmatrix_x4_trans(bs, b_idx)
                for h in range(min(2, NF)):
                    f = 2 * p + h
                    bb0 = b0 if h == 0 else b2
                    bb1 = b1 if h == 0 else b3
                    for mf in range(MF):
                        c = (mf * NF + f) * 4  # accumulators of fragment (mf, f)
                        aa0 = a0 if mf == 0 else a4
                        aa1 = a1 if mf == 0 else a5
                        aa2 = a2 if mf == 0 else a6
                        aa3 = a3 if mf == 0 else a7
                        d0, d1, d2, d3 = mma(aa0, aa1, aa2, aa3, bb0, bb1, acc[c], acc[c + 1], acc[c + 2], acc[c + 3])
                        acc[c] = d0
                        acc[c + 1] = d1
                        acc[c + 2] = d2
                        acc[c + 3] = d3

    @_device
    def accumulator_of(row, col):
        """(thread, accumulator index) holding tile element (row, col): the inverse of the C-fragment layout of
        mma.m16n8k16 (lane = 4 * (row % 8) + (col % 8) // 2; rows 8-15 of a fragment in accumulators 2 and 3)."""
        warp = row // WARP_ROWS
        mf = (row % WARP_ROWS) // 16
        r16 = row % 16
        lane = 4 * (r16 % 8) + (col % 8) // 2
        i = (mf * NF + col // 8) * 4 + 2 * (r16 // 8) + col % 2
        return warp * 32 + lane, i

    @_device
    def store_tile(acc, smemf, y, bias, has_bias, m0, n0, M, N):
        """Write the block's 128 x TILE_N result: fragments go to shared memory in thread order (a loop LLVM unrolls,
        so acc stays in registers), then all threads store the tile row by row of the output, coalesced, adding
        the bias and rounding once."""
        cuda.syncthreads()  # the main loop's shared buffers are no longer read
        own = cuda.threadIdx.x * ACC
        for i in range(ACC):
            smemf[own + i] = acc[i]
        cuda.syncthreads()
        for j in range(OUT_ROUNDS):
            o = cuda.threadIdx.x + j * THREADS
            if NK:  # output (N, M): consecutive threads on consecutive m
                row = o % TILE_M
                col = o // TILE_M
            else:  # output (M, N): consecutive threads on consecutive n
                row = o // TILE_N
                col = o % TILE_N
            m = m0 + row
            n = n0 + col
            if m < M and n < N:
                thread, i = accumulator_of(row, col)
                value = smemf[thread * ACC + i]
                if has_bias:
                    value += from_bits(bias[m])
                if NK:
                    y[n * M + m] = to_bits(value)
                else:
                    y[m * N + n] = to_bits(value)

    @cuda.jit
    def spmm_tiled_csl(words, tile_offsets, x, ldx, y, bias, has_bias, workspace, tickets, M, N, K, n_tile_cols,
                       k_tiles_per_split):
        # One dynamic shared-memory block, seen as uint16 (A and activation tiles) and uint32 (tile offsets):
        # [A 0 | A 1 | act 0 .. act STAGES-1 | tile offsets of this block]
        smem16 = cuda.shared.array(0, uint16, alignment=SHARED_ALIGN)
        smem32 = cuda.shared.array(0, uint32, alignment=SHARED_ALIGN)
        smemf = cuda.shared.array(0, float32, alignment=SHARED_ALIGN)  # the epilogue's view (A buffers reused)
        acc = cuda.local.array(ACC, float32)
        wbuf = cuda.local.array(WORDS, uint32)
        for i in range(ACC):
            acc[i] = float32(0.0)

        tile_row = cuda.blockIdx.x
        n0 = cuda.blockIdx.y * TILE_N
        split = cuda.blockIdx.z
        m0 = tile_row * TILE_M
        kt_begin = split * k_tiles_per_split
        n_tiles_block = min(k_tiles_per_split, n_tile_cols - kt_begin)
        first_tile = tile_row * n_tile_cols + kt_begin  # tiles of one tile row are consecutive in the format
        offsets_base = OFFSETS_BASE32

        if n_tiles_block > 0:
            # The block's tile offsets, read once (coalesced) instead of as a dependent load before every tile.
            j = cuda.threadIdx.x
            while j <= n_tiles_block:
                smem32[offsets_base + j] = uint32(tile_offsets[first_tile + j])
                j += THREADS
            zero_a_tile(smem16, 0)
            cuda.syncthreads()  # offsets and zeros visible
            for i in range(STAGES - 1):
                issue_activations(x, ldx, smem16, i, n_tiles_block, n0, kt_begin, N, K)
            load_words(words, int32(smem32[offsets_base]), int32(smem32[offsets_base + 1]), wbuf)
            scatter_tile(words, smem16, 0, int32(smem32[offsets_base]), int32(smem32[offsets_base + 1]), wbuf)

            for i in range(n_tiles_block):
                a_stage = i % 2
                ptx.cp_async_wait_group(_PENDING_IN_LOOP)  # this thread's copies of activation tile i landed
                # A tile i is expanded, everyone's copies of activation tile i are visible, and everyone is done
                # with tile i - 1: its A buffer and its activation stage are free.
                cuda.syncthreads()
                issue_activations(x, ldx, smem16, i + STAGES - 1, n_tiles_block, n0, kt_begin, N, K)
                if i + 1 < n_tiles_block:
                    v0 = int32(smem32[offsets_base + i + 1])
                    v1 = int32(smem32[offsets_base + i + 2])
                    load_words(words, v0, v1, wbuf)  # in flight during the zeroing and the mma
                    zero_a_tile(smem16, 1 - a_stage)
                mma_tile(smem16, smem16, a_stage, i % STAGES, acc)
                cuda.syncthreads()  # the zeroing is complete before anyone scatters into that buffer
                if i + 1 < n_tiles_block:
                    scatter_tile(words, smem16, 1 - a_stage, v0, v1, wbuf)
            ptx.cp_async_wait_all()

        if SPLITS:
            # split-K fix-up: publish this split's partial tile, take a ticket; the last arrival reduces.
            n_splits = cuda.gridDim.z
            out_tile = tile_row * cuda.gridDim.y + cuda.blockIdx.y
            tile_values = TILE_M * TILE_N
            own = cuda.threadIdx.x * ACC  # each thread's partials contiguous: the same thread reads them back
            for i in range(ACC):
                workspace[(split * cuda.gridDim.x * cuda.gridDim.y + out_tile) * tile_values + own + i] = acc[i]
            cuda.threadfence()
            cuda.syncthreads()  # every thread's partials are published before the ticket is taken
            last = 0
            if cuda.threadIdx.x == 0:
                last = 1 if cuda.atomic.add(tickets, out_tile, 1) == n_splits - 1 else 0
            if cuda.syncthreads_or(last) == 0:  # broadcasts thread 0's verdict to the block
                return
            cuda.threadfence()
            # Sum in split order, so the result does not depend on which block arrived last. The split loop is
            # the outer one: an inner loop of constant trip count is what LLVM unrolls, keeping acc in registers.
            for i in range(ACC):
                acc[i] = float32(0.0)
            for sp in range(n_splits):
                partials = (sp * cuda.gridDim.x * cuda.gridDim.y + out_tile) * tile_values + own
                for i in range(ACC):
                    acc[i] += workspace[partials + i]
            if cuda.threadIdx.x == 0:
                tickets[out_tile] = 0
        store_tile(acc, smemf, y, bias, has_bias, m0, n0, M, N)

    return spmm_tiled_csl

