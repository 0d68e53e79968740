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
One thread block (4 warps, 128 threads) owns a 128-row tile row of A (one row of the format's tile grid), a
``tile_n``-wide slice of the N columns, and a contiguous range of the 64-wide k-tiles (split-K). Each warp owns
32 rows: two m16 fragments times ``tile_n / 8`` n8 fragments of ``mma.m16n8k16``::

            k-tile kt (64 wide)                 B tile (64 x tile_n)
        +-------------------------+            +-----------------+
  warp0 | rows   0.. 31           |            |                 |
  warp1 | rows  32.. 63           |     x      |  cp.async'ed    |
  warp2 | rows  64.. 95           |            |  into shared    |
  warp3 | rows  96..127           |            |                 |
        +-------------------------+            +-----------------+
        expanded from the tile's sparse words into shared memory, zeros everywhere else

Pipeline (two shared buffers for A and for B; ``cur`` holds k-tile i, ``nxt`` receives k-tile i+1)::

    prologue: cp.async B(0) -> Bs[0]; zero As[0]; barrier; scatter words(0) -> As[0]
    for i in k-tiles of this block:
        wait for this thread's cp.async of B(i); barrier            # As[cur], Bs[cur] complete; As[nxt], Bs[nxt] free
        if there is a tile i+1:
            cp.async B(i+1) -> Bs[nxt]                              # in flight during the mma below
            ld.global.nc 16-byte vectors of words(i+1) -> registers # in flight during the mma below
            zero As[nxt]
        ldmatrix + mma.sync on As[cur], Bs[cur]                     # fp32 accumulators in registers
        barrier                                                     # the zeroing of As[nxt] is complete
        scatter the registered words into As[nxt]; load and scatter any overflow beyond the register budget

Two barriers per k-tile: one publishes the scatter (and B) before the mma reads it, one orders the zeroing before
any thread's scatter. The word loads are issued before the mma so their latency hides behind it.

Shared-memory layout and swizzle
--------------------------------
A tile element (r, c) lives at ``r * 64 + ((c // 8) ^ (r % 8)) * 8 + c % 8``: the 16-byte chunk of the column is
XORed with the row, exactly the position the format stores in each word's high half, so the scatter is a single
store and the eight rows an ``ldmatrix`` reads for one 8x8 matrix fall in eight different 16-byte bank groups.
B tiles use the same idea: for ``"nk"`` a row is one token's 64 k-values (128 bytes) and is swizzled exactly like A;
for ``"kn"`` a row is one k's ``tile_n`` values and the chunk is XORed so that eight consecutive k rows hit eight
different bank groups (see ``_kn_chunk``).

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

from numba import cuda, float32, uint16, uint32

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.ptx import SHARED_ALIGN

__all__ = ["SpmmConfig", "TILE_M", "TILE_K", "THREADS", "build_kernel", "TILE_N_CHOICES"]

TILE_M = 128  # rows of A per block: one tile row of the Tiled-CSL grid
TILE_K = 64  # k per pipeline step: one tile column of the grid
TILE_ELEMS = TILE_M * TILE_K  # 8192 fp16 values = 16 KiB of shared memory per A buffer
WARPS = 4
THREADS = 32 * WARPS  # 128
WARP_ROWS = TILE_M // WARPS  # 32 rows per warp = two m16 fragments
TILE_N_CHOICES = (8, 16, 32, 64)


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
    prefetch_vectors : int
        16-byte word vectors each thread loads ahead for the next k-tile: 4 keeps 512 vectors (2048 nonzeros, a
        25 %-dense tile) in flight per block; denser tiles load the rest in a second, unhidden pass.
    splits : bool
        Whether the kernel does split-K fix-up (a workspace and per-tile tickets) or writes the output directly.
    """

    tile_n: int
    dtype: str = "float16"
    x_layout: str = "nk"
    prefetch_vectors: int = 4
    splits: bool = False

    def __post_init__(self):
        if self.tile_n not in TILE_N_CHOICES:
            raise ValueError(f"Invalid tile_n of SpmmConfig: expected one of {TILE_N_CHOICES}, got {self.tile_n}")
        if self.dtype not in ("float16", "bfloat16"):
            raise ValueError(f"Invalid dtype of SpmmConfig: expected 'float16' or 'bfloat16', got {self.dtype!r}")
        if self.x_layout not in ("nk", "kn"):
            raise ValueError(f"Invalid x_layout of SpmmConfig: expected 'nk' or 'kn', got {self.x_layout!r}")
        if not 1 <= self.prefetch_vectors <= 16:
            raise ValueError(f"Invalid prefetch_vectors of SpmmConfig: expected 1..16, got {self.prefetch_vectors}")

    @property
    def shared_bytes(self) -> int:
        """Static shared memory: two A buffers (32 KiB) + two B buffers (at most 16 KiB): within the 48 KiB a block
        may have without opting in to more."""
        return 2 * TILE_ELEMS * 2 + 2 * TILE_K * self.tile_n * 2


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
    ACC = 2 * NF * 4  # fp32 accumulators per thread: 2 m16 fragments x NF x 4 (tile_n = 64: 64 registers)
    R = cfg.prefetch_vectors
    WB = 4 * R  # words held in registers per thread
    B_ELEMS = TILE_K * TILE_N  # 64 * 64 = 4096 values for tile_n = 64
    A_SHARED = 2 * TILE_ELEMS  # two stages; shared-array sizes must be plain constants for Numba
    B_SHARED = 2 * B_ELEMS
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

    @_device
    def load_b_tile(x, ldx, bs, stage, n0, k0, N, K):
        """cp.async one 64 x TILE_N activation tile into Bs[stage]; out-of-range chunks are zero-filled."""
        tid = cuda.threadIdx.x
        for j in range(B_ROUNDS):
            c = tid + j * THREADS
            if c < B_CHUNKS:
                if NK:
                    # chunk c = (token n, k-chunk kc); a token row of 64 k is swizzled like an A row
                    n = c // 8
                    kc = c % 8
                    gn = n0 + n
                    gk = k0 + kc * 8
                    dst = stage * B_ELEMS + n * TILE_K + ((kc ^ (n % 8)) * 8)
                    nbytes = 0
                    src = 0
                    if gn < N and gk < K:
                        nbytes = min(K - gk, 8) * 2
                        src = gn * ldx + gk
                else:
                    # chunk c = (row k, n-chunk nc) of a (K, N) row-major X
                    k = c // CPR
                    nc = c % CPR
                    gk = k0 + k
                    gn = n0 + nc * 8
                    dst = stage * B_ELEMS + k * TILE_N + ((nc ^ ((k // KN_DIV) & KN_MASK)) * 8)
                    nbytes = 0
                    src = 0
                    if gk < K and gn < N:
                        nbytes = min(N - gn, 8) * 2
                        src = gk * ldx + gn
                ptx.cp_async_16(bs, dst, x, src, nbytes)
        ptx.cp_async_commit()

    @_device
    def load_words(words, v0, v1, wbuf):
        """Issue this thread's 16-byte loads of the first R*128 vectors of a tile; missing ones read as zero."""
        tid = cuda.threadIdx.x
        for j in range(R):
            v = v0 + tid + j * THREADS
            if v < v1:
                w0, w1, w2, w3 = ptx.ld_global_nc_v4_u32(words, v * 4)
            else:
                w0 = w1 = w2 = w3 = uint32(0)
            wbuf[4 * j] = w0
            wbuf[4 * j + 1] = w1
            wbuf[4 * j + 2] = w2
            wbuf[4 * j + 3] = w3

    @_device
    def scatter_word(a_s, base, w):
        """Write one entry's value to its swizzled slot; a zero value (padding) is skipped, so it can never
        overwrite a real entry that shares its position."""
        value = w & uint32(0xFFFF)
        if value != 0:
            a_s[base + (w >> uint32(16))] = uint16(value)

    @_device
    def scatter_tile(words, a_s, stage, v0, v1, wbuf):
        """Scatter the registered words of a tile, then load and scatter any vectors beyond the register budget."""
        base = stage * TILE_ELEMS
        for j in range(WB):
            scatter_word(a_s, base, wbuf[j])
        tid = cuda.threadIdx.x
        for v in range(v0 + R * THREADS + tid, v1, THREADS):
            w0, w1, w2, w3 = ptx.ld_global_nc_v4_u32(words, v * 4)
            scatter_word(a_s, base, w0)
            scatter_word(a_s, base, w1)
            scatter_word(a_s, base, w2)
            scatter_word(a_s, base, w3)

    @_device
    def zero_a_tile(a_s, stage):
        """Zero one A buffer: 16 KiB, eight 16-byte stores per thread."""
        tid = cuda.threadIdx.x
        for j in range(TILE_ELEMS // 8 // THREADS):
            ptx.st_shared_v4_u32(a_s, stage * TILE_ELEMS + (tid + j * THREADS) * 8, 0, 0, 0, 0)

    @_device
    def mma_tile(a_s, bs, stage, acc):
        """acc += A_tile[warp rows] @ B_tile for one 64-deep k-tile: 4 k16 steps of ldmatrix + mma.sync."""
        lane = cuda.threadIdx.x % 32
        warp = cuda.threadIdx.x // 32
        q = lane // 8  # which 8x8 matrix of an ldmatrix.x4 this lane addresses
        r = lane % 8  # which row of it
        a_base = stage * TILE_ELEMS
        b_base = stage * B_ELEMS
        for ks in range(TILE_K // 16):
            # A: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) = a0..a3
            row = warp * WARP_ROWS + r + 8 * (q % 2)
            kchunk = 2 * ks + q // 2
            a00, a01, a02, a03 = ptx.ldmatrix_x4(a_s, a_base + row * TILE_K + ((kchunk ^ r) * 8))
            a10, a11, a12, a13 = ptx.ldmatrix_x4(a_s, a_base + (row + 16) * TILE_K + ((kchunk ^ r) * 8))
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
                    c = f * 4  # accumulators of (m-frag 0, n-frag f); m-frag 1 follows NF * 4 later
                    bb0 = b0 if h == 0 else b2
                    bb1 = b1 if h == 0 else b3
                    d0, d1, d2, d3 = mma(a00, a01, a02, a03, bb0, bb1, acc[c], acc[c + 1], acc[c + 2], acc[c + 3])
                    acc[c] = d0
                    acc[c + 1] = d1
                    acc[c + 2] = d2
                    acc[c + 3] = d3
                    c1 = c + NF * 4
                    d0, d1, d2, d3 = mma(a10, a11, a12, a13, bb0, bb1, acc[c1], acc[c1 + 1], acc[c1 + 2], acc[c1 + 3])
                    acc[c1] = d0
                    acc[c1 + 1] = d1
                    acc[c1 + 2] = d2
                    acc[c1 + 3] = d3

    @_device
    def fragment_position(i):
        """Tile-local (row, column) of accumulator i of this thread: the C-fragment layout of mma.m16n8k16."""
        lane = cuda.threadIdx.x % 32
        warp = cuda.threadIdx.x // 32
        mfrag = i // (NF * 4)
        f = (i // 4) % NF
        e = i % 4
        row = warp * WARP_ROWS + 16 * mfrag + lane // 4 + 8 * (e // 2)
        col = 8 * f + 2 * (lane % 4) + e % 2
        return row, col

    @_device
    def store_output(y, bias, has_bias, m0, n0, M, N, i, value):
        row, col = fragment_position(i)
        m = m0 + row
        n = n0 + col
        if m < M and n < N:
            if has_bias:
                value += from_bits(bias[m])
            bits = to_bits(value)
            if NK:
                y[n * M + m] = bits
            else:
                y[m * N + n] = bits

    @cuda.jit
    def spmm_tiled_csl(
        words, tile_offsets, x, ldx, y, bias, has_bias, workspace, tickets, M, N, K, n_tile_cols, k_tiles_per_split
    ):
        a_s = cuda.shared.array(A_SHARED, uint16, alignment=SHARED_ALIGN)
        b_s = cuda.shared.array(B_SHARED, uint16, alignment=SHARED_ALIGN)
        acc = cuda.local.array(ACC, float32)
        wbuf = cuda.local.array(WB, uint32)
        for i in range(ACC):
            acc[i] = float32(0.0)

        tile_row = cuda.blockIdx.x
        n0 = cuda.blockIdx.y * TILE_N
        split = cuda.blockIdx.z
        m0 = tile_row * TILE_M
        kt_begin = split * k_tiles_per_split
        kt_end = min(kt_begin + k_tiles_per_split, n_tile_cols)
        first_tile = tile_row * n_tile_cols  # tiles of one tile row are consecutive in the format

        if kt_begin < kt_end:
            # prologue: k-tile kt_begin into stage 0
            load_b_tile(x, ldx, b_s, 0, n0, kt_begin * TILE_K, N, K)
            v0 = tile_offsets[first_tile + kt_begin]
            v1 = tile_offsets[first_tile + kt_begin + 1]
            load_words(words, v0, v1, wbuf)
            zero_a_tile(a_s, 0)
            cuda.syncthreads()
            scatter_tile(words, a_s, 0, v0, v1, wbuf)

            stage = 0
            for kt in range(kt_begin, kt_end):
                has_next = kt + 1 < kt_end
                ptx.cp_async_wait_all()
                cuda.syncthreads()  # A and B of this k-tile complete; the other stage is free
                if has_next:
                    load_b_tile(x, ldx, b_s, 1 - stage, n0, (kt + 1) * TILE_K, N, K)
                    v0 = tile_offsets[first_tile + kt + 1]
                    v1 = tile_offsets[first_tile + kt + 2]
                    load_words(words, v0, v1, wbuf)
                    zero_a_tile(a_s, 1 - stage)
                mma_tile(a_s, b_s, stage, acc)
                cuda.syncthreads()  # zeroing of the other stage complete before anyone scatters into it
                if has_next:
                    scatter_tile(words, a_s, 1 - stage, v0, v1, wbuf)
                stage = 1 - stage

        if not SPLITS:
            for i in range(ACC):
                store_output(y, bias, has_bias, m0, n0, M, N, i, acc[i])
            return

        # split-K fix-up: publish this split's partial tile, take a ticket; the last arrival reduces.
        n_splits = cuda.gridDim.z
        out_tile = tile_row * cuda.gridDim.y + cuda.blockIdx.y
        tile_values = TILE_M * TILE_N
        own = cuda.threadIdx.x * ACC  # each thread's partials are contiguous: coalescing is moot here
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
        for i in range(ACC):
            total = float32(0.0)
            for s in range(n_splits):
                total += workspace[(s * cuda.gridDim.x * cuda.gridDim.y + out_tile) * tile_values + own + i]
            store_output(y, bias, has_bias, m0, n0, M, N, i, total)
        if cuda.threadIdx.x == 0:
            tickets[out_tile] = 0

    return spmm_tiled_csl

