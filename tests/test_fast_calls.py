"""The remembered-launch cache of repeated CuPy calls (``api._FastCalls``), without a GPU: stand-in arrays whose
type lives in a ``cupy`` module, a stub launch that records its parameter block, and a fixed current stream. The
GPU test ``test_repeated_calls_take_the_remembered_launch_and_stay_right`` runs the real thing."""

from __future__ import annotations

import gc
import types

import numpy as np
import pytest

from flashllm_nb.kernels import api
from flashllm_nb.kernels.spmm import driver
from flashllm_nb.kernels.spmm.plan import Force


class FakeArray:
    """What the fast path reads of a CuPy array: shape, dtype, strides, data.ptr."""

    def __init__(self, shape, ptr, dtype=np.float16, strides=None):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.strides = strides or (shape[1] * self.dtype.itemsize, self.dtype.itemsize)
        self.data = types.SimpleNamespace(ptr=ptr)


FakeArray.__module__ = "cupy.stand_in"  # api._kind files a type by the root of its module


class Matrix:
    """A weak-referenceable stand-in for TiledCSL (the cache only keys on it)."""


class StubLaunch:
    """A PreparedLaunch stand-in: its slots, and the X/y/bias pointers it held at each launch."""

    def __init__(self):
        self.slots = [0] * driver._N_PARAMETERS
        self.arrays = ("arrays of the first call",)
        self.launched = []

    set_pointers = driver.PreparedLaunch.set_pointers

    def __call__(self):
        s = self.slots
        self.launched.append((s[driver.X_POINTER_SLOT], s[driver.Y_POINTER_SLOT], s[driver.BIAS_POINTER_SLOT]))


@pytest.fixture
def calls():
    """A cache whose current stream is 7 and whose new outputs are stand-ins at 0x9000."""
    return api._FastCalls(current_stream=lambda: 7, empty=lambda shape, dtype: FakeArray(shape, 0x9000, dtype))


def remember(calls, A, X, bias=None, out=None, stream=None, split_k=None, force=None):
    """Remember a call as _run does after its checks; returns the stub launch."""
    launch = StubLaunch()
    output = out if out is not None else FakeArray((X.shape[0], 64), 0x8000)
    calls.remember(A, api._Call(X, bias, out, stream, split_k, "nk", force, None), output, lambda: launch)
    return launch


def test_a_repeated_call_patches_the_pointers_and_launches(calls):
    A, X = Matrix(), FakeArray((16, 128), 0x1000)
    launch = remember(calls, A, X)
    assert launch.arrays is None  # the first call's arrays are not kept alive
    X2, out = FakeArray((16, 128), 0x2000), FakeArray((16, 64), 0x3000)
    assert calls.run(A, X2, None, None, None, None, "nk").data.ptr == 0x9000  # a new output, allocated
    assert calls.run(A, X2, None, out, None, None, "nk") is calls.MISS  # out given: another key
    launch_out = remember(calls, A, X, out=out)
    assert calls.run(A, X2, None, out, None, None, "nk") is out
    assert launch.launched == [(0x2000, 0x9000, 0)] and launch_out.launched == [(0x2000, 0x3000, 0)]
    bias = FakeArray((64,), 0x4000, strides=(2,))
    launch_bias = remember(calls, A, X, bias=bias, out=out)
    assert calls.run(A, X2, FakeArray((64,), 0x5000, strides=(2,)), out, None, None, "nk") is out
    assert launch_bias.launched == [(0x2000, 0x3000, 0x5000)]


@pytest.mark.parametrize("change", ["strides", "misaligned", "shape", "dtype", "split_k", "split_k_bool", "force",
                                    "stream", "layout", "bias_type", "out_strides", "other_matrix", "activation"])
def test_anything_the_key_or_checks_do_not_cover_misses(calls, change):
    A, X, out = Matrix(), FakeArray((16, 128), 0x1000), FakeArray((16, 64), 0x3000)
    bias = FakeArray((64,), 0x4000, strides=(2,))
    launch = remember(calls, A, X, bias=bias, out=out, split_k=1)
    args = dict(A=A, X=X, bias=bias, out=out, stream=None, split_k=1, x_layout="nk")
    if change == "strides":
        args["X"] = FakeArray((16, 128), 0x1000, strides=(2, 32))
    elif change == "misaligned":
        args["X"] = FakeArray((16, 128), 0x1002)
    elif change == "shape":
        args["X"] = FakeArray((8, 128), 0x1000)
    elif change == "dtype":
        args["X"] = FakeArray((16, 128), 0x1000, dtype=np.uint16)
    elif change == "split_k":
        args["split_k"] = 2
    elif change == "split_k_bool":  # True == 1, but the full path rejects a bool
        args["split_k"] = True
    elif change == "force":
        args["force"] = Force(mma="sync")
    elif change == "stream":
        args["stream"] = 5
    elif change == "layout":
        args["x_layout"] = "kn"
    elif change == "bias_type":
        args["bias"] = np.zeros(64, np.float16)
    elif change == "out_strides":
        args["out"] = FakeArray((16, 64), 0x3000, strides=(2, 32))
    elif change == "other_matrix":
        args["A"] = Matrix()
    elif change == "activation":
        args["activation"] = "relu"
    assert calls.run(**args) is calls.MISS
    assert launch.launched == []


@pytest.mark.parametrize("bias", [np.zeros(64, np.float16),  # a NumPy array: has everything a key needs
                                  types.SimpleNamespace(shape=(64,), dtype=types.SimpleNamespace(), strides=(2,))],
                         ids=["numpy", "no-dtype-char"])
def test_calls_with_other_kinds_of_arrays_are_not_remembered(calls, bias):
    """Such calls could never hit (run re-checks the types): packing a launch for them would only cost time."""
    A, X = Matrix(), FakeArray((16, 128), 0x1000)
    packed = []
    calls.remember(A, api._Call(X, bias, None, None, None, "nk", None, None), FakeArray((16, 64), 0x8000),
                   lambda: packed.append(1))
    assert packed == [] and calls.run(A, X, bias, None, None, None, "nk") is calls.MISS


def test_launches_go_with_their_matrix_and_each_matrix_keeps_a_bounded_number(calls):
    A = Matrix()
    for rows in range(1, calls._PER_MATRIX + 2):  # one signature more than a matrix keeps
        remember(calls, A, FakeArray((rows, 128), 0x1000))
    assert calls.run(A, FakeArray((1, 128), 0x1000), None, None, None, None, "nk") is calls.MISS  # the oldest went
    assert calls.run(A, FakeArray((2, 128), 0x1000), None, None, None, None, "nk") is not calls.MISS
    assert len(calls._by_matrix()) == 1
    del A
    gc.collect()
    assert len(calls._by_matrix()) == 0
