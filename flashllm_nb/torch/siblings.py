"""Sibling projections that read one input, run as one product: :class:`SparseSiblings` and :class:`SiblingRows`.

transformers' attention calls ``q_proj``, ``k_proj`` and ``v_proj`` one after the other on the same hidden states
(Llama's MLP: ``gate_proj`` and ``up_proj``). As three launches, each of OPT-30B's 7168 x 7168 products at one
token pays a launch's fixed cost on 41 MB of words; stacked into one 21504-row matrix, the three cost one launch
(``docs/torch.md``). :func:`~flashllm_nb.torch.sparsify` therefore stacks such siblings, by tile rows
(:func:`~flashllm_nb.formats.tile_rows.stack_tile_rows`: no word re-encoded), into one :class:`SparseLinear` held
by a :class:`SparseSiblings` on their parent module (``qkv_proj``, ``gate_up_proj``), and puts a
:class:`SiblingRows` in each sibling's place. The model's code is unchanged::

    q = self.q_proj(h)   # the stack's product on h, kept with h; q is its first rows' slice
    k = self.k_proj(h)   # the same h: the kept product's slice, no launch
    v = self.v_proj(h)   # the last sibling: its slice, and the kept product is let go

A sibling called with another input than the first sibling's (cross-attention: keys and values from the encoder),
or before it, turns the stacking off for that group for good: from then on each sibling multiplies its own rows
(:func:`~flashllm_nb.formats.tile_rows.tile_row_block`: a view of the stack's words), exactly as an unstacked
layer would. The siblings' outputs are column slices of the stack's output (strided views, as vLLM's split of its
fused QKV). The input is matched by identity: the siblings must read it as it was at the first sibling's call (no
in-place change in between), which is how attention and MLP blocks use it.
"""

from __future__ import annotations

import functools
import weakref
from typing import Optional, Sequence

import torch

from flashllm_nb._checks import invalid
from flashllm_nb.formats.tile_rows import padded_rows, tile_row_block
from flashllm_nb.formats.tiled_csl import TILE_M
from flashllm_nb.torch import ops
from flashllm_nb.torch.modules import _NAMES, SparseLinear, check_weight_device, kernel_device

__all__ = ["SparseSiblings", "SiblingRows", "SIBLING_GROUPS"]

#: Sibling projections :func:`~flashllm_nb.torch.sparsify` stacks, by the name of their stack: attention's
#: q, k and v (OPT, Llama, Mistral, Qwen), and the gated MLP's gate and up projections (Llama).
SIBLING_GROUPS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_STATE_FORMAT = "flashllm_nb.SparseSiblings/1"


class SparseSiblings(torch.nn.Module):
    """Sibling projections of one input stacked into one :class:`SparseLinear` (``fused``): sibling i's rows
    start at ``first_rows[i]`` (a multiple of 128) and number ``rows[i]``.

    ``forward(x)`` returns every sibling's output, as a tuple; the model itself calls the siblings one by one
    through their :class:`SiblingRows` (see the module docstring). ``stacking`` tells whether they still share
    one product (False once they were seen reading different inputs)."""

    def __init__(self, fused: SparseLinear, names: Sequence[str], rows: Sequence[int]):
        super().__init__()
        names, rows = tuple(names), tuple(rows)
        if len(names) < 2 or len(rows) != len(names):
            raise invalid("value", "names and rows", "two or more siblings, a row count each",
                          f"{len(names)} names, {len(rows)} row counts")
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in rows):
            raise invalid("value", "rows", "integers >= 0", rows)
        self.names, self.rows = names, rows
        self.first_rows = tuple(sum(padded_rows(r) for r in rows[:i]) for i in range(len(rows)))
        self.stacking = True
        # The first sibling's input and the stacked product, until the last sibling takes its slice. A store into
        # this list skips nn.Module.__setattr__ (about 1 us a store) and, traced by Dynamo, the guards it brings.
        self._kept: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = [None]
        # Per sibling, its block of the stack: the words it spans (first, stop) and the kernel's state of it.
        self._spans: tuple[tuple[int, int], ...] = ()
        self._states: list[ops.MatrixState] = []
        self._blocks_of: Optional[tuple[int, int]] = None  # the fused tensors' addresses the blocks were made for
        for i in range(len(names)):
            self.register_buffer(f"block_offsets_{i}", torch.zeros(0, dtype=torch.int32), persistent=False)
        self.fused = fused

    def __setattr__(self, name, value):
        if name != "fused":
            super().__setattr__(name, value)
            return
        # A new stack: checked, its blocks made, and followed into every state dict loaded into it.
        if not isinstance(value, SparseLinear):
            raise invalid("type", "fused", "a SparseLinear", type(value).__name__, TypeError)
        expected = self.first_rows[-1] + self.rows[-1]
        if value.out_features != expected:
            raise invalid("shape", "fused", f"{expected} rows (the siblings', each but the last padded to a "
                          f"multiple of {TILE_M})", value.out_features)
        super().__setattr__(name, value)
        value.register_load_state_dict_post_hook(functools.partial(_blocks_after_loading, weakref.ref(self)))
        self._make_blocks()

    @property
    def in_features(self) -> int:
        return self.fused.in_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.fused(x)
        return tuple(self._part(y, i) for i in range(len(self.names)))

    def run(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Sibling ``index``'s output for ``x``: a slice of the stack's product (the first sibling launches it,
        the others take it while they are called with the same ``x``), or, once the siblings have read different
        inputs, its own rows' product."""
        if self.stacking:
            kept = self._kept
            if index == 0:
                y = self.fused(x)
                kept[0] = (x, y)
                return self._part(y, 0)
            pending = kept[0]
            if pending is not None and pending[0] is x:
                if index == len(self.names) - 1:
                    kept[0] = None
                return self._part(pending[1], index)
            self.stacking = False  # this sibling reads another input than the first: each runs its own rows
            kept[0] = None
        return self._alone(index, x)

    def _part(self, y: torch.Tensor, index: int) -> torch.Tensor:
        return y.narrow(-1, self.first_rows[index], self.rows[index])

    def _alone(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Sibling ``index``'s rows times ``x``: its block of the stack (a view of its words) as a matrix."""
        fused = self.fused
        bias = None if fused.bias is None else fused.bias.narrow(0, self.first_rows[index], self.rows[index])
        if torch.compiler.is_compiling():
            fused._check_input(x)
            begin, stop = self._spans[index]
            return torch.ops.flashllm_nb.sparse_linear(x, fused.words[begin:stop],
                                                       getattr(self, f"block_offsets_{index}"), bias,
                                                       self.rows[index], fused.activation, fused.sparse_format)
        if self._blocks_of != (fused.words.data_ptr(), fused.tile_offsets.data_ptr()):
            self._make_blocks()  # the stack's tensors were replaced
        fused._check_input(x)
        return self._states[index].linear(x, bias, fused.activation)

    def _make_blocks(self, where_kernel_runs: bool = True) -> None:
        """Each sibling's block of the stack as a matrix of its own, over the stack's current tensors: its words
        a view, its tile offsets a buffer of this module (filed with the operator, for traced calls), rewritten in
        place where it can be, so that a captured CUDA graph keeps reading it. Tensors where the kernel cannot run
        are refused, or with ``where_kernel_runs=False`` left without blocks (made on the first call after they
        are back). The kept product of a first sibling is let go: it was the old weights'."""
        self._kept[0] = None
        fused = self.fused
        words, offsets = fused.words, fused.tile_offsets
        if words.device.type != kernel_device().type:
            self._spans, self._states, self._blocks_of = (), [], None
            if where_kernel_runs:
                check_weight_device(words.device, "SparseSiblings.fused.words")
            return
        matrix = fused.matrix
        spans, states = [], []
        # The siblings' tile rows follow one another from the stack's first: each block's words begin where the
        # block above it ends (int32 elements of ``words``).
        stop = 0
        for i, (name, first, rows) in enumerate(zip(self.names, self.first_rows, self.rows)):
            try:
                block = tile_row_block(matrix, first, rows)
            except ValueError as e:
                raise ValueError(f"the stack's rows {first}..{first + rows - 1} ({name}): {e}") from None
            begin, stop = stop, stop + block.words.size
            made = torch.from_dlpack(block.tile_offsets)
            block_offsets = getattr(self, f"block_offsets_{i}")
            if block_offsets.shape == made.shape and block_offsets.device == offsets.device:
                block_offsets.copy_(made)
            else:
                block_offsets = made.to(offsets.device, copy=True)
                setattr(self, f"block_offsets_{i}", block_offsets)
            state = ops.MatrixState(words[begin:stop], block_offsets, (rows, fused.in_features), _NAMES[fused.dtype],
                                    sparse_format=fused.sparse_format)
            ops.register(state)
            spans.append((begin, stop))
            states.append(state)
        self._spans, self._states = tuple(spans), states
        self._blocks_of = (words.data_ptr(), offsets.data_ptr())

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._make_blocks(where_kernel_runs=False)
        return result

    def get_extra_state(self) -> dict:
        return {"format": _STATE_FORMAT, "names": list(self.names), "rows": list(self.rows)}

    def set_extra_state(self, state) -> None:
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise invalid("extra state", "SparseSiblings", f"a dict with format {_STATE_FORMAT!r}", state)
        if list(state.get("names", ())) != list(self.names) or list(state.get("rows", ())) != list(self.rows):
            raise invalid("state", "SparseSiblings", f"siblings {list(self.names)} of {list(self.rows)} rows",
                          f"{state.get('names')} of {state.get('rows')} rows")

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: rows {f}..{f + r - 1}" for n, f, r in zip(self.names, self.first_rows, self.rows)) \
            + f", stacking={self.stacking}"


def _blocks_after_loading(siblings_ref: "weakref.ref[SparseSiblings]", fused: SparseLinear, incompatible_keys) -> None:
    """After a state dict was loaded into a stack (directly, or through a module above it): its siblings' blocks
    over the new arrays. Arrays that failed the stack's own check are left for the error torch raises with its
    message (the blocks are then made again before any call)."""
    siblings = siblings_ref()
    if siblings is None or siblings.fused is not fused:
        return
    try:
        fused.matrix  # the stack's own check; a failure is among torch's error messages already
    except (TypeError, ValueError):
        siblings._kept[0], siblings._blocks_of = None, None
        return
    siblings._make_blocks(where_kernel_runs=False)


class SiblingRows(torch.nn.Module):
    """Sibling ``index`` of a :class:`SparseSiblings`, in the sibling's place in the model: ``y = x @ W_i.T +
    b_i``, W_i its rows of the stack. It holds no tensor of its own (the stack is its parent's)."""

    def __init__(self, siblings: SparseSiblings, index: int):
        super().__init__()
        if not isinstance(siblings, SparseSiblings):
            raise invalid("type", "siblings", "a SparseSiblings", type(siblings).__name__, TypeError)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(siblings.names):
            raise invalid("value", "index", f"an integer in [0, {len(siblings.names) - 1}]", index)
        # In a tuple, so that torch does not file the stack as this module's child too (it is the parent's).
        self._siblings = (siblings,)
        self.index = index
        self.in_features, self.out_features = siblings.in_features, siblings.rows[index]

    @property
    def siblings(self) -> SparseSiblings:
        return self._siblings[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._siblings[0].run(self.index, x)

    def extra_repr(self) -> str:
        s = self._siblings[0]
        return (f"{s.names[self.index]} of the stacked siblings {'/'.join(s.names)}: rows "
                f"{s.first_rows[self.index]}..{s.first_rows[self.index] + self.out_features - 1}, "
                f"in_features={self.in_features}")
