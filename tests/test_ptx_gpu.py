"""What only a GPU session can check of ``flashllm_nb.kernels.ptx``: the inline-PTX intrinsics are the ones bound.

The checks of every wrapper on the GPU (against NumPy and the lane-level emulator, over more seeds and every 16-bit
pattern than under the simulator) are in ``test_ptx.py``, which runs them in whichever tier the session has.
"""

from __future__ import annotations

import pytest

from flashllm_nb.kernels import ptx

pytestmark = pytest.mark.gpu


def test_the_intrinsics_are_bound():
    """On a GPU ``ptx`` binds the inline PTX, with 16-byte shared alignment (1024 for wgmma operands)."""
    assert not ptx.SIMULATOR and ptx.SHARED_ALIGN == 16 and ptx.WGMMA_SHARED_ALIGN == 1024
