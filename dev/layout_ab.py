"""A/B of the Tiled-CSL entry order inside a tile: the canonical bank-interleaved layout against row-major order
(Flash-LLM's), same matrices, same kernel, one run, cuBLAS beside them.

    python -m dev.layout_ab [--shape M,K ...] [--n N ...] [--sparsity S ...]

The kernel reads any order correctly (it only needs padding at the end of each tile); the layout only changes how
many shared-memory bank conflicts its scatter stores meet. The row-major matrix is built with the constructor,
which runs only the cheap format checks, because ``from_raw`` accepts the canonical order alone. Every result is
compared bit for bit between the two orders (the same sums in the same order). Without a GPU it runs one small
case in Numba's CUDA simulator and checks that, without timing anything.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from flashllm_nb._runtime import use_simulator_if_no_gpu


def row_major(A, xp):
    """The same matrix with each tile's entries in row-major order, padding at the end of the tile."""
    from flashllm_nb.formats import tiled_csl as T
    from flashllm_nb.formats.tiled_csl.decode import entries

    tiles, index, values = entries(xp, A.words, A.tile_offsets)
    keys = tiles.astype(np.int64) * T.TILE_SIZE + index.astype(np.int64)
    order = xp.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    starts = xp.searchsorted(keys, xp.arange(A.n_tiles + 1, dtype=np.int64) * T.TILE_SIZE)
    tile = keys >> 13
    words = xp.zeros_like(A.words)
    first_word = T.VECTOR_WORDS * A.tile_offsets[tile].astype(np.int64)
    words[first_word + xp.arange(keys.size) - starts[tile]] = (
        T.swizzle(keys & (T.TILE_SIZE - 1)).astype(np.uint32) << 16) | values.astype(np.uint32)
    return T.TiledCSL(words, A.tile_offsets, A.shape, A.dtype)


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
        W = rng.standard_normal((200, 150)).astype(np.float16)
        W[rng.random(W.shape) < 0.8] = 0
        A = fl.TiledCSL.from_dense(W)
        B = row_major(A, np)
        assert (B.to_dense() == W).all() and not np.array_equal(A.words, B.words)
        X = rng.standard_normal((5, 150)).astype(np.float16)
        assert np.array_equal(fl.linear(X, A).view(np.uint16), fl.linear(X, B).view(np.uint16))
        print("simulator: the row-major and bank-interleaved layouts give bit-identical products (nothing timed)")
        return 0

    import cupy as cp
    from flashllm_nb.bench.timing import copy_bandwidth, time_batched

    shapes = [tuple(map(int, s.split(","))) for s in args.shape] if args.shape else \
        [(27648, 9216), (9216, 9216), (36864, 9216), (9216, 36864)]
    print(f"{cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, copy bandwidth {copy_bandwidth():.0f} GB/s")
    for m, k in shapes:
        W0 = cp.asarray(rng.standard_normal((m, k), dtype=np.float32).astype(np.float16))
        for n in args.n:
            X = cp.asarray(rng.standard_normal((n, k), dtype=np.float32).astype(np.float16))
            Y = cp.empty((n, m), np.float16)
            t_dense = time_batched([lambda: cp.matmul(X, W0.T, out=Y)] * 8)
            for s in args.sparsity:
                W = W0.copy()
                W[cp.asarray(rng.random((m, k)) < s)] = 0
                A = fl.TiledCSL.from_dense(W)
                B = row_major(A, cp)
                assert bool(cp.all(fl.linear(X, A).view(cp.uint16) == fl.linear(X, B).view(cp.uint16)))
                t_a = time_batched([lambda: fl.linear(X, A, out=Y)] * 8)
                t_b = time_batched([lambda: fl.linear(X, B, out=Y)] * 8)
                print(f"{m}x{k} N={n} {s:.0%}: cuBLAS {t_dense * 1e3:6.1f} us | row-major {t_b * 1e3:6.1f} us "
                      f"{t_dense / t_b:.2f}x | bank-interleaved {t_a * 1e3:6.1f} us {t_dense / t_a:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
