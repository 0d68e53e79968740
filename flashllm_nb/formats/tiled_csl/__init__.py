"""Tiled-CSL: Flash-LLM's storage format for an unstructured-sparse fp16/bf16 weight matrix.

The kernel streams a weight matrix W (M x K, row-major) one 128 x 64 tile at a time: it loads only the tile's
stored entries, scatters them into a zeroed tile in shared memory, and multiplies that dense tile on the Tensor
Cores ("load as sparse, compute as dense"). The format is laid out for exactly that::

    W, M x K, cut into 128 x 64 tiles numbered row-major over the tile grid (t = tile_row * n_tile_cols + tile_col)

             K ->   0       64      128
        M    0   +-------+-------+-------+
        |        |  t0   |  t1   |  t2   |
        v  128   +-------+-------+-------+
                 |  t3   |  t4   |  t5   |      edge tiles are zero-padded; the logical shape is kept
                 +-------+-------+-------+

    words         | t0: entries, pad | t1: entries, pad | (t2 empty) | t3: entries, pad | ...
    tile_offsets  [0, end t0, end t1, end t2, ..., end t5, end t5]       (int32, in 4-word vectors)

    one word (uint32):   bits 31..16 = position in the tile, bits 15..0 = the fp16/bf16 bit pattern
    position          =  row * 64 + (col ^ ((row % 8) << 3))

The swizzle: a 64-column row of fp16 is 128 bytes, eight 16-byte chunks of 8 columns. The kernel keeps chunk ``c``
of tile row ``r`` in slot ``c ^ (r % 8)``::

    chunk ->   0 1 2 3 4 5 6 7
    row 0      0 1 2 3 4 5 6 7      slot that each chunk lands in
    row 1      1 0 3 2 5 4 7 6
    row 2      2 3 0 1 6 7 4 5
    ...
    row 7      7 6 5 4 3 2 1 0

so the eight rows that one ``ldmatrix`` 8 x 8 read fetches (one chunk each, same chunk index) sit in eight
different slots of their 128-byte rows: all 32 banks, no conflict. Storing the swizzled position lets the kernel
scatter each entry straight to its conflict-free place.

Policies (each decided once, here):

- Stored entries: every element that is not a zero. +0.0 (0x0000) and -0.0 (0x8000) are both zeros: neither is
  stored or counted in ``nnz``, and both read back as +0.0, as in SciPy, ``torch.Tensor.to_sparse``, cuSPARSE and
  Flash-LLM's encoder (it stores ``fabs(x) > 0``, which drops NaN too). This matters for pruned weights: ``W * mask``
  leaves -0.0 wherever W < 0. Every other bit pattern is an entry and round-trips bit-exactly: NaN (payload
  included), +-Inf, subnormals.
- Order: bank-interleaved (see :func:`.layout.layout_sorted`): inside a tile the entries are dealt round-robin over
  the 32 shared-memory banks their positions fall in and stored so that each 32-lane store of the kernel's scatter
  is one such round, i.e. 32 different banks (4-way bank conflicts in row-major order, about 1.5-way in this one).
  Flash-LLM's encoder writes row-major order: ``TiledCSL.from_raw(..., reorder=True)`` takes that (or any) order
  and lays it out anew. Only the canonical order is accepted otherwise, so one matrix has exactly one encoding
  (words compare and checksum bit-for-bit).
- Padding: each tile ends with the fewest words of value bits 0 that make its length a multiple of 4 (0 to 3; an
  empty tile has no words, a dense one 8192). Padding word q (q = 0, 1, 2) sits on the q-th position of its tile,
  in row-major (row, col) order, that holds no entry, swizzled like an entry's position; an edge tile's positions
  outside the logical shape hold no entry and count too, so padding may point there (entries never do). This
  library's kernels skip padding, but Flash-LLM's kernel scatters it like any entry, so padding on an entry's
  position would erase that entry. Flash-LLM's row-major encoder pads exactly so (AlibabaResearch/flash-llm at
  1d2828a: ``InitSparseMatrixA_API_NoReorder``, ``csrc/SpMM_API.cu:456-471``, writing the zero's own bits, -0.0
  included; the scatter, ``csrc/SpMM_Kernel.cuh:162``); its bank-balanced encoder takes the first zero position
  of the least-filled bank instead and may repeat one (``csrc/SpMM_API.cu:243-285``). Flash-LLM has no edge
  tiles (it asserts M % 128 == K % 64 == 0, ``csrc/SpMM_API.cu:432``). Free positions never run out: a tile of n
  entries needs ``(8192 - n) % 4`` of its ``8192 - n``.
- ``nnz`` counts entries (words with value bits other than 0), never padding.
- Shape: any M, K >= 0. An empty matrix (M == 0 or K == 0) has no tiles: ``tile_offsets == [0, 0]``, no words,
  ``sparsity == 1.0`` (nothing is stored; the same value as an all-zero matrix). The kernels treat it as a no-op.
- Device storage: CuPy arrays. CuPy has no bfloat16, so the value type is carried as :attr:`TiledCSL.dtype`
  and bfloat16 matrices come back from the device only as bits (``to_dense(bits=True)``).

The package holds one part of the format per module: :mod:`.geometry` (the sizes, the word fields, the swizzle),
:mod:`.encode` (the encoders), :mod:`.layout` (where each word of a tile goes), :mod:`.decode`, :mod:`.validate`
(the invariants of :meth:`TiledCSL.check_format`) and :mod:`.matrix` (the :class:`TiledCSL` class). Its public
names are those re-exported here; :mod:`flashllm_nb.formats.io` stores a matrix in one file, and
:mod:`flashllm_nb.formats.tile_rows` stacks matrices by tile rows and takes a run of tile rows as a matrix of its own
(``stack_tile_rows``, ``tile_row_block``, ``tile_row_span``).

Examples
--------
>>> import numpy as np
>>> W = np.zeros((3, 70), np.float16); W[1, 2] = 1.0; W[0, 65] = -2.0
>>> A = TiledCSL.from_dense(W)
>>> A
<TiledCSL 3x70 float16, nnz=2 (99.0% sparse), 48 B, host>
>>> [hex(w) for w in A.words], A.tile_offsets.tolist()  # entry, then padding on the first free positions
(['0x4a3c00', '0x0', '0x10000', '0x20000', '0x1c000', '0x0', '0x20000', '0x30000'], [0, 1, 2, 2])
>>> bool((A.to_dense() == W).all())
True
"""

from __future__ import annotations

from .geometry import TILE_K, TILE_M, TILE_SIZE, VECTOR_WORDS, swizzle
from .matrix import TiledCSL

__all__ = ["TiledCSL", "TILE_M", "TILE_K", "TILE_SIZE", "VECTOR_WORDS", "swizzle"]
