"""The format layer on a GPU: the CuPy encoder and decoder equal the NumPy ones bit for bit, device inputs of every
accepted kind (CuPy, torch incl. bfloat16), device validation, I/O and pruning, and the encoder's speed. (Pruned
weights with -0.0 are checked in ``test_tiled_csl.py``, which encodes them on the session's tier: here, the GPU.)

Run on a machine with a CUDA GPU and CuPy: ``pytest -m gpu tests/test_tiled_csl_gpu.py``.
"""

from __future__ import annotations

import statistics
import time

import ml_dtypes
import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

from flashllm_nb import prune  # noqa: E402
from flashllm_nb.formats.io import load, save  # noqa: E402
from flashllm_nb.formats.tiled_csl import TiledCSL  # noqa: E402
from flashllm_nb.reference import spmm_reference  # noqa: E402

pytestmark = pytest.mark.gpu

F16, BF16 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)


def _bits(shape, sparsity, seed):
    """Random uint16 patterns (NaN payloads, -0.0, subnormals included) with Bernoulli zeros."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(1, 2**16, shape, dtype=np.uint16)
    bits[rng.random(shape, dtype=np.float32) < sparsity] = 0
    return bits


def _without_negative_zeros(bits):
    """What a round trip gives back: -0.0 as +0.0 (a zero, not stored), every other pattern as it was."""
    return np.where(bits == 0x8000, np.uint16(0), bits)


def _masked(shape, kept, seed, dtype=F16):
    """``W * mask`` as pruning code writes it: -0.0 wherever a pruned weight was negative (as uint16 bits)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    bits = (W * (rng.random(shape, dtype=np.float32) < kept).astype(dtype)).view(np.uint16)
    assert (bits == 0x8000).any()
    return bits


def _assert_same_encoding(device: TiledCSL, host: TiledCSL):
    assert device.on_device and not host.on_device
    assert (device.shape, device.dtype, device.nnz) == (host.shape, host.dtype, host.nnz)
    np.testing.assert_array_equal(cupy.asnumpy(device.words), host.words)
    np.testing.assert_array_equal(cupy.asnumpy(device.tile_offsets), host.tile_offsets)


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("shape, sparsity", [((4096, 4096), 0.8), ((4096, 4096), 0.0), ((1000, 777), 0.5),
                                             ((1, 1), 0.0), ((129, 65), 0.99), ((0, 64), 0.5)])
def test_cupy_encoder_equals_numpy_encoder(shape, sparsity, dtype):
    """The CuPy encoder gives the NumPy encoder's words and offsets bit for bit (empty, dense, ragged and large
    matrices), its decoder the input's bits (-0.0 as +0.0), and to_device / to_host move the same encoding."""
    bits = _bits(shape, sparsity, seed=shape[0])
    host = TiledCSL.from_dense(bits.view(dtype))
    device = TiledCSL.from_dense(cupy.asarray(bits), dtype=dtype)
    _assert_same_encoding(device, host)
    np.testing.assert_array_equal(cupy.asnumpy(device.to_dense(bits=True)), _without_negative_zeros(bits))
    _assert_same_encoding(host.to_device(), host)
    _assert_same_encoding(device, device.to_host())


def test_device_float16_round_trip_and_bfloat16_needs_bits():
    """A CuPy float16 matrix round-trips to a CuPy float16 array; a bfloat16 one decodes only to bits (CuPy has
    no bfloat16), and says so."""
    bits = _bits((300, 200), 0.7, seed=1)
    A = TiledCSL.from_dense(cupy.asarray(bits.view(np.float16)))
    dense = A.to_dense()
    assert isinstance(dense, cupy.ndarray) and dense.dtype == np.float16
    np.testing.assert_array_equal(cupy.asnumpy(dense.view(cupy.uint16)), _without_negative_zeros(bits))
    B = TiledCSL.from_dense(cupy.asarray(bits), dtype=BF16)
    with pytest.raises(TypeError, match="CuPy has no bfloat16"):
        B.to_dense()


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_torch_cuda_tensors_are_accepted(dtype):
    """PyTorch CUDA tensors (fp16, bf16, requiring grad) encode as the host does, and decode through DLPack."""
    torch = pytest.importorskip("torch")
    bits = _bits((257, 130), 0.6, seed=2)
    t = torch.from_numpy(bits.view(np.int16)).cuda().view(torch.float16 if dtype == F16 else torch.bfloat16)
    A = TiledCSL.from_dense(t.requires_grad_(True))
    _assert_same_encoding(A, TiledCSL.from_dense(bits.view(dtype)))
    back = torch.from_dlpack(A.to_dense(bits=True)).view(t.dtype)
    expected = torch.from_numpy(_without_negative_zeros(bits).view(np.int16)).cuda()
    assert torch.equal(back.view(torch.int16), expected)


def test_reorder_on_the_device_drops_negative_zeros_and_repads():
    """Words in any order inside their tiles, padding 0x00000000 (as this library's files before version 3) or
    holding -0.0 on some position: from_raw(reorder=True) on CuPy arrays gives the host's canonical encoding."""
    bits = _masked((700, 300), 0.2, seed=8)
    host = TiledCSL.from_dense(bits.view(np.float16))
    old = host.words.copy()
    padding = np.flatnonzero((old & 0xFFFF) == 0)
    old[padding[::2]] = 0  # on position 0
    old[padding[1::2]] = (padding[1::2].astype(np.uint32) % 8192) << 16 | 0x8000  # -0.0 somewhere
    assert padding.size > 20  # the test means something
    rng = np.random.default_rng(9)
    for t in range(host.n_tiles):  # shuffled inside each tile
        rng.shuffle(old[4 * host.tile_offsets[t] : 4 * host.tile_offsets[t + 1]])
    device = TiledCSL.from_raw(cupy.asarray(old), cupy.asarray(host.tile_offsets), host.shape, F16, reorder=True)
    _assert_same_encoding(device, host)


def test_from_raw_checks_device_arrays():
    """from_raw checks CuPy words and offsets like host ones: padding on an entry, a position beyond the tile and
    offsets on the host while the words are on the device are refused, each named."""
    host = TiledCSL.from_dense(_bits((300, 200), 0.8, seed=3).view(np.float16))
    words, offsets = cupy.asarray(host.words), cupy.asarray(host.tile_offsets)
    _assert_same_encoding(TiledCSL.from_raw(words, offsets, host.shape, F16), host)
    pad = int(np.flatnonzero((host.words & 0xFFFF) == 0)[0])  # a padding word, moved onto its tile's first entry
    tile_start = 4 * int(host.tile_offsets[np.searchsorted(4 * host.tile_offsets, pad, side="right") - 1])
    words[pad] = cupy.uint32(int(host.words[tile_start]) >> 16 << 16)
    on_entry = rf"word {pad} .* is padding on .*, which holds an entry \(word {tile_start}\)"
    with pytest.raises(ValueError, match=on_entry):
        TiledCSL.from_raw(words, offsets, host.shape, F16)
    words[pad] = cupy.uint32(int(host.words[pad]))
    words[0] |= np.uint32(9000 << 16)
    with pytest.raises(ValueError, match="positions in a 128 x 64 tile are < 8192"):
        TiledCSL.from_raw(words, offsets, host.shape, F16)
    with pytest.raises(TypeError, match="Invalid array module of tile_offsets"):
        TiledCSL.from_raw(words, host.tile_offsets, host.shape, F16)


def test_save_device_matrix_and_load_to_device(tmp_path):
    """A device matrix saves and loads back to the device with the same encoding."""
    A = TiledCSL.from_dense(cupy.asarray(_bits((300, 200), 0.8, seed=4)), dtype=BF16)
    save(tmp_path / "a.flcsl", A)
    _assert_same_encoding(load(tmp_path / "a.flcsl", device=True), A.to_host())


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_pruning_on_cupy_equals_numpy(dtype):
    """Magnitude (global and per row) and random pruning of a CuPy array give the NumPy result, as CuPy."""
    W = np.random.default_rng(5).standard_normal((200, 300)).astype(dtype)
    for fn in (lambda x: prune.magnitude(x, 0.7), lambda x: prune.magnitude(x, 0.7, per_row=True),
               lambda x: prune.random(x, 0.7, seed=0)):
        on_device = fn(cupy.asarray(W))
        assert isinstance(on_device, cupy.ndarray) and on_device.dtype == dtype
        np.testing.assert_array_equal(cupy.asnumpy(on_device), fn(W))


def test_reference_accepts_device_inputs():
    """spmm_reference takes a device matrix and CuPy activations and equals the host product."""
    W = np.random.default_rng(6).standard_normal((64, 32)).astype(np.float16)
    X = np.random.default_rng(7).standard_normal((32, 8)).astype(np.float16)
    A = TiledCSL.from_dense(cupy.asarray(W))
    np.testing.assert_array_equal(spmm_reference(A, cupy.asarray(X)), spmm_reference(W, X))


def test_encoder_speed_36864x9216_at_80_percent():
    """Budget: encode an OPT-66B feed-forward weight on the GPU in under 100 ms (median of 5, after a warm-up)."""
    rng = cupy.random.default_rng(0)
    bits = rng.integers(1, 2**16, (36864, 9216), dtype=cupy.uint16)
    bits[rng.random((36864, 9216), dtype=cupy.float32) < 0.8] = 0
    TiledCSL.from_dense(bits, dtype=F16)
    times = []
    for _ in range(5):
        cupy.cuda.Device().synchronize()
        start = time.perf_counter()
        TiledCSL.from_dense(bits, dtype=F16)
        cupy.cuda.Device().synchronize()
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.100, f"encode took {[f'{t * 1e3:.1f} ms' for t in times]}"
