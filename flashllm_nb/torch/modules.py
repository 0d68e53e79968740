""":class:`SparseLinear`: a drop-in for ``torch.nn.Linear`` at inference, its weight in Tiled-CSL or Tiled-Bitmap.

The module owns three tensors, all in its state dict: ``words`` and ``tile_offsets`` (the format's arrays as
int32, in torch's own memory) and ``bias``; the matrix's shape, dtype and format travel as extra state. Its forward
calls ``torch.ops.flashllm_nb.sparse_linear`` (:mod:`flashllm_nb.torch.ops`) when traced by ``torch.compile`` and
the same implementation directly otherwise.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from flashllm_nb._checks import invalid, wrong_device
from flashllm_nb.formats import _xp
from flashllm_nb.formats.tiled_bitmap import TiledBitmap
from flashllm_nb.formats.tiled_csl import TILE_K, TILE_M, TiledCSL
from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.api import ACTIVATIONS
from flashllm_nb.torch import ops

__all__ = ["SparseLinear", "PRUNE_METHODS"]

PRUNE_METHODS = ("magnitude", "magnitude-row")
_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}
_TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_STATE_FORMAT = "flashllm_nb.SparseLinear/1"


def kernel_device() -> torch.device:
    """Where the kernel runs: the current CUDA device, or the CPU under the simulator."""
    return torch.device("cpu") if ptx.SIMULATOR else torch.device("cuda", torch.cuda.current_device())


def check_weight_device(device: torch.device, name: str) -> None:
    """Refuse tensors the kernel cannot reach: CPU tensors on a GPU machine, CUDA tensors under the simulator."""
    if ptx.SIMULATOR and device.type != "cpu":
        raise invalid("device", name, "a CPU tensor under the simulator", device)
    if not ptx.SIMULATOR and device.type != "cuda":
        raise wrong_device(name, "a CUDA tensor", device, advice=" (move the model with .cuda() first)")


class SparseLinear(torch.nn.Module):
    """``y = activation(x @ W.T + bias)`` with W sparse, for inference (no activation by default).

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
        Whether the layer adds a bias.
    dtype : torch.float16 or torch.bfloat16
    device : optional
        A CUDA device (default: the current one); the CPU under the simulator.
    activation : {None, "relu"}
        Applied to ``x @ W.T + bias`` in the kernel's epilogue, before the one rounding (``sparsify`` moves a ReLU
        that follows the layer here); also settable afterwards.
    sparse_format : {"csl", "bitmap"}
        How W is stored (:data:`~flashllm_nb.torch.ops.SPARSE_FORMATS`): Tiled-CSL, 4 bytes per entry, or
        Tiled-Bitmap, a bit per element and 16 bytes per 7 entries (fewer bytes below about 93 % sparsity).

    A new layer holds an all-zero matrix; :meth:`from_linear` converts an ``nn.Linear`` and ``load_state_dict``
    takes the state of another ``SparseLinear`` (matrices of any number of entries; checked in full). The activation
    is not part of the state: like the model's own activation modules it belongs to the model's structure, which
    :func:`~flashllm_nb.torch.sparsify` builds before a state is loaded into it.

    Notes
    -----
    Inference only: an input that requires grad while autograd is on is refused. ``x`` may have any leading
    dimensions; it runs on torch's current CUDA stream. Converting the module to another floating dtype is refused
    (the matrix keeps the dtype it was encoded in).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=torch.float16, device=None,
                 activation: Optional[str] = None, sparse_format: str = "csl"):
        super().__init__()
        if sparse_format not in ops.SPARSE_FORMATS:
            raise invalid("value", "sparse_format", f"one of {tuple(ops.SPARSE_FORMATS)}", repr(sparse_format))
        self._sparse_format = sparse_format
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise invalid("value", name, "an integer >= 0", value)
        if dtype not in _NAMES:
            raise invalid("dtype", "dtype", "torch.float16 or torch.bfloat16", dtype, TypeError)
        device = kernel_device() if device is None else torch.device(device)
        check_weight_device(device, "device")
        self.in_features, self.out_features, self.dtype = in_features, out_features, dtype
        n_tiles = math.ceil(out_features / TILE_M) * math.ceil(in_features / TILE_K)
        self.register_buffer("words", torch.zeros(0, dtype=torch.int32, device=device))
        self.register_buffer("tile_offsets", torch.zeros(n_tiles + 2, dtype=torch.int32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        self.activation = activation
        self._state: Optional[ops.MatrixState] = None
        self._checked = True  # whether words and tile_offsets passed the full format check (loaded ones must)

    @property
    def activation(self) -> Optional[str]:
        """None, or ``"relu"``: applied in the kernel's epilogue after the bias (a negative value becomes +0, NaN
        stays NaN)."""
        return self._activation

    @activation.setter
    def activation(self, value: Optional[str]) -> None:
        if value not in ACTIVATIONS:
            raise invalid("value", "activation", f"one of {ACTIVATIONS}", repr(value))
        self._activation = value

    @property
    def sparse_format(self) -> str:
        """``"csl"`` or ``"bitmap"``: the format W is stored in (fixed when the layer is made)."""
        return self._sparse_format

    # ------------------------------------------------------------------------------------------------ building

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, sparsity: Optional[float] = None,
                    prune: str = "magnitude", sparse_format: str = "csl") -> "SparseLinear":
        """A SparseLinear with ``linear``'s weight and bias (copied; ``linear`` is left as it is).

        Parameters
        ----------
        linear : torch.nn.Linear
            float16 or bfloat16, on a CUDA device (the CPU under the simulator).
        sparsity : float in [0, 1), optional
            Prune the weight to this fraction of zeros first; None keeps the zeros it has (a pruned checkpoint).
        prune : {"magnitude", "magnitude-row"}
            Per matrix, or the same count in every output row (Wanda's mask shape); exact in count.
        sparse_format : {"csl", "bitmap"}
            The format of the layer's weight (the class's parameter).
        """
        from flashllm_nb.llm.weights import prune_bits

        if not isinstance(linear, torch.nn.Linear):
            raise invalid("type", "linear", "a torch.nn.Linear", type(linear).__name__, TypeError)
        weight = linear.weight
        if weight.dtype not in _NAMES:
            raise invalid("dtype", "linear.weight", "torch.float16 or torch.bfloat16 (convert the model with "
                          ".half() or .to(torch.bfloat16) first)", weight.dtype, TypeError)
        check_weight_device(weight.device, "linear.weight")
        if sparsity is not None and (isinstance(sparsity, bool) or not isinstance(sparsity, (int, float))
                                     or not 0 <= sparsity < 1):
            raise invalid("value", "sparsity", "None or a number in [0, 1)", sparsity)
        if prune not in PRUNE_METHODS:
            raise invalid("value", "prune", f"one of {PRUNE_METHODS}", prune)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, weight.dtype, weight.device,
                    sparse_format=sparse_format)
        with torch.no_grad():
            bits, dtype = _xp.as_bits(weight, "linear.weight")
            if sparsity is not None:
                bits = prune_bits(bits, sparsity, prune)
            layer._take(ops.SPARSE_FORMATS[sparse_format].from_dense(bits, dtype=dtype))
            del bits
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    @classmethod
    def from_tiled_csl(cls, matrix: TiledCSL, bias: Optional[torch.Tensor] = None, device=None) -> "SparseLinear":
        """A SparseLinear whose weight is ``matrix`` (copied into torch's memory), with ``bias`` (copied) or none.

        Parameters
        ----------
        matrix : TiledCSL
            float16 or bfloat16, where the kernel runs (on the device; on the host under the simulator).
        bias : torch.Tensor, optional
            (out_features,) of the matrix's dtype, on the kernel's device.
        device : optional
            The layer's CUDA device (default: the current one); the CPU under the simulator.
        """
        if not isinstance(matrix, TiledCSL):
            raise invalid("type", "matrix", "a TiledCSL", type(matrix).__name__, TypeError)
        return cls.from_matrix(matrix, bias, device)

    @classmethod
    def from_matrix(cls, matrix: TiledCSL | TiledBitmap, bias: Optional[torch.Tensor] = None,
                    device=None) -> "SparseLinear":
        """As :meth:`from_tiled_csl`, for a matrix of either format; the layer takes the matrix's format."""
        if not isinstance(matrix, tuple(ops.SPARSE_FORMATS.values())):
            raise invalid("type", "matrix", "a TiledCSL or TiledBitmap", type(matrix).__name__, TypeError)
        if matrix.on_device == ptx.SIMULATOR:
            raise invalid("device", "matrix", "the host (NumPy arrays) under the simulator" if ptx.SIMULATOR
                          else "the device (matrix.to_device())", "the device" if matrix.on_device else "the host")
        dtype = _TORCH_DTYPES[matrix.dtype.name]
        out_features, in_features = matrix.shape
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or bias.dtype is not dtype:
                raise invalid("type", "bias", f"a {dtype} tensor or None",
                              getattr(bias, "dtype", type(bias).__name__), TypeError)
            if bias.shape != (out_features,):
                raise invalid("shape", "bias", f"({out_features},) (the matrix's rows)", tuple(bias.shape))
            check_weight_device(bias.device, "bias")
        layer = cls(in_features, out_features, bias is not None, dtype, device, sparse_format=matrix.sparse_format)
        with torch.no_grad():
            layer._take(matrix)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def _take(self, matrix: TiledCSL | TiledBitmap) -> None:
        """Copy an encoded matrix's arrays into this module's own tensors (torch's memory)."""
        device = self.words.device
        words = torch.from_dlpack(matrix.words.view(np.int32))
        offsets = torch.from_dlpack(matrix.tile_offsets)
        self.words = words.to(device, copy=True)
        self.tile_offsets = offsets.to(device, copy=True)
        self._relink()

    # ------------------------------------------------------------------------------------------------ running

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            self._check_input(x)
            return torch.ops.flashllm_nb.sparse_linear(x, self.words, self.tile_offsets, self.bias,
                                                       self.out_features, self._activation, self._sparse_format)
        # The buffers through the module's buffer dict: nn.Module.__getattr__ (self.words) costs about as much per
        # buffer as the rest of this method together.
        buffers = self._buffers
        words, offsets = buffers["words"], buffers["tile_offsets"]
        state = self._kernel_state(words, offsets)
        # the per-call checks, in a few attribute reads; anything unusual goes to _check_input for its message
        if type(x) is not torch.Tensor or x.dtype is not self.dtype or x.get_device() != state.device_index or \
                x.dim() == 0 or x.shape[-1] != self.in_features or (x.requires_grad and torch.is_grad_enabled()):
            self._check_input(x)
        bias = buffers["bias"] if "bias" in buffers else self.bias  # a bias made a Parameter is not a buffer
        return state.linear(x, bias, self._activation)

    def _check_input(self, x) -> None:
        """Raise for an input this layer cannot take, naming what is wrong."""
        if not isinstance(x, torch.Tensor):
            raise invalid("type", "x", "a torch.Tensor", type(x).__name__, TypeError)
        if x.dtype is not self.dtype:
            raise invalid("dtype", "x", f"{self.dtype} (the layer's)", x.dtype, TypeError)
        if x.device != self.words.device:
            raise invalid("device", "x", f"{self.words.device} (the layer's)", x.device)
        if x.shape[-1:] != (self.in_features,):
            raise invalid("shape", "x", f"(..., {self.in_features})", tuple(x.shape))
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("SparseLinear is for inference: x requires grad with autograd on; run under "
                               "torch.no_grad() or torch.inference_mode()")

    def _relink(self) -> None:
        """Make the kernel's view of this module's tensors now, where the kernel can reach them: making it reads
        tile_offsets back to check them, which a CUDA graph being captured (``torch.compile``'s
        ``reduce-overhead``) would not allow on a first call."""
        self._state = None
        if self.words.device.type == kernel_device().type:
            self._kernel_state(self.words, self.tile_offsets)

    def _kernel_state(self, words: torch.Tensor, offsets: torch.Tensor) -> ops.MatrixState:
        """The kernel-side view of this module's tensors ``words`` and ``offsets`` (its buffers), made again after
        they moved or were replaced (``.to()``, loading, assignment); loaded arrays get the full format check
        first."""
        state = self._state
        if state is None or state.words_ptr != words.data_ptr() or state.offsets_ptr != offsets.data_ptr():
            check_weight_device(words.device, "SparseLinear.words")
            if not self._checked:
                ops.matrix_views(words, offsets, self.shape, _NAMES[self.dtype], full_check=True,
                                 sparse_format=self._sparse_format)
                self._checked = True
            state = self._state = ops.MatrixState(words, offsets, self.shape, _NAMES[self.dtype],
                                                  sparse_format=self._sparse_format)
            ops.register(state)
        return state

    # ------------------------------------------------------------------------------------------------ reading

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features): the weight's shape."""
        return self.out_features, self.in_features

    @property
    def matrix(self) -> TiledCSL | TiledBitmap:
        """The weight as a :class:`~flashllm_nb.TiledCSL` or :class:`~flashllm_nb.TiledBitmap` (its
        ``sparse_format``) over this module's tensors (no copy)."""
        return self._kernel_state(self.words, self.tile_offsets).matrix

    @property
    def sparsity(self) -> float:
        return self.matrix.sparsity

    def to_dense(self) -> torch.Tensor:
        """The weight as a dense (out_features, in_features) tensor of the layer's dtype (a new allocation)."""
        bits = self.matrix.to_dense(bits=True)
        return torch.from_dlpack(bits.view(np.int16)).view(self.dtype).clone()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"dtype={self.dtype}, sparsity={self.sparsity:.1%}, {self.words.nbytes / 1e6:.2f} MB of words"
                + (f", sparse_format={self._sparse_format!r}" if self._sparse_format != "csl" else "")
                + (f", activation={self._activation!r}" if self._activation else ""))

    # ------------------------------------------------------------------------------------------------ state

    def get_extra_state(self) -> dict:
        return {"format": _STATE_FORMAT, "shape": [self.out_features, self.in_features],
                "dtype": _NAMES[self.dtype], "sparse_format": self._sparse_format}

    def set_extra_state(self, state) -> None:
        expected = self.get_extra_state()
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise invalid("extra state", "SparseLinear", f"a dict with format {_STATE_FORMAT!r}", state)
        given_format = state.get("sparse_format", "csl")  # states saved before Tiled-Bitmap existed are CSL
        if list(state.get("shape", ())) != expected["shape"] or state.get("dtype") != expected["dtype"] or \
                given_format != expected["sparse_format"]:
            raise invalid("state", "SparseLinear", f"a {expected['dtype']} matrix of shape {expected['shape']} in "
                          f"format {expected['sparse_format']!r}",
                          f"{state.get('dtype')} of shape {state.get('shape')} in format {given_format!r}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # words change length with the number of entries: resize to the incoming tensor before torch copies it
        incoming = state_dict.get(prefix + "words")
        if isinstance(incoming, torch.Tensor) and incoming.shape != self.words.shape:
            self.words = torch.empty(incoming.shape, dtype=torch.int32, device=self.words.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._state = None
        if any(key.startswith(prefix) for key in missing_keys) or error_msgs:
            return
        self._checked = False  # arrays from outside: every invariant is checked before any kernel reads them
        try:
            self._relink()
        except (TypeError, ValueError) as e:
            error_msgs.append(f"{prefix or 'SparseLinear'}: the loaded {self._sparse_format!r} arrays are invalid: {e}")

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        if self.bias is not None and self.bias.dtype is not self.dtype:
            self.bias = self.bias.to(self.dtype)
            raise TypeError(f"Invalid dtype conversion of SparseLinear: its matrix is {self.dtype} and stays so; "
                            f"convert the model before sparsifying it")
        self._relink()
        return result
