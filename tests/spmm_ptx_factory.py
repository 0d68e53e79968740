"""Factory for ``ptx_compile_worker``: one SpMM kernel configuration and its launch signature, by keyword."""

from flashllm_nb.kernels.spmm_tiled_csl import SpmmConfig, build_kernel, kernel_signature


def spmm_kernel(**config):
    return build_kernel(SpmmConfig(**config)), kernel_signature()
