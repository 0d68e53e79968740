"""Kernel A/B in one process: variants of the plan's choices, each beside the others and cuBLAS.

    python -m dev.kernel_ab [N ...] --variant SPEC [--variant SPEC ...] [--sparsities 0.8,0.9]
                            [--shapes MxK,...] [--check NAME,...]

A variant is ``NAME[:KEY=VALUE,...]``: the plan's choices forced (``flashllm_nb.kernels.spmm.plan.Force``) for the
``linear`` products timed here: ``mma`` (sync, wgmma), ``warps`` (4, 8), ``clear`` (rows, entries), ``prefetch`` (256 ..
640), ``stages`` (2, 4), ``split`` (a split-K factor), ``dependent`` (0 or 1: built with ``griddepcontrol`` or not; the
launches stay ordinary), ``ticket`` (fences, acq_rel: how a split-K block takes its ticket), ``blocks`` (at most
this many resident blocks per SM, by padding shared memory) and ``stream`` (1: stream-K, a block per resident slot
sharing the k-tiles equally, instead of split-K), for blocks of ``tile_n``
up to ``upto`` (16 unless given; wider blocks keep the plan's choices); ``format=bitmap`` times the same matrices in
Tiled-Bitmap (``flashllm_nb.TiledBitmap``) instead of Tiled-CSL, at every N, and checks each one's product against
cuBLAS's first. A variant the kernel is not built for is refused by ``SpmmConfig`` with its reason. A variant without
options is the plan itself.

Every variant times the same pruned matrices (rotated past the L2, calls queued behind a spin kernel:
``flashllm_nb.bench.timing.time_batched``) per OPT-66B layer and as the geometric mean over the layers, with the
fraction of its format's bandwidth bound (copy bandwidth measured in the same run). ``--check`` first runs
``kernel_dev.check_correctness`` with the named variants (N = 1 to 256, both layouts, fp16 and bf16, split-K).

A change of the kernel's source is compared by running this on each commit on the same card (the plan's variant),
after ``dev/ptx_fingerprint.py`` has said which configurations the change touches at all.

Examples::

    python -m dev.kernel_ab 16 8 --variant plan --variant rows:clear=rows --sparsities 0.85,0.9,0.95
    python -m dev.kernel_ab 1 8 16 --variant plan --variant fences:ticket=fences --check fences --shapes 7168x7168
    python -m dev.kernel_ab 1 16 --variant plan --variant bitmap:format=bitmap --sparsities 0.7,0.8,0.9
    python -m dev.kernel_ab 1 16 --variant plan --variant stream:stream=1 --check stream --shapes 7168x7168
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import cupy as cp
import numpy as np

import flashllm_nb as fl
from dev.kernel_dev import OPT66B, check_correctness, pruned_copies
from flashllm_nb.bench.timing import copy_bandwidth, geometric_mean, time_batched
from flashllm_nb.kernels.spmm import driver
from flashllm_nb.kernels.spmm.config import (CLEAR_CHOICES, MMA_CHOICES, PREFETCH_CHOICES, STAGE_CHOICES,
                                             TICKET_CHOICES, TILE_N_CHOICES, WARP_CHOICES)
from flashllm_nb.kernels.spmm.plan import Force, plan, tile_n_for

_KEYS = {"mma": (str, MMA_CHOICES), "warps": (int, WARP_CHOICES), "clear": (str, CLEAR_CHOICES),
         "prefetch": (int, PREFETCH_CHOICES), "stages": (int, STAGE_CHOICES), "split": (int, None),
         "dependent": (int, (0, 1)), "ticket": (str, TICKET_CHOICES), "upto": (int, TILE_N_CHOICES),
         "format": (str, ("csl", "bitmap")), "blocks": (int, None), "stream": (int, (0, 1))}
_FORCE_FIELDS = {"mma": "mma", "warps": "warps", "clear": "clear", "prefetch": "prefetch_vectors",
                 "stages": "stages", "split": "split_k", "dependent": "grid_dependency", "ticket": "ticket",
                 "blocks": "blocks_per_sm", "stream": "stream_k"}


@dataclass
class Variant:
    name: str
    forced: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> "Variant":
        name, _, options = spec.partition(":")
        forced = {}
        for item in filter(None, options.split(",")):
            key, _, value = item.partition("=")
            if key not in _KEYS or not value:
                raise SystemExit(f"--variant {spec!r}: expected KEY=VALUE with KEY one of {sorted(_KEYS)}, "
                                 f"got {item!r}")
            kind, choices = _KEYS[key]
            try:
                forced[key] = kind(value)
            except ValueError:
                raise SystemExit(f"--variant {spec!r}: {key} must be {kind.__name__}, got {value!r}") from None
            if choices is not None and forced[key] not in choices:
                raise SystemExit(f"--variant {spec!r}: {key} must be one of {choices}, got {forced[key]!r}")
        return cls(name, forced)

    def force(self, n: int) -> Force | None:
        """What this variant fixes for a linear product of ``n`` columns (None: the plan decides everything)."""
        if tile_n_for(n) > self.forced.get("upto", 16):
            return None
        fixed = {_FORCE_FIELDS[key]: bool(value) if key in ("dependent", "stream") else value
                 for key, value in self.forced.items() if key in _FORCE_FIELDS}
        return Force(**fixed) if fixed else None


def compare(variants: list[Variant], ns, sparsities, shapes, check=()) -> None:
    """Check the variants named in ``check``, then time every variant per (N, sparsity, shape) and print the lines
    and geometric means described in the module docstring."""
    by_name = {v.name: v for v in variants}
    if len(by_name) != len(variants):
        raise SystemExit(f"variants: expected distinct names, got {[v.name for v in variants]}")
    print(cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), flush=True)
    for name in check:
        if name not in by_name:
            raise SystemExit(f"--check: expected one of {list(by_name)}, got {name!r}")
        check_correctness(np.random.default_rng(5), quick=False, force_for=by_name[name].force)
        print(f"correctness {name}: ok", flush=True)
    bandwidth = copy_bandwidth() * 1e9  # bytes/s
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s", flush=True)
    rng = cp.random.default_rng(0)
    for n in ns:
        for s in sparsities:
            ratios = {v.name: [] for v in variants}
            bounds = {v.name: [] for v in variants}
            for m, k in shapes:
                dense = rng.standard_normal((m, k), dtype=cp.float32).astype(cp.float16)
                csl = pruned_copies(rng, dense, s)
                x = rng.standard_normal((n, k), dtype=cp.float32).astype(cp.float16)
                y = cp.empty((n, m), cp.float16)
                t_dense = time_batched([lambda: cp.matmul(x, dense.T, out=y)] * 8)
                line = f"N={n} {s:.0%} {m}x{k}: cuBLAS {t_dense * 1e3:.1f} us"
                timed = {}  # per variant, the matrices it timed on this (the last) shape
                for v in variants:
                    matrices = timed[v.name] = bitmap_copies(csl, x) if v.forced.get("format") == "bitmap" else csl
                    nbytes = matrices[0].words.nbytes + matrices[0].tile_offsets.nbytes + 2 * n * (m + k)
                    t_bound = nbytes / bandwidth * 1e3  # ms
                    force = v.force(n)
                    t = time_batched([lambda a=a: fl.linear(x, a, out=y, force=force) for a in matrices] * 8)
                    ratios[v.name].append(t_dense / t)
                    bounds[v.name].append(t_bound / t)
                    line += f"  {v.name} {t * 1e3:.1f} ({t_dense / t:.3f}x, {t_bound / t:.2f} bound)"
                print(line, flush=True)
            print(f"GEOMEAN N={n} {s:.0%}: " + "  ".join(
                f"{name} {geometric_mean(ratios[name]):.3f}x ({geometric_mean(bounds[name]):.3f} bound)"
                for name in ratios), flush=True)
            for v in variants:
                a = timed[v.name][0]  # the last layer's, as planned for its timing
                tile_vectors = a.mean_tile_vectors
                p = plan(m, n, k, "float16", "nk", tile_vectors=tile_vectors, force=v.force(n),
                         sparse=a.sparse_format)
                registers, _ = driver.kernel_resources(p.config)
                print(f"  {v.name} N={n} {s:.0%} {m}x{k} ({tile_vectors} vectors per tile): {p.config}, "
                      f"{registers} registers, {driver.blocks_per_sm(p.config, p.shared_bytes)} blocks/SM, "
                      f"grid {p.grid}" + (" stream-K" if p.config.stream_k else f", {p.splits} splits"), flush=True)


def bitmap_copies(matrices, x):
    """The Tiled-CSL ``matrices`` in Tiled-Bitmap, each product on ``x`` first checked against the CSL one's (the
    same entries: equal up to the order of the fp32 sums, which split-K may change)."""
    copies = []
    for a in matrices:
        b = fl.TiledBitmap.from_dense(a.to_dense())
        want = fl.linear(x, a).astype(cp.float32)
        got = fl.linear(x, b).astype(cp.float32)
        scale = float(cp.abs(want).max()) or 1.0
        worst = float(cp.abs(got - want).max()) / scale
        if not worst <= 2e-3:  # NaN fails too
            raise SystemExit(f"Tiled-Bitmap product differs from Tiled-CSL's by {worst:.2e} of the largest value")
        copies.append(b)
    return copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ns", nargs="*", type=int, default=[16])
    ap.add_argument("--variant", action="append", required=True, help="NAME[:KEY=VALUE,...]")
    ap.add_argument("--sparsities", default="0.8,0.9")
    ap.add_argument("--shapes", default=",".join(f"{m}x{k}" for m, k in OPT66B))
    ap.add_argument("--check", default="", help="variants to check for correctness first, comma-separated")
    args = ap.parse_args()
    compare([Variant.parse(s) for s in args.variant], args.ns, [float(s) for s in args.sparsities.split(",")],
            [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")],
            [name for name in args.check.split(",") if name])


if __name__ == "__main__":
    main()
