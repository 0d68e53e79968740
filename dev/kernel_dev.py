"""Kernel development loop for one GPU call: check, inspect and time the SpMM kernel beside cuBLAS in one run.

    python -m dev.kernel_dev [--quick] [--no-check] [--warps 4 8] [--n 8 16]

1. correctness: ``linear`` and ``spmm`` on fresh random inputs (ragged shapes, N = 1..256, fp16 and bf16, split-K on
   and off, fully dense and empty tiles) against the float64 reference, element by element;
2. resources: registers, shared memory and local memory of every compiled configuration;
3. timing: OPT-66B layer shapes at N = 16 (and more with the full run), 70/80/90 % sparsity, against cuBLAS fp16
   timed in the same run, with the device copy bandwidth and the fraction of the bandwidth bound.

Kernel-only times are ``flashllm_nb.bench.timing.time_batched``'s (CUDA events around back-to-back launches
queued behind a spin kernel), so the Python launch cost (which the ``launch`` column reports separately, from
``timing.time_enqueue``) does not leak into the kernel time. Weights rotate over enough copies to exceed the L2
cache.
"""

from __future__ import annotations

import argparse
import warnings
import math
import sys
import time

import cupy as cp
import numpy as np
import flashllm_nb as fl
from flashllm_nb.bench.timing import copy_bandwidth, geometric_mean, time_batched, time_enqueue
from flashllm_nb.kernels.spmm import driver
from flashllm_nb.kernels.spmm.plan import Force, plan

OPT66B = [(27648, 9216), (9216, 9216), (36864, 9216), (9216, 36864)]


def check_correctness(rng, quick, force_for=lambda n: None):
    """linear and spmm on fresh random inputs against the float64 reference, element by element; ``force_for(n)``
    gives the plan's forced choices for a linear product of n columns (spmm keeps the plan's). Each product runs with
    the plan's split-K and forced to 1 and 3 splits, except where the force is stream-K, which takes no factor."""
    import ml_dtypes

    from flashllm_nb.reference import linear_reference, spmm_reference
    from flashllm_nb.reference.spmm import abs_product
    from flashllm_nb.reference.tolerance import assert_close_to_reference

    cases = [
        (1, 1, 1), (130, 72, 5), (300, 200, 40), (1000, 777, 16), (4096, 4096, 16), (256, 512, 256), (129, 4160, 1),
    ]
    if quick:
        cases = cases[:5]
    for dtype in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)):
        products = 0
        for m, k, n in cases:
            forced = force_for(n)
            split_ks = (None,) if forced is not None and forced.stream_k else (None, 1, 3)
            # 0.8: the densest matrices that clear by entries on Hopper (the 512-vector buffer, which fences before
            # its word loads); 0.9: the sparse configurations (two stages at N 9-16).
            for sparsity in (0.0, 0.5, 0.8, 0.9, 1.0):
                W = rng.standard_normal((m, k)).astype(np.float32)
                W[rng.random((m, k)) < sparsity] = 0
                if m >= 256 and k >= 128:
                    W[:128, :64] = rng.standard_normal((128, 64))  # one fully dense tile
                    W[128:256, 64:128] = 0  # one empty tile
                W = W.astype(dtype)
                A = fl.TiledCSL.from_dense(W)
                Ad = A.to_device()
                for split_k in split_ks:
                    X = rng.standard_normal((n, k)).astype(dtype)
                    Xd = _to_device(X)
                    Y = _to_host(fl.linear(Xd, Ad, split_k=split_k, force=forced), dtype)
                    assert_close_to_reference(Y, linear_reference(X, A), abs_product(X, W.T), k, dtype,
                                              what=f"linear {m}x{k} N={n} {dtype} s={sparsity} split={split_k}")
                    Xt = np.ascontiguousarray(X.T)
                    Z = _to_host(fl.spmm(Ad, _to_device(Xt), split_k=split_k), dtype)
                    assert_close_to_reference(Z, spmm_reference(A, Xt), abs_product(W, Xt), k, dtype,
                                              what=f"spmm {m}x{k} N={n} {dtype} s={sparsity} split={split_k}")
                    products += 2
        print(f"correctness {dtype}: {products} products within the bound", flush=True)


def _to_device(x):
    import ml_dtypes

    if x.dtype == ml_dtypes.bfloat16:
        import torch

        return torch.from_numpy(x.view(np.int16)).cuda().view(torch.bfloat16)
    return cp.asarray(x)


def _to_host(y, dtype):
    if type(y).__module__.startswith("torch"):
        import torch

        return y.view(torch.int16).cpu().numpy().view(dtype)
    return cp.asnumpy(y)


def report_resources(plans):
    """Registers, local memory and resident blocks per SM of each plan this run used."""
    for p in sorted(set(plans), key=str):
        registers, local_bytes = driver.kernel_resources(p.config)
        print(f"  {p.config} grid {p.grid}: {registers} registers, {local_bytes} B local, {p.shared_bytes} B shared, "
              f"{driver.blocks_per_sm(p.config, p.shared_bytes)} blocks/SM")


def pruned_copies(rng, dense, sparsity):
    """Tiled-CSL copies of ``dense`` (CuPy fp16), each pruned at random to ``sparsity``, enough of them that their
    words together are three times the L2: timing them in turn reads every call's weights from DRAM."""
    m, k = dense.shape
    l2 = cp.cuda.runtime.getDeviceProperties(0)["l2CacheSize"]
    copies = []
    for _ in range(max(2, math.ceil(3 * l2 / (4 * m * k * (1 - sparsity))))):
        w = dense.copy()
        w[rng.random((m, k), dtype=cp.float32) < sparsity] = 0
        copies.append(fl.TiledCSL.from_dense(w))
    return copies


def time_shapes(rng, shapes, ns, sparsities, bw, rows, plans, force=None):
    """Time ``linear`` (with the plan's choices fixed by ``force``) beside cuBLAS per shape, N and sparsity."""
    l2 = cp.cuda.runtime.getDeviceProperties(0)["l2CacheSize"]
    for (m, k) in shapes:
        dense = [cp.asarray(rng.standard_normal((m, k), dtype=np.float32).astype(np.float16))
                 for _ in range(max(2, math.ceil(3 * l2 / (2 * m * k))))]
        for n in ns:
            X = cp.asarray(rng.standard_normal((n, k), dtype=np.float32).astype(np.float16))
            Y = cp.empty((n, m), np.float16)
            t_dense = time_batched([lambda W=W: cp.matmul(X, W.T, out=Y) for W in dense] * 8)
            for s in sparsities:
                As = []
                for W in dense[: max(2, math.ceil(3 * l2 / (2 * m * k * (1 - s) * 2)))]:
                    Wp = W.copy()
                    Wp[cp.asarray(rng.random((m, k)) < s)] = 0
                    As.append(fl.TiledCSL.from_dense(Wp))
                Ys = fl.linear(X, As[0], force=force)
                ref = cp.matmul(X.astype(np.float32), fl.TiledCSL.to_dense(As[0]).astype(np.float32).T)
                err = float(cp.max(cp.abs(Ys.astype(np.float32) - ref)) / cp.max(cp.abs(ref)))
                t_sparse = time_batched([lambda A=A: fl.linear(X, A, out=Ys, force=force) for A in As] * 8)
                host = time_enqueue(lambda: fl.linear(X, As[0], out=Ys, force=force))
                bytes_sparse = As[0].nbytes + 2 * n * (m + k)
                bound = bytes_sparse / bw
                p = plan(m, n, k, "float16", "nk", tile_vectors=As[0].mean_tile_vectors, force=force)
                plans.append(p)
                rows.append(dict(m=m, k=k, n=n, s=s, dense_ms=t_dense, sparse_ms=t_sparse, speedup=t_dense / t_sparse,
                                 frac_bound=bound * 1e3 / t_sparse, launch_us=host * 1e6, err=err,
                                 tile_n=p.config.tile_n, splits=p.splits, warps=p.config.warps))
                r = rows[-1]
                print(f"{m:>6}x{k:<6} N={n:<4} {s:.0%}: cuBLAS {t_dense * 1e3:7.1f} us  sparse {t_sparse * 1e3:7.1f} us "
                      f" {r['speedup']:.2f}x  bound {r['frac_bound']:.2f}  launch {r['launch_us']:.1f} us  "
                      f"tile_n {r['tile_n']} splits {r['splits']}  rel.err {err:.1e}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--warps", type=int, nargs="+", default=None,
                    help="warps per block to force (default: the plan's choice, as users get it)")
    ap.add_argument("--n", type=int, nargs="+", default=None, help="token counts to time (default 16 with --quick, "
                    "else 8 16 32 64)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # Numba's low-occupancy warning for the small correctness cases
    rng = np.random.default_rng(int(time.time()))
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"device: {name}", flush=True)
    if not args.no_check:
        check_correctness(rng, args.quick)
    bw = copy_bandwidth() * 1e9  # bytes/s
    print(f"copy bandwidth: {bw / 1e9:.0f} GB/s", flush=True)
    rows, plans = [], []
    ns = args.n or ([16] if args.quick else [8, 16, 32, 64])
    choices = [("the plan's warps", None)] if args.warps is None else [(f"{w} warps", Force(warps=w)) for w in args.warps]
    for label, force in choices:
        print(f"--- {label} per block")
        first = len(rows)
        time_shapes(rng, OPT66B, ns, [0.7, 0.8, 0.9], bw, rows, plans, force)
        for row in rows[first:]:
            row["label"] = label
    for label, _ in choices:
        for n in ns:
            for s in (0.7, 0.8, 0.9):
                sel = [r for r in rows if r["n"] == n and r["s"] == s and r["label"] == label]
                g = geometric_mean([r["speedup"] for r in sel])
                fb = sum(r["frac_bound"] for r in sel) / len(sel)
                print(f"{label} N={n} {s:.0%}: geomean speedup {g:.2f}x, mean fraction of bound {fb:.2f}")
    report_resources(plans)
    return 0


if __name__ == "__main__":
    sys.exit(main())
