"""Factory for ``ptx_compile_worker``: one SpMM kernel configuration and its launch signature, by keyword."""

from flashllm_nb.kernels.spmm.config import SpmmConfig, kernel_signature
from flashllm_nb.kernels.spmm.tiled_csl import build_kernel


def spmm_kernel(**config):
    cfg = SpmmConfig(**config)
    return build_kernel(cfg), kernel_signature(), {"launch_bounds": cfg.launch_bounds}
