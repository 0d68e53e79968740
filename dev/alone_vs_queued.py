"""What a kernel call costs alone against queued behind its predecessor, for cuBLAS, this kernel and a memcpy.

    python -m dev.alone_vs_queued [--n 16] [--sparsity 0.9] [--shapes 9216x9216,27648x9216]

"queued" is ``flashllm_nb.bench.timing.time_batched`` (the A/B tools: calls back to back behind a spin kernel, one
event pair); "alone" is the sweep's ``timing.time_calls`` (spin kernel, event, call, event). Both rotate over
the same weight copies (pruned Tiled-CSL copies past the L2; three dense copies for cuBLAS). The rows: cuBLAS fp16,
``linear`` as planned, ``linear`` with ``split_k=1``, and a device-to-device ``cudaMemcpy`` of the words. Needs a GPU.
"""

from __future__ import annotations

import argparse

import cupy as cp

from dev.kernel_dev import pruned_copies

import flashllm_nb as fl
from flashllm_nb.bench.timing import time_batched, time_calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--shapes", default="9216x9216,27648x9216")
    args = ap.parse_args()
    print(cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), flush=True)
    rng = cp.random.default_rng(0)
    for shape in args.shapes.split(","):
        m, k = (int(v) for v in shape.split("x"))
        dense = rng.standard_normal((m, k), dtype=cp.float32).astype(cp.float16)
        matrices = pruned_copies(rng, dense, args.sparsity)
        dense_copies = [dense] + [dense.copy() for _ in range(2)]
        x = rng.standard_normal((args.n, k), dtype=cp.float32).astype(cp.float16)
        y = cp.empty((args.n, m), cp.float16)
        size = min(a.words.size for a in matrices)
        dst = cp.empty(size, matrices[0].words.dtype)
        cases = {
            "cuBLAS": [lambda w=w: cp.matmul(x, w.T, out=y) for w in dense_copies],
            "linear, planned": [lambda a=a: fl.linear(x, a, out=y) for a in matrices],
            "linear, split_k=1": [lambda a=a: fl.linear(x, a, out=y, split_k=1) for a in matrices],
            "memcpy of the words": [lambda a=a: dst.data.copy_from_device_async(a.words.data, dst.nbytes)
                                    for a in matrices],
        }
        print(f"{m}x{k} N={args.n} {args.sparsity:.0%}", flush=True)
        for name, calls in cases.items():
            queued = time_batched(calls * 8) * 1e3
            alone = time_calls(calls, reps=100, warmup=10).stats.median * 1e3
            print(f"  {name:20s} queued {queued:7.1f} us  alone {alone:7.1f} us  (+{alone - queued:.1f})", flush=True)


if __name__ == "__main__":
    main()
