"""Time the Tiled-CSL encoder (``TiledCSL.from_dense``) and decoder (``to_dense``) on one large matrix.

The default is the largest weight of OPT-66B's feed-forward block, 36864 x 9216 fp16, at 80 % sparsity: the
encoder's budget there is 5 s on a 2-core CPU and 100 ms on a GPU. The matrix has i.i.d. Bernoulli zeros, so its
sparsity is 80 % up to sampling noise (the printed nnz is exact).

Each measurement is taken ``--repeat`` times after one untimed warm-up call; the first ("cold") call is reported
separately because on a fresh process it also pays for the operating system's first touch of the memory.

    python -m dev.encode_timing                  # host (NumPy)
    python -m dev.encode_timing --device         # GPU (CuPy), when present
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone

import ml_dtypes
import numpy as np

from flashllm_nb.formats.tiled_csl import TiledCSL


def _matrix(M: int, K: int, sparsity: float, dtype: np.dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((M, K), dtype=np.float32).astype(dtype)
    W[rng.random((M, K), dtype=np.float32) < sparsity] = 0
    return W


def _timed(fn, repeat: int, sync) -> tuple[float, list[float]]:
    """Seconds of the first call, and of ``repeat`` calls after it."""
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times[0], times[1:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(36864, 9216), metavar=("M", "K"))
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", action="store_true", help="encode on the GPU with CuPy")
    args = parser.parse_args(argv)

    dtype = np.dtype(np.float16) if args.dtype == "float16" else np.dtype(ml_dtypes.bfloat16)
    M, K = args.shape
    command = shlex.join([os.path.basename(sys.executable), "-m", "dev.encode_timing", *sys.argv[1:]])
    print(f"command: PYTHONPATH=. {command}")
    print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, NumPy {np.__version__}")

    W = _matrix(M, K, args.sparsity, dtype, args.seed)
    sync = lambda: None  # noqa: E731
    if args.device:
        import cupy

        print(f"device: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, CuPy {cupy.__version__}")
        W = cupy.asarray(W.view(np.uint16))  # CuPy has no bfloat16: bits, with the type named below
        sync = cupy.cuda.Device().synchronize

    encoded = {}

    def encode():
        encoded["A"] = TiledCSL.from_dense(W, dtype=dtype) if args.device else TiledCSL.from_dense(W)

    cold, warm = _timed(encode, args.repeat, sync)
    A = encoded["A"]
    print(f"matrix: {A!r}")
    print(f"encode from_dense: cold {cold:.3f} s, warm min {min(warm):.3f} s, median {statistics.median(warm):.3f} s "
          f"({args.repeat} runs)")
    decoded = {}
    cold, warm = _timed(lambda: decoded.update(D=A.to_dense(bits=True)), args.repeat, sync)
    print(f"decode to_dense:   cold {cold:.3f} s, warm min {min(warm):.3f} s, median {statistics.median(warm):.3f} s "
          f"({args.repeat} runs)")
    exact = bool((decoded["D"] == (W if args.device else W.view(np.uint16))).all())
    print(f"round trip bit-exact: {exact}")
    if not exact:
        sys.exit(1)


if __name__ == "__main__":
    main()
