"""The ``flashllm-nb`` command: ``demo`` (prune, encode, multiply, check, time) and ``bench`` (the kernel benchmark).

The mode is fixed first: with no GPU, Numba's CUDA simulator is switched on before anything imports ``numba.cuda``,
so both commands run everywhere (in the simulator only tiny, correctness-only cases: its timings mean nothing).
"""

from __future__ import annotations

import argparse
import sys

from flashllm_nb._runtime import use_simulator_if_no_gpu

# A built-in layer: OPT-66B's attention output projection, pruned to 80 %, 16 tokens.
DEMO_GPU = dict(m=9216, k=9216, n=16, sparsity=0.8)
# Small enough for the simulator (which runs every GPU thread as a Python thread), big enough for several tiles,
# ragged edges and split-K.
DEMO_SIM = dict(m=200, k=136, n=12, sparsity=0.8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flashllm-nb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="prune a built-in layer, encode it, multiply, check against a reference")
    demo.add_argument("--sparsity", type=float, default=None, help="fraction of zeros (default 0.8)")
    demo.add_argument("--seed", type=int, default=0)
    sub.add_parser("bench", help="the kernel benchmark; `flashllm-nb bench --help` lists its options", add_help=False)
    args, rest = parser.parse_known_args(argv)
    simulator = use_simulator_if_no_gpu()
    if args.command == "bench":
        from flashllm_nb.bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return _demo(simulator, args.sparsity, args.seed)


def _demo(simulator: bool, sparsity: float | None, seed: int) -> int:
    import numpy as np

    import flashllm_nb as fl
    from flashllm_nb.reference import linear_reference
    from flashllm_nb.reference.spmm import abs_product
    from flashllm_nb.reference.tolerance import assert_close_to_reference

    case = dict(DEMO_SIM if simulator else DEMO_GPU)
    if sparsity is not None:
        case["sparsity"] = sparsity
    m, k, n = case["m"], case["k"], case["n"]
    rng = np.random.default_rng(seed)
    W = fl.prune.random(rng.standard_normal((m, k)).astype(np.float16), case["sparsity"], seed=seed)
    X = rng.standard_normal((n, k)).astype(np.float16)
    A = fl.TiledCSL.from_dense(W)
    dense_bytes, csr_bytes = 2 * m * k, 6 * A.nnz + 4 * (m + 1)
    print(f"layer {m} x {k}, {n} tokens, {A.sparsity:.1%} sparse: {A!r}")
    print(f"bytes: dense fp16 {dense_bytes / 1e6:.2f} MB, CSR (fp16 + int32) {csr_bytes / 1e6:.2f} MB, "
          f"Tiled-CSL {A.nbytes / 1e6:.2f} MB ({dense_bytes / A.nbytes:.2f}x smaller than dense)")

    if simulator:
        print("no GPU: running the kernel in Numba's CUDA simulator (correctness only; timings are meaningless)")
        Y = fl.linear(X, A)
    else:
        import cupy as cp

        A = A.to_device()
        Xd, Wd = cp.asarray(X), cp.asarray(W)
        Y = fl.linear(Xd, A)
        t_sparse = _time_gpu(lambda: fl.linear(Xd, A, out=Y))
        Yd = Xd @ Wd.T
        t_dense = _time_gpu(lambda: cp.matmul(Xd, Wd.T, out=Yd))
        name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()
        print(f"{name}: flashllm_nb.linear {t_sparse * 1e3:.1f} us, cuBLAS dense {t_dense * 1e3:.1f} us: "
              f"{t_dense / t_sparse:.2f}x")
        Y = Y.get()
    ref = linear_reference(X, A.to_host() if A.on_device else A)
    assert_close_to_reference(Y, ref, abs_product(X, W.T), k, np.float16, what="linear(X, A)")
    print(f"checked against the float64 reference: all {Y.size} outputs within the fp32-accumulation bound")
    return 0


def _time_gpu(fn, calls: int = 50, repeats: int = 20) -> float:
    """Median milliseconds per call of ``fn``: CUDA events around ``calls`` back-to-back calls (so the GPU, not
    the host's launch cost, sets the pace), repeated after a warm-up."""
    import cupy as cp

    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / calls)
    times.sort()
    return times[len(times) // 2]


if __name__ == "__main__":
    sys.exit(main())
