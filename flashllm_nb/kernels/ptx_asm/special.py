"""Special registers a kernel reads to time itself: ``%globaltimer_lo`` and ``%smid``.

PTX ISA references (https://docs.nvidia.com/cuda/parallel-thread-execution/index.html#...):
``special-registers-globaltimer-globaltimer-lo-globaltimer-hi`` and ``special-registers-smid``.
"""

from __future__ import annotations

from numba import types
from numba.cuda.extending import intrinsic

from .emit import I32, MEMORY, PURE, asm


@intrinsic
def globaltimer_lo(typingctx):
    """``mov.u32 d, %globaltimer_lo``: the low 32 bits of the GPU's nanosecond timer, one clock for every SM (it
    wraps every 4.3 s), as uint32.

    PTX ISA: "Special Registers: %globaltimer, %globaltimer_lo, %globaltimer_hi". A side effect for LLVM, so that
    each read stays where it is written, between the work it brackets. ``dev/block_timeline.py`` reads the
    per-block records a kernel built with ``SpmmConfig(timeline=True)`` writes with it."""

    def codegen(context, builder, sig, args):
        return asm(builder, I32, [], "mov.u32 $0, %globaltimer_lo;", "=r", attrs=MEMORY, side_effect=True)

    return types.uint32(), codegen


@intrinsic
def smid(typingctx):
    """``mov.u32 d, %smid``: the SM this thread runs on, as uint32.

    PTX ISA: "Special Registers: %smid" (a block stays on one SM while it runs)."""

    def codegen(context, builder, sig, args):
        return asm(builder, I32, [], "mov.u32 $0, %smid;", "=r", attrs=PURE)

    return types.uint32(), codegen
