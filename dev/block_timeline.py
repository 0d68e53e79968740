"""Per-block timelines of SpMM launches queued as a model queues them: where a launch's time goes beyond its bytes.

    python -m dev.block_timeline M K N SPARSITY [--split-k S | --stream-k] [--ticket T] [--blocks-per-sm B]
                                 [--launches L]
                                                [--repeats R] [--ordinary-launches] [--out DIR]
    e.g. python -m dev.block_timeline 7168 7168 1 0.8 --out /tmp/out

Queues ``L`` products on one stream, each over its own pruned copy of the weights (together beyond the L2 cache, as
``dev.split_k`` times them), each launched as the plan launches it (a programmatic dependent of the one before on Hopper
at a few tokens, as a captured model step launches it; ``--ordinary-launches``: not), captured once in a CUDA graph and
replayed as a model's step is (queued from Python, the launches would wait for the host: it issues one in about as long
as a small product runs), built with ``SpmmConfig(timeline=True)``: thread 0 of every block records the GPU's nanosecond
clock as the block starts, has its tile offsets, may read X (after ``griddepcontrol.wait``), ends its k-tiles, has its
split-K ticket (the block that writes the tile: has summed the splits) and has stored (``config.TIMELINE_FIELDS``). Of
the launches after the first, medians over ``R`` queues, in microseconds:

- the launch: from the previous launch's end to this one's first block, the spread of its blocks' starts, its
  span (first start to last end) against the time its bytes take at the copy bandwidth;
- when the blocks get through it, from its first block's start: half may read X; the k-tiles of 10 %, half, 90 % and
  all of the blocks have ended; from the last k-tile to the last block's end;
- each phase's median over blocks, and the tail: from the last ticket of a block that did not write to the end;
- where the blocks land: the most of a launch's blocks one SM holds (and the first launch's, which follows no
  launch of its own), and a block's k-tiles on those most crowded SMs against the others'.

Writes the records of the first three queues (``block_timeline_M_K_N_S.json``) and a picture of two consecutive
launches, one line per block by SM (``block_timeline_M_K_N_S.png``), into ``--out``. Needs a GPU; the timeline kernel is
built only here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np

from flashllm_nb.kernels.spmm.config import TICKET_CHOICES

PHASES = (("start", "offsets", "tile offsets into shared memory"),
          ("offsets", "waited", "first words issued, X readable"),
          ("waited", "loop_end", "k-tiles"),
          ("loop_end", "ticket", "partials published, ticket (writer: splits summed)"),
          ("ticket", "end", "store (writer)"))
CLOCK_MASK = 2**31  # the records hold the clock's low 31 bits
LOOP_END_SHARES = (10, 50, 90, 100)  # percent of a launch's blocks whose k-tiles have ended: how unevenly they end


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("m", type=int)
    parser.add_argument("k", type=int)
    parser.add_argument("n", type=int)
    parser.add_argument("sparsity", type=float)
    parser.add_argument("--split-k", type=int, default=None, help="force this split-K factor (default: the plan's)")
    parser.add_argument("--ticket", choices=TICKET_CHOICES, default=None,
                        help="force how a split-K block takes its ticket (SpmmConfig.ticket; default: the plan's)")
    parser.add_argument("--stream-k", action="store_true",
                        help="stream-K instead of split-K (Force.stream_k; its timeline variant spills a few bytes)")
    parser.add_argument("--blocks-per-sm", type=int, default=None,
                        help="at most this many resident blocks an SM (Force.blocks_per_sm; default: the plan's)")
    parser.add_argument("--launches", type=int, default=8, help="products queued back to back (at least 2)")
    parser.add_argument("--repeats", type=int, default=10, help="queues whose medians are reported")
    parser.add_argument("--ordinary-launches", action="store_true",
                        help="launch the products ordinarily, not as programmatic dependents of the one before")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    if args.launches < 2:
        parser.error(f"--launches must be at least 2 (the first launch has no predecessor), got {args.launches}")
    if args.k % 8:
        parser.error(f"K must be a multiple of 8 (the kernel reads X's rows in place), got {args.k}")
    try:
        import cupy as cp

        cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no CUDA device
        print(f"block_timeline: needs a GPU ({type(exc).__name__})")
        return 0
    records, summary = run(args, cp)
    print_summary(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = (f"block_timeline_{args.m}_{args.k}_{args.n}_{args.sparsity:g}" + ("_ordinary" * args.ordinary_launches)
            + (f"_{args.ticket}" if args.ticket else "") + (f"_cap{args.blocks_per_sm}" if args.blocks_per_sm else "")
            + ("_stream" if args.stream_k else ""))
    (args.out / f"{stem}.json").write_text(json.dumps(dict(summary, records=records[:3])))
    picture(records, summary, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json and .png")
    return 0


def run(args, cp):
    """Queue the launches ``repeats`` times; return every queue's records (per launch: per block, the fields in
    microseconds from the first launch's first start, then SM and wrote) and the summary."""
    from dev.kernel_dev import pruned_copies
    from flashllm_nb.bench.timing import copy_bandwidth
    from flashllm_nb.kernels.driver import dependent_launch_scope, launching_dependents
    from flashllm_nb.kernels.spmm import driver
    from flashllm_nb.kernels.spmm.config import TIMELINE_FIELDS
    from flashllm_nb.kernels.spmm.plan import Force, plan

    m, k, n = args.m, args.k, args.n
    rng = cp.random.default_rng(0)
    W0 = rng.standard_normal((m, k), dtype=cp.float32).astype(cp.float16)
    copies = pruned_copies(rng, W0, args.sparsity)
    As = [copies[i % len(copies)] for i in range(args.launches)]
    X = rng.standard_normal((n, k), dtype=cp.float32).astype(cp.float16)
    Y = cp.empty((n, m), cp.float16)
    p = plan(m, n, k, "float16", "nk", split_k=args.split_k, tile_vectors=As[0].mean_tile_vectors,
             force=Force(ticket=args.ticket, blocks_per_sm=args.blocks_per_sm, stream_k=args.stream_k or None))
    operands = [driver.Operands(A.words, A.tile_offsets, X, k, Y, None, m, n, k, A.n_tile_cols) for A in As]
    tickets = [driver.timeline_tickets(p, cp) for _ in As]
    stream = cp.cuda.Stream(non_blocking=True)
    bytes_per_launch = int(As[0].words.nbytes + As[0].tile_offsets.nbytes)
    gbps = copy_bandwidth()
    field = {name: i for i, name in enumerate(TIMELINE_FIELDS)}
    marks = [name for name in TIMELINE_FIELDS if name not in ("sm", "wrote")]

    def queue_launches():
        return [driver.launch_timeline(p, ops, t, cp, stream.ptr) for ops, t in zip(operands, tickets)]

    with stream:  # compiles the kernel and makes the split-K workspace outside the capture
        queue_launches()
        stream.synchronize()
        stream.begin_capture()
        with contextlib.nullcontext() if args.ordinary_launches else dependent_launch_scope():
            dependent = launching_dependents()
            views = queue_launches()
        graph = stream.end_capture()
        graph.launch(stream=stream)  # uploads the graph
        stream.synchronize()
    queues = []
    for _ in range(args.repeats):
        graph.launch(stream=stream)
        stream.synchronize()
        raw = [v.get().astype(np.int64) for v in views]
        origin = raw[0][:, field["start"]].min()
        queue = []
        for r in raw:
            times = ((r[:, [field[name] for name in marks]] - origin) % CLOCK_MASK) / 1e3
            queue.append(np.column_stack([times, r[:, field["sm"]], r[:, field["wrote"]]]).tolist())
        queues.append(queue)
    summary = dict(device=cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), m=m, k=k, n=n,
                   sparsity=args.sparsity, grid=list(p.grid), config=repr(p.config), launches=args.launches,
                   dependent_launches=dependent, ticket=p.config.ticket,
                   repeats=args.repeats, bytes=bytes_per_launch, copy_gbps=gbps,
                   bytes_us=bytes_per_launch / (gbps * 1e3), fields=marks + ["sm", "wrote"],
                   blocks_per_sm=driver.blocks_per_sm(p.config, p.shared_bytes),
                   **_medians(queues, marks), **placement(queues, marks))
    return queues, summary


def placement(queues, marks):
    """Where the blocks land, medians over queues: the most of a launch's blocks on one SM (the launches after the
    first, and the first alone), and the median k-tile time of a block on one of its launch's most crowded SMs
    and elsewhere (the launches after the first)."""
    col = {name: i for i, name in enumerate(marks)}
    sm = len(marks)
    crowded, first_crowded, on_crowded, elsewhere = [], [], [], []
    for queue in queues:
        for index, launch in enumerate(queue):
            r = np.asarray(launch)
            sms, counts = np.unique(r[:, sm], return_counts=True)
            most = counts.max()
            if index == 0:
                first_crowded.append(most)
                continue
            crowded.append(most)
            on_most = np.isin(r[:, sm], sms[counts == most])
            k_tiles = r[:, col["loop_end"]] - r[:, col["waited"]]
            on_crowded.append(np.median(k_tiles[on_most]))
            if (~on_most).any():
                elsewhere.append(np.median(k_tiles[~on_most]))
    return {"most blocks on one SM": float(np.median(crowded)),
            "most blocks on one SM, first launch": float(np.median(first_crowded)),
            "k-tiles on the most crowded SMs": float(np.median(on_crowded)),
            "k-tiles elsewhere": float(np.median(elsewhere)) if elsewhere else float("nan")}


def _medians(queues, marks):
    """Medians over queues and over launches after the first, of the launch-level and per-phase figures."""
    col = {name: i for i, name in enumerate(marks)}
    rows = []
    for queue in queues:
        for previous, launch in zip(queue, queue[1:]):
            before, r = np.asarray(previous), np.asarray(launch)
            writers = r[:, len(marks) + 1] == 1
            leavers = ~writers
            row = dict(after_previous_end=r[:, col["start"]].min() - before[:, col["end"]].max(),
                       start_spread=np.ptp(r[:, col["start"]]),
                       span=r[:, col["end"]].max() - r[:, col["start"]].min(),
                       first_waited_after_previous_end=r[:, col["waited"]].min() - before[:, col["end"]].max(),
                       tail=(r[:, col["end"]].max() - r[leavers, col["ticket"]].max()) if leavers.any() else 0.0,
                       timer_step=_timer_step(r[:, : len(marks)]))
            # when the blocks get through the launch, from its first block's start
            first = r[:, col["start"]].min()
            row["half waited"] = float(np.median(r[:, col["waited"]]) - first)
            for share in LOOP_END_SHARES:
                row[f"loop_end {share}%"] = float(np.percentile(r[:, col["loop_end"]], share) - first)
            row["end after the last loop_end"] = r[:, col["end"]].max() - r[:, col["loop_end"]].max()
            for a, b, _ in PHASES:
                row[f"{a}->{b}"] = float(np.median(r[:, col[b]] - r[:, col[a]]))
                row[f"{a}->{b} writers"] = float(np.median(r[writers, col[b]] - r[writers, col[a]]))
            rows.append(row)
    return {key: float(np.median([row[key] for row in rows])) for key in rows[0]}


def _timer_step(times):
    """The smallest positive difference between any two marks: the clock's visible resolution."""
    values = np.unique(np.round(times.ravel(), 4))
    steps = np.diff(values)
    return float(steps[steps > 0].min()) if (steps > 0).any() else 0.0


def print_summary(s):
    print(f"{s['device']}: {s['m']}x{s['k']} N={s['n']} {s['sparsity']:.0%}, grid {tuple(s['grid'])}, split-K "
          f"ticket {s['ticket']}, {s['bytes'] / 1e6:.1f} MB = {s['bytes_us']:.1f} us at {s['copy_gbps']:.0f} GB/s; "
          f"medians of {s['repeats']} queues x {s['launches'] - 1} "
          f"{'dependent' if s['dependent_launches'] else 'ordinary'} launches, us (clock steps of "
          f"{s['timer_step'] * 1e3:.0f} ns)")
    print(f"  launch: first block {s['after_previous_end']:+.2f} after the previous launch's end (may read X "
          f"{s['first_waited_after_previous_end']:+.2f}), starts spread over {s['start_spread']:.2f}, span "
          f"{s['span']:.2f} (bytes alone {s['bytes_us']:.2f}), tail after the last ticket {s['tail']:.2f}")
    print(f"  from the first block's start: half the blocks may read X at {s['half waited']:.2f}; k-tiles end for "
          + " / ".join(f"{share} %" for share in LOOP_END_SHARES) + " of the blocks at "
          + " / ".join(f"{s[f'loop_end {share}%']:.2f}" for share in LOOP_END_SHARES)
          + f"; the last block ends {s['end after the last loop_end']:.2f} after the last k-tile")
    for a, b, what in PHASES:
        print(f"  {a:>8} -> {b:<8} {s[f'{a}->{b}']:7.2f}   writers {s[f'{a}->{b} writers']:7.2f}   {what}")
    print(f"  placement: up to {s['blocks_per_sm']} resident blocks an SM; at most {s['most blocks on one SM']:.0f} "
          f"of a launch's blocks on one SM (the first launch: {s['most blocks on one SM, first launch']:.0f}); a "
          f"block's k-tiles take {s['k-tiles on the most crowded SMs']:.2f} there, {s['k-tiles elsewhere']:.2f} "
          f"elsewhere")


def picture(queues, summary, path: Path) -> None:
    """Two consecutive launches of the first queue, one horizontal line per block (grouped by SM), a colour per
    phase; nothing if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("block_timeline: no matplotlib, no picture")
        return
    n_marks = len(summary["fields"]) - 2
    colours = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(11, 6))
    for launch_index, launch in enumerate(queues[0][1:3]):
        r = np.asarray(launch)
        order = np.lexsort((r[:, 0], r[:, n_marks]))  # by SM, then start
        for row, block in enumerate(r[order]):
            for phase, (a, b, what) in enumerate(PHASES):
                i, j = summary["fields"].index(a), summary["fields"].index(b)
                ax.plot([block[i], block[j]], [row, row], color=colours[phase], lw=0.6,
                        label=what if row == 0 and launch_index == 0 else None)
    ax.set_xlabel("microseconds from the first launch's first block")
    ax.set_ylabel("block (grouped by SM)")
    ax.set_title(f"{summary['device']}: {summary['m']}x{summary['k']}, N={summary['n']}, "
                 f"{summary['sparsity']:.0%}, grid {tuple(summary['grid'])}: launches 2 and 3 of a queue "
                 f"({'dependent' if summary['dependent_launches'] else 'ordinary'})")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
