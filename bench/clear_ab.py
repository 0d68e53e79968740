"""A/B of how the kernel returns an A buffer to zero between tiles: un-scattering the previous tile's positions
(kept in registers) against zeroing all 16 KiB, same matrices, one run, cuBLAS beside them.

    python bench/clear_ab.py [--shape M,K ...] [--n N ...] [--sparsity S ...]

Each variant gets its own plan (its registers change the blocks per SM, and with them the split-K choice); with the
same split-K factor both compute the same sums in the same order and their products are compared bit for bit,
otherwise each is checked against an fp32 product. Weights rotate over
enough copies to exceed the L2 cache. Without a GPU it runs one small case of both variants in Numba's CUDA
simulator and checks them against each other, without timing anything.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from flashllm_nb._runtime import use_simulator_if_no_gpu


def plan_with(m, n, k, unscatter: bool):
    """The library's plan for this shape, with the clearing variant forced."""
    from flashllm_nb.kernels import launch

    saved = launch.UNSCATTER_TILE_N
    launch.UNSCATTER_TILE_N = frozenset(launch.TILE_N_CHOICES) if unscatter else frozenset()
    launch.plan.cache_clear()
    try:
        return launch.plan(m, n, k, "float16", "nk")
    finally:
        launch.UNSCATTER_TILE_N = saved
        launch.plan.cache_clear()


def run(p, A, X, Y, xp):
    from flashllm_nb.kernels import launch

    m, k = A.shape
    n = X.shape[0]
    assert k % 8 == 0, "the kernel reads X rows of k values in 16-byte chunks (the library pads other k)"
    x = X if xp is not np else X.view(np.uint16).reshape(-1)
    y = Y if xp is not np else Y.view(np.uint16).reshape(-1)
    launch.launch(p, A.words, A.tile_offsets, x, k, y, None, m, n, k, A.n_tile_cols, xp)
    return Y


def main() -> int:
    simulated = use_simulator_if_no_gpu()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", action="append", help="M,K (default: the four OPT-66B layers)")
    ap.add_argument("--n", type=int, nargs="+", default=[16])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.7, 0.8, 0.9])
    args = ap.parse_args()
    import flashllm_nb as fl

    rng = np.random.default_rng(0)
    if simulated:
        W = rng.standard_normal((200, 448)).astype(np.float16)  # 7 k-tiles: buffers cleared five times
        W[rng.random(W.shape) < 0.85] = 0
        A = fl.TiledCSL.from_dense(W)
        X = rng.standard_normal((5, 448)).astype(np.float16)
        Y1, Y2 = np.empty((5, 200), np.float16), np.empty((5, 200), np.float16)
        run(plan_with(200, 5, 448, True), A, X, Y1, np)
        run(plan_with(200, 5, 448, False), A, X, Y2, np)
        assert np.array_equal(Y1.view(np.uint16), Y2.view(np.uint16))
        ref = X.astype(np.float64) @ W.astype(np.float64).T
        assert np.max(np.abs(Y1 - ref) / (np.abs(ref) + 1)) < 1e-2
        print("simulator: un-scatter and zero-fill give bit-identical products (nothing timed)")
        return 0
    import cupy as cp
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from dev_kernel import copy_bandwidth, time_batched

    shapes = [tuple(map(int, s.split(","))) for s in args.shape] if args.shape else \
        [(27648, 9216), (9216, 9216), (36864, 9216), (9216, 36864)]
    crng = cp.random.default_rng(0)  # masks drawn on the GPU: a host draw of 340M values takes seconds
    bw = copy_bandwidth()
    l2 = cp.cuda.runtime.getDeviceProperties(0)["l2CacheSize"]
    print(f"{cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, copy bandwidth {bw / 1e9:.0f} GB/s")
    for m, k in shapes:
        W0 = cp.asarray(rng.standard_normal((m, k), dtype=np.float32).astype(np.float16))
        for n in args.n:
            X = cp.asarray(rng.standard_normal((n, k), dtype=np.float32).astype(np.float16))
            Y = cp.empty((n, m), np.float16)
            t_dense = time_batched([lambda: cp.matmul(X, W0.T, out=Y)] * 8)
            p_un, p_zero = plan_with(m, n, k, True), plan_with(m, n, k, False)
            for s in args.sparsity:
                As = []
                for _ in range(max(2, math.ceil(3 * l2 / (4 * m * k * (1 - s))))):
                    W = W0.copy()
                    W[crng.random((m, k), dtype=cp.float32) < s] = 0
                    As.append(fl.TiledCSL.from_dense(W))
                Y1, Y2 = run(p_un, As[0], X, cp.empty_like(Y), cp), run(p_zero, As[0], X, cp.empty_like(Y), cp)
                if p_un.splits == p_zero.splits:  # the same sums in the same order
                    assert bool(cp.all(Y1.view(cp.uint16) == Y2.view(cp.uint16)))
                else:  # another split-K factor adds the partial sums in another order
                    ref = cp.matmul(X.astype(cp.float32), As[0].to_dense().astype(cp.float32).T)
                    for Yv in (Y1, Y2):
                        assert float(cp.max(cp.abs(Yv.astype(cp.float32) - ref) / (cp.abs(ref) + 1))) < 1e-2
                t_un = time_batched([lambda A=A: run(p_un, A, X, Y, cp) for A in As] * 8)
                t_zero = time_batched([lambda A=A: run(p_zero, A, X, Y, cp) for A in As] * 8)
                bound = (As[0].nbytes + 2 * n * (m + k)) / bw * 1e3
                print(f"{m}x{k} N={n} {s:.0%}: cuBLAS {t_dense * 1e3:6.1f} us | zero-fill {t_zero * 1e3:6.1f} us "
                      f"{t_dense / t_zero:.2f}x (splits {p_zero.splits}) | un-scatter {t_un * 1e3:6.1f} us "
                      f"{t_dense / t_un:.2f}x (splits {p_un.splits}) bound {bound / t_un:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
