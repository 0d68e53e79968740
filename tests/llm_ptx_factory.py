"""Factory for ``ptx_compile_worker``: one decoder kernel of ``flashllm_nb.llm.kernels`` or
``flashllm_nb.llm.attention`` and its signature."""

from flashllm_nb.llm import attention, kernels

_ATTENTION = ("split_heads", "attention")


def llm_kernel(name: str, **parameters):
    """``name`` is the factory's suffix in its module (``"attention"`` for ``attention._attention_kernel``)."""
    module = attention if name in _ATTENTION else kernels
    kernel = getattr(module, f"_{name}_kernel")(**parameters)
    bounds = kernel.dispatcher.targetoptions.get("launch_bounds")
    return kernel.dispatcher, kernel.signature, {} if bounds is None else {"launch_bounds": bounds}
