"""``save``/``load``: round trips, the documented byte layout, atomic writes, and refusal of damaged files."""

from __future__ import annotations

import hashlib
import os
import re
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashllm_nb.formats import io as flcsl_io
from flashllm_nb.formats.io import MAGIC, VERSION, load, save
from flashllm_nb.formats.tiled_csl import TiledCSL
from flashllm_nb.formats.tiled_csl.encode import pack
from row_major import row_major_words


def _matrix(M=200, K=150, dtype=np.float16, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((M, K)).astype(dtype)
    W[rng.random((M, K)) < 0.7] = 0
    return TiledCSL.from_dense(W)


def _assert_same(A, B):
    assert (B.shape, B.dtype, B.nnz, B.on_device) == (A.shape, A.dtype, A.nnz, False)
    np.testing.assert_array_equal(B.words, A.words)
    np.testing.assert_array_equal(B.tile_offsets, A.tile_offsets)


def _rewrite(path, edit):
    """Apply ``edit`` to the file's bytes (without its digest) and append a correct sha256: a consistent-looking
    file, so that what is tested is the check after the checksum."""
    body = bytearray(path.read_bytes()[:-32])
    edit(body)
    path.write_bytes(bytes(body) + hashlib.sha256(body).digest())


@pytest.fixture
def saved(tmp_path):
    A = _matrix()
    path = tmp_path / "w.flcsl"
    save(path, A)
    return A, path


def refuses(path, message):
    with pytest.raises(ValueError, match=re.escape(repr(str(path))) + ": " + message):
        load(path)


# --------------------------------------------------------------------------------------------------- round trips


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 260), st.integers(0, 200), st.sampled_from([np.float16, ml_dtypes.bfloat16]),
       st.integers(0, 2**32 - 1))
def test_round_trip(tmp_path, M, K, dtype, seed):
    """load(save(A)) has A's words, offsets, shape, dtype and nnz, empty matrices included."""
    A = _matrix(M, K, dtype, seed)
    save(tmp_path / "a.flcsl", A)
    _assert_same(A, load(tmp_path / "a.flcsl"))


def test_layout_matches_the_documented_header(saved):
    A, path = saved
    data = path.read_bytes()
    assert VERSION == 3
    assert data[:8] == MAGIC == b"\x89FLCSL\r\n"
    n_offsets = 2 * 3 + 2  # 2 x 3 tiles
    assert struct.unpack_from("<I8sQQIIQQ", data, 8) == (VERSION, b"float16\0", 200, 150, 128, 64, n_offsets,
                                                         A.words.size)
    assert data[60:64] == b"\0\0\0\0"
    assert data[64 : 64 + 32] == A.tile_offsets.astype("<i4").tobytes()
    assert data[96:-32] == A.words.astype("<u4").tobytes()
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()


def test_save_overwrites_and_leaves_no_temporary_file(saved, tmp_path):
    A, path = saved
    B = _matrix(seed=1)
    save(str(path), B)  # str paths too
    _assert_same(B, load(path))
    assert os.listdir(tmp_path) == ["w.flcsl"]


def test_failed_save_keeps_the_old_file(saved, tmp_path, monkeypatch):
    A, path = saved

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save(path, _matrix(seed=1))
    monkeypatch.undo()
    _assert_same(A, load(path))
    assert os.listdir(tmp_path) == ["w.flcsl"]


def test_save_into_a_missing_directory_names_the_path_given(tmp_path):
    path = tmp_path / "missing_dir" / "x.flcsl"
    with pytest.raises(FileNotFoundError) as caught:
        save(path, _matrix())
    assert str(caught.value) == (f"[Errno 2] Invalid value of path: expected a file in an existing directory, got "
                                 f"{str(path)!r} (no directory {str(tmp_path / 'missing_dir')!r})")
    assert not os.listdir(tmp_path)


def test_save_that_cannot_create_its_file_names_the_path_given(tmp_path, monkeypatch):
    def refused(file, mode):
        raise PermissionError(13, "Permission denied", file)

    monkeypatch.setattr(flcsl_io, "open", refused, raising=False)
    path = tmp_path / "x.flcsl"
    with pytest.raises(PermissionError) as caught:
        save(path, _matrix())
    assert str(caught.value) == (f"[Errno 13] Permission denied (creating a temporary file beside it to write it): "
                                 f"{str(path)!r}")


def test_save_needs_a_tiled_csl(tmp_path):
    with pytest.raises(TypeError, match="Invalid type of A: expected a TiledCSL, got ndarray"):
        save(tmp_path / "x.flcsl", np.eye(2, dtype=np.float16))
    assert not os.listdir(tmp_path)


# --------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("keep", [0, 5, 40, 63, 64, 100, -33, -1])
def test_truncated(saved, keep):
    A, path = saved
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    size = len(data[:keep])
    refuses(path, f"truncated: {size} bytes" + (", shorter than the 64-byte header" if size < 64 else
                                                 f"; its header announces {len(data)}"))


def test_trailing_bytes(saved):
    A, path = saved
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\0")
    refuses(path, f"has trailing bytes: {size + 1} bytes; its header announces {size}")


@pytest.mark.parametrize("where", ["M", "payload", "last word", "digest"])
def test_bit_flip_is_caught_by_the_checksum(saved, where):
    A, path = saved
    data = bytearray(path.read_bytes())
    at = {"M": 20, "payload": 64 + 32 + 7, "last word": len(data) - 33, "digest": len(data) - 1}[where]
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    refuses(path, "checksum mismatch: the file is corrupted")


def test_foreign_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    refuses(path, re.escape(r"not a flashllm_nb Tiled-CSL file (starts with b'PK\x03\x04\x00\x00\x00\x00'"))


@pytest.mark.parametrize("version", [0, 4])
def test_wrong_version(saved, version):
    A, path = saved
    _rewrite(path, lambda body: struct.pack_into("<I", body, 8, version))
    refuses(path, re.escape(f"format version {version}; this flashllm_nb reads versions (1, 2, 3)"))


def test_version_1_file_with_row_major_entries_loads_into_the_canonical_layout(saved):
    """Version 1 stored each tile's entries in row-major order (Flash-LLM's); load lays them out anew."""
    A, path = saved
    row_major, _ = row_major_words(A)
    assert not np.array_equal(row_major, A.words)  # the test means something: the orders differ
    words_at = 64 + 4 * A.tile_offsets.size

    def to_version_1(body):
        struct.pack_into("<I", body, 8, 1)
        body[words_at : words_at + 4 * len(row_major)] = row_major.astype("<u4").tobytes()

    _rewrite(path, to_version_1)
    _assert_same(A, load(path))


def test_unknown_dtype_in_header(saved):
    A, path = saved
    _rewrite(path, lambda body: struct.pack_into("<8s", body, 12, b"float32"))
    refuses(path, re.escape("inconsistent header: dtype b'float32\\x00'; expected b'float16' or b'bfloat16'"))


def test_other_tile_shape_in_header(saved):
    A, path = saved
    _rewrite(path, lambda body: struct.pack_into("<II", body, 36, 64, 64))
    refuses(path, "inconsistent header: tile 64 x 64; this flashllm_nb uses 128 x 64")


def test_inconsistent_shape(saved):
    A, path = saved
    _rewrite(path, lambda body: struct.pack_into("<Q", body, 20, 100))  # M = 100: 1 x 3 tiles, not 2 x 3
    refuses(path, re.escape("inconsistent: tile_offsets has 8 entries; expected n_tiles + 2 = 5"))


def test_inconsistent_payload(saved):
    A, path = saved
    _rewrite(path, lambda body: struct.pack_into("<I", body, 64 + 32, 9000 << 16 | 0x3C00))
    refuses(path, "inconsistent: word 0 \\(word 0 of tile 0\\) has position 9000")


def _write(path, version, A_shape, offsets, words, dtype_name=b"float16"):
    """A file of the documented layout, written without ``save``."""
    body = struct.pack("<8sI8sQQIIQQ4x", MAGIC, version, dtype_name, *A_shape, 128, 64, offsets.size, words.size)
    body += offsets.astype("<i4").tobytes() + words.astype("<u4").tobytes()
    path.write_bytes(body + hashlib.sha256(body).digest())


def _masked(shape=(300, 200), seed=2):
    """A float16 matrix pruned as ``W * mask``: -0.0 wherever a pruned weight was negative."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(shape).astype(np.float16)
    P = W * (rng.random(shape) < 0.3).astype(np.float16)
    assert (P.view(np.uint16) == 0x8000).any()
    return P


def _version_2_words(bits):
    """The words versions 1 and 2 of this library stored: -0.0 as an entry, every padding word 0x00000000 (position
    0), entries in the bank-interleaved order (version 2's; the same as today's for the same entries)."""
    n_tile_rows, n_tile_cols = -(-bits.shape[0] // 128), -(-bits.shape[1] // 64)
    rows, cols = np.nonzero(bits)
    keys = ((rows // 128) * n_tile_cols + cols // 64) * 8192 + (rows % 128) * 64 + cols % 64
    order = np.argsort(keys)
    words, offsets, _ = pack(np, keys[order], bits[rows, cols][order], n_tile_rows * n_tile_cols)
    words[(words & 0xFFFF) == 0] = 0
    return words, offsets


@pytest.mark.parametrize("version", [1, 2])
def test_files_of_earlier_versions_with_negative_zeros_load_canonically(tmp_path, version):
    """Versions 1 and 2 stored -0.0 and padded with 0x00000000, on an entry's position where a tile has one at
    (0, 0); version 1 also kept entries in row-major order. They load laid out anew: -0.0 dropped, padding on each
    tile's first free positions."""
    P = _masked()
    words, offsets = _version_2_words(P.view(np.uint16))
    if version == 1:
        words, offsets = row_major_words(TiledCSL(words, offsets, P.shape, np.float16))
    assert ((words & 0xFFFF) == 0x8000).sum() > 1000 and (words == 0).any()  # the test means something
    path = tmp_path / "old.flcsl"
    _write(path, version, P.shape, offsets, words)
    A = load(path)
    _assert_same(TiledCSL.from_dense(P), A)
    assert A.nnz == np.count_nonzero(P) < int(((words & 0xFFFF) != 0).sum())


@pytest.mark.parametrize("what, edit, message", [
    ("-0.0", lambda w: w.__setitem__(0, w[0] & 0xFFFF0000 | 0x8000), "holds -0.0 (value bits 0x8000)"),
    ("padding 0", lambda w: w.__setitem__(w & 0xFFFF == 0, 0), "is padding on tile row 0, column 0"),
])
def test_version_3_file_in_an_earlier_layout_is_refused(tmp_path, what, edit, message):
    """Version 3 promises the canonical encoding: a -0.0 word, or padding 0x00000000 as version 2 wrote it, is
    refused with the reason."""
    A = TiledCSL.from_dense(_masked())
    words = A.words.copy()
    edit(words)
    path = tmp_path / "v3.flcsl"
    _write(path, 3, A.shape, A.tile_offsets, words)
    refuses(path, "inconsistent: word \\d+ \\(word \\d+ of tile \\d+\\) " + re.escape(message))


@pytest.mark.parametrize("field, value", [("n_words", 1), ("n_words", -1), ("n_offsets", 1), ("n_words", 2**60)])
def test_header_that_lies_about_sizes(saved, field, value):
    """A header (under a consistent checksum) announcing more or fewer words or offsets than the file holds: refused
    by the size check, before any payload is read or allocated."""
    A, path = saved
    at = {"n_offsets": 44, "n_words": 52}[field]
    size = path.stat().st_size
    announced = struct.unpack_from("<Q", path.read_bytes(), at)[0]
    new = value if value == 2**60 else announced + value
    _rewrite(path, lambda body: struct.pack_into("<Q", body, at, new))
    refuses(path, f"(truncated|has trailing bytes): {size} bytes; its header announces {size + 4 * (new - announced)}")


class _CountingFile:
    """A binary file that counts the bytes read from it."""

    def __init__(self, path):
        self._f = open(path, "rb")
        self.bytes_read = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def fileno(self):
        return self._f.fileno()

    def read(self, n=-1):
        data = self._f.read(n)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        self.bytes_read += n
        return n


@pytest.fixture
def counted_open(monkeypatch):
    """Make ``load`` open files through ``_CountingFile``; yields the list of files it opened."""
    opened = []

    def open_counting(path, mode="r"):
        assert mode == "rb"
        opened.append(_CountingFile(path))
        return opened[-1]

    monkeypatch.setattr(flcsl_io, "open", open_counting, raising=False)
    return opened


@pytest.mark.parametrize("start", [b"PK\x03\x04", MAGIC])
def test_large_file_is_refused_after_reading_its_header(tmp_path, counted_open, start):
    """A 1 GiB file (sparse on disk): a foreign one is refused by its magic, one with this format's magic but no
    valid header by its header; either way after reading at most the 64-byte header."""
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.write(start)
        f.truncate(2**30)
    with pytest.raises(ValueError, match="not a flashllm_nb Tiled-CSL file|format version 0"):
        load(path)
    assert counted_open[0].bytes_read <= 64


def test_load_reads_the_header_then_the_payload_once(saved, counted_open):
    A, path = saved
    _assert_same(A, load(path))
    assert counted_open[0].bytes_read == path.stat().st_size


def test_read_header_reports_the_matrix_without_reading_the_payload(tmp_path):
    """Shape, dtype and size from the 64-byte header; a truncated file is refused there already."""
    from flashllm_nb.formats.io import read_header

    W = np.zeros((300, 70), ml_dtypes.bfloat16)
    W[5, 3] = 1.5
    path = tmp_path / "w.flcsl"
    save(path, TiledCSL.from_dense(W))
    info = read_header(path)
    assert info["shape"] == (300, 70) and info["dtype"] == np.dtype(ml_dtypes.bfloat16)
    assert info["file_bytes"] == os.path.getsize(path) and info["version"] == 3
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 1)
    with pytest.raises(ValueError, match="truncated"):
        read_header(path)
