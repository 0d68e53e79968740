"""The PyTorch operator ``torch.ops.flashllm_nb.sparse_linear``: ``x @ W.T + bias`` for a sparse ``W`` held in two
int32 tensors.

    sparse_linear(Tensor x, Tensor words, Tensor tile_offsets, Tensor? bias, int out_features,
                  str? activation=None, str sparse_format="csl") -> Tensor

``x`` is (..., in_features) float16 or bfloat16; ``words`` and ``tile_offsets`` are the matrix's arrays in format
``sparse_format`` (``"csl"``: ``TiledCSL.words`` and ``tile_offsets``; ``"bitmap"``: ``TiledBitmap``'s; words viewed
as int32) on the same device; the result is (..., out_features) in ``x``'s dtype, with ``activation`` (None or
``"relu"``) applied in the kernel's epilogue. It is a
``torch.library`` custom operator with a fake (meta) implementation, so ``torch.compile(fullgraph=True)`` traces
through it and CUDA graphs capture its launch; it runs on torch's current stream. On a machine without a GPU (the
simulator) the tensors are CPU tensors and the same kernel runs in Numba's CUDA simulator.

Each call goes to the kernel through :mod:`flashllm_nb.kernels.api`. A :class:`MatrixState` (one per
:class:`~flashllm_nb.torch.SparseLinear`) keeps the matrix as a TiledCSL or TiledBitmap over the module's
own tensors and one packed launch per (tokens, stream, bias, activation) that later calls point at their tensors
(``Prepared.packed_launch``): after the first call of a shape, a call costs a lookup, an allocation and the driver call.
While a CUDA graph records, the kernels launch as programmatic dependents (``kernels.driver``), so that in the
replayed graph each loads its weights while the kernel before it finishes.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Optional

import numpy as np
import torch

from flashllm_nb._checks import invalid
from flashllm_nb.formats import _xp
from flashllm_nb.formats.tiled_bitmap import TiledBitmap
from flashllm_nb.formats.tiled_csl import TiledCSL
from flashllm_nb.kernels import api, driver, ptx

__all__ = ["sparse_linear", "MatrixState", "matrix_views", "SPARSE_FORMATS"]

#: The matrix formats a SparseLinear holds its weight in, by name: Tiled-CSL (a word per entry) or Tiled-Bitmap (a
#: bitmap per tile and the values; fewer bytes below about 93 % sparsity).
SPARSE_FORMATS = {fmt.sparse_format: fmt for fmt in (TiledCSL, TiledBitmap)}

_LAUNCHES_PER_MATRIX = 16  # prepared launches kept per matrix (token counts x streams); the oldest goes first
_TORCH_DTYPES = {torch.float16: _xp.FLOAT16, torch.bfloat16: _xp.BFLOAT16}


def matrix_views(words: torch.Tensor, tile_offsets: torch.Tensor, shape: tuple[int, int], dtype,
                 full_check: bool = False, sparse_format: str = "csl") -> TiledCSL | TiledBitmap:
    """A matrix of ``SPARSE_FORMATS[sparse_format]`` over two int32 tensors' memory (no copy): CuPy views of CUDA
    tensors, NumPy views of CPU tensors under the simulator. ``full_check`` checks every invariant (for tensors from
    outside, as a state dict); otherwise only the cheap ones."""
    fmt = SPARSE_FORMATS[sparse_format]
    if ptx.SIMULATOR:
        w, o = words.numpy().view(np.uint32), tile_offsets.numpy()
    else:
        import cupy

        w, o = cupy.from_dlpack(words.detach()).view(np.uint32), cupy.from_dlpack(tile_offsets.detach())
    return fmt.from_raw(w, o, shape, dtype) if full_check else fmt(w, o, shape, dtype)


class MatrixState:
    """The kernel-side state of one sparse matrix: the matrix (of format ``sparse_format``) over the tensors
    ``words`` and ``tile_offsets`` (whose data pointers it was made for) and its prepared launches."""

    def __init__(self, words: torch.Tensor, tile_offsets: torch.Tensor, shape: tuple[int, int], dtype,
                 full_check: bool = False, sparse_format: str = "csl"):
        self.matrix = matrix_views(words, tile_offsets, shape, dtype, full_check, sparse_format)
        self.sparse_format = sparse_format
        self.words_ptr, self.offsets_ptr = words.data_ptr(), tile_offsets.data_ptr()
        self.out_features = shape[0]
        # whether a kernel launch can read rows in place and be kept: rows of a multiple of 8 values, and a matrix
        # with rows and columns (an empty one is the kernel API's fill, or nothing)
        self._launchable = shape[0] > 0 and shape[1] > 0 and shape[1] % 8 == 0
        self.device_index = words.get_device()  # -1 on the CPU
        self._launches: dict[tuple, Any] = {}  # (rows, stream, bias is None, activation) -> Prepared.packed_launch

    def linear(self, x: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str] = None) -> torch.Tensor:
        """``activation(x @ W.T + bias)`` in a new tensor, for ``x`` of shape (..., in_features) on the matrix's
        device, of its dtype, and ``activation`` None or "relu" (trusted: the module and the operator's callers
        check)."""
        rows = x if x.dim() == 2 else x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (-1, 0) is ambiguous
        if not rows.is_contiguous():
            rows = rows.contiguous()
        n = rows.shape[0]
        out = rows.new_empty(n, self.out_features)  # sizes as arguments: parsed faster than a tuple
        if n:
            self._run(rows, bias, activation, out)
        return out if rows is x else out.view(*x.shape[:-1], self.out_features)

    def _run(self, x: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str],
             out: torch.Tensor) -> None:
        """``out = activation(x @ W.T + bias)`` for 2-D row-major ``x`` and ``out``: the launch kept for this many
        rows on this stream (made on the first such call), pointed at them; or, for rows the kernel cannot read in
        place or an empty matrix, the kernel API's checked path."""
        if ptx.SIMULATOR:  # CPU tensors: the kernel API takes their bits as NumPy arrays (shared memory)
            api.linear(_host_bits(x), self.matrix, None if bias is None else _host_bits(bias), _host_bits(out),
                       activation=activation)
            return
        stream = _raw_stream(self.device_index)
        x_ptr = x.data_ptr()
        if x_ptr % 16 or not self._launchable:
            api.linear(x, self.matrix, bias, out, stream=stream, activation=activation)
            return
        key = (x.shape[0], stream, bias is None, activation)
        launch = self._launches.get(key)
        if launch is None:
            # kept without any tensor of this call (one made while a CUDA graph records must not outlive the
            # recording unseen): every call, this one included, points it at its tensors by address
            launch = api.prepare_linear(x, self.matrix, bias, out, stream=stream, activation=activation).packed_launch
            if len(self._launches) >= _LAUNCHES_PER_MATRIX:
                self._launches.pop(next(iter(self._launches)))
            self._launches[key] = launch
        launch.set_pointers(x_ptr, out.data_ptr(), None if bias is None else bias.data_ptr())
        if _capturing():
            # In a CUDA graph every earlier node is the model's own work, none of which writes the weights: the
            # kernel may load them before the previous kernel ends (a programmatic dependent launch; the kernel
            # waits for it before reading x). Eager calls stay ordinary: a kernel that wrote the weights (the
            # conversion, a state dict load) may still be running.
            with driver.dependent_launch_scope():
                launch()
        else:
            launch()


# The raw handle of torch's current stream on a device. torch.cuda.current_stream(i).cuda_stream builds a Stream
# object per call (a microsecond or two, paid on every layer); Triton and torch's inductor read the handle through
# torch._C._cuda_getCurrentRawStream instead, which this uses where the torch build has it.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None) or (
    lambda device_index: torch.cuda.current_stream(device_index).cuda_stream)


# Whether torch's current stream is capturing a CUDA graph, through the C function that
# torch.cuda.is_current_stream_capturing wraps where the torch build has it.
_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", None) or torch.cuda.is_current_stream_capturing


def _host_bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy().view(np.uint16)


# Each SparseLinear (and each sibling's rows of a SparseSiblings) files its state here under the addresses of its
# words and tile offsets (siblings' blocks share words with their stack: the first sibling's start at the same
# address); the operator finds it there. The module holds the state: it goes when the module goes.
_STATES: "weakref.WeakValueDictionary[tuple[int, int], MatrixState]" = weakref.WeakValueDictionary()


def register(state: MatrixState) -> None:
    _STATES[state.words_ptr, state.offsets_ptr] = state


def _state_for(words: torch.Tensor, tile_offsets: torch.Tensor, out_features: int, x: torch.Tensor,
               sparse_format: str) -> MatrixState:
    state = _STATES.get((words.data_ptr(), tile_offsets.data_ptr()))
    if state is not None and state.matrix.shape == (out_features, x.shape[-1]) and \
            _TORCH_DTYPES[x.dtype] == state.matrix.dtype and state.sparse_format == sparse_format:
        return state
    # tensors no SparseLinear registered (a direct call, or copies made by a tracer): wrap them for this call
    return MatrixState(words, tile_offsets, (out_features, x.shape[-1]), _TORCH_DTYPES[x.dtype],
                       sparse_format=sparse_format)


def _check_arguments(activation, sparse_format) -> None:
    if activation not in api.ACTIVATIONS:
        raise invalid("value", "activation", f"one of {api.ACTIVATIONS}", repr(activation))
    if sparse_format not in SPARSE_FORMATS:
        raise invalid("value", "sparse_format", f"one of {tuple(SPARSE_FORMATS)}", repr(sparse_format))


@torch.library.custom_op("flashllm_nb::sparse_linear", mutates_args=())
def sparse_linear(x: torch.Tensor, words: torch.Tensor, tile_offsets: torch.Tensor, bias: Optional[torch.Tensor],
                  out_features: int, activation: Optional[str] = None, sparse_format: str = "csl") -> torch.Tensor:
    """``activation(x @ W.T + bias)`` for the ``W`` of shape (out_features, x.shape[-1]) in ``words`` and
    ``tile_offsets``, in format ``sparse_format`` (see the module docstring)."""
    _check_arguments(activation, sparse_format)
    return _state_for(words, tile_offsets, out_features, x, sparse_format).linear(x, bias, activation)


@sparse_linear.register_fake
def _(x, words, tile_offsets, bias, out_features, activation=None, sparse_format="csl"):
    _check_arguments(activation, sparse_format)
    return x.new_empty((*x.shape[:-1], out_features))
