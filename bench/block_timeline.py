"""Where a block's time goes: a per-block timeline of the SpMM kernel, from an instrumented copy of it.

    python bench/block_timeline.py [--n 16] [--sparsities 0.8,0.9] [--shapes MxK,...] [--out DIR]

The copy is the package's kernel source with ``%clock`` / ``%globaltimer`` reads added (``instrument``): thread 0
of every block records when it started, on which SM, the cycles of its prologue, main loop and epilogue (for the
block that reduces a split-K tile also: publishing its partials, the reduction, the output store), and per k-step
the cycles of each part of the step, summed over the block's steps. The records go to the ticket array, after the
tickets (the copy's workspace is enlarged for them). Per case the tool prints cuBLAS, the package's kernel and the
instrumented copy timed in the same run (the copy costs 1-4 %), then percentiles over blocks of each part, with
the raw records saved as ``rec_MxK_N_S.npy`` under ``--out``.

Reading it: blocks of one wave start together; the kernel ends with its slowest block, so a part that only the
last block of a split-K tile does (the reduction, the store) is the kernel's tail, however short it is against
the main loop. The step parts are cycles of thread 0 between clock reads (a wait shows where the thread waited,
not why). Needs a GPU; the patch is by source text, so a change to the kernel's code around the marked points
makes ``instrument`` fail loudly (each anchor must occur exactly once).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_kernel import OPT66B, check_correctness, copy_bandwidth, pruned_copies, time_batched  # noqa: E402
from kernel_ab import Variant  # noqa: E402
from kernel_ab import use as use_variant  # noqa: E402

import flashllm_nb as fl  # noqa: E402
from flashllm_nb.kernels import api, launch, spmm_tiled_csl  # noqa: E402

# A block's record, REC int32: 0 start (globaltimer, low 32 bits), 1 SM, 2-4 prologue / main loop / epilogue
# cycles, 5 end (globaltimer), 6-15 the step parts below summed over the block's steps, 16 whether it reduced a
# split-K tile, 17-18 that block's publish and reduce cycles.
REC = 24
# The step parts, in record order. "scatter" includes the wait for the words ("words wait", also on its own); with
# mma.sync (no wgmma) the products run between the issue and the scatter and count as "words wait".
STEP_PARTS = ["cp.async wait + proxy fence", "barrier", "issue (wgmma + copies)", "wgmma wait", "scatter",
              "clear (rows; entries: mbarrier wait, or zeroing + second barrier)", "load words", "whole step",
              "wgmma issue", "words wait"]


# (anchor in the kernel source, its replacement): the clock reads, the per-step sums (prof), the block records.
PATCHES = [
    ('''if ptx.SIMULATOR:
    _device = cuda.jit(device=True)''', '''from llvmlite import ir as _ir
from numba import types as _types
from numba.cuda.extending import intrinsic as _intrinsic
from flashllm_nb.kernels.ptx_asm import _asm, _as_int


def _reader(text):
    @_intrinsic
    def read(typingctx):
        def codegen(context, builder, sig, args):
            return _asm(builder, _ir.IntType(32), [], text, "=r", attrs=(), side_effect=True)
        return _types.uint32(), codegen
    return read


@_intrinsic
def _clock_after(typingctx, x):
    """%clock read after x is available (x is an input operand)."""
    def codegen(context, builder, sig, args):
        value = _as_int(context, builder, args[0], sig.args[0], 32)
        text = "{ .reg .u32 %d; mov.u32 %d, $1; mov.u32 $0, %clock; }"
        return _asm(builder, _ir.IntType(32), [(_ir.IntType(32), value)], text, "=r,r", attrs=(), side_effect=True)
    return _types.uint32(x), codegen


_clock = _reader("mov.u32 $0, %clock;")
_gtime = _reader("{ .reg .u64 %g; mov.u64 %g, %globaltimer; cvt.u32.u64 $0, %g; }")
_smid = _reader("mov.u32 $0, %smid;")
PROF = 10  # per-step buckets
REC = 24  # int32 per block

if ptx.SIMULATOR:
    _device = cuda.jit(device=True)'''),
    ("w_cur, w_next, clear_first, om1, o0, o1, o2, o3):\n        \"\"\"Step i",
    "w_cur, w_next, clear_first, om1, o0, o1, o2, o3, prof):\n        \"\"\"Step i"),
    ("""        if not FENCE_BEFORE_LOADS:  # else the previous step (or the prologue) did this before its word loads
            publish_shared_writes()
""", """        c0 = _clock()
        if not FENCE_BEFORE_LOADS:  # else the previous step (or the prologue) did this before its word loads
            publish_shared_writes()
        c1 = _clock()
        prof[0] += c1 - c0
"""),
    # where the fence comes before the word loads, it counts as "cp.async wait + fence", not as "load words"
    ("""            if FENCE_BEFORE_LOADS:
                publish_shared_writes()  # for step i+1: activation tile i+1, these zeros and this scatter""",
     """            if FENCE_BEFORE_LOADS:
                cf = _clock()
                publish_shared_writes()
                cf = _clock() - cf
                prof[0] += cf
                prof[6] -= cf"""),
    ("""        cuda.syncthreads()
        if WGMMA:
            # The Tensor Cores work on tile i while""", """        cuda.syncthreads()
        c2 = _clock()
        prof[1] += c2 - c1
        if WGMMA:
            # The Tensor Cores work on tile i while"""),
    ("""            wgmma_issue(smem16, a_stage, i & (STAGES - 1), acc)
        issue_activations(""", """            wgmma_issue(smem16, a_stage, i & (STAGES - 1), acc)
        c2b = _clock()
        prof[8] += c2b - c2
        issue_activations("""),
    ("""        if not WGMMA:
            mma_tile(smem16, a_stage, i & (STAGES - 1), a_off, b_off, frag0, frag1, acc)
        if ENTRIES and WGMMA:""", """        c3 = _clock()
        prof[2] += c3 - c2
        if not WGMMA:
            mma_tile(smem16, a_stage, i & (STAGES - 1), a_off, b_off, frag0, frag1, acc)
        if ENTRIES and WGMMA:"""),
    # zero first (wgmma, "entries"): the zeroing and its barrier count as "clear", then scatter, loads, wgmma wait
    ("""                    cuda.syncthreads()  # conditions uniform across the block
                scatter_tile(words, smem16, scatter_v0, scatter_v1, 1 - a_stage, w_next)
            if i + 3 < n_tiles_block:
                # Tile i-1's positions are used""", """                    cuda.syncthreads()  # conditions uniform across the block
                c4 = _clock()
                prof[5] += c4 - c3
                c4b = _clock_after(w_next[0] ^ w_next[WORDS - 1])
                prof[9] += c4b - c4
                scatter_tile(words, smem16, scatter_v0, scatter_v1, 1 - a_stage, w_next)
                prof[4] += _clock() - c4
            c6 = _clock()
            if i + 3 < n_tiles_block:
                # Tile i-1's positions are used"""),
    ("""            ptx.wgmma_wait_group(0, acc, ACC)
        elif ENTRIES:""", """            c7 = _clock()
            prof[6] += c7 - c6
            ptx.wgmma_wait_group(0, acc, ACC)
            c8 = _clock()
            prof[3] += c8 - c7
            prof[7] += c8 - c0
        elif ENTRIES:"""),
    ("""            mbarrier = MBARRIER_BASE32 + 2 * a_stage
            if i + 2 < n_tiles_block:
                ptx.mbarrier_arrive(smem32, mbarrier)  # this thread's reads of A tile i are done
            if i + 1 < n_tiles_block:
                scatter_tile(words, smem16, scatter_v0, scatter_v1, 1 - a_stage, w_next)
            if i + 2 < n_tiles_block:""", """            mbarrier = MBARRIER_BASE32 + 2 * a_stage
            if i + 2 < n_tiles_block:
                ptx.mbarrier_arrive(smem32, mbarrier)  # this thread's reads of A tile i are done
            c4b = _clock_after(w_next[0] ^ w_next[WORDS - 1])
            prof[9] += c4b - c3
            if i + 1 < n_tiles_block:
                scatter_tile(words, smem16, scatter_v0, scatter_v1, 1 - a_stage, w_next)
            c5 = _clock()
            prof[4] += c5 - c3
            if i + 2 < n_tiles_block:"""),
    ("""                ptx.mbarrier_wait_parity(smem32, mbarrier, (i >> 1) & 1)
                unscatter_tile(smem16, o0, o1, a_stage, w_cur)
            if i + 3 < n_tiles_block:
                # Tile i's positions are used: tile i+1's take their place, and tile i+1's word buffer takes
                # tile i+3's loads.
                keep_positions(scatter_v0, scatter_v1, w_next, w_cur)
                load_words(words, load_v0, load_v1, w_next)""", """                ptx.mbarrier_wait_parity(smem32, mbarrier, (i >> 1) & 1)
                c6 = _clock()
                prof[5] += c6 - c5
                unscatter_tile(smem16, o0, o1, a_stage, w_cur)
            c7 = _clock()
            if i + 3 < n_tiles_block:
                keep_positions(scatter_v0, scatter_v1, w_next, w_cur)
                load_words(words, load_v0, load_v1, w_next)
            c8 = _clock()
            prof[6] += c8 - c7
            prof[7] += c8 - c0"""),
    ("""        else:
            if i + 1 < n_tiles_block:
                scatter_tile(words, smem16, scatter_v0, scatter_v1, 1 - a_stage, w_next)
            if i + 3 < n_tiles_block:
                load_words(words, load_v0, load_v1, w_next)
            if WGMMA:
                # This warp's share of tile i's wgmma must be complete before it clears the rows it read, and
                # before the next barrier, after which tile i's activation stage is refilled.
                ptx.wgmma_wait_group(0, acc, ACC)
            if i + 2 < n_tiles_block:""", """        else:
            c4 = _clock_after(w_next[0] ^ w_next[WORDS - 1])
            prof[9] += c4 - c3
            if i + 1 < n_tiles_block:
                scatter_tile(words, smem16, scatter_v0, scatter_v1, 1 - a_stage, w_next)
            c5 = _clock()
            prof[4] += c5 - c3
            if i + 3 < n_tiles_block:
                load_words(words, load_v0, load_v1, w_next)
            c6 = _clock()
            prof[6] += c6 - c5
            if WGMMA:
                # This warp's share of tile i's wgmma must be complete before it clears the rows it read, and
                # before the next barrier, after which tile i's activation stage is refilled.
                ptx.wgmma_wait_group(0, acc, ACC)
            c7 = _clock()
            prof[3] += c7 - c6
            if i + 2 < n_tiles_block:"""),
    ("""                # Zeros for tile i+2, which the next step scatters into this buffer after its barrier.
                clear_own_rows(smem16, a_stage, clear_first)
""", """                # Zeros for tile i+2, which the next step scatters into this buffer after its barrier.
                clear_own_rows(smem16, a_stage, clear_first)
            c8 = _clock()
            prof[5] += c8 - c7
            prof[7] += c8 - c0
"""),
    ("""        for i in range(ACC):
            acc[i] = float32(0.0)

        tile_row = cuda.blockIdx.x""", """        for i in range(ACC):
            acc[i] = float32(0.0)
        prof = cuda.local.array(PROF, uint32)
        for i in range(PROF):
            prof[i] = uint32(0)
        g_start = _gtime()
        c_start = _clock()
        c_loop = c_start
        c_end_loop = c_start

        tile_row = cuda.blockIdx.x"""),
    ("""            i = 0
            while i < n_tiles_block:""", """            c_loop = _clock()
            i = 0
            while i < n_tiles_block:"""),
    ("clear_first, om1, o0, o1, o2, o3)\n                if i + 1 < n_tiles_block:",
     "clear_first, om1, o0, o1, o2, o3, prof)\n                if i + 1 < n_tiles_block:"),
    ("clear_first, om1,\n                                                 o0, o1, o2, o3)",
     "clear_first, om1,\n                                                 o0, o1, o2, o3, prof)"),
    ("""            ptx.cp_async_wait_all()

        if SPLITS:""", """            ptx.cp_async_wait_all()
            c_end_loop = _clock()

        # timeline record: REC int32 per block after the tickets
        rec = cuda.gridDim.x * cuda.gridDim.y + REC * (
            (cuda.blockIdx.z * cuda.gridDim.y + cuda.blockIdx.y) * cuda.gridDim.x + cuda.blockIdx.x)
        if SPLITS and cuda.threadIdx.x == 0:  # only a split-K launch has room after its tickets
            tickets[rec + 0] = int32(g_start)
            tickets[rec + 1] = int32(_smid())
            tickets[rec + 2] = int32(c_loop - c_start)
            tickets[rec + 3] = int32(c_end_loop - c_loop)
            for q in range(PROF):
                tickets[rec + 6 + q] = int32(prof[q])
        if SPLITS:"""),
    ("""            if cuda.syncthreads_or(last) == 0:  # broadcasts thread 0's verdict to the block
                return""", """            if cuda.syncthreads_or(last) == 0:  # broadcasts thread 0's verdict to the block
                if cuda.threadIdx.x == 0:
                    tickets[rec + 4] = int32(_clock() - c_end_loop)
                    tickets[rec + 5] = int32(_gtime())
                    tickets[rec + 16] = 0
                return
            c_pub = _clock()"""),
    ("""            if cuda.threadIdx.x == 0:
                tickets[out_tile] = 0
        store_tile(""", """            if cuda.threadIdx.x == 0:
                tickets[out_tile] = 0
                tickets[rec + 17] = int32(c_pub - c_end_loop)
                tickets[rec + 18] = int32(_clock_after(tickets[rec + 17] + int32(acc[0])) - c_pub)
        store_tile("""),
    ("""        store_tile(acc, smemf, y, bias, has_bias, m0, n0, M, N)

    return spmm_tiled_csl""", """        store_tile(acc, smemf, y, bias, has_bias, m0, n0, M, N)
        if SPLITS and cuda.threadIdx.x == 0:
            tickets[rec + 4] = int32(_clock() - c_end_loop)
            tickets[rec + 5] = int32(_gtime())
            tickets[rec + 16] = 1

    return spmm_tiled_csl"""),
]


def instrument(source: str) -> str:
    """The kernel module's source with the timeline's clock reads and record stores added."""
    for old, new in PATCHES:
        if source.count(old) != 1:
            raise RuntimeError(f"block_timeline: the kernel source changed; this anchor occurs {source.count(old)} "
                               f"times, expected once:\n{old}")
        source = source.replace(old, new)
    return source


@functools.cache
def _variants() -> tuple[Variant, Variant]:
    """The package's kernel and the instrumented copy, as kernel_ab variants (the copy written to a temporary file)."""
    path = Path(tempfile.mkdtemp()) / "spmm_tiled_csl_timeline.py"
    path.write_text(instrument(Path(spmm_tiled_csl.__file__).read_text()))
    return Variant.parse("package"), Variant.parse(f"timeline@{path}")


_records = {}


def use(instrumented: bool) -> None:
    """Make later launches of this process build from the instrumented copy, or from the package again
    (``kernel_ab.use``: the launcher's kernel module swapped, plans and remembered launches cleared)."""
    use_variant(_variants()[1 if instrumented else 0])


def _workspace_with_records(xp, n_partials, n_tickets, stream_handle):
    """launch's split-K workspace, with REC int32 per block after the tickets (at most one block per 128 x 8 tile
    of partials); the last one handed out is remembered for reading back."""
    key = (n_partials, n_tickets)
    if key not in _records:
        blocks = n_partials // (128 * 8)
        _records[key] = (xp.empty(n_partials, dtype=np.float32), xp.zeros(n_tickets + REC * blocks, dtype=np.int32))
    _records["last"] = (_records[key][1], n_tickets)
    return _records[key]


def _percentiles(a) -> str:
    return " ".join(f"{np.percentile(a, q):6.1f}" for q in (10, 50, 90)) + f" {np.max(a):6.1f}"


def report(rec, p) -> None:
    """Print one launch's records (rows of REC int32, one per block)."""
    start_ns = rec[:, 0].astype(np.int64)
    end_ns = rec[:, 5].astype(np.int64)
    origin = start_ns.min()
    start = (start_ns - origin) % (1 << 32) / 1e3  # us; the records keep globaltimer's low 32 bits
    end = (end_ns - origin) % (1 << 32) / 1e3
    prologue, loop, epilogue = rec[:, 2], rec[:, 3], rec[:, 4]
    ghz = float(np.median((prologue + loop + epilogue) / ((end - start) * 1e3)))
    us = lambda cycles: cycles / ghz / 1e3  # noqa: E731
    last = rec[:, 16] == 1
    print(f"   blocks {len(rec)}, one launch spans {end.max() - start.min():.1f} us, clock {ghz:.2f} GHz")
    print("   percentiles over blocks (p10 median p90 max), us:")
    print(f"     start {_percentiles(start)} | end {_percentiles(end)}")
    print(f"     prologue {_percentiles(us(prologue))} | main loop {_percentiles(us(loop))} | epilogue "
          f"{_percentiles(us(epilogue))}")
    if last.any() and p.splits > 1:
        publish, reduce = rec[last, 17], rec[last, 18]
        print(f"     reducing blocks' epilogue {_percentiles(us(epilogue[last]))}: publish {_percentiles(us(publish))}"
              f" | reduce {_percentiles(us(reduce))} | store {_percentiles(us(epilogue[last] - publish - reduce))}")
    per_step = rec[:, 6:16].astype(np.float64) / p.k_tiles_per_split
    print("   cycles per k-step (median over blocks): " + ", ".join(
        f"{name} {np.median(per_step[:, j]):.0f}" for j, name in enumerate(STEP_PARTS)))
    per_sm = np.bincount(rec[:, 1])
    print(f"   blocks per SM {per_sm[per_sm > 0].min()}-{per_sm.max()}; start times (10 bins): "
          + " ".join(str(c) for c in np.histogram(start, bins=10)[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--sparsities", default="0.8,0.9")
    ap.add_argument("--shapes", default=",".join(f"{m}x{k}" for m, k in OPT66B))
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="where the raw records go")
    ap.add_argument("--check", action="store_true", help="check the instrumented copy's results first")
    args = ap.parse_args()
    print(cp.cuda.runtime.getDeviceProperties(0)["name"].decode())
    launch._workspaces.get = _workspace_with_records  # before any launch of the copy: its records need the room
    if args.check:
        use(True)
        check_correctness(np.random.default_rng(5), quick=True)
    print(f"copy bandwidth {copy_bandwidth() / 1e9:.0f} GB/s")
    rng = cp.random.default_rng(0)
    n = args.n
    for shape in args.shapes.split(","):
        m, k = (int(v) for v in shape.split("x"))
        dense = rng.standard_normal((m, k), dtype=cp.float32).astype(cp.float16)
        x = rng.standard_normal((n, k), dtype=cp.float32).astype(cp.float16)
        y = cp.empty((n, m), cp.float16)
        for sparsity in (float(v) for v in args.sparsities.split(",")):
            matrices = pruned_copies(rng, dense, sparsity)
            t_dense = time_batched([lambda: cp.matmul(x, dense.T, out=y)] * 8)
            # The package's plan, forced on both kernels: the copy's registers differ, and with them the occupancy
            # the plan would choose its split-K factor from.
            use(False)
            p = launch.plan(m, n, k, "float16", "nk", tile_vectors=matrices[0].mean_tile_vectors)
            times = {}
            for instrumented in (False, True):
                use(instrumented)
                times[instrumented] = time_batched(
                    [lambda a=a: fl.linear(x, a, out=y, split_k=p.splits) for a in matrices] * 8)
            print(f"\n== {m}x{k}, N = {n}, {sparsity:.0%}: cuBLAS {t_dense * 1e3:.1f} us, flashllm_nb "
                  f"{times[False] * 1e3:.1f} us ({t_dense / times[False]:.2f}x), instrumented {times[True] * 1e3:.1f} "
                  f"us; clear={p.config.clear}, grid {p.grid}, {p.k_tiles_per_split} k-tiles per block")
            if p.splits == 1:
                print("   no split-K in this plan: nothing recorded (the copy writes its records after the tickets)")
                continue
            _records.pop("last", None)
            # A repeated call takes the remembered launch, which does not ask for its workspace again: forget it,
            # so that this launch goes through launch() and says which records it writes.
            api._fast_calls = api._FastCalls()
            cp.cuda.Device().synchronize()
            fl.linear(x, matrices[1], out=y, split_k=p.splits)  # the instrumented copy, alone on the GPU
            cp.cuda.Device().synchronize()
            tickets, n_tickets = _records["last"]
            rec = tickets[n_tickets:].get().reshape(-1, REC)
            rec = rec[(rec != 0).any(axis=1)]
            np.save(Path(args.out) / f"rec_{m}x{k}_{n}_{round(sparsity * 100)}.npy", rec)
            report(rec, p)


if __name__ == "__main__":
    main()
