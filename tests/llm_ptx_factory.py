"""Factory for ``ptx_compile_worker``: one decoder kernel of ``flashllm_nb.llm.kernels`` and its signature."""

from flashllm_nb.llm import kernels


def llm_kernel(name: str, **parameters):
    """``name`` is the factory's suffix in ``kernels`` (``"attention"`` for ``_attention_kernel``)."""
    kernel = getattr(kernels, f"_{name}_kernel")(**parameters)
    return kernel.dispatcher, kernel.signature
