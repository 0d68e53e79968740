"""What only a GPU session can check of ``flashllm_nb.kernels.ptx``: the inline-PTX intrinsics are the ones bound,
and ``griddepcontrol`` orders a dependent launch after the kernel before it.

The checks of every wrapper on the GPU (against NumPy and the lane-level emulator, over more seeds and every 16-bit
pattern than under the simulator) are in ``test_ptx.py``, which runs them in whichever tier the session has.
"""

from __future__ import annotations

import numpy as np
import pytest

import ptx_kernels as pk
from flashllm_nb.kernels import ptx
from flashllm_nb.kernels.driver import (Kernel, dependent_launch_scope, grid_dependency_supported,
                                        set_dependent_launches)

pytestmark = pytest.mark.gpu


def test_the_intrinsics_are_bound():
    """On a GPU ``ptx`` binds the inline PTX, with 16-byte shared alignment (1024 for wgmma operands)."""
    assert not ptx.SIMULATOR and ptx.SHARED_ALIGN == 16 and ptx.WGMMA_SHARED_ALIGN == 1024


def test_a_dependent_launch_waits_for_the_kernel_before_it():
    """A producer that spins before it writes, then a consumer launched as its programmatic dependent on the same
    stream, with nothing between: the consumer may be scheduled while the producer runs, and its
    ``griddepcontrol.wait`` must hold it until the producer's writes are visible. Ten rounds, each on a zeroed
    buffer."""
    import cupy
    from numba import cuda, types

    if not grid_dependency_supported():
        pytest.skip("griddepcontrol needs compute capability 9.0 or later")
    u32 = types.Array(types.uint32, 1, "C")
    producer = Kernel(cuda.jit(pk.grid_producer_kernel), (u32, u32), "grid_producer", dependent=True)
    consumer = Kernel(cuda.jit(pk.grid_consumer_kernel), (u32, u32), "grid_consumer", dependent=True)
    n = 1 << 20
    stream = cupy.cuda.Stream(non_blocking=True)
    previous = set_dependent_launches(True)
    try:
        for _ in range(10):
            written, copied, spin = (cupy.zeros(n, np.uint32) for _ in range(3))
            cupy.cuda.Device().synchronize()
            with dependent_launch_scope():
                producer((n // 256,), 256, (written, spin), stream.ptr)
                consumer((n // 256,), 256, (written, copied), stream.ptr)
            stream.synchronize()
            np.testing.assert_array_equal(copied.get(), np.arange(1, n + 1, dtype=np.uint32))
    finally:
        set_dependent_launches(previous)
