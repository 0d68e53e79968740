"""The command line: ``python -m flashllm_nb.bench`` / ``flashllm-nb bench``, argument parsing and the two modes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from flashllm_nb._runtime import gpu_unavailable_reason, use_simulator_if_no_gpu

from .providers import BASELINE, PROVIDERS
from .shapes import PRESETS, SIMULATOR_SHAPES, parse_shape, resolve_shapes

__all__ = ["build_parser", "resolve_sweep", "main", "positive_int", "non_negative_int", "sparsity_fraction"]

DEFAULT_PRESET = "opt-66b"
DEFAULT_NS = (8, 16, 32, 64)
DEFAULT_SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9)
QUICK = {"preset": ["opt-66b"], "n": [16], "sparsity": [0.7, 0.8, 0.9]}
SIMULATOR_NS = (8, 16)
SIMULATOR_SPARSITIES = (0.5, 0.9)

DEFAULT_OUT = Path("bench/out")
PROG = "python -m flashllm_nb.bench"

# argparse fills in %(prog)s (the command as it was called) and so reads %% as one %.
_EPILOG = """\
examples:
  %(prog)s                          # OPT-66B, N = 8 16 32 64, 50-90 %% sparsity, fp16
  %(prog)s --quick                  # about a minute: OPT-66B, N = 16, 70/80/90 %%
  %(prog)s --preset llama2-70b --n 16 --sparsity 0.5 0.8
  %(prog)s --shape 9216,36864 --providers cublas,flashllm_tiled_csl
  %(prog)s --list                   # presets and providers (with why any is unavailable)

Without a GPU (or with NUMBA_ENABLE_CUDASIM=1) it checks flashllm_nb's kernels for correctness in Numba's CUDA
simulator on a 256 x 128 weight, times nothing and writes no files.
"""


def _number_type(convert, accept, expected: str, unparsable: str | None = None):
    """An argparse type: ``convert(text)`` (int or float) that ``accept`` takes, else the one-line error
    "expected {expected}, got '{text}'" (``unparsable`` instead of ``expected`` when the text is no number)."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unparsable or expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


#: argparse types shared by every command of the package.
positive_int = _number_type(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
sparsity_fraction = _number_type(float, lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1), e.g. 0.8 (not 80)",
                                 "a fraction in [0, 1), e.g. 0.8")
non_negative_float = _number_type(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
top_p_fraction = _number_type(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def _provider_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated names from {', '.join(PROVIDERS)}; got {text!r}"
        )
    return names


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The benchmark's parser; ``prog`` is the command as the user calls it (``flashllm-nb bench`` from the CLI)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Time Y = X @ W.T for pruned LLM weights: flashllm_nb's kernels beside cuBLAS, cuSPARSE and\n"
                    "2:4 sparsity, in one process; write markdown, CSV, JSON and a plot.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_argument_group("what to run (the sweep)")
    what.add_argument("--preset", action="append", choices=sorted(PRESETS), metavar="NAME",
                      help=f"layer shapes of a model, repeatable; one of {', '.join(sorted(PRESETS))} "
                           f"(default {DEFAULT_PRESET} when no --shape either)")
    what.add_argument("--shape", action="append", type=parse_shape, metavar="M,K",
                      help="a weight of M out_features x K in_features, repeatable, e.g. --shape 9216,36864")
    what.add_argument("--n", nargs="+", type=positive_int, metavar="N",
                      help=f"token counts (columns of X.T) (default {' '.join(map(str, DEFAULT_NS))})")
    what.add_argument("--sparsity", nargs="+", type=sparsity_fraction, metavar="S",
                      help=f"fractions of zeros in W (default {' '.join(map(str, DEFAULT_SPARSITIES))})")
    what.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16",
                      help="weights and activations (default fp16)")
    what.add_argument("--providers", type=_provider_list, metavar="A,B",
                      help=f"which providers (default all: {', '.join(PROVIDERS)}); {BASELINE} always runs")
    what.add_argument("--quick", action="store_true",
                      help="about a minute: --preset opt-66b --n 16 --sparsity 0.7 0.8 0.9 (explicit options win)")
    how = p.add_argument_group("how")
    how.add_argument("--reps", type=positive_int, default=100,
                     help="timed repetitions per case (fewer, >= 10, for calls over 5 ms) (default 100)")
    how.add_argument("--warmup", type=non_negative_int, default=10, help="untimed calls first (default 10)")
    how.add_argument("--seed", type=non_negative_int, default=0,
                     help="seed of the random weights, activations and pruning (default 0)")
    how.add_argument("--out", type=Path, default=None,
                     help=f"directory for kernel_bench_<date>.{{json,csv,md,png}} (default {DEFAULT_OUT}; the "
                          "simulator writes no files)")
    p.add_argument("--list", action="store_true", help="list presets and providers, then exit")
    return p


def resolve_sweep(args: argparse.Namespace, simulator: bool):
    """The :class:`~flashllm_nb.bench.sweep.Sweep` the arguments ask for, and notes on what was overridden."""
    from .sweep import Sweep

    notes = []
    if args.quick:
        args.preset = args.preset or (None if args.shape else QUICK["preset"])
        args.n = args.n or QUICK["n"]
        args.sparsity = args.sparsity or QUICK["sparsity"]
    names = args.providers or list(PROVIDERS)
    if simulator:
        if args.preset:
            notes.append(f"--preset {' '.join(args.preset)} ignored: presets are GPU sizes, far too slow in the "
                         "simulator")
        shapes = tuple(resolve_shapes(None, args.shape, "")) if args.shape else SIMULATOR_SHAPES
        ns = tuple(args.n or SIMULATOR_NS)
        sparsities = tuple(args.sparsity or SIMULATOR_SPARSITIES)
        names = [n for n in names if PROVIDERS[n].simulator]
        if args.out is not None:
            notes.append(f"--out {args.out} ignored: the simulator checks correctness only and writes no files")
    else:
        shapes = resolve_shapes(args.preset, args.shape, DEFAULT_PRESET)
        ns = tuple(args.n or DEFAULT_NS)
        sparsities = tuple(args.sparsity or DEFAULT_SPARSITIES)
        names = [BASELINE] + [n for n in names if n != BASELINE]
    sweep = Sweep(shapes=shapes, ns=tuple(dict.fromkeys(ns)), sparsities=tuple(dict.fromkeys(sparsities)),
                  providers=tuple(dict.fromkeys(names)), dtype=args.dtype, reps=args.reps, warmup=args.warmup,
                  seed=args.seed)
    return sweep, notes


def _print_list(simulator: bool) -> None:
    print("presets (M x K = out_features x in_features):")
    for name, shapes in PRESETS.items():
        one_model = len({s.model for s in shapes}) == 1
        print(f"  {name:11s} " + ", ".join(f"{s.layer} {s.M}x{s.K}" if one_model else s.label for s in shapes))
    print("providers:")
    # In the simulator only the providers that run in it can: the others need a GPU whatever their modules say.
    no_gpu = gpu_unavailable_reason()
    why_not = (f"no CUDA GPU here ({no_gpu})" if no_gpu
               else "Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1) and this provider does not run in it")
    for p in PROVIDERS.values():
        if simulator:
            state = "available in the simulator (correctness only, no timings)" if p.simulator else \
                f"unavailable: {why_not}"
        else:
            reason = p.unavailable("fp16", 0.5)
            state = f"unavailable: {reason}" if reason else "available"
        print(f"  {p.name:19s} {p.label:32s} {state}")


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the benchmark; returns the exit status (0 ok, 1 a flashllm_nb kernel was wrong or the run aborted,
    2 bad arguments or a missing requirement). ``prog`` names the command in the help and the usage errors."""
    simulator = use_simulator_if_no_gpu()  # first: Numba reads the switch when numba.cuda is first imported
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and the error (or --help)
        return exc.code if isinstance(exc.code, int) else 0
    if args.list:
        _print_list(simulator)
        return 0
    sweep, notes = resolve_sweep(args, simulator)
    for note in notes:
        print(note, file=sys.stderr)
    from .run import run_gpu_benchmark, run_simulator_check

    if simulator:
        return run_simulator_check(sweep, argv)
    return run_gpu_benchmark(sweep, argv, args.out or DEFAULT_OUT)
