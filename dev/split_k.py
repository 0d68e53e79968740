"""The split-K factor the plan chooses against forced ones, on one shape, cuBLAS beside them.

    python -m dev.split_k M K N SPARSITY [SPLIT ...]       e.g. python -m dev.split_k 36864 9216 16 0.8 2 4 9

Times ``linear(X, A, out=Y, split_k=s)`` for the plan's choice (``split_k=None``) and each forced factor, and cuBLAS
on the dense matrix, each with the weights rotated over enough copies to exceed the L2 cache
(``flashllm_nb.bench.timing.time_batched``). For tuning the split-K model in
``flashllm_nb.kernels.spmm.plan.choose_splits``. Needs a GPU.
"""

from __future__ import annotations

import sys


def main() -> int:
    if len(sys.argv) < 5:
        print(__doc__)
        return 2
    try:
        import cupy as cp

        cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no CUDA device
        print(f"split_k: needs a GPU ({type(exc).__name__})")
        return 0
    import flashllm_nb as fl
    from dev.kernel_dev import pruned_copies
    from flashllm_nb.bench.timing import rotation_count, time_batched
    from flashllm_nb.kernels.spmm import driver
    from flashllm_nb.kernels.spmm.plan import plan

    m, k, n, sparsity = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    splits = [int(a) for a in sys.argv[5:]]
    rng = cp.random.default_rng(0)
    W0 = rng.standard_normal((m, k), dtype=cp.float32).astype(cp.float16)
    As = pruned_copies(rng, W0, sparsity)
    X = rng.standard_normal((n, k), dtype=cp.float32).astype(cp.float16)
    Y = cp.empty((n, m), cp.float16)
    l2 = cp.cuda.runtime.getDeviceProperties(0)["l2CacheSize"]
    dense = [W0] + [W0.copy() for _ in range(rotation_count(W0.nbytes, l2) - 1)]
    t_dense = time_batched([lambda W=W: cp.matmul(X, W.T, out=Y) for W in dense] * 8)
    del dense
    p = plan(m, n, k, "float16", "nk", tile_vectors=As[0].mean_tile_vectors)  # the plan linear() makes
    print(f"{cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}: {m}x{k} N={n} {sparsity:.0%}: cuBLAS "
          f"{t_dense * 1e3:.1f} us; the plan splits {p.splits} ways, "
          f"{driver.blocks_per_sm(p.config, p.shared_bytes)} blocks/SM")
    for split_k in [None] + splits:
        t = time_batched([lambda A=A: fl.linear(X, A, out=Y, split_k=split_k) for A in As] * 8)
        print(f"  split_k={split_k}: {t * 1e3:.1f} us {t_dense / t:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
