"""Host time per call of one sparse layer: the CuPy path (``fl.linear`` on CuPy arrays) against the PyTorch paths
(``SparseLinear`` eager, and the ``torch.ops.flashllm_nb.sparse_linear`` operator through torch's dispatcher), with
``nn.Linear`` for scale.

    python dev/torch_host_cost.py

The layer is small (256 x 256, one token), so the GPU keeps up; each path issues ``--calls`` calls without
synchronising (fewer than the launch queue holds), and the issuing time divided by the calls is the host cost.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def host_us(call, calls: int, sync) -> float:
    for _ in range(20):
        call()
    sync()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, time.perf_counter() - start)
        sync()
    return 1e6 * best / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    import cupy
    import torch

    import flashllm_nb as fl
    import flashllm_nb.torch as flt

    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 256).half().cuda()
    layer = flt.SparseLinear.from_linear(linear, sparsity=0.8)
    x = torch.randn(1, 256, dtype=torch.float16, device="cuda")
    A = layer.matrix
    X, Y = cupy.asarray(x.cpu().numpy()), cupy.empty((1, 256), np.float16)
    bias = cupy.asarray(linear.bias.detach().cpu().numpy())
    sync = torch.cuda.synchronize
    rows = {}
    with torch.inference_mode():
        rows["cupy fl.linear(X, A, bias, out=Y)"] = host_us(lambda: fl.linear(X, A, bias, out=Y), args.calls, sync)
        rows["torch SparseLinear (eager)"] = host_us(lambda: layer(x), args.calls, sync)
        op = torch.ops.flashllm_nb.sparse_linear
        rows["torch.ops.flashllm_nb.sparse_linear"] = host_us(
            lambda: op(x, layer.words, layer.tile_offsets, layer.bias, 256), args.calls, sync)
        rows["torch nn.Linear (cuBLAS)"] = host_us(lambda: linear(x), args.calls, sync)
        # pieces of the PyTorch path, alone
        identity = torch.nn.Identity()
        rows["piece: calling an nn.Module (Identity)"] = host_us(lambda: identity(x), args.calls, sync)
        rows["piece: x.new_empty((1, 256))"] = host_us(lambda: x.new_empty((1, 256)), args.calls, sync)
        rows["piece: torch.cuda.current_stream(0).cuda_stream"] = host_us(
            lambda: torch.cuda.current_stream(0).cuda_stream, args.calls, sync)
        prepared = fl.prepare_linear(X, A, bias, out=Y)
        rows["piece: a prepared launch (fl.prepare_linear)"] = host_us(prepared, args.calls, sync)
    print(json.dumps({"device": torch.cuda.get_device_name(), "host_us_per_call": {k: round(v, 2) for k, v in
                                                                                   rows.items()}}, indent=1))


if __name__ == "__main__":
    main()
