"""Kernel A/B in one process: the SpMM kernel module and its plan, each variant beside the others and cuBLAS.

    python bench/kernel_ab.py [N ...] --variant SPEC [--variant SPEC ...] [--sparsities 0.8,0.9]
                              [--shapes MxK,...] [--check NAME,...]

A variant is ``NAME[@MODULE.py][:KEY=VALUE,...]``:

* ``MODULE.py``: a copy of ``flashllm_nb/kernels/spmm_tiled_csl.py`` with a change to measure (a development
  file, not committed); without it the installed module. Its ``build_kernel`` and the names ``launch`` imports from
  the module replace the installed ones while the variant runs.
* ``KEY=VALUE``: the plan's choices forced for ``linear`` products (X as (N, K), the ones timed here; ``spmm``
  keeps its plan): ``mma`` (sync, wgmma) for every block width, ``warps`` (4, 8), ``clear`` (rows, entries),
  ``prefetch`` (256 .. 640) and ``stages`` (2, 4) for blocks of ``tile_n`` up to ``upto`` (16 unless given).
  ``stages=2`` applies only where ``two_stages_built`` allows it; values are checked against the module's
  ``*_CHOICES``.

Every variant times the same pruned matrices (rotated past the L2, calls queued behind a spin kernel:
``dev_kernel.time_batched``) per OPT-66B layer and as the geometric mean over the layers, with the fraction of the
Tiled-CSL bandwidth bound (copy bandwidth measured in the same run). ``--check`` first runs
``dev_kernel.check_correctness`` with the named variants (N = 1 to 256, both layouts, fp16 and bf16, split-K).

Example (the eleventh session's zero-first A/B)::

    python bench/kernel_ab.py 16 8 --variant head@/tmp/head_spmm.py --variant new --sparsities 0.85,0.9,0.95
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_kernel import OPT66B, check_correctness, copy_bandwidth, pruned_copies, time_batched  # noqa: E402

import flashllm_nb as fl  # noqa: E402
from flashllm_nb.kernels import api, launch  # noqa: E402
from flashllm_nb.kernels import spmm_tiled_csl as installed  # noqa: E402

# What launch.py imports from the kernel module, swapped per variant.
_MODULE_NAMES = ("MMA_CHOICES", "TILE_M", "TILE_N_CHOICES", "SpmmConfig", "build_kernel", "kernel_signature",
                 "two_stages_built")
_PLAN_FUNCTIONS = ("mma_for", "warps_for", "clear_for", "prefetch_for", "stages_for")
_ORIGINAL = {name: getattr(launch, name) for name in _MODULE_NAMES + _PLAN_FUNCTIONS}
_ORIGINAL_COMPILED = launch._compiled
_ORIGINAL_PLAN = launch.plan.__wrapped__
_KEYS = {"mma": str, "warps": int, "clear": str, "prefetch": int, "stages": int, "upto": int}
# Which product the plan is choosing for: the forced choices apply to "nk" (linear) plans only.
_PLANNING = {"x_layout": None}


@dataclass
class Variant:
    name: str
    module: object
    forced: dict = field(default_factory=dict)
    compiled: object = None  # this variant's own cache of compiled kernels

    @classmethod
    def parse(cls, spec: str) -> "Variant":
        head, _, options = spec.partition(":")
        name, _, path = head.partition("@")
        module = installed
        if path:
            source = Path(path)
            if not source.is_file():
                raise SystemExit(f"--variant {spec!r}: expected a kernel module file after '@', got {path!r}")
            loader = importlib.util.spec_from_file_location(f"kernel_ab_{name}", source)
            module = importlib.util.module_from_spec(loader)
            sys.modules[loader.name] = module  # dataclasses look their module up there
            loader.loader.exec_module(module)
        forced = {}
        for item in filter(None, options.split(",")):
            key, _, value = item.partition("=")
            if key not in _KEYS or not value:
                raise SystemExit(f"--variant {spec!r}: expected KEY=VALUE with KEY one of {sorted(_KEYS)}, "
                                 f"got {item!r}")
            try:
                forced[key] = _KEYS[key](value)
            except ValueError:
                raise SystemExit(f"--variant {spec!r}: {key} must be {_KEYS[key].__name__}, got {value!r}") from None
            choices = {"mma": module.MMA_CHOICES, "warps": module.WARP_CHOICES, "clear": module.CLEAR_CHOICES,
                       "prefetch": module.PREFETCH_CHOICES, "stages": module.STAGE_CHOICES,
                       "upto": module.TILE_N_CHOICES}[key]
            if forced[key] not in choices:
                raise SystemExit(f"--variant {spec!r}: {key} must be one of {choices}, got {forced[key]!r}")
        return cls(name, module, forced)


def use(v: Variant) -> None:
    """Make every later plan and launch of this process take variant ``v``."""
    for name in _MODULE_NAMES:
        setattr(launch, name, getattr(v.module, name))
    forced, upto = v.forced, v.forced.get("upto", 16)

    def forced_for(key, tile_n, chosen):
        narrow = _PLANNING["x_layout"] == "nk" and tile_n <= upto
        return forced[key] if key in forced and narrow else chosen

    def stages_for(mma, tile_n, clear, prefetch):
        stages = forced_for("stages", tile_n, _ORIGINAL["stages_for"](mma, tile_n, clear, prefetch))
        two_ok = v.module.two_stages_built(mma, launch.warps_for(mma, tile_n), tile_n, clear, prefetch)
        return stages if stages != 2 or two_ok else 4

    # The plan's own functions, each replaced by one that returns the forced value for linear products (and narrow
    # enough blocks); plan() says which product it is choosing for.
    launch.mma_for = lambda x_layout: (forced.get("mma", _ORIGINAL["mma_for"](x_layout)) if x_layout == "nk"
                                       else _ORIGINAL["mma_for"](x_layout))
    launch.warps_for = lambda mma, t: forced_for("warps", t, _ORIGINAL["warps_for"](mma, t))
    launch.clear_for = lambda mma, w, t, tv: forced_for("clear", t, _ORIGINAL["clear_for"](mma, w, t, tv))
    launch.prefetch_for = lambda w, t, tv, c="rows": forced_for("prefetch", t, _ORIGINAL["prefetch_for"](w, t, tv, c))
    launch.stages_for = stages_for
    if v.compiled is None:
        v.compiled = functools.cache(_ORIGINAL_COMPILED.__wrapped__)
    launch._compiled = v.compiled
    launch.plan = _plan
    launch.plan.cache_clear()
    api._fast_calls = api._FastCalls()


@functools.lru_cache(maxsize=1024)
def _plan(m, n, k, dtype, x_layout, *args, **kwargs):
    """launch.plan, telling the forced choices which product it plans."""
    _PLANNING["x_layout"] = x_layout
    try:
        return _ORIGINAL_PLAN(m, n, k, dtype, x_layout, *args, **kwargs)
    finally:
        _PLANNING["x_layout"] = None



def geomean(xs):
    return math.exp(sum(map(math.log, xs)) / len(xs))


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
        use(by_name[name])
        check_correctness(np.random.default_rng(5), quick=False)
        print(f"correctness {name}: ok", flush=True)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s", flush=True)
    rng = cp.random.default_rng(0)
    for n in ns:
        for s in sparsities:
            ratios = {v.name: [] for v in variants}
            bounds = {v.name: [] for v in variants}
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
                    ratios[v.name].append(t_dense / t)
                    bounds[v.name].append(t_bound / t)
                    line += f"  {v.name} {t * 1e3:.1f} ({t_dense / t:.3f}x, {t_bound / t:.2f} bound)"
                print(line, flush=True)
            print(f"GEOMEAN N={n} {s:.0%}: " + "  ".join(
                f"{name} {geomean(ratios[name]):.3f}x ({geomean(bounds[name]):.3f} bound)" for name in ratios),
                flush=True)
            tile_vectors = matrices[0].mean_tile_vectors  # the last layer's, as planned for its timing
            for v in variants:
                use(v)
                p = launch.plan(m, n, k, "float16", "nk", tile_vectors=tile_vectors)
                kernel = launch._compiled(p.config)
                print(f"  {v.name} N={n} {s:.0%} {m}x{k} ({tile_vectors} vectors per tile): {p.config}, "
                      f"{kernel.numba_kernel.regs_per_thread} registers, {kernel.blocks_per_sm(p.shared_bytes)} "
                      f"blocks/SM, {p.splits} splits", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ns", nargs="*", type=int, default=[16])
    ap.add_argument("--variant", action="append", required=True, help="NAME[@MODULE.py][:KEY=VALUE,...]")
    ap.add_argument("--sparsities", default="0.8,0.9")
    ap.add_argument("--shapes", default=",".join(f"{m}x{k}" for m, k in OPT66B))
    ap.add_argument("--check", default="", help="variants to check for correctness first, comma-separated")
    args = ap.parse_args()
    compare([Variant.parse(s) for s in args.variant], args.ns, [float(s) for s in args.sparsities.split(",")],
            [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")],
            [name for name in args.check.split(",") if name])


if __name__ == "__main__":
    main()
