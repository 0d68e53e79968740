"""The ``flashllm-nb`` command: ``demo`` (prune, encode, multiply, check, time), ``bench`` (the kernel benchmark),
``generate`` (text from a pruned model) and ``bench-e2e`` (whole models, dense and sparse).

The mode is fixed first: with no GPU, Numba's CUDA simulator is switched on before anything imports ``numba.cuda``,
so every command runs everywhere (in the simulator only tiny, correctness-only cases: its timings mean nothing).

Each command is one sub-parser whose ``run`` default takes the parsed arguments and the arguments left over; a
command with a parser of its own (``bench``, ``generate``, ``bench-e2e``) is declared with ``add_help=False`` and
``delegated=True`` and reads the leftovers itself. Bad arguments get argparse's usage and one-line error, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from flashllm_nb._runtime import simulator_enabled, use_simulator_if_no_gpu
from flashllm_nb.bench.command import non_negative_int, sparsity_fraction

PROG = "flashllm-nb"
# A built-in layer: OPT-66B's attention output projection, pruned to 80 %, 16 tokens.
DEMO_GPU = dict(m=9216, k=9216, n=16, sparsity=0.8)
# Small enough for the simulator (which runs every GPU thread as a Python thread), big enough for several tiles,
# ragged edges and split-K.
DEMO_SIM = dict(m=200, k=136, n=12, sparsity=0.8)


def build_parser() -> argparse.ArgumentParser:
    """The ``flashllm-nb`` parser, one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Unstructured-sparse LLM weights on NVIDIA Tensor Cores: a demo, the kernel "
                               "benchmark, text generation and the end-to-end benchmark. Without a GPU they run "
                               "in Numba's CUDA simulator, at small sizes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="prune a built-in layer, encode it, multiply, check against a reference",
        description="Prune a built-in layer (OPT-66B's 9216 x 9216 output projection, 16 tokens; a 200 x 136 one "
                    "in the simulator), encode it in Tiled-CSL, multiply, check against the float64 reference and, "
                    "on a GPU, time it against cuBLAS.")
    demo.add_argument("--sparsity", type=sparsity_fraction, default=None, metavar="S",
                      help="fraction of zeros in [0, 1) (default 0.8)")
    demo.add_argument("--seed", type=non_negative_int, default=0,
                      help="seed of the random weights and activations (default 0)")
    demo.set_defaults(run=_demo_command)
    bench = sub.add_parser("bench", add_help=False,
                           help=f"the kernel benchmark; '{PROG} bench --help' lists its options")
    bench.set_defaults(run=_bench_command, delegated=True)
    generate = sub.add_parser("generate", add_help=False,
                              help=f"generate text with a pruned model; '{PROG} generate --help' lists its options")
    generate.set_defaults(run=_generate_command, delegated=True)
    e2e = sub.add_parser("bench-e2e", add_help=False,
                         help=f"the end-to-end benchmark; '{PROG} bench-e2e --help' lists its options")
    e2e.set_defaults(run=_e2e_command, delegated=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status: 2 for bad arguments (after argparse's usage and one-line error on
    stderr), 0 after ``--help``, else the command's."""
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if rest and not getattr(args, "delegated", False):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    except SystemExit as exc:  # argparse has printed the usage and the error (or the help)
        return exc.code if isinstance(exc.code, int) else 0
    use_simulator_if_no_gpu()  # before anything imports numba.cuda
    return args.run(args, rest)


def _bench_command(args: argparse.Namespace, rest: list[str]) -> int:
    from flashllm_nb.bench import main as bench_main

    return bench_main(rest, prog=f"{PROG} bench")


def _generate_command(args: argparse.Namespace, rest: list[str]) -> int:
    from flashllm_nb.llm.command import main as generate_main

    return _exit_code(generate_main, rest)


def _e2e_command(args: argparse.Namespace, rest: list[str]) -> int:
    from flashllm_nb.bench.e2e import main as e2e_main

    return _exit_code(e2e_main, rest)


def _exit_code(command, rest: list[str]) -> int:
    """A delegated command's status, 2 after its own argparse error."""
    try:
        return command(rest)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0


def _demo_command(args: argparse.Namespace, rest: list[str]) -> int:
    return _demo(simulator_enabled(), args.sparsity, args.seed)


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

        from flashllm_nb.bench.timing import rotation_count, time_batched

        A = A.to_device()
        Xd, Wd = cp.asarray(X), cp.asarray(W)
        Y = fl.linear(Xd, A)
        Yd = Xd @ Wd.T
        # Each side cycles through enough copies of its weights to span twice the L2 cache, so that neither is
        # timed from L2 (the Tiled-CSL matrix may fit where the dense one does not). Median ms per call over 20
        # batches of 50 back-to-back calls: the GPU, not the launch cost, sets the pace.
        l2_bytes = int(cp.cuda.Device().attributes["L2CacheSize"])
        sparse_copies = [A] + [A.copy() for _ in range(rotation_count(A.nbytes, l2_bytes) - 1)]
        dense_copies = [Wd] + [Wd.copy() for _ in range(rotation_count(Wd.nbytes, l2_bytes) - 1)]
        t_sparse = time_batched([lambda a=a: fl.linear(Xd, a, out=Y) for a in sparse_copies] * 50, batches=20)
        t_dense = time_batched([lambda w=w: cp.matmul(Xd, w.T, out=Yd) for w in dense_copies] * 50, batches=20)
        name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()
        print(f"{name}: flashllm_nb.linear {t_sparse * 1e3:.1f} us, cuBLAS dense {t_dense * 1e3:.1f} us: "
              f"{t_dense / t_sparse:.2f}x")
        Y = Y.get()
    ref = linear_reference(X, A.to_host() if A.on_device else A)
    assert_close_to_reference(Y, ref, abs_product(X, W.T), k, np.float16, what="linear(X, A)")
    print(f"checked against the float64 reference: all {Y.size} outputs within the fp32-accumulation bound")
    return 0


if __name__ == "__main__":
    sys.exit(main())
