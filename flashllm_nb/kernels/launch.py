"""Choosing a kernel configuration for a problem, and launching it.

Everything here is decided from the shape, the dtype and the device, never from a hand-made table:

* ``tile_n`` is the smallest of 8/16/32/64 that covers N (N > 64 is cut into 64-wide column blocks);
* split-K: without it a problem has ``tile_rows * n_blocks`` blocks; when that cannot fill every SM with as many
  blocks as fit on one (from the kernel's registers and shared memory), the k-tiles are split, but never into
  pieces of fewer than ``MIN_K_TILES_PER_SPLIT`` k-tiles, below which the pipeline prologue and the fix-up cost more
  than the parallelism brings.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.spmm_tiled_csl import THREADS, TILE_M, TILE_N_CHOICES, SpmmConfig, build_kernel

__all__ = ["Plan", "plan", "launch"]

MIN_K_TILES_PER_SPLIT = 4
# What the simulator pretends the device is, so that split-K is exercised on the small shapes tests use.
_SIMULATED_SMS = 4


@dataclass(frozen=True)
class Plan:
    """A configuration and grid for one problem shape; cheap to reuse for every call with the same shape."""

    config: SpmmConfig
    grid: tuple[int, int, int]  # (tile rows of A, column blocks of N, splits of K)
    k_tiles_per_split: int

    @property
    def splits(self) -> int:
        return self.grid[2]


def tile_n_for(n: int) -> int:
    """Smallest supported block width covering n columns (64 for n > 64: the grid then covers N in 64s)."""
    return next((t for t in TILE_N_CHOICES if n <= t), TILE_N_CHOICES[-1])


@functools.cache
def _device_limits() -> tuple[int, int, int]:
    """(SM count, shared memory per SM in bytes, 32-bit registers per SM) of the current device."""
    if ptx.SIMULATOR:
        return _SIMULATED_SMS, 228 * 1024, 65536
    from numba import cuda

    dev = cuda.get_current_device()
    return (
        dev.MULTIPROCESSOR_COUNT,
        dev.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
        dev.MAX_REGISTERS_PER_MULTIPROCESSOR,
    )


@functools.cache
def _blocks_per_sm(config: SpmmConfig) -> int:
    """How many blocks of this configuration one SM holds at once, from shared memory and registers."""
    sms, smem_per_sm, regs_per_sm = _device_limits()
    if ptx.SIMULATOR:
        return 1
    kernel = build_kernel(config)
    regs = max(kernel.get_regs_per_thread(), 1) if kernel.signatures else 128
    by_regs = regs_per_sm // (regs * THREADS)
    by_smem = smem_per_sm // (config.shared_bytes + 1024)  # the driver reserves 1 KiB per block
    return max(1, min(by_regs, by_smem, 32))


def plan(m: int, n: int, k: int, dtype: str, x_layout: str, split_k: int | None = None) -> Plan:
    """Pick the configuration and grid for an (m x k) @ (k x n) product."""
    tile_n = tile_n_for(n)
    tile_rows = -(-m // TILE_M)
    n_blocks = -(-n // tile_n)
    k_tiles = -(-k // 64)
    if split_k is None:
        sms, _, _ = _device_limits()
        base = SpmmConfig(tile_n=tile_n, dtype=dtype, x_layout=x_layout)
        wanted = sms * _blocks_per_sm(base)
        split_k = 1
        if tile_rows * n_blocks < wanted:
            split_k = min(math.ceil(wanted / (tile_rows * n_blocks)), max(1, k_tiles // MIN_K_TILES_PER_SPLIT))
    split_k = max(1, min(split_k, k_tiles))
    per_split = -(-k_tiles // split_k)
    split_k = -(-k_tiles // per_split)  # no empty splits
    config = SpmmConfig(tile_n=tile_n, dtype=dtype, x_layout=x_layout, splits=split_k > 1)
    return Plan(config=config, grid=(tile_rows, n_blocks, split_k), k_tiles_per_split=per_split)


class _Workspaces:
    """Split-K scratch per (device, size): the fp32 partials and the zeroed per-tile tickets.

    The kernel returns every ticket to zero, so one zeroed allocation serves every later launch on the same stream
    order. Launches on different streams must not share one (they would race on the tickets): the cache is keyed
    by stream too.
    """

    def __init__(self):
        self._cache = {}

    def get(self, xp, n_partials: int, n_tickets: int, stream_key):
        key = (xp.__name__, n_partials, n_tickets, stream_key)
        if key not in self._cache:
            self._cache[key] = (xp.empty(n_partials, dtype=np.float32), xp.zeros(n_tickets, dtype=np.int32))
        return self._cache[key]


_workspaces = _Workspaces()


def launch(p: Plan, words, tile_offsets, x_bits, ldx: int, y_bits, bias_bits, m: int, n: int, k: int, n_tile_cols: int,
           xp, stream=None) -> None:
    """Run the planned kernel. All arrays are flat and already in the kernel's bit types (uint32/int32/uint16)."""
    kernel = build_kernel(p.config)
    if p.splits > 1:
        n_partials = p.splits * p.grid[0] * p.grid[1] * TILE_M * p.config.tile_n
        workspace, tickets = _workspaces.get(xp, n_partials, p.grid[0] * p.grid[1], _stream_key(stream))
    else:
        workspace, tickets = _dummy(xp, np.float32), _dummy(xp, np.int32)
    has_bias = bias_bits is not None
    if bias_bits is None:
        bias_bits = _dummy(xp, np.uint16)
    args = (words, tile_offsets, x_bits, np.int32(ldx), y_bits, bias_bits, np.int32(has_bias), workspace, tickets,
            np.int32(m), np.int32(n), np.int32(k), np.int32(n_tile_cols), np.int32(p.k_tiles_per_split))
    if ptx.SIMULATOR or stream is None:
        kernel[p.grid, THREADS](*args)
    else:
        kernel[p.grid, THREADS, stream](*args)


def _stream_key(stream):
    return None if stream is None else getattr(stream, "ptr", getattr(stream, "handle", id(stream)))


@functools.cache
def _dummy_cached(xp_name: str, dtype):
    import importlib

    return importlib.import_module(xp_name).zeros(1, dtype=dtype)


def _dummy(xp, dtype):
    """A one-element array for kernel arguments a configuration never reads."""
    return _dummy_cached(xp.__name__, np.dtype(dtype))
