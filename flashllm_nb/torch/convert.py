""":func:`sparsify`: replace a PyTorch model's ``nn.Linear`` layers by :class:`SparseLinear`, in place.

Layers are converted one at a time and each dense weight is dropped as soon as its sparse form exists, so a model
that fits dense leaves with the memory the sparse weights save (the memory returns to torch's allocator; it is not
given back to the driver). Sibling projections of one input (q, k and v; gate and up) are stacked into one product
(:mod:`flashllm_nb.torch.siblings`): they are converted together, so their dense weights, their sparse forms and the
stack are alive at once before the dense ones go. Everything is checked before the first layer changes: a model
that cannot be converted is left as it was.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from flashllm_nb._checks import invalid
from flashllm_nb.kernels import ptx
from flashllm_nb.formats.tile_rows import stack_tile_rows
from flashllm_nb.torch import ops
from flashllm_nb.torch.modules import _NAMES, PRUNE_METHODS, SparseLinear, check_weight_device
from flashllm_nb.torch.siblings import SIBLING_GROUPS, SiblingRows, SparseSiblings

__all__ = ["sparsify", "SparsifyReport", "DENSE_BELOW", "ACTIVATION_AFTER"]

#: A layer with fewer zeros than this (after pruning) stays an ``nn.Linear``: Tiled-CSL moves 4 bytes per entry
#: against dense's 2 per element and gains nothing below about half zeros.
DENSE_BELOW = 0.5

#: Where a model passes a linear layer's output straight to an activation module and uses it nowhere else, by the
#: class that holds both (its module and name): the two attributes. OPT's decoder layer applies ``activation_fn``
#: to ``fc1``'s output and to nothing else.
ACTIVATION_AFTER = {("transformers.models.opt.modeling_opt", "OPTDecoderLayer"): ("fc1", "activation_fn")}
#: Activation modules the kernel's epilogue applies, by exact type.
_EPILOGUE_ACTIVATIONS = {torch.nn.ReLU: "relu"}


@dataclass
class SparsifyReport:
    """What :func:`sparsify` did: the names of the converted layers, of those left dense because they have too
    few zeros, and of those skipped by name; the names of the stacks of siblings made (each a
    :class:`~flashllm_nb.torch.SparseSiblings`, its siblings among the converted); the names of the converted
    layers that apply the activation after them in their epilogue; bytes of weights before and after."""

    converted: list[str] = field(default_factory=list)
    left_dense: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stacked: list[str] = field(default_factory=list)
    activations_fused: list[str] = field(default_factory=list)
    dense_bytes: int = 0
    sparse_bytes: int = 0

    def __str__(self) -> str:
        return (f"{len(self.converted)} layers to Tiled-CSL ({self.dense_bytes / 1e9:.2f} GB dense -> "
                f"{self.sparse_bytes / 1e9:.2f} GB; {len(self.stacked)} stacks of siblings, "
                f"{len(self.activations_fused)} activations in the epilogue), "
                f"{len(self.left_dense)} left dense, {len(self.skipped)} skipped")


def _skipped(name: str, skip: Sequence[str]) -> bool:
    """``name`` matches an entry of ``skip`` as the whole dotted name or as its trailing components."""
    return any(name == s or name.endswith("." + s) for s in skip)


def sparsify(model: torch.nn.Module, sparsity: Optional[float] = None, prune: str = "magnitude",
             skip: Sequence[str] = ("lm_head",), dense_below: float = DENSE_BELOW, stack_siblings: bool = True,
             fuse_activations: bool = True, progress: bool = True, sparse_format: str = "csl") -> SparsifyReport:
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
    stack_siblings : bool
        Stack sibling projections of one input (``q_proj``, ``k_proj`` and ``v_proj`` of a module; ``gate_proj``
        and ``up_proj``: :data:`~flashllm_nb.torch.siblings.SIBLING_GROUPS`) into one product, held by a
        :class:`~flashllm_nb.torch.SparseSiblings` on their parent (``qkv_proj``, ``gate_up_proj``), each sibling
        replaced by a :class:`~flashllm_nb.torch.SiblingRows` (see :mod:`flashllm_nb.torch.siblings`). Siblings
        are stacked where all of them are converted, with the same input width and bias or none.
    fuse_activations : bool
        Where the model passes a layer converted by this call straight to a ReLU (OPT's ``fc1`` and
        ``activation_fn``: :data:`ACTIVATION_AFTER`), apply it in the layer's epilogue (``SparseLinear.activation``)
        and put an ``nn.Identity`` in the ReLU's place: one kernel fewer a layer. A forward hook on such a layer
        then sees the ReLU's output, and hooks on the ReLU module go with it.
    progress : bool
        Show a progress bar (tqdm).
    sparse_format : {"csl", "bitmap"}
        The format of the converted layers' weights (``SparseLinear.sparse_format``): Tiled-CSL, or Tiled-Bitmap
        (fewer bytes below about 93 % sparsity).

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
    for name, value in (("stack_siblings", stack_siblings), ("fuse_activations", fuse_activations)):
        if not isinstance(value, bool):
            raise invalid("type", name, "a bool", type(value).__name__, TypeError)
    if sparse_format not in ops.SPARSE_FORMATS:
        raise invalid("value", "sparse_format", f"one of {tuple(ops.SPARSE_FORMATS)}", repr(sparse_format))

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
    units = _sibling_units(model, targets) if stack_siblings else [(None, [name]) for name in targets]
    with torch.no_grad(), tqdm(total=len(targets), desc="sparsifying", unit="layer", disable=not progress) as bar:
        for stack_name, unit in units:
            parent_name, _, _ = unit[0].rpartition(".")
            parent = model.get_submodule(parent_name)
            layers = {}
            for name in unit:
                linear = getattr(parent, name.rpartition(".")[2])
                layer = SparseLinear.from_linear(linear, sparsity, prune, sparse_format)
                if layer.sparsity < dense_below:
                    if sparsity is not None:  # keep the pruned zeros: the layer stays dense with them
                        linear.weight.copy_(layer.to_dense())
                    report.left_dense.append(name)
                    continue
                report.dense_bytes += linear.weight.numel() * linear.weight.element_size()
                layers[name] = layer
                del linear
            if stack_name is not None and len(layers) == len(unit):
                _stack(parent, parent_name, stack_name, unit, [layers.pop(name) for name in unit], report)
            for name, layer in layers.items():  # alone, or siblings of one left dense
                setattr(parent, name.rpartition(".")[2], layer)
                report.sparse_bytes += layer.words.nbytes + layer.tile_offsets.nbytes
                report.converted.append(name)
            del layers
            if cuda:
                _release_encoder_memory()
            bar.update(len(unit))
    if fuse_activations:
        _fuse_activations(model, report)
    return report


def _fuse_activations(model: torch.nn.Module, report: SparsifyReport) -> None:
    """Move each activation of :data:`ACTIVATION_AFTER` that follows a layer of ``report.converted`` into that
    layer's epilogue."""
    converted = set(report.converted)
    holders = [(name, module, ACTIVATION_AFTER.get((type(module).__module__, type(module).__qualname__)))
               for name, module in model.named_modules()]
    for name, module, attributes in holders:
        if attributes is None:
            continue
        linear_name, activation_name = attributes
        full_name = f"{name}.{linear_name}" if name else linear_name
        linear, activation = getattr(module, linear_name, None), getattr(module, activation_name, None)
        kind = _EPILOGUE_ACTIVATIONS.get(type(activation))
        if full_name in converted and isinstance(linear, SparseLinear) and linear.activation is None and \
                kind is not None:
            linear.activation = kind
            setattr(module, activation_name, torch.nn.Identity())
            report.activations_fused.append(full_name)


def _sibling_units(model: torch.nn.Module, targets: list[str]) -> list[tuple[Optional[str], list[str]]]:
    """``targets`` grouped into what is converted together, each with the name of its stack: the siblings of a
    group of ``SIBLING_GROUPS`` under one parent, where all of them are targets, of one input width, dtype and
    device, all with a bias or none, and the parent has no attribute of the stack's name; every other target alone
    (no stack: None). In ``targets``' order, a group where the first of its siblings in ``targets`` was."""
    wanted = set(targets)
    group_of: dict[str, tuple[str, list[str]]] = {}
    for name in targets:
        parent_name, _, attribute = name.rpartition(".")
        for stack_name, siblings in SIBLING_GROUPS.items():
            if attribute != siblings[0]:
                continue
            names = [f"{parent_name}.{s}" if parent_name else s for s in siblings]
            if not all(n in wanted for n in names):
                continue
            parent = model.get_submodule(parent_name)
            linears = [getattr(parent, s) for s in siblings]
            first = linears[0]
            if hasattr(parent, stack_name) or any(
                    lin.in_features != first.in_features or lin.weight.dtype is not first.weight.dtype or
                    lin.weight.device != first.weight.device or (lin.bias is None) != (first.bias is None)
                    for lin in linears):
                continue
            for n in names:
                group_of[n] = (stack_name, names)
    units, seen = [], set()
    for name in targets:
        stack_name, unit = group_of.get(name, (None, [name]))
        if unit[0] not in seen:
            seen.add(unit[0])
            units.append((stack_name, unit))
    return units


def _stack(parent: torch.nn.Module, parent_name: str, stack_name: str, names: list[str], layers: list[SparseLinear],
           report: SparsifyReport) -> None:
    """Put the converted siblings ``layers`` (of ``names``, under ``parent``) into one stack on ``parent`` named
    ``stack_name``, and a SiblingRows of it in each one's place."""
    attributes = [name.rpartition(".")[2] for name in names]
    device = layers[0].words.device
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():  # CuPy's device too
        matrix, first_rows = stack_tile_rows([layer.matrix for layer in layers])
        bias = None
        if layers[0].bias is not None:  # the siblings' biases at their rows, zeros on the padding rows between
            bias = torch.zeros(matrix.shape[0], dtype=layers[0].dtype, device=device)
            for layer, first in zip(layers, first_rows):
                bias[first : first + layer.out_features] = layer.bias
        fused = SparseLinear.from_matrix(matrix, bias, device)
    siblings = SparseSiblings(fused, attributes, [layer.out_features for layer in layers])
    setattr(parent, stack_name, siblings)
    for i, attribute in enumerate(attributes):
        setattr(parent, attribute, SiblingRows(siblings, i))
    report.sparse_bytes += fused.words.nbytes + fused.tile_offsets.nbytes
    report.converted.extend(names)
    report.stacked.append(f"{parent_name}.{stack_name}" if parent_name else stack_name)


def _release_encoder_memory() -> None:
    """Return the encoder's CuPy scratch to the driver, so torch's allocator can use it."""
    import cupy

    cupy.get_default_memory_pool().free_all_blocks()
