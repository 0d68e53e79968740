"""Tensor-Core path A/B: ``linear`` with the plan's instruction and block size forced to each variant, cuBLAS beside.

    python bench/mma_ab.py [N ...] [--variants sync,wgmma4,wgmma8] [--sparsities 0.7,0.8,0.9] [--shapes MxK,...]
                           [--check]

Variants: ``sync`` (ldmatrix + mma.sync, 4 warps), ``wgmma`` (the plan's warps: ``launch.warps_for``), ``wgmma4`` and
``wgmma8`` (4 or 8 warps per block). Every variant times the same matrices in the same process, rotated past the L2
(``dev_kernel.time_batched``: calls queued behind a spin kernel, so launch cost is hidden); per layer and as the
geometric mean over the layers, with the fraction of the Tiled-CSL bandwidth bound (copy bandwidth measured in the
same run). ``--check`` first runs ``dev_kernel.check_correctness`` on every variant. wgmma needs an sm_90 GPU.

The variants are forced by replacing ``launch.mma_for`` and ``launch.warps_for`` in this process (and clearing the
plan cache and the remembered launches): a benchmark's override, not an API.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_kernel import OPT66B, check_correctness, copy_bandwidth, pruned_copies, time_batched  # noqa: E402

import flashllm_nb as fl  # noqa: E402
from flashllm_nb.kernels import api  # noqa: E402
from flashllm_nb.kernels import launch  # noqa: E402

_PLAN_WARPS = launch.warps_for


def use(variant: str) -> None:
    """Make every later plan of this process take ``variant`` for "nk" products ("kn" keeps mma.sync)."""
    mma = "sync" if variant == "sync" else "wgmma"
    warps = {"wgmma4": 4, "wgmma8": 8}.get(variant)
    launch.mma_for = lambda x_layout: mma if x_layout == "nk" else "sync"
    launch.warps_for = (lambda m, tile_n: warps if m == "wgmma" and warps else _PLAN_WARPS(m, tile_n))
    launch.plan.cache_clear()
    api._fast_calls = api._FastCalls()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ns", nargs="*", type=int, default=[16])
    ap.add_argument("--variants", default="sync,wgmma")
    ap.add_argument("--sparsities", default="0.7,0.8,0.9")
    ap.add_argument("--shapes", default=",".join(f"{m}x{k}" for m, k in OPT66B))
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    variants = args.variants.split(",")
    for v in variants:
        if v not in ("sync", "wgmma", "wgmma4", "wgmma8"):
            raise SystemExit(f"--variants: expected sync, wgmma, wgmma4 or wgmma8, got {v!r}")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    print(cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), flush=True)
    if args.check:
        for v in variants:
            use(v)
            check_correctness(np.random.default_rng(5), quick=False)
            print(f"correctness {v}: ok", flush=True)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s", flush=True)
    rng = cp.random.default_rng(0)
    for n in args.ns:
        for s in sparsities:
            ratios = {v: [] for v in variants}
            bounds = {v: [] for v in variants}
            for m, k in shapes:
                dense = rng.standard_normal((m, k), dtype=cp.float32).astype(cp.float16)
                matrices = pruned_copies(rng, dense, s)
                x = rng.standard_normal((n, k), dtype=cp.float32).astype(cp.float16)
                y = cp.empty((n, m), cp.float16)
                t_dense = time_batched([lambda: cp.matmul(x, dense.T, out=y)] * 8)
                nbytes = matrices[0].words.nbytes + matrices[0].tile_offsets.nbytes + 2 * n * (m + k)
                t_bound = nbytes / bandwidth * 1e3  # ms
                line = f"N={n} {s:.0%} {m}x{k}: cuBLAS {t_dense * 1e3:.1f} us"
                for v in variants:
                    use(v)
                    t = time_batched([lambda a=a: fl.linear(x, a, out=y) for a in matrices] * 8)
                    ratios[v].append(t_dense / t)
                    bounds[v].append(t_bound / t)
                    line += f"  {v} {t * 1e3:.1f} ({t_dense / t:.2f}x, {t_bound / t:.2f} bound)"
                print(line, flush=True)
            geo = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs))  # noqa: E731
            print(f"GEOMEAN N={n} {s:.0%}: " + "  ".join(
                f"{v} {geo(ratios[v]):.2f}x (bound {geo(bounds[v]):.2f})" for v in variants), flush=True)
        for v in variants:
            use(v)
            p = launch.plan(shapes[0][0], n, shapes[0][1], "float16", "nk")
            kernel = launch._compiled(p.config)
            print(f"{v} N={n}: {p.config.warps} warps, {kernel.numba_kernel.regs_per_thread} registers, "
                  f"{p.shared_bytes} B shared, {kernel.blocks_per_sm(p.shared_bytes)} blocks/SM, {p.splits} splits")


if __name__ == "__main__":
    main()
