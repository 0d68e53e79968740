"""The public products: ``spmm(A, X)`` and ``linear(X, A, bias)`` for a Tiled-CSL or Tiled-Bitmap ``A``.

Both run the same kernel (``spmm.tiled_csl``, with the sparse stage of A's format); they differ only in where the
activations and the output live:
``linear`` reads X as (N, K) row-major and writes (N, M) - the memory of a K x N column-major operand - while ``spmm``
reads X as (K, N) row-major and writes (M, N).

Arrays come back in the module they came from: CuPy in, CuPy out; a PyTorch tensor in, a PyTorch tensor out;
NumPy in and out under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), where the same kernel source runs
thread by thread on the CPU. Validation happens here, once; the launch path below it trusts its inputs.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, NamedTuple

import numpy as np

from flashllm_nb._checks import check_ndim, check_shape, invalid, wrong_device
from flashllm_nb.formats import _xp
from flashllm_nb.formats.tiled_bitmap import TiledBitmap
from flashllm_nb.formats.tiled_csl import TiledCSL
from flashllm_nb.kernels.spmm import driver as _driver
from flashllm_nb.kernels.spmm.plan import Force
from flashllm_nb.kernels.spmm.plan import plan as _plan
from flashllm_nb.kernels import ptx

__all__ = ["spmm", "linear", "prepare_spmm", "prepare_linear", "Prepared", "ACTIVATIONS"]

ACTIVATIONS = (None, "relu")  # what linear's epilogue can apply after the bias

_CHUNK = 8  # the kernel moves activations in 16-byte chunks of 8 values: rows must start 16-byte aligned


def spmm(A: TiledCSL | TiledBitmap, X: Any, out: Any = None, stream: Any = None, *, split_k: int | None = None,
         force: Force | None = None) -> Any:
    """Sparse times dense: ``A @ X``.

    Parameters
    ----------
    A : TiledCSL or TiledBitmap
        (M, K) sparse weights, on the device (``A.to_device()``), or on the host under the simulator.
    X : array
        (K, N) activations, row-major, same dtype as ``A`` (float16 or bfloat16). CuPy, PyTorch or any object
        with ``__cuda_array_interface__`` / DLPack; NumPy under the simulator.
    out : array, optional
        (M, N) row-major output of the same dtype and module as ``X``; allocated when omitted.
    stream : optional
        A Numba or CuPy stream to launch on; the default stream when omitted.
    split_k : int, optional
        Force the number of K splits (1 = none); chosen from the shape and the device when omitted.
    force : flashllm_nb.kernels.spmm.plan.Force, optional
        Fix other choices of the plan (Tensor-Core instruction, clearing, register buffer, stages): for tests and
        benchmarks that must run one variant; every variant computes the same product.

    Returns
    -------
    array
        (M, N) = A @ X, fp32-accumulated and rounded once to ``A.dtype``; ``out`` when given.

    Examples
    --------
    >>> Y = fl.spmm(A, X)                                          # doctest: +SKIP
    >>> np.allclose(Y.astype(np.float32), A.to_dense().astype(np.float32) @ X.astype(np.float32), rtol=1e-2)  # doctest: +SKIP
    """
    return _run(A, X, None, out, stream, split_k, x_layout="kn", force=force)


def linear(X: Any, A: TiledCSL | TiledBitmap, bias: Any = None, out: Any = None, stream: Any = None, *,
           split_k: int | None = None, force: Force | None = None, activation: str | None = None) -> Any:
    """A sparse linear layer: ``X @ A.T + bias``, optionally followed by ReLU.

    Parameters
    ----------
    X : array
        (N, K) activations (N tokens of K features), row-major, same dtype as ``A``.
    A : TiledCSL or TiledBitmap
        (M, K) = (out_features, in_features) sparse weights, on the device (host under the simulator).
    bias : array, optional
        (M,) added before the single rounding of the output.
    out : array, optional
        (N, M) row-major output; allocated when omitted.
    stream, split_k, force
        As for :func:`spmm`.
    activation : {None, "relu"}, optional
        ``"relu"``: ``max(X @ A.T + bias, 0)``, applied in the kernel's epilogue before the one rounding (a value
        that is negative becomes +0, NaN stays NaN); no separate pass over the output.

    Returns
    -------
    array
        (N, M) = X @ A.T + bias (then ReLU); ``out`` when given.
    """
    return _run(A, X, bias, out, stream, split_k, x_layout="nk", force=force, activation=activation)


class Prepared:
    """A sparse product with every argument checked and its kernel launch packed once; calling it runs the
    product again on the same arrays (their contents at the time of the call) and returns ``out``.

    For a loop that calls the same layer on the same buffers (LLM decoding with static buffers), this leaves one
    driver call per product on the host: no argument checks, no plan lookup, no packing. The stream is fixed when
    preparing; keep the arrays alive and unmoved (a new X or out array needs a new ``Prepared``). An X whose rows
    the kernel cannot read in place (row length not a multiple of 8 values, or a misaligned base) is copied into an
    aligned buffer on every call.
    """

    def __init__(self, out: Any, run, launch=None):
        self.out = out
        self._run = run
        self._launch = launch  # the packed kernel launch, when X is read in place on a GPU

    def __call__(self) -> Any:
        self._run()
        return self.out

    @property
    def retargetable(self) -> bool:
        """Whether :meth:`set_pointers` can be used: a GPU launch that reads X in place."""
        return self._launch is not None

    @property
    def packed_launch(self):
        """The packed driver launch under a retargetable product (None otherwise), for a per-call path that checks
        its own arguments: ``packed_launch.set_pointers(x, out, bias)`` as :meth:`set_pointers` without its checks
        (X must start 16-byte aligned), then ``packed_launch()`` launches. It is what a repeated CuPy call uses.
        Once pointed elsewhere, calling this product writes where the launch points, not to :attr:`out`."""
        return self._launch

    def set_pointers(self, x: int, out: int, bias: int | None = None) -> None:
        """Run later calls on other arrays of the same shapes, dtypes and row-major layout, given by their raw
        device addresses: X at ``x`` (16-byte aligned), the output at ``out``, the bias at ``bias`` (None keeps the
        prepared one; a product prepared without a bias takes none). The caller keeps the arrays alive until the
        products have run; this object keeps none of the arrays it was prepared with (``out`` becomes None, and so
        does what a call returns). This is how a framework with its own tensors (``flashllm_nb.torch``) reuses one
        launch for every call of a layer, and a CUDA graph recorder sees no array of the first call outlive it."""
        if self._launch is None:
            raise ValueError("Invalid use of set_pointers: this product reads X through an aligned copy or runs in "
                             "the simulator; prepare it on a GPU with an X whose rows are a multiple of 8 values "
                             "and start 16-byte aligned")
        if x % 16:
            raise invalid("alignment", "x", "an address that is a multiple of 16", hex(x))
        self._launch.set_pointers(x, out, bias)
        self.out = None

    def __repr__(self) -> str:
        if self.out is None:
            return "<flashllm_nb.Prepared product, pointed at other arrays by set_pointers>"
        return f"<flashllm_nb.Prepared product into {type(self.out).__module__} array of shape {tuple(self.out.shape)}>"


def prepare_spmm(A: TiledCSL | TiledBitmap, X: Any, out: Any = None, stream: Any = None, *, split_k: int | None = None,
                 force: Force | None = None) -> Prepared:
    """:func:`spmm`, checked and packed once: ``P = prepare_spmm(A, X); P()`` computes ``A @ X`` into ``P.out``
    as often as it is called. Arguments and errors as for :func:`spmm`."""
    return _run(A, X, None, out, stream, split_k, x_layout="kn", prepared=True, force=force)


def prepare_linear(X: Any, A: TiledCSL | TiledBitmap, bias: Any = None, out: Any = None, stream: Any = None, *,
                   split_k: int | None = None, force: Force | None = None, activation: str | None = None) -> Prepared:
    """:func:`linear`, checked and packed once: ``P = prepare_linear(X, A, bias); P()`` computes
    ``X @ A.T + bias`` into ``P.out`` as often as it is called. Arguments and errors as for :func:`linear`.

    Examples
    --------
    >>> P = fl.prepare_linear(X, A, out=Y)                         # doctest: +SKIP
    >>> for step in range(steps):                                  # doctest: +SKIP
    ...     X[...] = next_activations(); P()                      # Y now holds X @ A.T
    """
    return _run(A, X, bias, out, stream, split_k, x_layout="nk", prepared=True, force=force, activation=activation)


def _run(A, X, bias, out, stream, split_k, x_layout, prepared=False, force=None, activation=None):
    # This is the per-call host path of every sparse layer: it checks everything, but in a few attribute reads
    # per argument (see _operand); the launch below it trusts its inputs. A repeated CuPy call takes the
    # remembered launch instead (_FastCalls), after the checks that can change from call to call.
    if not prepared and _kind(X) == "cupy":
        result = _fast_calls.run(A, X, bias, out, stream, split_k, x_layout, force, activation)
        if result is not _fast_calls.MISS:
            return result
    given_out = out
    if not isinstance(A, (TiledCSL, TiledBitmap)):
        raise invalid("type", "A", "a flashllm_nb.TiledCSL or TiledBitmap", type(A).__name__, TypeError)
    if A.on_device == ptx.SIMULATOR:
        where = "on the host (NumPy) under the simulator" if ptx.SIMULATOR else "on the device"
        raise wrong_device("A", where, "device" if A.on_device else "host", advice=" (A.to_device())")
    m, k = A.shape
    dtype = A.dtype
    x, kind = _operand(X, "X", dtype)
    if x.ndim != 2:
        check_ndim(x, "X", 2)
    n = x.shape[0] if x_layout == "nk" else x.shape[1]
    if x.shape != ((n, k) if x_layout == "nk" else (k, n)):
        check_shape(x, "X", (None, k) if x_layout == "nk" else (k, None))
    if split_k is not None and (isinstance(split_k, bool) or not isinstance(split_k, (int, np.integer)) or split_k < 1):
        raise invalid("value", "split_k", "None or an integer >= 1", split_k)
    if force is not None and not isinstance(force, Force):
        raise invalid("type", "force", "None or a flashllm_nb.kernels.spmm.plan.Force", type(force).__name__, TypeError)
    if activation not in ACTIVATIONS:
        raise invalid("value", "activation", f"one of {ACTIVATIONS}", activation)
    relu = activation == "relu"

    out_shape = (n, m) if x_layout == "nk" else (m, n)
    if out is None:
        out = _empty_like_input(X, kind, out_shape, dtype)
    y, out_kind = _operand(out, "out", dtype)
    if out_kind == "numpy" and not y.flags.writeable:  # CuPy and PyTorch device arrays are always writeable
        raise invalid("writability", "out", "a writeable array", "a read-only one (out.flags.writeable is False)")
    if y.shape != out_shape:
        check_shape(y, "out", out_shape)
    if out_kind != kind:
        raise invalid("array type", "out", f"the same kind of array as X ({kind})", out_kind, TypeError)
    given_bias = bias
    if bias is not None:
        bias, _ = _operand(bias, "bias", dtype)
        if bias.shape != (m,):
            check_shape(bias, "bias", (m,))
    if n == 0 or m == 0:
        return Prepared(out, _nothing) if prepared else out
    if k == 0:
        def fill():
            y[...] = 0 if bias is None else bias[None, :] if x_layout == "nk" else bias[:, None]
            if relu:
                _relu_in_place(y, dtype)

        fill()
        return Prepared(out, fill) if prepared else out

    xp = np if kind == "numpy" else _cupy()
    given_x = x
    x, ldx = _aligned_rows(x, xp)
    p = _plan(m, n, k, "bfloat16" if dtype == _xp.BFLOAT16 else "float16", x_layout,
                     None if split_k is None else int(split_k), tile_vectors=A.mean_tile_vectors, force=force,
                     relu=relu, sparse=A.sparse_format)
    if kind == "numpy":  # the simulator indexes its arrays: flat uint16 views
        x_flat, y = x.reshape(-1), y.reshape(-1)
    else:
        x_flat = x
    operands = _driver.Operands(A.words, A.tile_offsets, x_flat, ldx, y, bias, m, n, k, A.n_tile_cols)
    arguments = (p, operands, xp, 0 if kind == "numpy" else _stream_handle(stream, X))
    if not prepared:
        if kind == "cupy" and x is given_x and out_kind == "cupy":
            _fast_calls.remember(A, _Call(X, given_bias, given_out, stream, split_k, x_layout, force, activation), out,
                                 lambda: _driver.prepare(*arguments))
        _driver.launch(*arguments)
        return out
    launch = _driver.prepare(*arguments)
    if x is given_x:
        return Prepared(out, launch, None if kind == "numpy" else launch)
    cols = given_x.shape[1]

    def copy_and_launch():  # X is read through an aligned copy: refresh it first
        x[:, :cols] = given_x
        launch()

    return Prepared(out, copy_and_launch)


class _Call(NamedTuple):
    """The arguments of a ``linear`` / ``spmm`` call that a remembered launch is filed under, as the caller passed
    them (``out`` and ``bias`` None included): the parameters of ``_FastCalls.run``, which takes them one by one
    because it is the hot path and builds no tuple."""

    X: Any
    bias: Any
    out: Any
    stream: Any
    split_k: Any
    x_layout: str
    force: Any
    activation: Any


class _FastCalls:
    """Remembered launches of repeated ``linear`` / ``spmm`` calls on CuPy arrays, per thread.

    An LLM calls each layer with the same weights, the same activation shape and the same kind of output every
    step. The first such call goes through every check and packs a launch of its own (``driver.prepare``); later
    calls with the same key re-check only what the key does not fix (types, row-major strides, 16-byte alignment),
    write the pointers of X, the output and the bias into that launch's parameter block, and launch it. This keeps
    the host cost of a call near a ``Prepared`` call's (``docs/kernel-results.md``, the host cost of a call).

    Launches are filed per matrix in a ``WeakKeyDictionary``: they go when the matrix goes, so a new matrix at a
    recycled address never meets an old launch, and a model of any number of layers keeps all of its own. Blocks
    are per thread: two threads patching one block could launch each other's pointers. Any call that does not
    match falls back to the full path, which raises the same errors as ever.
    """

    MISS = object()
    _PER_MATRIX = 16  # call signatures remembered per matrix (shapes, out/bias, stream); the oldest goes first

    def __init__(self, current_stream=None, empty=None):
        """``current_stream()`` gives the raw handle ``stream=None`` means and ``empty(shape, dtype)`` allocates an
        output: CuPy's by default (a test without a GPU gives its own)."""
        self._local = threading.local()
        self._current_stream = current_stream or _current_stream
        self._empty = empty or (lambda shape, dtype: _cupy().empty(shape, dtype))

    def _by_matrix(self) -> weakref.WeakKeyDictionary:
        by_matrix = getattr(self._local, "by_matrix", None)
        if by_matrix is None:
            by_matrix = self._local.by_matrix = weakref.WeakKeyDictionary()
        return by_matrix

    def _key(self, X, bias, out, stream, split_k, x_layout, force, activation):
        # split_k's type is part of the key: True == 1 and hashes alike, but only 1 is valid. The stream is keyed by
        # its raw handle (None: CuPy's current stream), which keeps no stream object alive.
        return (x_layout, X.shape, X.dtype.char, None if out is None else (out.shape, out.dtype.char),
                None if bias is None else (bias.shape, bias.dtype.char), split_k, type(split_k), force, activation,
                self._current_stream() if stream is None else _stream_handle(stream, X))

    def run(self, A, X, bias, out, stream, split_k, x_layout, force=None, activation=None):
        try:
            calls = self._by_matrix().get(A)
            if calls is None:
                return self.MISS
            entry = calls.get(self._key(X, bias, out, stream, split_k, x_layout, force, activation))
        except (AttributeError, TypeError):  # arguments without shape/dtype, unhashable ones, a bad stream
            return self.MISS
        if entry is None:
            return self.MISS
        cupy_array = entry.cupy_array
        x_ptr = X.data.ptr
        if X.strides != entry.x_strides or x_ptr % 16:
            return self.MISS
        if bias is not None and (type(bias) is not cupy_array or bias.strides != entry.bias_strides):
            return self.MISS
        if out is None:
            out = self._empty(entry.out_shape, entry.out_dtype)
        elif type(out) is not cupy_array or out.strides != entry.out_strides:
            return self.MISS
        launch = entry.launch
        launch.set_pointers(x_ptr, out.data.ptr, None if bias is None else bias.data.ptr)
        launch()
        return out

    def remember(self, A, call: _Call, out, prepare) -> None:
        """Keep the launch (``prepare()`` packs it) of a call that just passed every check under the key of its
        arguments ``call`` (``out``: the output it writes, which ``call.out`` is unless that is None). Only calls
        whose X, output and bias are all CuPy arrays can ever hit (``run`` re-checks their types): nothing else is
        packed."""
        if any(a is not None and _kind(a) != "cupy" for a in (call.X, call.bias, call.out)):
            return
        try:
            key = self._key(*call)
        except (AttributeError, TypeError):
            return
        calls = self._by_matrix().setdefault(A, {})
        if key not in calls and len(calls) >= self._PER_MATRIX:
            calls.pop(next(iter(calls)))
        calls[key] = _FastEntry(call.X, call.bias, out, prepare())


class _FastEntry:
    """One remembered launch (see ``_FastCalls``)."""

    def __init__(self, X, bias, out, launch):
        self.cupy_array = type(X)
        self.x_strides = X.strides
        self.out_strides = out.strides
        self.bias_strides = None if bias is None else bias.strides
        self.out_shape, self.out_dtype = out.shape, out.dtype
        # X's and the output's pointers are written before every launch, and A's arrays live as long as A (the
        # entry goes with it): the entry keeps no array of the first call alive.
        launch.arrays = None
        self.launch = launch


def _current_stream() -> int:
    """CuPy's current stream (what ``stream=None`` launches on), part of a remembered call's key."""
    return _cupy().cuda.get_current_stream().ptr


_fast_calls = _FastCalls()


def _relu_in_place(y, dtype) -> None:
    """ReLU on a float16 / bfloat16 array through its bit patterns, as the kernel's epilogue does it: a negative
    value (sign set, not -0, not NaN) becomes +0."""
    bits = y.view(np.uint16)
    magnitude = bits & 0x7FFF
    infinity = 0x7F80 if dtype == _xp.BFLOAT16 else 0x7C00
    bits[(bits >= 0x8000) & (magnitude != 0) & (magnitude <= infinity)] = 0


def _nothing() -> None:
    """The whole product of an empty output."""


_KINDS: dict[type, str] = {}


def _kind(x) -> str:
    """'numpy', 'cupy', 'torch' or 'other', remembered per type (a dictionary lookup after the first call)."""
    kind = _KINDS.get(type(x))
    if kind is None:
        root = type(x).__module__.split(".", 1)[0]
        kind = _KINDS[type(x)] = root if root in ("numpy", "cupy", "torch") else "other"
    return kind


def _operand(x, name: str, dtype):
    """(array the kernel can take, kind) for an argument that holds values of A's ``dtype``; checks dtype, device
    and row-major layout (the shape is the caller's to check).

    A CuPy float16 array passes as it is (the launch reads only its pointer and size); NumPy arrays (simulator)
    become uint16 views, since the simulated kernel stores bit patterns; uint16 arrays are taken as the bit patterns
    of ``dtype`` (how bfloat16 lives in CuPy); PyTorch tensors and other DLPack / CUDA-array-interface objects go
    through ``formats._xp.as_bits``.
    """
    kind = _kind(x)
    if kind == "cupy" and x.dtype.char in "eH":  # float16, or uint16 bit patterns
        if x.dtype.char == "e" and dtype != _xp.FLOAT16:
            raise invalid("dtype", name, f"A's dtype {dtype}", x.dtype, TypeError)
        array = x
    else:
        given = None if kind == "torch" or "int" not in str(getattr(x, "dtype", "")) else dtype
        array, got = _xp.as_bits(x, name, given)
        if got != dtype:
            raise invalid("dtype", name, f"A's dtype {dtype}", got, TypeError)
        if kind == "other":
            kind = "numpy" if isinstance(array, np.ndarray) else "cupy"
    if (kind == "numpy") != ptx.SIMULATOR:
        expected = "a NumPy array under the simulator" if ptx.SIMULATOR else "a device array (CuPy, PyTorch CUDA, ...)"
        raise wrong_device(name, expected, "host (NumPy)" if kind == "numpy" else "device")
    if not array.flags.c_contiguous:
        raise invalid("memory layout", name, "a C-contiguous (row-major) array", f"strides {array.strides}")
    return array, kind


_CUPY = None


def _cupy():
    """The cupy module, imported on first use (the simulator path never needs it)."""
    global _CUPY
    if _CUPY is None:
        import cupy

        _CUPY = cupy
    return _CUPY


def _stream_handle(stream, X) -> int:
    """The raw CUDA stream to launch on. ``None`` means the current stream of the library X came from (PyTorch's
    for a tensor, CuPy's otherwise: the legacy default stream unless the caller made another one current)."""
    if stream is None:
        if _kind(X) == "torch":
            import torch

            return torch.cuda.current_stream(X.device).cuda_stream
        import cupy

        return cupy.cuda.get_current_stream().ptr
    if isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
        return int(stream)
    for attribute in ("ptr", "cuda_stream", "handle"):  # CuPy, PyTorch, Numba
        handle = getattr(stream, attribute, None)
        if handle is not None:
            return int(getattr(handle, "value", handle) or 0)
    raise invalid("type", "stream", "None, a raw handle, or a CuPy, PyTorch or Numba stream", type(stream).__name__,
                  TypeError)


def _aligned_rows(x, xp):
    """X with rows that start 16-byte aligned: itself when its row length is a multiple of 8 values and its base is
    16-byte aligned, else a zero-padded copy (a rare shape pays one extra copy instead of a slow path). Returns the
    array and its row length (leading dimension)."""
    rows, cols = x.shape
    base = x.ctypes.data if xp is np else x.data.ptr
    if cols % _CHUNK == 0 and base % 16 == 0:
        return x, cols
    ld = -(-cols // _CHUNK) * _CHUNK
    padded = xp.zeros((rows, ld), dtype=x.dtype)
    padded[:, :cols] = x
    return padded, ld


def _empty_like_input(X, kind, shape, dtype):
    """A new output of X's kind: a torch tensor for torch, CuPy (uint16 bits for bfloat16) for CuPy, NumPy for
    NumPy."""
    if kind == "torch":
        import torch

        return torch.empty(shape, dtype=X.dtype, device=X.device)
    if kind == "numpy":
        return np.empty(shape, dtype=dtype)
    return _cupy().empty(shape, dtype=np.float16 if dtype == _xp.FLOAT16 else np.uint16)
