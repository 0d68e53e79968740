"""One-file storage of a :class:`~flashllm_nb.formats.tiled_csl.TiledCSL`: ``save(path, A)`` and ``load(path)``.

File layout, all little-endian (version 3)::

    offset  size  field
         0     8  magic            b"\\x89FLCSL\\r\\n"   (as PNG: a non-ASCII byte, CR LF to catch text-mode copies)
         8     4  version          uint32, 3
        12     8  dtype            ASCII, NUL-padded: b"float16\\0" or b"bfloat16"
        20     8  M                uint64
        28     8  K                uint64
        36     4  tile_m           uint32, 128
        40     4  tile_k           uint32, 64
        44     8  n_offsets        uint64, n_tiles + 2
        52     8  n_words          uint64
        60     4  reserved         zero
        64        tile_offsets     n_offsets x int32
                  words            n_words x uint32
       end-32    32  sha256         of every byte before it (header and payload)

The payload is the format's canonical encoding (``TiledCSL.check_format``). Earlier versions have the same layout
and load too, laid out anew by ``TiledCSL.from_raw(..., reorder=True)``, which drops their -0.0 entries and pads
every tile on its first free positions: version 1 kept each tile's entries in row-major order, versions 1 and 2
stored -0.0 and padded with 0x00000000 words.

``save`` writes a temporary file beside the target and renames it over the target (``os.replace``), so a reader
sees the old file or the complete new one, never a partial one. ``load`` reads the 64-byte header first and checks
magic, version, header and the file's size against the one the header announces, so a file that is not one of
these is refused after reading 64 bytes; only then does it read the payload, check the checksum, and hand the
arrays to ``TiledCSL.from_raw`` for the full format check. Any failure is a ValueError naming the file, and nothing
is returned half-loaded.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import struct

import numpy as np

from .._checks import invalid
from ._xp import BFLOAT16, FLOAT16, to_host
from .tiled_csl import TILE_K, TILE_M, TiledCSL

__all__ = ["save", "load", "read_header", "MAGIC", "VERSION"]

MAGIC = b"\x89FLCSL\r\n"
VERSION = 3
_READABLE = (1, 2, 3)  # versions 1 and 2 are laid out anew on load (module docstring)
_HEADER = struct.Struct("<8sI8sQQIIQQ4x")  # 64 bytes: the table above
_DIGEST = hashlib.sha256().digest_size  # 32
_DTYPE_NAMES = {FLOAT16: b"float16", BFLOAT16: b"bfloat16"}
_LE_WORDS, _LE_OFFSETS = np.dtype("<u4"), np.dtype("<i4")


def save(path: str | os.PathLike, A: TiledCSL) -> None:
    """Write ``A`` to ``path`` atomically (a device matrix is copied to the host first).

    Parameters
    ----------
    path : str or path-like
        The file to create or replace. The conventional suffix is ``.flcsl``.
    A : TiledCSL

    Raises
    ------
    TypeError
        ``A`` is not a TiledCSL.
    FileNotFoundError
        The directory of ``path`` does not exist.
    OSError
        The file cannot be written; the message names ``path``. An existing file at ``path`` is left as it was.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from flashllm_nb.formats.tiled_csl import TiledCSL
    >>> A = TiledCSL.from_dense(np.eye(4, dtype=np.float16))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save(f"{d}/eye.flcsl", A)
    ...     B = load(f"{d}/eye.flcsl")
    >>> bool((B.to_dense() == A.to_dense()).all())
    True
    """
    if not isinstance(A, TiledCSL):
        raise invalid("type", "A", "a TiledCSL", type(A).__name__, TypeError)
    offsets = np.ascontiguousarray(to_host(A.tile_offsets), _LE_OFFSETS)  # synchronize!
    words = np.ascontiguousarray(to_host(A.words), _LE_WORDS)
    header = _HEADER.pack(MAGIC, VERSION, _DTYPE_NAMES[A.dtype], A.shape[0], A.shape[1], TILE_M, TILE_K,
                          offsets.size, words.size)
    digest = hashlib.sha256(header)
    # Beside the target (os.replace is atomic only within one file system), created like any new file so that it
    # gets the usual permissions (mkstemp would make it owner-only).
    temporary = f"{os.fspath(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        f = open(temporary, "xb")
    except OSError as e:  # report the caller's path: the temporary file is this function's business
        if isinstance(e, FileNotFoundError):
            directory = os.path.dirname(os.fspath(path)) or "."
            raise FileNotFoundError(errno.ENOENT, f"Invalid value of path: expected a file in an existing directory, "
                                                  f"got {os.fspath(path)!r} (no directory {directory!r})") from None
        raise type(e)(e.errno, f"{e.strerror} (creating a temporary file beside it to write it)",
                      os.fspath(path)) from None
    try:
        with f:
            f.write(header)
            for array in (offsets, words):
                f.write(memoryview(array).cast("B"))
                digest.update(memoryview(array).cast("B"))
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def read_header(path: str | os.PathLike) -> dict:
    """What a file written by :func:`save` holds, from its 64-byte header alone: ``shape``, ``dtype``,
    ``version``, ``n_words`` and ``file_bytes``, after the checks :func:`load` makes before reading the payload
    (magic, version, dtype, tile shape, and the file's size against the header). Reads 64 bytes.

    Raises
    ------
    ValueError
        As :func:`load` for the header and size; the payload and its checksum are not read.
    """
    def refuse(why: str) -> ValueError:
        return ValueError(f"{os.fspath(path)!r}: {why}")

    with open(path, "rb") as f:
        info = _read_header(f, refuse)
    del info["raw"]
    return info


def _read_header(f, refuse) -> dict:
    """The checked header of the open file ``f`` (module docstring's layout); ``refuse(why)`` builds the error."""
    size = os.fstat(f.fileno()).st_size
    header = f.read(_HEADER.size)
    start = header[: len(MAGIC)]
    if start != MAGIC[: len(start)]:
        raise refuse(f"not a flashllm_nb Tiled-CSL file (starts with {start!r}; expected {MAGIC!r})")
    if len(header) < _HEADER.size:
        raise refuse(f"truncated: {size} bytes, shorter than the {_HEADER.size}-byte header")
    _, version, dtype_name, M, K, tile_m, tile_k, n_offsets, n_words = _HEADER.unpack(header)
    if version not in _READABLE:
        raise refuse(f"format version {version}; this flashllm_nb reads versions {_READABLE}")
    dtype = {name: dt for dt, name in _DTYPE_NAMES.items()}.get(dtype_name.rstrip(b"\0"))
    if dtype is None:
        raise refuse(f"inconsistent header: dtype {dtype_name!r}; expected b'float16' or b'bfloat16'")
    if (tile_m, tile_k) != (TILE_M, TILE_K):
        raise refuse(f"inconsistent header: tile {tile_m} x {tile_k}; this flashllm_nb uses {TILE_M} x {TILE_K}")
    expected = _HEADER.size + 4 * n_offsets + 4 * n_words + _DIGEST
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise refuse(f"{what}: {size} bytes; its header announces {expected}")
    return {"raw": header, "version": version, "dtype": dtype, "shape": (M, K), "n_offsets": n_offsets,
            "n_words": n_words, "file_bytes": expected}


def load(path: str | os.PathLike, device: bool = False) -> TiledCSL:
    """Read a file written by :func:`save`, checking it completely.

    Parameters
    ----------
    path : str or path-like
    device : bool, default False
        Return the matrix on the GPU (CuPy arrays) instead of the host.

    Returns
    -------
    TiledCSL
        Canonical: files of versions 1 and 2 are laid out anew (module docstring).

    Raises
    ------
    ValueError
        The file is not a Tiled-CSL file (magic), of a version this library does not read, self-inconsistent
        (header, or any invariant of ``TiledCSL.check_format``), truncated or longer than its header announces,
        or corrupted (checksum). The message names the file.
    OSError
        The file cannot be read.
    """
    def refuse(why: str) -> ValueError:
        return ValueError(f"{os.fspath(path)!r}: {why}")

    with open(path, "rb") as f:
        info = _read_header(f, refuse)
        header, version, dtype, M, K, n_offsets, n_words = (info["raw"], info["version"], info["dtype"],
                                                           *info["shape"], info["n_offsets"], info["n_words"])
        expected = info["file_bytes"]
        payload = bytearray(expected - _HEADER.size)  # writable, so the arrays below are writable views of it
        got = f.readinto(payload)
        if got != len(payload):  # the file shrank since fstat
            raise refuse(f"truncated: {_HEADER.size + got} bytes; its header announces {expected}")
    digest = hashlib.sha256(header)
    digest.update(memoryview(payload)[:-_DIGEST])
    if digest.digest() != payload[-_DIGEST:]:
        raise refuse("checksum mismatch: the file is corrupted")
    offsets = np.frombuffer(payload, _LE_OFFSETS, n_offsets).astype(np.int32, copy=False)
    words = np.frombuffer(payload, _LE_WORDS, n_words, 4 * n_offsets).astype(np.uint32, copy=False)
    try:
        A = TiledCSL.from_raw(words, offsets, (M, K), dtype, reorder=version < VERSION)
    except (TypeError, ValueError) as e:
        raise refuse(f"inconsistent: {e}") from e
    return A.to_device() if device else A
