"""What one compiled SpMM kernel variant is: the tile constants, the choices a variant is made of, and
:class:`SpmmConfig`, which refuses any combination the kernel is not built for.

The reasons behind each choice, with the measurements, are in ``docs/kernel-design.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SpmmConfig", "TILE_M", "TILE_K", "TILE_ELEMS", "NK_ROW", "TILE_N_CHOICES", "WARP_CHOICES",
           "MMA_CHOICES", "PREFETCH_CHOICES", "CLEAR_CHOICES", "STAGE_CHOICES", "TICKET_CHOICES", "SPARSE_CHOICES",
           "TWO_STAGES_BUILT", "BITMAP_WORDS", "TIMELINE_FIELDS", "kernel_signature"]

TILE_M = 128  # rows of A per block: one tile row of the Tiled-CSL grid
TILE_K = 64  # k per pipeline step: one tile column of the grid
TILE_ELEMS = TILE_M * TILE_K  # 8192 fp16 values = 16 KiB of shared memory per A buffer
WARP_CHOICES = (4, 8)  # warps per block: 4 warps own two m16 row bands each, 8 warps one each
# The Tensor-Core instruction: "sync" = ldmatrix + mma.sync (sm_80 on), "wgmma" = wgmma.mma_async reading both
# operands from shared memory (sm_90a only; "nk" activations; 4 warps = one warpgroup, or 8 = two).
MMA_CHOICES = ("sync", "wgmma")
TILE_N_CHOICES = (8, 16, 32, 64)
# Activation stages: STAGES - 1 k-tiles of X are copied ahead of the one being multiplied. 2 stages free shared
# memory for one more block per SM. Powers of two: the stage of tile t is t & (STAGES - 1).
STAGE_CHOICES = (2, 4)
# 16-byte word vectors a block holds per k-tile in one register buffer: 256 / 384 / 512 / 640 vectors are a
# 12.5 / 19 / 25 / 31 %-dense tile. Vectors beyond the buffer are loaded during the scatter, unhidden.
PREFETCH_CHOICES = (256, 384, 512, 640)
# How a consumed A buffer is zeroed again for the tile after next: "rows" = each warp zeroes the rows it read (the
# same stores at any sparsity); "entries" = each thread zeroes the positions it scattered (a store per entry), once
# every warp has read the buffer.
CLEAR_CHOICES = ("rows", "entries")
# How a split-K block hands its partial tile to the block that sums them, after the block has met at a barrier:
# "fences" = thread 0 fences (membar.gl), takes its ticket with a relaxed atomic add and, if last, fences again;
# "acq_rel" = thread 0 takes its ticket with one atom.acq_rel.gpu add, which releases and acquires by itself.
TICKET_CHOICES = ("fences", "acq_rel")
# The format of A: "csl" = Tiled-CSL (a word per entry: position and value), "bitmap" = Tiled-Bitmap (a bitmap per
# tile and its values packed, 7 to a 16-byte vector; ``formats.tiled_bitmap``), which zeroes by rows only.
SPARSE_CHOICES = ("csl", "bitmap")
BITMAP_WORDS = TILE_ELEMS // 32  # uint32 words of one tile's bitmap: 1 KiB, a shared buffer of two for "bitmap"
# The one configuration built with 2 activation stages: 6 blocks per SM in 80 registers (a 37 KB block).
TWO_STAGES_BUILT = dict(mma="wgmma", warps=4, tile_n=16, clear="entries", prefetch_vectors=256)
# Blocks per SM promised to ptxas (launch_bounds) per tile_n, for 4 warps and 4 stages: what the shared memory of a
# block (37 / 42 / 51 / 70 KB) allows on a 228 KB SM, except tile_n = 8, where a promise of 6 holds ptxas to 80
# registers and costs the double-buffered fragments.
_BLOCKS_PER_SM = {8: 5, 16: 5, 32: 4, 64: 3}
_BLOCKS_PER_SM_TWO_STAGES = 6
# wgmma with 8 warps (two warpgroups, one per m64 half): each thread holds half the accumulators and words, 64
# registers at most for tile_n <= 32 (80 at 64); 4 blocks of 256 threads fit 64 registers each, 3 fit 85.
_BLOCKS_PER_SM_WGMMA_8_WARPS = {8: 4, 16: 4, 32: 4, 64: 3}
# "nk" activation rows (one token's 64 k-values, 128 bytes) are padded to 72 values (144 bytes) for ldmatrix: the
# eight rows one ldmatrix reads then start in eight different 16-byte bank groups (row n in group (9n + chunk) % 8),
# and unlike an XOR swizzle the row of k16 step ks is a constant 32 bytes further.
NK_ROW = TILE_K + 8
MBARRIER_BYTES = 16  # one mbarrier per A buffer (mma.sync, clear="entries"): "every warp has read this buffer"
# A kernel built with timeline=True records these int32 per block, in this order, in ``tickets`` after the per-tile
# tickets: thread 0's %globaltimer_lo (nanoseconds, the low 31 bits) at the block's start, once its tile offsets
# are in shared memory, once it may read X (after griddepcontrol.wait), at the end of its k-tiles, once it has its
# split-K ticket (the last block: once it has summed the splits), and after its store; its SM; the output tiles it
# wrote (split-K: 1, or 0 if it left after its ticket). A stream-K block that touches several tile rows records the
# first one's offsets and waited, and the last one's loop_end, ticket and end.
TIMELINE_FIELDS = ("start", "offsets", "waited", "loop_end", "ticket", "end", "sm", "wrote")


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
    stream_k : bool
        How blocks divide the work. False: block (x, y, z) owns tile row x, column block y and the z-th of the
        grid's equal ranges of k-tiles (split-K). True (stream-K; needs ``splits``): the grid's ``x`` blocks share
        the sequence of every tile row's k-tiles, row after row, in equal contiguous ranges; a block whose range
        crosses from one tile row into the next runs the pipeline once per tile row it touches, and an output tile
        covered by several blocks is summed by the last of them, as split-K's is.
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
        Activation tiles in shared memory, one of ``STAGE_CHOICES``: 4, or 2 for the one configuration
        ``TWO_STAGES_BUILT`` names, which fits 6 blocks per SM instead of 5.
    relu : bool
        The epilogue applies ReLU after the bias, before the one rounding (``linear(..., activation="relu")``): a
        negative value becomes +0, NaN stays NaN.
    grid_dependency : bool
        The kernel is launched as a programmatic dependent of the previous kernel in its stream (sm_90 on,
        ``kernels.driver``): it lets the next kernel start at once, loads its first two tiles of words, and only
        then waits for the previous kernel (``griddepcontrol``) before it reads X or writes anything.
    ticket : str
        ``"acq_rel"`` or ``"fences"`` (``TICKET_CHOICES``): how a split-K block takes its ticket. The plan builds
        "acq_rel" (no ``membar.gl`` on the last block's path; measured ahead of "fences", docs/kernel-design.md);
        "fences" stays buildable for A/B runs.
    sparse : str
        The format of A (``SPARSE_CHOICES``): ``"csl"`` (Tiled-CSL) or ``"bitmap"`` (Tiled-Bitmap; needs
        ``clear="rows"``; two 1 KiB shared bitmap buffers more).
    timeline : bool
        For development (``dev/block_timeline.py`` through ``driver.launch_timeline``; the plan never sets it):
        each block also records ``TIMELINE_FIELDS`` in ``tickets``, past the per-tile tickets.
    """

    tile_n: int
    dtype: str = "float16"
    x_layout: str = "nk"
    splits: bool = False
    stream_k: bool = False
    warps: int = 4
    mma: str = "sync"
    prefetch_vectors: int = 512
    clear: str = "rows"
    stages: int = 4
    relu: bool = False
    grid_dependency: bool = False
    ticket: str = "acq_rel"
    sparse: str = "csl"
    timeline: bool = False

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
        if self.ticket not in TICKET_CHOICES:
            raise ValueError(f"Invalid ticket of SpmmConfig: expected one of {TICKET_CHOICES}, got {self.ticket!r}")
        if self.sparse not in SPARSE_CHOICES:
            raise ValueError(f"Invalid sparse of SpmmConfig: expected one of {SPARSE_CHOICES}, got {self.sparse!r}")
        if self.sparse == "bitmap" and self.clear != "rows":
            raise ValueError(f"Invalid SpmmConfig: sparse='bitmap' zeroes by rows only (clear='rows'), got "
                             f"clear={self.clear!r}")
        if self.mma == "wgmma" and self.x_layout != "nk":
            raise ValueError(
                "Invalid SpmmConfig: mma='wgmma' needs x_layout='nk' (both operands K-major), "
                f"got x_layout={self.x_layout!r}"
            )
        if self.stream_k and not self.splits:
            raise ValueError("Invalid SpmmConfig: stream_k=True sums output tiles that several blocks share, so it "
                             "needs splits=True, got splits=False")
        if self.stages not in STAGE_CHOICES:
            raise ValueError(f"Invalid stages of SpmmConfig: expected one of {STAGE_CHOICES}, got {self.stages}")
        if self.stages == 2 and not self.two_stages_built:
            built = [f"{key}={value!r}" for key, value in TWO_STAGES_BUILT.items()]
            given = ", ".join(f"{key}={getattr(self, key)!r}" for key in TWO_STAGES_BUILT)
            raise ValueError(f"Invalid SpmmConfig: stages=2 is built only with {', '.join(built[:-1])} and "
                             f"{built[-1]} (6 blocks per SM in 80 registers), got {given}")

    @property
    def two_stages_built(self) -> bool:
        """Whether this configuration, stages apart, is the one built with 2 activation stages."""
        return all(getattr(self, key) == value for key, value in TWO_STAGES_BUILT.items())

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
        tiles, two 8-byte mbarriers (used by mma.sync with clear="entries"), for "bitmap" two bitmap buffers, and
        the block's tile offsets."""
        activation_tile = self.tile_n * self.nk_row if self.x_layout == "nk" else TILE_K * self.tile_n
        bitmaps = 2 * BITMAP_WORDS * 4 if self.sparse == "bitmap" else 0
        return (2 * TILE_ELEMS * 2 + self.stages * activation_tile * 2 + MBARRIER_BYTES + bitmaps
                + 4 * (k_tiles_per_split + 1))


def kernel_signature() -> tuple:
    """The one argument signature every configuration is compiled for (flat C-contiguous arrays, int32 scalars):
    words, tile_offsets, x, ldx, y, bias, has_bias, workspace, tickets, M, N, K, n_tile_cols, k_tiles_per_split."""
    from numba import types

    u16, i32 = types.Array(types.uint16, 1, "C"), types.int32
    return (types.Array(types.uint32, 1, "C"), types.Array(types.int32, 1, "C"), u16, i32, u16, u16, i32,
            types.Array(types.float32, 1, "C"), types.Array(types.int32, 1, "C"), i32, i32, i32, i32, i32)
