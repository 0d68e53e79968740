"""The :class:`TiledCSL` class: an encoded matrix with its constructors, checks, properties and conversions. The
work is done by the sibling modules (:mod:`.encode`, :mod:`.decode`, :mod:`.validate`); this module holds the
API and its policies (argument checks, host and device storage).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

from ..._checks import check_ndim, invalid
from .._xp import array_module, to_host, value_dtype
from ..tiled import TiledMatrix
from .decode import dense_bits, entries, matrix_coordinates
from .encode import encode_dense, encode_scipy, reorder_words
from .geometry import VECTOR_WORDS, tile_grid
from .validate import check_arrays, check_words


class TiledCSL(TiledMatrix):
    """An M x K fp16/bf16 matrix in Tiled-CSL, on the host (NumPy) or a CUDA device (CuPy).

    Build one with :meth:`from_dense`, :meth:`from_scipy` or :meth:`from_raw`; the constructor itself is SciPy's:
    ``TiledCSL(words, tile_offsets, shape, dtype)`` wraps the arrays without copying and runs only the cheap
    checks of :meth:`check_format`. The package docstring (:mod:`flashllm_nb.formats.tiled_csl`) describes
    the layout; the storage, the shape and tile-grid properties and the host and device copies are
    :class:`~flashllm_nb.formats.tiled.TiledMatrix`'s.

    Parameters
    ----------
    words : numpy.ndarray or cupy.ndarray
        uint32, 1-D: the entries, tile after tile, each tile padded to a multiple of 4 words (padding on positions
        of the tile that hold no entry).
    tile_offsets : numpy.ndarray or cupy.ndarray
        int32, n_tiles + 2 entries counted in 4-word vectors: ``[0, end of tile 0, ..., end of last, end of last]``.
        Same array module as ``words``.
    shape : (int, int)
        The logical (M, K), M, K >= 0.
    dtype : float16 or bfloat16
        The type whose bit patterns the low 16 bits of each word hold.
    """

    sparse_format = "csl"

    # ----------------------------------------------------------------------------------------------- constructors

    @classmethod
    def from_dense(cls, W: Any, dtype: Any = None) -> "TiledCSL":
        """Encode a dense fp16/bf16 matrix; every element that is not a zero (+0.0 or -0.0) is stored.

        Parameters
        ----------
        W : array, shape (M, K)
            float16 or bfloat16. NumPy arrays give a host TiledCSL; CuPy arrays and CUDA tensors (anything with
            ``__cuda_array_interface__`` or DLPack, e.g. torch including ``torch.bfloat16``) give a device one,
            encoded on the GPU. Any strides.
        dtype : float16 or bfloat16, optional
            Only when ``W`` holds uint16 bit patterns (as from ``to_dense(bits=True)``): the type they encode.
            Nothing is ever cast.

        Returns
        -------
        TiledCSL

        Raises
        ------
        TypeError
            ``W`` is not an array of float16/bfloat16 (or of uint16 with ``dtype``).
        ValueError
            ``W`` is not 2-D.

        Examples
        --------
        >>> W = np.eye(3, dtype=np.float16)
        >>> A = TiledCSL.from_dense(W)
        >>> A.nnz, A.shape, bool((A.to_dense() == W).all())
        (3, (3, 3), True)
        """
        return cls._encoded(encode_dense, W, dtype)

    @classmethod
    def from_scipy(cls, S: Any, dtype: Any = np.float16) -> "TiledCSL":
        """Encode a SciPy sparse matrix or array on the host, rounding its values to ``dtype``.

        Duplicate entries are summed (in ``S``'s own type, as SciPy does) before rounding. Entries that are zero
        after rounding (explicit zeros, -0.0, values that underflow) are dropped: a SciPy zero is "not stored".

        Parameters
        ----------
        S : scipy.sparse matrix or array, 2-D
            Real or boolean values.
        dtype : float16 or bfloat16, default float16

        Returns
        -------
        TiledCSL
            On the host.

        Raises
        ------
        TypeError
            ``S`` is not a SciPy sparse object, or holds complex values.
        ValueError
            ``S`` is not 2-D, or a finite value overflows ``dtype`` (rounds to +-Inf). NaN and +-Inf are kept.

        Examples
        --------
        >>> S = scipy.sparse.csr_array(np.array([[0.0, 1.5], [2.0, 0.0]]))
        >>> TiledCSL.from_scipy(S).to_dense().tolist()
        [[0.0, 1.5], [2.0, 0.0]]
        """
        if not scipy.sparse.issparse(S):
            raise invalid("type", "S", "a scipy.sparse matrix or array", type(S).__name__, TypeError)
        check_ndim(S, "S", 2)
        dtype = value_dtype(dtype)
        if S.dtype.kind not in "biuf":
            raise invalid("dtype", "S", "real or boolean values", S.dtype, TypeError)
        words, tile_offsets, shape, nnz = encode_scipy(S, dtype)
        return cls._from_parts(words, tile_offsets, shape, dtype, nnz)

    @classmethod
    def from_raw(cls, words: Any, tile_offsets: Any, shape: tuple[int, int], dtype: Any, *,
                 reorder: bool = False) -> "TiledCSL":
        """Wrap existing Tiled-CSL arrays after checking every invariant.

        Parameters
        ----------
        words, tile_offsets, shape, dtype
            As for the class. Both arrays NumPy (host) or both CuPy (device); they are not copied.
        reorder : bool
            Accept the entries of each tile in any order (Flash-LLM's encoder writes them in row-major order) and
            lay them out anew in the canonical order (new arrays): words with value bits 0 are dropped as padding
            wherever they are and whatever their positions, so are -0.0 words (zeros), and each tile is padded
            anew. Files of earlier versions of this library load this way. Without it, the arrays must already be
            canonical.

        Returns
        -------
        TiledCSL

        Raises
        ------
        TypeError
            Wrong array types or dtypes.
        ValueError
            Any broken invariant of :meth:`check_format` (``full_check=True``), stated with numbers.

        Examples
        --------
        One entry, 1.0 at tile row 1, column 2 (position 1 * 64 + (2 ^ 8) = 0x4a), and the padding on the tile's
        first three free positions, 0, 1 and 2:

        >>> A = TiledCSL.from_raw(np.array([0x4a3c00, 0x00000, 0x10000, 0x20000], np.uint32),
        ...                       np.array([0, 1, 1], np.int32), (3, 64), np.float16)
        >>> A.to_dense()[1, 2]
        np.float16(1.0)

        Flash-LLM's row-major order, or padding anywhere, needs ``reorder=True``:

        >>> B = TiledCSL.from_raw(np.array([0x4a3c00, 0, 0, 0], np.uint32), np.array([0, 1, 1], np.int32),
        ...                       (3, 64), np.float16, reorder=True)
        >>> bool((B.words == A.words).all())
        True
        """
        self = cls(words, tile_offsets, shape, dtype)
        if reorder:
            words, tile_offsets = reorder_words(array_module(words, "words"), words, tile_offsets, self.n_tiles)
            self = cls(words, tile_offsets, shape, dtype)
        self.check_format(full_check=True)
        return self

    # ----------------------------------------------------------------------------------------------- validation

    def check_format(self, full_check: bool = False) -> None:
        """Check the invariants of the format; raise TypeError/ValueError naming the first one broken.

        Always (O(n_tiles)):

        1. ``words`` is a 1-D uint32 array and ``tile_offsets`` a 1-D int32 array of the same module, both
           contiguous;
        2. ``len(tile_offsets) == n_tiles + 2``, ``tile_offsets[0] == 0``, the offsets never decrease, and the
           last one repeats the one before it;
        3. ``len(words) == 4 * tile_offsets[-1]``;
        4. no tile has more vectors than its part of the logical shape can fill (``ceil(rows * cols / 4)``).

        With ``full_check`` (O(nnz); sets ``nnz``):

        5. every position is < 8192;
        6. no word holds -0.0 (value bits 0x8000): a zero is not stored;
        7. padding (value bits 0) only at the end of its tile, and at most 3 padding words in a tile;
        8. every entry lies inside the logical shape (matters for edge tiles; padding may point outside it);
        9. no position twice among a tile's entries;
        10. the canonical layout: entries in the bank-interleaved order (:func:`.layout.layout_sorted`), and padding
            word q of a tile on the tile's q-th position (row-major) that holds no entry.
        """
        xp, offsets = check_arrays(self._words, self._tile_offsets, self._shape)
        if full_check:
            self._nnz = check_words(xp, self._words, self._tile_offsets, offsets, self._shape)

    # ----------------------------------------------------------------------------------------------- properties

    @property
    def nnz(self) -> int:
        """Stored entries (words with non-zero value bits); padding is not counted."""
        if self._nnz is None:
            xp = array_module(self._words)
            self._nnz = int(xp.count_nonzero(self._words & 0xFFFF))  # synchronize!
        return self._nnz

    @property
    def mean_tile_vectors(self) -> int:
        """Stored 16-byte word vectors (``VECTOR_WORDS`` words, padding included) per tile, rounded up: how much a
        tile gives the kernel to load on average (~410 at 80 % sparsity). No synchronisation."""
        n_tiles = self.n_tiles
        return -(-self._words.size // (VECTOR_WORDS * n_tiles)) if n_tiles else 0

    # ----------------------------------------------------------------------------------------------- conversions

    def to_dense(self, bits: bool = False) -> Any:
        """The dense (M, K) matrix, in the array module of the storage.

        Parameters
        ----------
        bits : bool, default False
            Return the uint16 bit patterns instead of float16/bfloat16 values.

        Returns
        -------
        numpy.ndarray or cupy.ndarray
            float16 or bfloat16 (host), float16 (device), or uint16 with ``bits=True``.

        Raises
        ------
        TypeError
            A bfloat16 matrix on the device with ``bits=False``: CuPy has no bfloat16. Use ``to_dense(bits=True)``
            (and e.g. ``torch.from_dlpack(b).view(torch.bfloat16)``) or ``to_host().to_dense()``.

        Examples
        --------
        -0.0 is a zero, not stored, and comes back as +0.0; every other value bit-exactly:

        >>> A = TiledCSL.from_dense(np.array([[1.0, -0.0, np.nan]], np.float16))
        >>> A.to_dense(bits=True)
        array([[15360,     0, 32256]], dtype=uint16)
        """
        xp = self._dense_module(bits)
        dense = dense_bits(xp, self._words, self._tile_offsets, self._shape)
        return dense if bits else dense.view(self._dtype)

    def to_scipy(self) -> scipy.sparse.csr_array:
        """The matrix as a float32 SciPy CSR array on the host (exact: float32 holds every fp16 and bf16 value).

        One explicit entry per stored entry (NaN included): its ``nnz`` equals ``self.nnz``.

        Examples
        --------
        >>> A = TiledCSL.from_dense(np.array([[0.0, 2.0], [3.0, 0.0]], np.float16))
        >>> A.to_scipy().toarray().tolist()
        [[0.0, 2.0], [3.0, 0.0]]
        """
        words, tile_offsets = to_host(self._words), to_host(self._tile_offsets)  # synchronize!
        tiles, index, values = entries(np, words, tile_offsets)
        rows, cols = matrix_coordinates(tiles, index, tile_grid(self._shape)[1])
        data = values.view(self._dtype).astype(np.float32)
        return scipy.sparse.csr_array((data, (rows, cols)), shape=self._shape)
