"""Simulator twins of the special registers of :mod:`flashllm_nb.kernels.ptx_asm.special`."""

from __future__ import annotations

import time

import numpy as np


def globaltimer_lo() -> np.uint32:
    """Twin of ``mov.u32 d, %globaltimer_lo``: the low 32 bits of the host's monotonic nanosecond clock."""
    return np.uint32(time.perf_counter_ns() & 0xFFFFFFFF)


def smid() -> np.uint32:
    """Twin of ``mov.u32 d, %smid``: the simulator runs every block on one SM, number 0."""
    return np.uint32(0)
