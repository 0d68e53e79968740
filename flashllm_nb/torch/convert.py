""":func:`sparsify`: replace a PyTorch model's ``nn.Linear`` layers by :class:`SparseLinear`, in place.

Layers are converted one at a time and each dense weight is dropped as soon as its sparse form exists, so a model
that fits dense leaves with the memory the sparse weights save (the memory returns to torch's allocator; it is not
given back to the driver). Everything is checked before the first layer changes: a model that cannot be converted
is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from flashllm_nb._checks import invalid
from flashllm_nb.kernels import ptx
from flashllm_nb.torch.modules import _NAMES, PRUNE_METHODS, SparseLinear, check_weight_device

__all__ = ["sparsify", "SparsifyReport", "DENSE_BELOW"]

#: A layer with fewer zeros than this (after pruning) stays an ``nn.Linear``: Tiled-CSL moves 4 bytes per entry
#: against dense's 2 per element and gains nothing below about half zeros.
DENSE_BELOW = 0.5


@dataclass
class SparsifyReport:
    """What :func:`sparsify` did: the names of the converted layers, of those left dense because they have too
    few zeros, and of those skipped by name; bytes of weights before and after."""

    converted: list[str] = field(default_factory=list)
    left_dense: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    dense_bytes: int = 0
    sparse_bytes: int = 0

    def __str__(self) -> str:
        return (f"{len(self.converted)} layers to Tiled-CSL ({self.dense_bytes / 1e9:.2f} GB dense -> "
                f"{self.sparse_bytes / 1e9:.2f} GB), {len(self.left_dense)} left dense, {len(self.skipped)} skipped")


def _skipped(name: str, skip: Sequence[str]) -> bool:
    """``name`` matches an entry of ``skip`` as the whole dotted name or as its trailing components."""
    return any(name == s or name.endswith("." + s) for s in skip)


def sparsify(model: torch.nn.Module, sparsity: Optional[float] = None, prune: str = "magnitude",
             skip: Sequence[str] = ("lm_head",), dense_below: float = DENSE_BELOW,
             progress: bool = True) -> SparsifyReport:
    """Replace every ``nn.Linear`` of ``model`` (but those named in ``skip``) by a :class:`SparseLinear`, in place.

    Parameters
    ----------
    model : torch.nn.Module
        float16 or bfloat16 linear layers on a CUDA device (on the CPU under the simulator).
    sparsity : float in [0, 1), optional
        Prune each layer's weight to this fraction of zeros; None keeps the zeros it has (SparseGPT / Wanda
        checkpoints).
    prune : {"magnitude", "magnitude-row"}
        Per matrix, or the same count in every output row (Wanda's mask shape); exact in count.
    skip : sequence of str
        Layer names to leave alone, whole (``"model.decoder.layers.0.fc1"``) or by their last components
        (``"lm_head"``, ``"self_attn.q_proj"``).
    dense_below : float
        A layer with fewer zeros than this fraction (after pruning) stays dense.
    progress : bool
        Show a progress bar (tqdm).

    Returns
    -------
    SparsifyReport
    """
    from tqdm import tqdm

    if not isinstance(model, torch.nn.Module):
        raise invalid("type", "model", "a torch.nn.Module", type(model).__name__, TypeError)
    if sparsity is not None and (isinstance(sparsity, bool) or not isinstance(sparsity, (int, float))
                                 or not 0 <= sparsity < 1):
        raise invalid("value", "sparsity", "None or a number in [0, 1)", sparsity)
    if prune not in PRUNE_METHODS:
        raise invalid("value", "prune", f"one of {PRUNE_METHODS}", prune)
    if isinstance(skip, str):
        raise invalid("type", "skip", "a sequence of layer names (a tuple or list)", "a str", TypeError)
    if isinstance(dense_below, bool) or not isinstance(dense_below, (int, float)) or not 0 <= dense_below <= 1:
        raise invalid("value", "dense_below", "a number in [0, 1]", dense_below)

    report = SparsifyReport()
    targets = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if _skipped(name, skip):
                report.skipped.append(name)
                continue
            weight = module.weight
            if weight.dtype not in _NAMES:
                raise invalid("dtype", f"{name}.weight", "torch.float16 or torch.bfloat16 (convert the model with "
                              ".half() or .to(torch.bfloat16) first)", weight.dtype, TypeError)
            check_weight_device(weight.device, f"{name}.weight")
            targets.append(name)
    cuda = not ptx.SIMULATOR
    with torch.no_grad():
        for name in tqdm(targets, desc="sparsifying", unit="layer", disable=not progress):
            parent_name, _, attribute = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            linear = getattr(parent, attribute)
            layer = SparseLinear.from_linear(linear, sparsity, prune)
            if layer.sparsity < dense_below:
                if sparsity is not None:  # keep the pruned zeros: the layer stays dense with them
                    linear.weight.copy_(layer.to_dense())
                report.left_dense.append(name)
                continue
            report.dense_bytes += linear.weight.numel() * linear.weight.element_size()
            report.sparse_bytes += layer.words.nbytes + layer.tile_offsets.nbytes
            setattr(parent, attribute, layer)
            del linear
            if cuda:
                _release_encoder_memory()
            report.converted.append(name)
    return report


def _release_encoder_memory() -> None:
    """Return the encoder's CuPy scratch to the driver, so torch's allocator can use it."""
    import cupy

    cupy.get_default_memory_pool().free_all_blocks()
