"""The kernel against itself at an earlier commit, in one process: does a change of the kernel's source keep its
speed?

    python -m dev.kernel_vs_commit extract COMMIT            # here (needs git): the package at COMMIT, renamed
    python -m dev.kernel_vs_commit time [N ...] [--sparsities 0.7,0.8] [--shapes MxK,...]   # on the GPU

``extract`` writes the ``flashllm_nb`` package of ``COMMIT`` to ``.scratch/kernel_at/flashllm_at`` with every
``flashllm_nb`` in its sources renamed ``flashllm_at``, so that both versions import side by side (carry
``.scratch/kernel_at`` to the GPU machine). ``time`` then times, per OPT-66B layer shape, N and sparsity, on the same
pruned matrices (rotated past the L2, calls queued behind a spin kernel: ``flashllm_nb.bench.timing.time_batched``):
cuBLAS, the earlier commit's ``linear`` as its plan chooses, and today's ``linear`` as its plan chooses and with
each ``--force`` (``KEY=VALUE`` as in ``dev.kernel_ab``, e.g. ``dependent=0``: built without ``griddepcontrol``).
A ``--force`` applies to blocks of ``tile_n`` up to 16 unless it says ``upto=64``. Before timing, each product's
result is compared bit for bit with the earlier commit's (a difference is printed). It prints each time, the ratio
to the earlier commit, and the geometric mean of those ratios per (N, sparsity).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import subprocess
import sys
import tarfile
from pathlib import Path

PACKAGE = "flashllm_at"
DEFAULT_DIR = Path(".scratch/kernel_at")


def extract(commit: str, into: Path) -> None:
    """The package at ``commit`` under ``into / PACKAGE``, its self-imports renamed."""
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "flashllm_nb"], check=True,
                             capture_output=True).stdout
    target = into / PACKAGE
    if target.exists():
        raise SystemExit(f"extract: {target} exists; remove it first")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            path = target / Path(member.name).relative_to("flashllm_nb")
            path.parent.mkdir(parents=True, exist_ok=True)
            data = tar.extractfile(member).read()
            if path.suffix == ".py":
                data = data.replace(b"flashllm_nb", PACKAGE.encode())
            path.write_bytes(data)
    (into / "COMMIT").write_text(subprocess.run(["git", "rev-parse", commit], check=True, capture_output=True,
                                                text=True).stdout)
    print(f"{commit} -> {target}")


def import_extracted(into: Path):
    """The extracted package, imported from its folder (not through sys.path)."""
    init = into / PACKAGE / "__init__.py"
    if not init.exists():
        raise SystemExit(f"time: no extracted package at {init}; run `python -m dev.kernel_vs_commit extract "
                         f"COMMIT` first")
    spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def time_against(into: Path, ns, sparsities, shapes, forces: list[str]) -> None:
    import cupy as cp

    import flashllm_nb as fl
    from dev.kernel_ab import Variant
    from dev.kernel_dev import pruned_copies
    from flashllm_nb.bench.timing import geometric_mean, time_batched

    old = import_extracted(into)
    commit = (into / "COMMIT").read_text().strip()[:10]
    variants = [Variant("plan")] + [Variant.parse(f"force[{spec}]:{spec}") for spec in forces]
    print(cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), f"today against {commit}", flush=True)
    rng = cp.random.default_rng(0)
    for n in ns:
        for s in sparsities:
            ratios = {v.name: [] for v in variants}
            for m, k in shapes:
                dense = rng.standard_normal((m, k), dtype=cp.float32).astype(cp.float16)
                matrices = pruned_copies(rng, dense, s)
                olds = [old.TiledCSL.from_dense(a.to_dense()) for a in matrices]
                x = rng.standard_normal((n, k), dtype=cp.float32).astype(cp.float16)
                y = cp.empty((n, m), cp.float16)
                expected = old.linear(x, olds[0])
                for v in variants:
                    got = fl.linear(x, matrices[0], force=v.force(n))
                    if not cp.array_equal(got.view(cp.uint16), expected.view(cp.uint16)):
                        print(f"N={n} {s:.0%} {m}x{k}: today's {v.name} differs from {commit} in "
                              f"{int(cp.count_nonzero(got != expected))} values", flush=True)
                t_dense = time_batched([lambda: cp.matmul(x, dense.T, out=y)] * 8)
                t_old = time_batched([lambda a=a: old.linear(x, a, out=y) for a in olds] * 8)
                line = f"N={n} {s:.0%} {m}x{k}: cuBLAS {t_dense * 1e3:.1f} us, {commit} {t_old * 1e3:.1f} us"
                for v in variants:
                    force = v.force(n)
                    t = time_batched([lambda a=a: fl.linear(x, a, out=y, force=force) for a in matrices] * 8)
                    ratios[v.name].append(t_old / t)
                    line += f", {v.name} {t * 1e3:.1f} us ({t_old / t:.3f}x)"
                print(line, flush=True)
            print(f"GEOMEAN N={n} {s:.0%}, speed against {commit}: " + "  ".join(
                f"{name} {geometric_mean(r):.3f}x" for name, r in ratios.items()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="write the package at COMMIT, renamed, for `time`")
    ex.add_argument("commit")
    ex.add_argument("--into", type=Path, default=DEFAULT_DIR)
    tm = sub.add_parser("time", help="time today's kernel beside the extracted one (GPU)")
    tm.add_argument("ns", nargs="*", type=int, default=[16])
    tm.add_argument("--sparsities", default="0.7,0.8")
    tm.add_argument("--shapes", default=None, help="MxK,... (default: the OPT-66B layer shapes)")
    tm.add_argument("--force", action="append", default=[], help="KEY=VALUE[,...] as in dev.kernel_ab")
    tm.add_argument("--into", type=Path, default=DEFAULT_DIR)
    args = ap.parse_args()
    if args.command == "extract":
        extract(args.commit, args.into)
        return
    from dev.kernel_dev import OPT66B

    shapes = OPT66B if args.shapes is None else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    time_against(args.into, args.ns, [float(s) for s in args.sparsities.split(",")], shapes, args.force)


if __name__ == "__main__":
    main()
