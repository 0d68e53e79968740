"""Host time per call of one sparse layer: the CuPy path (``fl.linear`` on CuPy arrays) against the PyTorch paths
(``SparseLinear`` eager, and the ``torch.ops.flashllm_nb.sparse_linear`` operator through torch's dispatcher), with
``nn.Linear`` for scale. The CuPy path is timed twice: into a given output, and returning a new one as the PyTorch
paths do (the like-for-like comparison).

    python dev/torch_host_cost.py

The layer is small (256 x 256, one token), so the GPU keeps up and needs no spin kernel ahead of the calls; each
path issues ``--calls`` calls without synchronising (fewer than the launch queue holds), and the issuing time
divided by the calls, the best of five rounds, is the host cost (``flashllm_nb.bench.timing.time_enqueue``).
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    import cupy
    import torch

    import flashllm_nb as fl
    import flashllm_nb.torch as flt
    from flashllm_nb.bench.timing import time_enqueue

    def host_us(call) -> float:
        return 1e6 * time_enqueue(call, args.calls, rounds=5, spacer_us=0.0)

    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 256).half().cuda()
    layer = flt.SparseLinear.from_linear(linear, sparsity=0.8)
    x = torch.randn(1, 256, dtype=torch.float16, device="cuda")
    A = layer.matrix
    X, Y = cupy.asarray(x.cpu().numpy()), cupy.empty((1, 256), np.float16)
    bias = cupy.asarray(linear.bias.detach().cpu().numpy())
    rows = {}
    with torch.inference_mode():
        rows["cupy fl.linear(X, A, bias, out=Y)"] = host_us(lambda: fl.linear(X, A, bias, out=Y))
        # like for like with the PyTorch paths, which return a new tensor each call
        rows["cupy fl.linear(X, A, bias) (a new output)"] = host_us(lambda: fl.linear(X, A, bias))
        rows["torch SparseLinear (eager)"] = host_us(lambda: layer(x))
        op = torch.ops.flashllm_nb.sparse_linear
        rows["torch.ops.flashllm_nb.sparse_linear"] = host_us(
            lambda: op(x, layer.words, layer.tile_offsets, layer.bias, 256))
        rows["torch nn.Linear (cuBLAS)"] = host_us(lambda: linear(x))
        # pieces of the PyTorch path, alone
        identity = torch.nn.Identity()
        rows["piece: calling an nn.Module (Identity)"] = host_us(lambda: identity(x))
        rows["piece: x.new_empty((1, 256))"] = host_us(lambda: x.new_empty((1, 256)))
        rows["piece: torch.cuda.current_stream(0).cuda_stream"] = host_us(
            lambda: torch.cuda.current_stream(0).cuda_stream)
        prepared = fl.prepare_linear(X, A, bias, out=Y)
        rows["piece: a prepared launch (fl.prepare_linear)"] = host_us(prepared)
    print(json.dumps({"device": torch.cuda.get_device_name(), "host_us_per_call": {k: round(v, 2) for k, v in
                                                                                   rows.items()}}, indent=1))


if __name__ == "__main__":
    main()
