"""Host time of one sparse-layer call from Python: ``linear`` (a repeated call, which takes the remembered launch;
with and without a caller's output), a ``Prepared`` call, and CuPy's cuBLAS matmul for scale.

    python -m dev.launch_cost

4096 x 4096 at 80 %, N = 16, fp16. The calls are timed by ``flashllm_nb.bench.timing.time_enqueue``: queued behind
a spin kernel, so the GPU never pushes back on the host while they are timed; this is host time alone, not kernel
time.
"""

from __future__ import annotations

import sys

import numpy as np


def main() -> int:
    try:
        import cupy as cp

        cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no CUDA device: nothing to time
        print(f"launch_cost: no GPU ({type(exc).__name__}); host launch cost is only meaningful on one")
        return 0
    import flashllm_nb as fl
    from flashllm_nb.bench.timing import time_enqueue

    def host_us(call):
        return time_enqueue(call) * 1e6

    rng = np.random.default_rng(0)
    W = rng.standard_normal((4096, 4096)).astype(np.float16)
    W[rng.random(W.shape) < 0.8] = 0
    W_dense = cp.asarray(W)
    A = fl.TiledCSL.from_dense(W_dense)
    X = cp.asarray(rng.standard_normal((16, 4096)).astype(np.float16))
    Y = fl.linear(X, A)
    P = fl.prepare_linear(X, A, out=Y)
    print(f"{cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}: host time per call, 4096 x 4096 at 80 %, N = 16")
    print(f"  linear(X, A, out=Y): {host_us(lambda: fl.linear(X, A, out=Y)):.1f} us")
    print(f"  linear(X, A) (allocates Y): {host_us(lambda: fl.linear(X, A)):.1f} us")
    print(f"  P() with P = prepare_linear(X, A, out=Y): {host_us(P):.1f} us")
    print(f"  cupy.matmul(X, W.T, out=Y) (cuBLAS, for scale): {host_us(lambda: cp.matmul(X, W_dense.T, out=Y)):.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
