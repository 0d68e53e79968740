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
Activation tiles travel by ``cp.async`` into ``STAGES`` shared stages (``SpmmConfig.stages``: 4, or 2 where a
sixth block per SM pays), ``STAGES - 1`` k-tiles ahead; a tile's sparse words travel by 16-byte ``ld.global.nc``
loads straight into registers, two k-tiles ahead (two register buffers that alternate, the loop unrolled by two),
and are scattered from there into one of two dense shared A tiles. At step i tile i is multiplied while tile i+1's
words wait in registers and tile i+2's and i+3's are in flight::

    prologue: tile offsets of the block -> shared; zero A[0] and A[1]; issue activations 0 .. STAGES-2;
              load words(0), words(1); scatter words(0) -> A[0]; ("entries": keep positions(0)); load words(2)
    for i in the block's k-tiles:
        wait for activation tile i; barrier      # A[i%2] expanded, A[(i+1)%2] zero (if tile i+1 exists);
                                                 # everyone is done with tile i-1's activation stage
        issue activations i+STAGES-1 into tile i-1's stage
        ldmatrix + mma.sync on A[i%2] and activations(i)     # fp32 accumulators in registers; the next k16
                                                             # step's fragments load during this step's mma
        scatter the registered words(i+1) -> A[(i+1)%2]; a tile denser than the register budget
        (``prefetch_vectors``) loads and scatters its remaining words here, unhidden
        load words(i+3) into the buffer words(i+1) just left
        each warp zeroes the rows of A[i%2] it read  # for tile i+2, scattered there by the next step

One barrier per k-tile (clear="rows"): it publishes the expansion (and the copies) before the mma reads them, and
orders every warp's zeroing before any thread's scatter into that buffer. A warp may zero its rows without waiting
for the others because no other warp reads them (``clear_own_rows``); zeroing the whole buffer after a second
barrier, as the first versions did, measured 1-4 % slower (H100, ``bench/RESULTS.md``). Any tile density is legal:
the register budget only decides how much of a tile's words load ahead of time.

Sparse matrices (``SpmmConfig.clear = "entries"``, 4-warp blocks; tiles of at most ~480 vectors on the wgmma
path, ~336 with mma.sync) clear by entries instead: zeroing 16 KiB of rows costs 128 shared-memory wavefronts per
tile at any sparsity, zeroing the positions a thread scattered costs about as many as the scatter (~45 at 90 %).
Those positions lie in every warp's rows, so the zeros need a second cross-warp ordering besides the step's
barrier. A tile's positions (the high halves of its words, two to a register) stay in registers until then, in
half-size buffers beside the two word buffers. The two paths place that ordering differently.

wgmma ("zero first"): every thread has waited for tile i-1's products before step i's barrier, so right after it,
while the Tensor Cores work on tile i, each thread zeroes where it scattered tile i-1, and a second barrier orders
those zeros before anyone scatters tile i+1 into the same buffer. The wgmma wait moves to the end of the step,
behind the zeroing and the scatter; positions(i-1) and positions(i) are both live, in two buffers that alternate::

    ... barrier; issue wgmma on A[i%2] and activations(i); issue activations i+STAGES-1
        zero A[(i+1)%2] at positions(i-1); barrier
        scatter words(i+1) -> A[(i+1)%2]
        positions(i+1) <- positions of words(i+1), into positions(i-1)'s buffer
        (512-vector buffer: wait for activations(i+1) and fence here, not at the top of step i+1)
        load words(i+3) into words(i+1)'s buffer; wait for the wgmma group

Where the proxy fence goes: ptxas lowers ``fence.proxy.async.shared::cta`` (and the release-only
``fence.proxy.async::generic.release.sync_restrict::shared::cta.cluster`` alike) to ``MEMBAR.ALL.CTA`` +
``FENCE.VIEW.ASYNC.S``, and the membar waits for the thread's outstanding global loads too. At the top of step i+1
it waited for the words of tile i+3, requested at the end of step i; moved in front of those loads it waits only for
tile i+2's, requested a step earlier (``FENCE_BEFORE_LOADS``). That pays where a step is longer than those loads
take to arrive, on the densest tiles that clear by entries. Same runs on an H100 (RESULTS.md, twelfth session): at
80 % (512-vector buffer) +1.1 to +1.3 % (N = 16) and +1.4 % (N = 8); on sparser matrices, whose steps are shorter,
it lost: 85 % (384 vectors) -1.1 / -1.2 %, 90 % (256 vectors; at N = 16 also two activation stages, where the wait
for activations(i+1), issued in the same step, comes early) -1.1 / -1.5 %. So only blocks with the 512-vector buffer
fence before their loads.

Measured against the mbarrier design below (H100, same process, ``bench/RESULTS.md``, eleventh session): +4.0 /
+4.7 % at 90 % (N = 16 / 8), +5.3 / +5.4 % at 85 %, +2.8 / +3.5 % at 95 %; and it clears 77-83 %-sparse matrices
faster by entries than by rows (+1.9 % at 77 %, +2.3 % at 80 %, +5.4 % at 83 %, N = 16), where the mbarrier design
was level with rows at 80 %. Its own second barrier costs less than the wgmma wait it takes out of the middle of the
step.

mma.sync: a per-buffer mbarrier stands in for the second barrier. Each thread arrives when its reads of A[i%2] are
over (after its mma.sync) and waits on the phase after scattering tile i+1, by when the others have normally
arrived; then it zeroes tile i's positions, kept in one buffer::

    ... ldmatrix + mma.sync on A[i%2]; arrive on mbarrier[i%2]
        scatter words(i+1) -> A[(i+1)%2]
        wait for mbarrier[i%2]'s phase; zero A[i%2] at positions(i)
        positions(i) <- positions of words(i+1); load words(i+3) into words(i+1)'s buffer

Keeping the positions rather than tile i's whole words (a third word buffer and a loop unrolled three ways, the
design until the tenth session) halves that buffer and lets the loop alternate two buffers as "rows" does: +0.6 to
+2.5 % at 85-90 % (H100, N = 8 and 16, same run; ``bench/RESULTS.md``).

Why words go to registers and not through shared memory: both were measured on an H200 (``bench/RESULTS.md``).
Staging the words in shared memory with ``cp.async`` lets them run several tiles ahead, but costs a copy, a
shared-memory read per word and 7-16 KB per stage, which halves the blocks per SM. Blocks per SM are what the
kernel cannot spare: it is bound by the serial chain of each k-step, and more blocks per SM hide more of it (at 80 %
a block's loop moves its words at ~2.9 TB/s on an H100 and on an H200 alike, though the H200's copy bandwidth is a
third higher; per-block timelines, ``bench/block_timeline.py``). Kernel
copies with one part of the step taken away (H100, N = 16, ``bench/RESULTS.md``) gain at most 5 % at 80 %, whichever
part it is: the zeroing, the proxy fence, the Tensor-Core work, the activation copies, or DRAM latency. At 90 % the two
cross-warp waits of the mbarrier design gained 10-12 % each: the mbarrier before the un-scatter, and the wgmma wait in
front of the scatter (zeroing first took the second out of the chain: +4-5 %). Fewer blocks with a deeper pipeline lost:
three A buffers at 4 blocks per SM gave -8 %. Prefetching the words into L2 ahead of their register loads lost too (-3
to -21 %).

Shared-memory layout and swizzle
--------------------------------
A tile element (r, c) lives at ``r * 64 + ((c // 8) ^ (r % 8)) * 8 + c % 8``: the 16-byte chunk of the column is
XORed with the row, exactly the position the format stores in each word's high half, so the scatter is a single
store and the eight rows an ``ldmatrix`` reads for one 8x8 matrix fall in eight different 16-byte bank groups.
Activation tiles: for ``"nk"`` a row is one token's 64 k-values, padded to 72 (144 bytes), so that consecutive
rows start one bank group apart (conflict-free ``ldmatrix``) and the row of each k16 step is a constant offset;
for ``"kn"`` a row is one k's ``tile_n`` values and the chunk is XORed so that eight consecutive k rows hit eight
different bank groups (see ``_kn_chunk_xor``).

Fragments (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"): lane l has group g = l // 4 and
thread-in-group t = l % 4; A registers {a0..a3} hold rows (g, g+8) x k (2t, 2t+1, 2t+8, 2t+9); B registers
{b0, b1} hold k (2t, 2t+1) and (2t+8, 2t+9) of column g; C holds rows (g, g+8) x columns (2t, 2t+1).
``ldmatrix.x4`` returns matrix j of the four 8x8 matrices whose rows lanes 8j..8j+7 addressed; the row/k order of
the lanes below makes those four registers exactly {a0..a3} (or {b0, b1} of two n8 fragments).

Two Tensor-Core paths (``SpmmConfig.mma``)
-----------------------------------------
``"sync"`` (any sm_80+ GPU) is the pipeline above: each warp ``ldmatrix``-loads its A rows and the whole activation
tile into registers and runs ``mma.sync``. ``"wgmma"`` (sm_90a; "nk" activations) hands both operands to Hopper's
``wgmma.mma_async`` as shared-memory descriptors: 4 k16 steps per k-tile for each m64 half of the tile, both halves
issued by one warpgroup (4 warps) or one half by each of two (8 warps: half the accumulators and words per thread,
so twice the warps per SM at tile_n 32 and 64, where 4 warps need 102-165 registers). The A tile needs no new
layout: the format's swizzled positions are exactly wgmma's K-major 128-byte swizzle when the buffer starts on a
1024-byte boundary (``WGMMA_SHARED_ALIGN``); the "nk" activation rows are unpadded (64 values) and swizzled the same
way. Per step: fence (``fence.proxy.async``: the threads' stores and copies become visible to the Tensor Cores'
async proxy), barrier, issue the k-tile's wgmma group, then issue copies and scatter into the *other* A buffer while
it runs, wait for the group, and zero the rows of this buffer that fed the warp's accumulators (clear="rows"; for
"entries" see "zero first" above). Measured on an H100
(``bench/RESULTS.md``): level at N = 8, up to 5 / 9 / 19 % faster at N = 16 / 32 / 64 with 4 warps, since the warps
share one read of the activation tile per half and no fragments occupy registers; 8 warps add 4-10 % at N = 32 and
64.

Split-K
-------
The splits of a tile row take equal ranges of its k-tiles (the last one the remainder). Ranges tapered by launch
order, the first-launched blocks of an SM taking more, measured slower at every taper tried (H100, fourteenth
session, ``bench/RESULTS.md``): a one-wave kernel's time follows its longest block.

With ``splits > 1`` each block writes its fp32 partial tile to a workspace (coalesced), then the last block of an
output tile to arrive (an atomic ticket per output tile, one fence by one thread on each side) sums the partials in
split order (deterministic), rounds once, and resets the ticket to zero for the next launch. One launch, no memset,
no second kernel. That last block is the kernel's tail, since the blocks of a wave finish within a few us of each
other, so its work is kept short: the partials of several splits are loaded per round trip, and the output store
uses shifts and unsigned indices (a per-block timeline, ``bench/block_timeline.py``, measured the tail at 6-9 us of
a 33-100 us kernel before, 3-4 us after; H100, N = 16).

Three other tails were built and measured against this one (H100, same process, ``bench/RESULTS.md``, thirteenth
and fourteenth sessions) and lost. Copying the other splits' partials by cp.async into shared memory, four per L2
round trip at tile_n 16 instead of two per round trip in registers, the own partial kept in registers: up to 1.3 %
slower on the four layers at N = 8 and 16, 80 and 90 % (2.975x -> 2.960x at 90 %, N = 16). Taking the ticket
first, so that the last block does not publish its own partial and copies the others' by cp.async: level at
N = 16 (2.058x at 80 %, 2.937x against 2.945x at 90 %), 0.7-1.4 % slower at N = 8.
Summing the splits of an output tile in a thread-block cluster through distributed shared memory (no workspace, the
stores spread over the cluster): 2.29x against 2.99x at 90 %; launching the unchanged kernel in clusters of its 9
splits already cost 4 us (90 %) and 15 us (80 %) on the 9216 x 9216 layer, though the driver reports room for 74
such clusters where 72 run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from numba import cuda, float32, int32, int64, uint16, uint32, uint64

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.ptx import SHARED_ALIGN, WGMMA_SHARED_ALIGN

__all__ = ["SpmmConfig", "TILE_M", "TILE_K", "build_kernel", "kernel_signature", "TILE_N_CHOICES", "WARP_CHOICES",
           "MMA_CHOICES", "PREFETCH_CHOICES", "CLEAR_CHOICES", "STAGE_CHOICES"]

TILE_M = 128  # rows of A per block: one tile row of the Tiled-CSL grid
TILE_K = 64  # k per pipeline step: one tile column of the grid
TILE_ELEMS = TILE_M * TILE_K  # 8192 fp16 values = 16 KiB of shared memory per A buffer
WARP_CHOICES = (4, 8)  # warps per block: 4 warps own two m16 row bands each, 8 warps one each
# The Tensor-Core instruction: "sync" = ldmatrix + mma.sync (sm_80 on), "wgmma" = wgmma.mma_async reading both
# operands from shared memory (sm_90a only; "nk" activations; 4 warps = one warpgroup, or 8 = two).
MMA_CHOICES = ("sync", "wgmma")
TILE_N_CHOICES = (8, 16, 32, 64)
# Activation stages (SpmmConfig.stages): STAGES - 1 k-tiles of X are copied ahead of the one being multiplied. They
# are small (64 x tile_n fp16) and read from L2, so 4 stages cost little shared memory and hide their latency
# completely. 2 stages (one tile ahead, a whole k-step of slack for an L2 read) free 4 KiB at tile_n 16: 37 KB
# blocks, 6 per SM instead of 5, which pays where the k-step is latency-bound, on 88-95 %-sparse matrices
# (clear="entries" with the 256-vector buffer: 76-80 registers, within what 6 blocks allow). Powers of two: the
# stage of tile t is t & (STAGES - 1).
STAGE_CHOICES = (2, 4)
# Word vectors a block holds per k-tile in one register buffer (SpmmConfig.prefetch_vectors): 512 vectors = 2048
# entries, a 25 %-dense tile (4 per thread with 4 warps, 2 with 8), or 640 = 31 % (5 per thread; 4 warps, used up
# to tile_n 16: 8 registers more, within what 5 blocks per SM allow); 256, 384 or 512 (a 12.5 / 19 / 25 %-dense
# tile) for clear="entries", which also holds the positions of the tiles it zeroes next. The two buffers alternate,
# so a tile's words are requested two k-tiles before they are scattered; vectors beyond the buffer are loaded during
# the scatter, unhidden.
PREFETCH_CHOICES = (256, 384, 512, 640)
# How a consumed A buffer is zeroed again for the tile after next (SpmmConfig.clear): "rows" = each warp zeroes the
# rows it read (16 KiB of stores per tile, whatever the sparsity); "entries" = each thread zeroes the positions it
# scattered (as many stores as the tile has entries), once every warp has read the buffer (wgmma: a second barrier
# per step; mma.sync: an mbarrier).
CLEAR_CHOICES = ("rows", "entries")
# Blocks per SM promised to ptxas (launch_bounds) per tile_n with 4 warps and 4 stages: what the shared memory of a
# block (37 / 42 / 51 / 70 KB) allows on a 228 KB SM, except tile_n = 8, where a promise of 6 would hold ptxas to 80
# registers and cost the double-buffered fragments (ptxas -v / nvdisasm, sm_90).
_BLOCKS_PER_SM = {8: 5, 16: 5, 32: 4, 64: 3}
# With 2 stages (wgmma, 4 warps, tile_n 16, clear="entries", 256-vector buffer; nothing else is built with 2): 37 KB
# blocks, 6 per SM, and ptxas then holds the kernel to 80 registers, which this configuration meets without
# spilling (tests/test_spmm_ptx.py, both dtypes, with and without split-K).
_BLOCKS_PER_SM_TWO_STAGES = 6


def two_stages_built(mma: str, warps: int, tile_n: int, clear: str, prefetch_vectors: int) -> bool:
    """Whether a configuration is one that 2 activation stages are built and tested for (the one the plan gives
    them, ``launch.stages_for``; ``SpmmConfig`` refuses 2 elsewhere)."""
    return mma == "wgmma" and warps == 4 and tile_n == 16 and clear == "entries" and prefetch_vectors == 256
# wgmma with 8 warps (two warpgroups, one per m64 half): each thread holds half the accumulators and words, 64
# registers at most for tile_n <= 32 (80 at 64); 4 blocks of 256 threads fit 64 registers each, 3 fit 85.
_BLOCKS_PER_SM_WGMMA_8_WARPS = {8: 4, 16: 4, 32: 4, 64: 3}
# "nk" activation rows (one token's 64 k-values, 128 bytes) are padded to 72 values (144 bytes): the eight rows one
# ldmatrix reads then start in eight different 16-byte bank groups (row n in group (9n + chunk) % 8), and unlike
# an XOR swizzle the row of k16 step ks is a constant 32 bytes further, so no per-step address arithmetic.
NK_ROW = TILE_K + 8
_MBARRIER_BYTES = 16  # one mbarrier per A buffer (mma.sync, clear="entries"): "every warp has read this buffer"


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
    mma : str
        ``"sync"`` (``ldmatrix`` + ``mma.sync``, any sm_80+ GPU) or ``"wgmma"`` (Hopper's ``wgmma.mma_async``,
        sm_90a; needs ``x_layout="nk"``; 4 warps are one warpgroup for both m64 halves, 8 warps two, one per half).
    prefetch_vectors : int
        16-byte word vectors of a tile loaded into registers two k-tiles ahead, one of ``PREFETCH_CHOICES`` and a
        multiple of the block's threads: a tile with more has the rest loaded during its scatter, unhidden.
    clear : str
        ``"rows"`` or ``"entries"`` (``CLEAR_CHOICES``): how an A buffer is zeroed after its tile's products. "rows"
        costs the same at every sparsity; "entries" costs a store per entry and a buffer of positions (half a
        word buffer; two on the wgmma path) in registers, and a tile over ``prefetch_vectors`` is zeroed whole.
    stages : int
        Activation tiles in shared memory, one of ``STAGE_CHOICES``: 4, or 2 (only for a wgmma block of 4 warps,
        tile_n 16, clear="entries" and a 256-vector buffer), which fits 6 blocks per SM instead of 5.
    """

    tile_n: int
    dtype: str = "float16"
    x_layout: str = "nk"
    splits: bool = False
    warps: int = 4
    mma: str = "sync"
    prefetch_vectors: int = 512
    clear: str = "rows"
    stages: int = 4

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
        if self.mma not in MMA_CHOICES:
            raise ValueError(f"Invalid mma of SpmmConfig: expected one of {MMA_CHOICES}, got {self.mma!r}")
        if self.prefetch_vectors not in PREFETCH_CHOICES or self.prefetch_vectors % self.threads:
            raise ValueError(
                f"Invalid prefetch_vectors of SpmmConfig: expected one of {PREFETCH_CHOICES} and a multiple of the "
                f"{self.threads} threads of {self.warps} warps, got {self.prefetch_vectors}"
            )
        if self.clear not in CLEAR_CHOICES:
            raise ValueError(f"Invalid clear of SpmmConfig: expected one of {CLEAR_CHOICES}, got {self.clear!r}")
        if self.mma == "wgmma" and self.x_layout != "nk":
            raise ValueError(
                "Invalid SpmmConfig: mma='wgmma' needs x_layout='nk' (both operands K-major), "
                f"got x_layout={self.x_layout!r}"
            )
        if self.stages not in STAGE_CHOICES:
            raise ValueError(f"Invalid stages of SpmmConfig: expected one of {STAGE_CHOICES}, got {self.stages}")
        if self.stages == 2 and not two_stages_built(self.mma, self.warps, self.tile_n, self.clear,
                                                     self.prefetch_vectors):
            raise ValueError(
                "Invalid SpmmConfig: stages=2 is built only with mma='wgmma', warps=4, tile_n=16, clear='entries' "
                f"and prefetch_vectors=256 (6 blocks per SM in 80 registers), got mma={self.mma!r}, "
                f"warps={self.warps}, tile_n={self.tile_n}, clear={self.clear!r}, "
                f"prefetch_vectors={self.prefetch_vectors}"
            )

    @property
    def launch_bounds(self) -> tuple[int, int]:
        """(threads per block, blocks per SM) promised to ptxas. The second number is the occupancy the shared
        memory allows on a Hopper/Ampere SM; with it ptxas may spend registers up to that occupancy, and it then
        keeps the next k16 step's ldmatrix fragments in flight during the current step's mma (without the hint
        it sinks every ldmatrix next to its mma to save registers, and the mma waits on shared-memory latency)."""
        if self.mma == "wgmma" and self.warps == 8:
            return self.threads, _BLOCKS_PER_SM_WGMMA_8_WARPS[self.tile_n]
        if self.stages == 2:
            return self.threads, _BLOCKS_PER_SM_TWO_STAGES
        return self.threads, max(1, _BLOCKS_PER_SM[self.tile_n] * WARP_CHOICES[0] // self.warps)

    @property
    def nk_row(self) -> int:
        """Elements per "nk" activation row in shared memory: padded to ``NK_ROW`` for ``ldmatrix``; exactly 64
        (128 bytes, chunks XOR-swizzled like the A tile) for ``wgmma``, whose descriptor names that layout."""
        return TILE_K if self.mma == "wgmma" else NK_ROW

    def shared_bytes(self, k_tiles_per_split: int) -> int:
        """Dynamic shared memory of one block: two A tiles (32 KiB, reused by the epilogue), ``stages`` activation
        tiles, two 8-byte mbarriers (used by mma.sync with clear="entries") and the block's tile offsets."""
        activation_tile = self.tile_n * self.nk_row if self.x_layout == "nk" else TILE_K * self.tile_n
        return 2 * TILE_ELEMS * 2 + self.stages * activation_tile * 2 + _MBARRIER_BYTES + 4 * (k_tiles_per_split + 1)


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
    K_STEPS = TILE_K // 16  # k16 steps of mma per k-tile
    THREADS = cfg.threads
    STAGES = cfg.stages  # activation stages (STAGE_CHOICES)
    # cp.async.wait_group takes an immediate: the number of most recent groups that may still be in flight. At step
    # i activation tiles 0 .. i+STAGES-2 have been issued; tile i must have landed.
    PENDING_IN_LOOP = STAGES - 2
    WARP_ROWS = TILE_M // cfg.warps  # 32 rows (two m16 fragments) with 4 warps, 16 (one) with 8
    MF = WARP_ROWS // 16  # m16 fragments per warp
    FRAG = 4 * MF + 4 * NPAIR  # fragment registers of one k16 step: A x4 per m16 band, B x4 per n8 pair
    ACC = MF * NF * 4  # fp32 accumulators per thread: MF x NF fragments x 4 (tile_n = 64, 4 warps: 64 registers)
    OUT_ROUNDS = TILE_M * TILE_N // THREADS  # output elements each thread stores (128 * 64 / 256 = 32)
    # store_tile: a thread's accumulators in shared memory, one float of padding apart (bank conflicts); they fit in
    # the A tiles and activation stages the main loop leaves behind.
    ACC_STRIDE = ACC + 1
    assert THREADS * ACC_STRIDE * 4 <= cfg.shared_bytes(0), "store_tile's staging must fit the block's shared memory"
    TILE_M_SHIFT = TILE_M.bit_length() - 1
    TILE_N_SHIFT = TILE_N.bit_length() - 1
    WARP_ROWS_SHIFT = WARP_ROWS.bit_length() - 1
    NK = cfg.x_layout == "nk"
    WGMMA = cfg.mma == "wgmma"
    # wgmma descriptors assume 1024-byte aligned swizzle atoms: the A tiles (16 KiB each) and activation stages
    # (TILE_N * 128 bytes) all start at multiples of 1024 from the base, so the base must be 1024-byte aligned.
    SMEM_ALIGN = WGMMA_SHARED_ALIGN if WGMMA else SHARED_ALIGN
    HALF_ACC = TILE_N // 2  # wgmma: accumulators of one m64 half of the tile per thread
    # wgmma: 4 warps are one warpgroup that multiplies both m64 halves; 8 warps are two, one per half.
    HALVES_PER_WARPGROUP = 2 if cfg.warps == 4 else 1
    # The A rows a warp's products read, cleared by that warp (clear_own_rows): its WARP_ROWS rows for mma.sync and
    # 8-warp wgmma (16w .. 16w+15 of the tile); with 4-warp wgmma the 16-row band 16w.. of each m64 half (the
    # rows of the warp's accumulators). A warp-wide 16-byte store covers 4 rows; 16 rows are 4 stores.
    CLEAR_STORES = WARP_ROWS // 4
    CLEAR_BAND_STRIDE = 64 if WGMMA and cfg.warps == 4 else 16
    CLEAR_WARP_ROWS = 16 if WGMMA else WARP_ROWS  # first row of warp w: w * CLEAR_WARP_ROWS
    # The activation tile in shared memory: "nk" keeps one row per token (64 k-values, padded to NK_ROW for
    # ldmatrix, or 128-byte swizzled for wgmma), "kn" one row per k (TILE_N values, chunks XOR-swizzled).
    B_ROW = cfg.nk_row if NK else TILE_N
    B_ELEMS = (TILE_N if NK else TILE_K) * B_ROW
    B_BASE = 2 * TILE_ELEMS  # uint16 index of the first activation stage, after the two A tiles
    MBARRIER_BASE32 = (B_BASE + STAGES * B_ELEMS) // 2  # uint32 index of A buffer 0's mbarrier (buffer 1's: + 2)
    OFFSETS_BASE32 = MBARRIER_BASE32 + _MBARRIER_BYTES // 4  # uint32 index of the block's tile offsets
    ENTRIES = cfg.clear == "entries"
    # Where a wgmma block waits for the next activation tile and fences its shared writes: in front of the step's
    # word loads (zero-first blocks with the 512-vector buffer, 77-84 % sparse) or at the top of the next step
    # (module docstring, "Where the proxy fence goes").
    FENCE_BEFORE_LOADS = WGMMA and ENTRIES and cfg.prefetch_vectors == 512
    R = cfg.prefetch_vectors // THREADS  # 16-byte word vectors per thread per register buffer (2 .. 5; 8 warps: 1-2)
    WORDS = 4 * R
    POSITIONS = 2 * R if ENTRIES else 1  # "entries": the positions of one tile, two per register
    UNROLL = 2  # k-steps per main-loop iteration: one per word buffer
    B_CHUNKS = TILE_K * TILE_N // 8  # 16-byte cp.async chunks per activation tile
    B_ROUNDS = (B_CHUNKS + THREADS - 1) // THREADS
    LAST_ROUND_CHUNKS = B_CHUNKS - (B_ROUNDS - 1) * THREADS  # threads with a chunk in the last round
    CPR = TILE_N // 8  # "kn": 16-byte chunks per activation row
    CPR_SHIFT = CPR.bit_length() - 1
    KN_DIV, KN_MASK = _kn_chunk_xor(TILE_N)
    KN_DIV_SHIFT = KN_DIV.bit_length() - 1
    # Activation rows one copy round advances: THREADS chunks are THREADS / 8 token rows ("nk", 8 chunks per row)
    # or THREADS / CPR k rows ("kn"); either way a whole number of swizzle periods, so a round moves by a constant.
    ROUND_ROWS = THREADS // 8 if NK else THREADS // CPR
    SPLITS = cfg.splits
    # Split-K: the reducing block's partial sums loaded per round trip, in splits: 32 registers' worth. 48 or 64 raised
    # the kernel's register count (tile_n 8: 74 -> 94, a block per SM less; spills with 8 warps), and 48 measured
    # level at N = 16 and 2-3 % slower at N = 32 (H100, bench/RESULTS.md).
    REDUCE_GROUP = max(1, 32 // ACC)
    REDUCE_VALUES = REDUCE_GROUP * ACC
    if cfg.dtype == "bfloat16":
        mma = ptx.mma_m16n8k16_bf16
        wgmma = {8: ptx.wgmma_m64n8k16_bf16, 16: ptx.wgmma_m64n16k16_bf16, 32: ptx.wgmma_m64n32k16_bf16,
                 64: ptx.wgmma_m64n64k16_bf16}[TILE_N]
        to_bits = ptx.f32_to_bf16_bits
        from_bits = ptx.bf16_bits_to_f32
    else:
        mma = ptx.mma_m16n8k16_f16
        wgmma = {8: ptx.wgmma_m64n8k16_f16, 16: ptx.wgmma_m64n16k16_f16, 32: ptx.wgmma_m64n32k16_f16,
                 64: ptx.wgmma_m64n64k16_f16}[TILE_N]
        to_bits = ptx.f32_to_f16_bits
        from_bits = ptx.f16_bits_to_f32

    # Index arithmetic: every per-thread address that does not change from one k-tile to the next (ldmatrix rows,
    # the activation chunk a thread copies, its zeroing slots) is computed once before the k-loop; inside the loop
    # only the buffer bases and the tile's word range change. Shared-memory indices reach the PTX wrappers, which
    # truncate them to 32 bits (LLVM then narrows the arithmetic), and Numba's own shared-memory stores take
    # unsigned 64-bit indices: a signed index costs a negative-index wrap per store. No division or modulo
    # appears in the k-loop: Numba's signed // and % round toward minus infinity, several instructions each.

    @_device
    def issue_activations(x, ldx, smem16, t, n_tiles_block, kt_begin, cp_dst, cp_src, cp_rows_left, cp_cols_left):
        """Start the copy of the block's t-th activation tile into stage t % STAGES as one cp.async group (empty
        past the block's last tile, so that ``cp.async.wait_group`` counts the same groups in every thread).
        Chunks outside X are zero-filled: a partial last chunk copies only its valid bytes."""
        if t < n_tiles_block:
            k0 = (kt_begin + t) * TILE_K
            stage_base = (t & (STAGES - 1)) * B_ELEMS
            for j in range(B_ROUNDS):
                if j < B_ROUNDS - 1 or LAST_ROUND_CHUNKS == THREADS or cuda.threadIdx.x < LAST_ROUND_CHUNKS:
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

    @_device
    def tile_offset(smem32, t):
        """The first 16-byte word vector of the block's t-th tile, which is one past the last of tile t-1 (from the
        block's offsets in shared memory, t = 0 .. n_tiles_block)."""
        return int64(smem32[uint64(OFFSETS_BASE32) + uint64(t)])

    @_device
    def load_words(words, v0, v1, wbuf):
        """Issue this thread's 16-byte ``ld.global.nc`` loads of the first R * THREADS vectors of the tile whose
        vectors are ``v0 .. v1 - 1`` into registers (slot j holds vector v0 + tid + j * THREADS). Slots past the
        tile are left unloaded; the scatter skips them by the same test. Nothing waits for the data here: it is
        consumed two k-tiles later."""
        v = v0 + cuda.threadIdx.x
        left = int32(v1 - v)  # vectors of the tile from this thread's first one on (32-bit compares)
        for j in range(R):
            if j * THREADS < left:
                w0, w1, w2, w3 = ptx.ld_global_nc_v4_u32(words, (v + j * THREADS) * 4)
                wbuf[4 * j] = w0
                wbuf[4 * j + 1] = w1
                wbuf[4 * j + 2] = w2
                wbuf[4 * j + 3] = w3

    @_device
    def scatter_vector(a_s, a_base, w0, w1, w2, w3, last):
        """Write four entries' values to their swizzled slots of the A buffer at ``a_base``.

        Padding (value bits 0, on a position without an entry) exists only in the tile's last vector, after at
        least one entry (the format's rule 7), so only that vector tests values: writing a padding word would be
        harmless in a checked matrix, and skipping it keeps any matrix built without the checks safe too. Every
        other vector stores all four words unconditionally, three instructions each."""
        a_s[a_base + uint64(w0 >> uint32(16))] = uint16(w0 & uint32(0xFFFF))
        if last:
            if (w1 & uint32(0xFFFF)) != uint32(0):
                a_s[a_base + uint64(w1 >> uint32(16))] = uint16(w1 & uint32(0xFFFF))
            if (w2 & uint32(0xFFFF)) != uint32(0):
                a_s[a_base + uint64(w2 >> uint32(16))] = uint16(w2 & uint32(0xFFFF))
            if (w3 & uint32(0xFFFF)) != uint32(0):
                a_s[a_base + uint64(w3 >> uint32(16))] = uint16(w3 & uint32(0xFFFF))
        else:
            a_s[a_base + uint64(w1 >> uint32(16))] = uint16(w1 & uint32(0xFFFF))
            a_s[a_base + uint64(w2 >> uint32(16))] = uint16(w2 & uint32(0xFFFF))
            a_s[a_base + uint64(w3 >> uint32(16))] = uint16(w3 & uint32(0xFFFF))

    @_device
    def scatter_tile(words, smem16, v0, v1, a_stage, wbuf):
        """Scatter the registered words of the tile whose vectors are ``v0 .. v1 - 1`` into A buffer ``a_stage``;
        vectors beyond the register budget (tiles with more than ``prefetch_vectors``) are loaded and scattered
        here, without their latency hidden."""
        a_base = uint64(a_stage * TILE_ELEMS)
        v = v0 + cuda.threadIdx.x
        left = int32(v1 - v)
        for j in range(R):
            if j * THREADS < left:
                scatter_vector(smem16, a_base, wbuf[4 * j], wbuf[4 * j + 1], wbuf[4 * j + 2], wbuf[4 * j + 3],
                               left == j * THREADS + 1)
        v += R * THREADS
        while v < v1:
            w0, w1, w2, w3 = ptx.ld_global_nc_v4_u32(words, v * 4)
            scatter_vector(smem16, a_base, w0, w1, w2, w3, v == v1 - 1)
            v += THREADS

    @_device
    def zero_a_tile(a_s, a_stage):
        """Zero a whole A buffer (the prologue's two, or after a dense tile with clear="entries"): eight 16-byte
        stores per thread (4 warps) at fixed offsets."""
        first = a_stage * TILE_ELEMS + cuda.threadIdx.x * 8
        for j in range(TILE_ELEMS // 8 // THREADS):
            ptx.st_shared_v4_u32(a_s, first + j * THREADS * 8, 0, 0, 0, 0)

    @_device
    def clear_own_rows(a_s, a_stage, clear_first):
        """Zero the A rows whose products this warp has just finished, in buffer ``a_stage``: 32 rows (4 warps) or
        16 (8 warps), 4 whole 128-byte rows per warp-wide 16-byte store, conflict-free. ``clear_first`` is the
        lane's element offset in its warp's first rows; store j is ``4 * (j % 4) + CLEAR_BAND_STRIDE * (j // 4)``
        rows further.

        Why per warp: a warp that has waited for its own products (mma.sync returned; ``wgmma.wait_group``) knows
        nothing about the other warps, but the rows feeding its accumulators are read by nobody else, so it may
        clear them at once, and the step's single barrier then orders every warp's clearing before the scatter
        into that buffer. The cost is 128 shared-memory wavefronts per tile at any sparsity; ``unscatter_tile``
        (clear="entries") pays per entry instead, which wins on sparse tiles only (see there)."""
        first = a_stage * TILE_ELEMS + clear_first
        for j in range(CLEAR_STORES):
            rows = 4 * (j & 3) + CLEAR_BAND_STRIDE * (j >> 2)
            ptx.st_shared_v4_u32(a_s, first + rows * TILE_K, 0, 0, 0, 0)

    @_device
    def unscatter_tile(a_s, v0, v1, a_stage, positions):
        """clear="entries": zero A buffer ``a_stage`` where this thread scattered the registered words of the tile
        whose vectors are ``v0 .. v1 - 1``, once every warp has read it (the caller orders that, see ``k_step``);
        ``positions`` holds their positions (``keep_positions``). Padding words zero positions without an
        entry, which are zero anyway; a tile with more vectors than the registers hold is zeroed whole, by all threads.

        Why: at 90 % sparsity a tile has ~205 vectors, whose ~820 2-byte stores take ~45 shared-memory wavefronts
        against the 128 of zeroing 16 KiB (``clear_own_rows``). Unlike the rows a warp read, the positions a thread
        scattered lie in every warp's rows, so the zeros need their own cross-warp ordering (the module docstring: a
        second barrier on the wgmma path, an mbarrier with mma.sync). Measured with the mbarrier (H100, N = 8 and 16, 4
        warps, bench/RESULTS.md): +9 % at 90 %, +4-7 % at 88 %; a first version: even at 85 %, -4 % at 80 % (more
        registers for a smaller saving), -12 % with 8 warps."""
        if v1 - v0 > R * THREADS:
            zero_a_tile(a_s, a_stage)
            return
        a_base = uint64(a_stage * TILE_ELEMS)
        left = int32(v1 - (v0 + cuda.threadIdx.x))
        for j in range(R):
            if j * THREADS < left:
                for h in range(2):
                    pair = positions[2 * j + h]
                    a_s[a_base + uint64(pair & uint32(0xFFFF))] = uint16(0)
                    a_s[a_base + uint64(pair >> uint32(16))] = uint16(0)

    @_device
    def keep_positions(v0, v1, wbuf, positions):
        """clear="entries": copy the positions (high halves) of this thread's registered words of the tile
        ``v0 .. v1 - 1`` into ``positions``, two per register, as ``unscatter_tile`` reads them. The tile is
        zeroed after its products (at the end of that step with mma.sync, early in the next on the wgmma path);
        keeping only this half of its words frees the word buffer for the next load at once."""
        left = int32(v1 - (v0 + cuda.threadIdx.x))
        for j in range(R):
            if j * THREADS < left:
                positions[2 * j] = (wbuf[4 * j] >> uint32(16)) | (wbuf[4 * j + 1] & uint32(0xFFFF0000))
                positions[2 * j + 1] = (wbuf[4 * j + 2] >> uint32(16)) | (wbuf[4 * j + 3] & uint32(0xFFFF0000))

    @_device
    def load_fragments(smem16, a_base, b_base, a_off, b_off, ks, frag):
        """ldmatrix this lane's A (MF x 4 registers) and B (NPAIR x 4) fragments of k16 step ks into ``frag``.

        ``a_off[ks]`` is the lane's ldmatrix row in an A buffer for step ks (the format's XOR swizzle makes it
        differ per step); ``b_off[p]`` its row in an activation stage for B fragment pair p at ks = 0 (later steps
        are a constant further)."""
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

    @_device
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

    @_device
    def mma_tile(smem16, a_stage, b_stage, a_off, b_off, frag0, frag1, acc):
        """acc += A_tile[warp rows] @ B_tile for one 64-deep k-tile: 4 k16 steps of ldmatrix + mma.sync.

        The fragments are double-buffered across k16 steps: step ks + 1's ldmatrix loads are issued before step
        ks's mma, so their latency overlaps the Tensor-Core work instead of stalling it (measured with ncu: without
        this, mma waiting on ldmatrix was the largest stall)."""
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

    @_device
    def wgmma_issue(smem16, a_stage, b_stage, acc):
        """Start acc += A_tile @ B_tile for one k-tile on the Tensor Cores and return at once: 4 k16 steps times this
        warpgroup's m64 halves (both with 4 warps, its own with 8), one commit group. The operands are read from
        shared memory as they are: the A tile's swizzle (the format's positions) is wgmma's 128-byte swizzle, so a
        k16 step is 32 bytes further along the rows and the lower m64 half 64 rows (8 atoms) further down. The four
        warps of a warpgroup share one read of the activation tile per half, where ldmatrix reads it once per
        warp."""
        a_base = a_stage * TILE_ELEMS  # this warpgroup's first m64 half: the tile's first (4 warps) ...
        if HALVES_PER_WARPGROUP == 1:  # ... or its own (8 warps); with 4 warps the index stays warp-uniform
            a_base += (cuda.threadIdx.x >> 7) * (64 * TILE_K)
        b_base = B_BASE + b_stage * B_ELEMS
        ptx.wgmma_fence()  # the accumulators were last written by the previous wait (or zeroed)
        for ks in range(K_STEPS):
            for mb in range(HALVES_PER_WARPGROUP):
                wgmma(smem16, a_base + mb * 64 * TILE_K + ks * 16, b_base + ks * 16, acc, mb * HALF_ACC)
        ptx.wgmma_commit_group()

    @_device
    def publish_shared_writes():
        """Wait for this thread's copies of the next activation tile to be multiplied, then make them and this
        thread's scatter and zeros visible to the async proxy, through which wgmma reads (the step's barrier then
        publishes them to the other threads). With mma.sync only the wait."""
        ptx.cp_async_wait_group(PENDING_IN_LOOP)
        if WGMMA:
            ptx.fence_proxy_async_shared()

    @_device
    def k_step(words, x, ldx, smem16, smem32, i, n_tiles_block, kt_begin, cp_dst, cp_src, cp_rows_left,
               cp_cols_left, a_off, b_off, frag0, frag1, acc, w_cur, w_next, clear_first, om1, o0, o1, o2, o3):
        """Step i of the main loop. On entry A tile i is expanded, tile i+1's words are in ``w_next``, tile i+2's are
        in flight into the other word buffer, and the other A buffer is zero if tile i+1 exists ("rows", and
        "entries" with mma.sync) or still holds tile i-1 ("entries" on the wgmma path, zeroed by this step before
        its scatter). ``w_cur`` ("entries") holds the positions this step zeroes: tile i's with mma.sync, tile
        i-1's on the wgmma path; "rows" passes ``w_next`` there, unused. On exit tile i+1 is expanded, ``w_cur``
        holds tile i+1's positions, and tile i+3's loads are in flight into ``w_next``. The caller alternates the
        two word buffers: words travel two k-tiles ahead of their use.

        ``om1 .. o3`` are the offsets of tiles i-1 .. i+3 (``tile_offset``, indices clamped to ``[0, n_tiles_block]``),
        a window the caller carries from step to step: the step reads only o4 and returns ``(o0, o1, o2, o3, o4)``. Tile
        t's vectors are o_t .. o_{t+1} - 1, so the window gives the ranges of the tiles this step clears ("entries": i-1
        or i), scatters (i+1) and starts loading (i+3). Reading those ranges every step cost four to six shared loads
        per warp, the largest part of the shared-memory wavefronts a 90 %-sparse step is not spending on its tile (ncu,
        H100: 31 of ~307); the clamping keeps every range a step uses exact."""
        a_stage = i & 1
        # Read before the barrier: next to its use its latency stalled each thread in front of the loads (ncu, H100:
        # once the largest short-scoreboard stall).
        o4 = tile_offset(smem32, min(i + 4, n_tiles_block))
        scatter_v0, scatter_v1 = o1, o2
        load_v0, load_v1 = o3, o4
        if not FENCE_BEFORE_LOADS:  # else the previous step (or the prologue) did this before its word loads
            publish_shared_writes()
        # The step's barrier (the only one but on the wgmma path's zero-first clearing): A tile i is expanded, the
        # other A buffer is cleared where tile i+1 will be scattered (zero first: it still holds tile i-1, whose
        # products everyone has waited for), everyone's copies of activation tile i are visible, and everyone is
        # done with tile i - 1's activation stage and its wgmma.
        cuda.syncthreads()
        if WGMMA:
            # The Tensor Cores work on tile i while the threads issue the next copies and scatter into the other
            # A buffer.
            wgmma_issue(smem16, a_stage, i & (STAGES - 1), acc)
        issue_activations(x, ldx, smem16, i + STAGES - 1, n_tiles_block, kt_begin, cp_dst, cp_src, cp_rows_left,
                          cp_cols_left)
        if not WGMMA:
            mma_tile(smem16, a_stage, i & (STAGES - 1), a_off, b_off, frag0, frag1, acc)
        if ENTRIES and WGMMA:
            # Zero first: every thread waited for tile i-1's wgmma before this step's barrier, so the other A
            # buffer is free. Each thread zeroes where it scattered tile i-1, a barrier orders all those zeros
            # before anyone's scatter of tile i+1 into the same buffer, and the wgmma of tile i runs meanwhile,
            # waited for only at the end of the step.
            if i + 1 < n_tiles_block:
                if i >= 1:
                    unscatter_tile(smem16, om1, o0, 1 - a_stage, w_cur)
                    cuda.syncthreads()  # conditions uniform across the block
                scatter_tile(words, smem16, scatter_v0, scatter_v1, 1 - a_stage, w_next)
            if i + 3 < n_tiles_block:
                # Tile i-1's positions are used: tile i+1's take their place.
                keep_positions(scatter_v0, scatter_v1, w_next, w_cur)
            if FENCE_BEFORE_LOADS:
                publish_shared_writes()  # for step i+1: activation tile i+1, these zeros and this scatter
            if i + 3 < n_tiles_block:
                load_words(words, load_v0, load_v1, w_next)  # tile i+1's word buffer takes tile i+3's loads
            # Tile i's products are complete before the next barrier, after which tile i's activation stage is
            # refilled and its A buffer zeroed.
            ptx.wgmma_wait_group(0, acc, ACC)
        elif ENTRIES:
            # Steps 0 .. n_tiles_block - 3 arrive on their buffer's mbarrier, so step i is use i >> 1 of buffer
            # i & 1: phase i >> 1, waited for by its parity.
            mbarrier = MBARRIER_BASE32 + 2 * a_stage
            if i + 2 < n_tiles_block:
                ptx.mbarrier_arrive(smem32, mbarrier)  # this thread's reads of A tile i are done
            if i + 1 < n_tiles_block:
                scatter_tile(words, smem16, scatter_v0, scatter_v1, 1 - a_stage, w_next)
            if i + 2 < n_tiles_block:
                # Everyone has read A tile i: zero it where this thread scattered it, for tile i+2 (scattered into
                # this buffer after the next barrier, which orders these zeros before it).
                ptx.mbarrier_wait_parity(smem32, mbarrier, (i >> 1) & 1)
                unscatter_tile(smem16, o0, o1, a_stage, w_cur)
            if i + 3 < n_tiles_block:
                # Tile i's positions are used: tile i+1's take their place, and tile i+1's word buffer takes
                # tile i+3's loads.
                keep_positions(scatter_v0, scatter_v1, w_next, w_cur)
                load_words(words, load_v0, load_v1, w_next)
        else:
            if i + 1 < n_tiles_block:
                scatter_tile(words, smem16, scatter_v0, scatter_v1, 1 - a_stage, w_next)
            if i + 3 < n_tiles_block:
                load_words(words, load_v0, load_v1, w_next)
            if WGMMA:
                # This warp's share of tile i's wgmma must be complete before it clears the rows it read, and
                # before the next barrier, after which tile i's activation stage is refilled.
                ptx.wgmma_wait_group(0, acc, ACC)
            if i + 2 < n_tiles_block:
                if not WGMMA:
                    # A lane's clearing stores may hit rows another lane addressed for the warp's ldmatrix: every
                    # lane is past those reads first (compute-sanitizer racecheck flags the pair without it).
                    ptx.warp_sync()
                # Zeros for tile i+2, which the next step scatters into this buffer after its barrier.
                clear_own_rows(smem16, a_stage, clear_first)
        return o0, o1, o2, o3, o4

    @_device
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

    @_device
    def store_tile(acc, smemf, y, bias, has_bias, m0, n0, M, N):
        """Write the block's 128 x TILE_N result: fragments go to shared memory in thread order (a loop LLVM unrolls,
        so acc stays in registers), then all threads store the tile row by row of the output, coalesced, adding
        the bias and rounding once.

        This is the tail of the kernel for the block that reduces a split-K tile (every block of a wave finishes
        within a few us of the others), so its arithmetic counts: unsigned indices (no negative-index wrap per
        access), shifts instead of // and %, the bias of an "nk" thread's one row read once, and a thread's
        accumulators ACC + 1 floats apart in shared memory, so that the lanes reading one output row's
        accumulators (4 threads apart) conflict at most 2-way. An instrumented copy measured 3.6 us for the
        version with signed // and % indices (H100, N = 16; bench/RESULTS.md)."""
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
                    y[uint64(n) * uint64(M) + uint64(m)] = to_bits(value)
                else:
                    if has_bias:
                        value += from_bits(bias[uint64(m)])
                    y[uint64(m) * uint64(N) + uint64(n)] = to_bits(value)

    # The simulator's cuda.jit takes no launch bounds (they only steer ptxas).
    @(cuda.jit if ptx.SIMULATOR else cuda.jit(launch_bounds=cfg.launch_bounds))
    def spmm_tiled_csl(words, tile_offsets, x, ldx, y, bias, has_bias, workspace, tickets, M, N, K, n_tile_cols,
                       k_tiles_per_split):
        # One dynamic shared-memory block, seen as uint16 (A and activation tiles) and uint32 (tile offsets):
        # [A 0 | A 1 | act 0 .. act STAGES-1 | tile offsets of this block]
        smem16 = cuda.shared.array(0, uint16, alignment=SMEM_ALIGN)
        smem32 = cuda.shared.array(0, uint32, alignment=SMEM_ALIGN)
        # The epilogue's view: the A buffers reused (and, at tile_n 64, the first activation stage).
        smemf = cuda.shared.array(0, float32, alignment=SMEM_ALIGN)
        acc = cuda.local.array(ACC, float32)
        w_a = cuda.local.array(WORDS, uint32)  # register buffers of words, alternating (see k_step)
        w_b = cuda.local.array(WORDS, uint32)
        positions = cuda.local.array(POSITIONS, uint32)  # "entries": the next tile to zero's (wgmma: even tiles')
        positions_odd = cuda.local.array(POSITIONS, uint32)  # wgmma "entries": odd tiles' positions
        a_off = cuda.local.array(K_STEPS, int64)
        b_off = cuda.local.array(NPAIR, int64)
        frag0 = cuda.local.array(FRAG, uint32)  # one k16 step's A and B fragments, double-buffered (mma_tile)
        frag1 = cuda.local.array(FRAG, uint32)
        group = cuda.local.array(REDUCE_VALUES, float32)  # split-K: partials of REDUCE_GROUP splits
        for i in range(ACC):
            acc[i] = float32(0.0)

        tile_row = cuda.blockIdx.x
        n0 = cuda.blockIdx.y * TILE_N
        split = cuda.blockIdx.z
        m0 = tile_row * TILE_M
        kt_begin = split * k_tiles_per_split
        n_tiles_block = min(k_tiles_per_split, n_tile_cols - kt_begin)
        first_tile = tile_row * n_tile_cols + kt_begin  # tiles of one tile row are consecutive in the format

        if n_tiles_block > 0:
            tid = cuda.threadIdx.x
            lane = tid & 31
            warp = tid >> 5
            q = lane >> 3  # which 8x8 matrix of an ldmatrix.x4 this lane addresses
            r = lane & 7  # which row of it
            if not WGMMA:  # ldmatrix rows (wgmma reads the tiles through descriptors)
                # A rows: (rows 0-7 | 8-15) x (k 0-7 | 8-15) for q = 0..3; the chunk is XORed with the row (format).
                a_row = (tid >> 5) * WARP_ROWS + r + 8 * (q & 1)
                for ks in range(K_STEPS):
                    a_off[ks] = a_row * TILE_K + (((2 * ks + (q >> 1)) ^ r) << 3)
                # B rows: "nk" token rows n (fragment 2p + q // 2) at k chunk q % 2; "kn" k rows at n chunk
                # 2p + q // 2.
                nhalf = (q >> 1) if NF > 1 else 0
                if NK:
                    b_off[0] = (8 * nhalf + r) * B_ROW + (q & 1) * 8
                else:
                    b_k = 8 * (q & 1) + r
                    for p in range(NPAIR):
                        b_off[p] = b_k * TILE_N + (((2 * p + nhalf) ^ ((b_k >> KN_DIV_SHIFT) & KN_MASK)) << 3)
            # The activation chunk this thread copies in round 0 (see issue_activations for the later rounds).
            if NK:
                cp_row = tid >> 3  # token
                cp_col = (tid & 7) * 8  # k within the tile
                if WGMMA:  # 128-byte swizzle: chunk XOR row % 8 (a round moves 16 rows, which keeps row % 8)
                    cp_dst = B_BASE + cp_row * B_ROW + (((tid & 7) ^ (cp_row & 7)) << 3)
                else:
                    cp_dst = B_BASE + cp_row * B_ROW + cp_col
                cp_src = (n0 + cp_row) * ldx + cp_col
                cp_rows_left = N - n0 - cp_row
                cp_cols_left = K - cp_col
            else:
                cp_row = tid >> CPR_SHIFT  # k within the tile
                nc = tid & (CPR - 1)
                cp_dst = B_BASE + cp_row * TILE_N + ((nc ^ ((cp_row >> KN_DIV_SHIFT) & KN_MASK)) << 3)
                cp_src = cp_row * ldx + n0 + nc * 8
                cp_rows_left = K - cp_row
                cp_cols_left = N - n0 - nc * 8

            # The block's tile offsets, read once (coalesced) instead of as a dependent load before every tile.
            j = tid
            while j <= n_tiles_block:
                smem32[uint64(OFFSETS_BASE32) + uint64(j)] = uint32(tile_offsets[first_tile + j])
                j += THREADS
            zero_a_tile(smem16, 0)
            zero_a_tile(smem16, 1)  # for tile 1, scattered by step 0 (later steps clear what they have used)
            clear_first = (warp * CLEAR_WARP_ROWS + (lane >> 3)) * TILE_K + (lane & 7) * 8
            if ENTRIES and not WGMMA and tid == 0:  # wgmma clears by entries behind a barrier instead
                ptx.mbarrier_init(smem32, MBARRIER_BASE32, THREADS)
                ptx.mbarrier_init(smem32, MBARRIER_BASE32 + 2, THREADS)
            cuda.syncthreads()  # offsets, zeros and mbarriers visible
            for t in range(STAGES - 1):
                issue_activations(x, ldx, smem16, t, n_tiles_block, kt_begin, cp_dst, cp_src, cp_rows_left,
                                  cp_cols_left)
            # Fill the word pipeline: tile 0 is expanded now (its load latency exposed once per block), tiles 1
            # and 2 travel while the first steps run.
            # The first window of tile offsets (k_step): tiles 0, 1 and 2 are o0 .. o1, o1 .. o2 and o2 .. o3.
            om1 = o0 = tile_offset(smem32, 0)
            o1 = tile_offset(smem32, min(1, n_tiles_block))
            o2 = tile_offset(smem32, min(2, n_tiles_block))
            o3 = tile_offset(smem32, min(3, n_tiles_block))
            load_words(words, o0, o1, w_a)
            if n_tiles_block > 1:
                load_words(words, o1, o2, w_b)
            scatter_tile(words, smem16, o0, o1, 0, w_a)
            if FENCE_BEFORE_LOADS:
                publish_shared_writes()  # for step 0 (activation tile 0, the first scatter)
            if n_tiles_block > 2:
                if ENTRIES:
                    keep_positions(o0, o1, w_a, positions)
                load_words(words, o2, o3, w_a)

            # The loop is unrolled by two, so that each word buffer is a fixed set of registers: they alternate
            # between tile i+1's words and tile i+2's in flight. Step i's w_cur ("entries") is the positions it
            # zeroes, of tile i (mma.sync, one buffer) or of tile i-1 (wgmma: tile t's in positions if t is even,
            # else in positions_odd), or, unused, its w_next ("rows"). The window of tile offsets starts at tile
            # -1, an empty range that step 0 does not clear.
            i = 0
            while i < n_tiles_block:
                om1, o0, o1, o2, o3 = k_step(words, x, ldx, smem16, smem32, i, n_tiles_block, kt_begin, cp_dst,
                                             cp_src, cp_rows_left, cp_cols_left, a_off, b_off, frag0, frag1, acc,
                                             (positions_odd if WGMMA else positions) if ENTRIES else w_b, w_b,
                                             clear_first, om1, o0, o1, o2, o3)
                if i + 1 < n_tiles_block:
                    om1, o0, o1, o2, o3 = k_step(words, x, ldx, smem16, smem32, i + 1, n_tiles_block, kt_begin,
                                                 cp_dst, cp_src, cp_rows_left, cp_cols_left, a_off, b_off, frag0,
                                                 frag1, acc, positions if ENTRIES else w_a, w_a, clear_first, om1,
                                                 o0, o1, o2, o3)
                i += UNROLL
            ptx.cp_async_wait_all()

        if SPLITS:
            # split-K fix-up: publish this split's partial tile, take a ticket; the last arrival reduces.
            n_splits = cuda.gridDim.z
            out_tile = tile_row * cuda.gridDim.y + cuda.blockIdx.y
            tile_values = TILE_M * TILE_N
            # Accumulator i of thread t at i * THREADS + t: a warp's stores (and the last block's loads, by the same
            # thread index) are 128 contiguous bytes.
            own = cuda.threadIdx.x
            # Split sp's partial tile of this output tile starts at first + sp * split_stride (floats).
            split_stride = cuda.gridDim.x * cuda.gridDim.y * tile_values
            first = out_tile * tile_values + own
            mine = uint64(first + split * split_stride)
            for i in range(ACC):
                workspace[mine + uint64(i * THREADS)] = acc[i]
            # One thread fences, as CUTLASS's split-K semaphore does: the barrier orders every thread's partials
            # before thread 0's fence, and a fence is cumulative (PTX memory model), so its release covers them;
            # on the other side thread 0's acquiring fence plus the barrier order the reads of all threads. A fence
            # in every thread cost 4 % of the samples of an ncu profile (80 %, 36864 x 9216, N = 16).
            cuda.syncthreads()  # every thread's partials are written before the release
            last = 0
            if cuda.threadIdx.x == 0:
                cuda.threadfence()  # release the block's partials
                last = 1 if cuda.atomic.add(tickets, out_tile, 1) == n_splits - 1 else 0
                if last:
                    cuda.threadfence()  # acquire the other splits' partials
            if cuda.syncthreads_or(last) == 0:  # broadcasts thread 0's verdict to the block
                return
            # Sum in split order, so the result does not depend on which block arrived last. The partials are
            # loaded REDUCE_GROUP splits at a time into registers, all of a group's loads in flight together, and
            # only then added: one L2 round trip per group instead of one per split. This block's work is the
            # kernel's tail (every block of a wave finishes within a few us of the others); an instrumented copy
            # measured ~3.5 us of reduction at one round trip per split, 9 splits, and 2.1 us now (H100, N = 16;
            # bench/RESULTS.md). Loops of constant trip count are what LLVM unrolls, keeping acc and the group in
            # registers.
            for i in range(ACC):
                acc[i] = float32(0.0)
            for sp in range(0, n_splits, REDUCE_GROUP):
                for g in range(REDUCE_GROUP):
                    if sp + g < n_splits:
                        partials = uint64(first + (sp + g) * split_stride)  # unsigned: no negative-index wrap
                        for i in range(ACC):
                            group[g * ACC + i] = workspace[partials + uint64(i * THREADS)]
                for g in range(REDUCE_GROUP):
                    if sp + g < n_splits:
                        for i in range(ACC):
                            acc[i] += group[g * ACC + i]
            if cuda.threadIdx.x == 0:
                tickets[out_tile] = 0
        store_tile(acc, smemf, y, bias, has_bias, m0, n0, M, N)

    return spmm_tiled_csl

