"""Tensor-Core path A/B: ``linear`` with the plan's instruction and block size forced to each variant, cuBLAS beside.

    python bench/mma_ab.py [N ...] [--variants sync,wgmma4,wgmma8] [--sparsities 0.7,0.8,0.9] [--shapes MxK,...]
                           [--check]

Variants: ``sync`` (ldmatrix + mma.sync, 4 warps), ``wgmma`` (the plan's warps: ``launch.warps_for``), ``wgmma4`` and
``wgmma8`` (4 or 8 warps per block, every tile_n). The earlier sessions' commands in ``bench/RESULTS.md`` use this
form; it is ``bench/kernel_ab.py`` with these variants spelled as plan overrides (``sync`` = ``:mma=sync``,
``wgmma8`` = ``:mma=wgmma,warps=8,upto=64``), which also loads changed kernel modules. wgmma needs an sm_90 GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_kernel import OPT66B  # noqa: E402
from kernel_ab import Variant, compare  # noqa: E402

SPECS = {"sync": "sync:mma=sync", "wgmma": "wgmma:mma=wgmma", "wgmma4": "wgmma4:mma=wgmma,warps=4,upto=64",
         "wgmma8": "wgmma8:mma=wgmma,warps=8,upto=64"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ns", nargs="*", type=int, default=[16])
    ap.add_argument("--variants", default="sync,wgmma")
    ap.add_argument("--sparsities", default="0.7,0.8,0.9")
    ap.add_argument("--shapes", default=",".join(f"{m}x{k}" for m, k in OPT66B))
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    names = args.variants.split(",")
    for name in names:
        if name not in SPECS:
            raise SystemExit(f"--variants: expected some of {', '.join(SPECS)}, got {name!r}")
    compare([Variant.parse(SPECS[name]) for name in names], args.ns, [float(s) for s in args.sparsities.split(",")],
            [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")], names if args.check else ())


if __name__ == "__main__":
    main()
