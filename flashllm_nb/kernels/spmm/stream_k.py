"""Stream-K's division of the work: which k-tiles a block multiplies, and which block holds a given one.

Every tile row's k-tiles form one sequence, row after row (the order the format stores the tiles in): unit ``u`` is
k-tile ``u % n_tile_cols`` of tile row ``u // n_tile_cols``. The grid's ``blocks`` take equal contiguous ranges of
the ``units`` of that sequence (their lengths differ by one at most), so the blocks that share a tile row are
consecutive: from the block holding its first k-tile to the one holding its last.

The kernel compiles these same functions (``ptx.inlined``); the plan and the tests call them in Python. They divide
in 32-bit unsigned arithmetic: a 64-bit division is a long ptxas routine whose registers the stream-K kernel does not
have to spare. So ``units * blocks`` must be below 2**32 (``fits``), which the plan checks; the results are int64.
"""

from __future__ import annotations

from numba import int64, uint32

from flashllm_nb.kernels.spmm.config import TILE_M

__all__ = ["units_of", "block_range", "block_of", "tile_row_of", "fits"]

_TILE_M_SHIFT = TILE_M.bit_length() - 1


def fits(units: int, blocks: int) -> bool:
    """Whether ``units`` shared by ``blocks`` stay within this module's 32-bit arithmetic."""
    return units * blocks < 2**32


def units_of(m, n_tile_cols):
    """The units of a matrix of ``m`` rows: every tile row's ``n_tile_cols`` k-tiles."""
    return int64((m + (TILE_M - 1)) >> _TILE_M_SHIFT) * int64(n_tile_cols)


def block_range(block, blocks, units):
    """(first unit, one past the last) of ``block``'s range: ``[block * units // blocks, (block + 1) * units //
    blocks)``."""
    first = uint32(uint32(block) * uint32(units)) // uint32(blocks)
    end = uint32(uint32(block + 1) * uint32(units)) // uint32(blocks)
    return int64(first), int64(end)


def block_of(unit, blocks, units):
    """The block whose range holds ``unit``: the largest b with ``b * units // blocks <= unit``, that is
    ``b * units < (unit + 1) * blocks``."""
    return int64(uint32(uint32(unit + 1) * uint32(blocks) - uint32(1)) // uint32(units))


def tile_row_of(unit, n_tile_cols):
    """The tile row that ``unit`` belongs to."""
    return int64(uint32(unit) // uint32(n_tile_cols))
