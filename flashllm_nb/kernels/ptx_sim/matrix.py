"""Simulator twins of the warp's Tensor-Core instructions of :mod:`flashllm_nb.kernels.ptx_asm.matrix`:
``mma.sync`` m16n8k16 and ``ldmatrix`` gather their warp's 32 lanes (:func:`.rendezvous.collective`) and run the
lane-level emulator :mod:`flashllm_nb.reference.fragments` once for the whole warp.
"""

from __future__ import annotations

import numpy as np

from flashllm_nb.reference.fragments import WARP, ldmatrix, mma_m16n8k16

from .operands import as_float32, as_integer, raw_bytes, span
from .rendezvous import collective


def _make_mma(ab: str):
    instruction = f"mma.sync.aligned.m16n8k16.row.col.f32.{ab}.{ab}.f32"

    def compute(lanes):
        a = np.array([args[0:4] for args in lanes], dtype=np.uint32)
        b = np.array([args[4:6] for args in lanes], dtype=np.uint32)
        c = np.array([args[6:10] for args in lanes], dtype=np.float32)
        d = mma_m16n8k16(a, b, c, ab)
        return [tuple(row) for row in d]

    def twin(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        ab_regs = tuple(
            as_integer(instruction, name, v) & 0xFFFFFFFF
            for name, v in zip(("a0", "a1", "a2", "a3", "b0", "b1"), (a0, a1, a2, a3, b0, b1))
        )
        c_regs = tuple(as_float32(instruction, name, v) for name, v in zip(("c0", "c1", "c2", "c3"), (c0, c1, c2, c3)))
        return collective(instruction, ab_regs + c_regs, compute)

    twin.__name__ = twin.__qualname__ = f"mma_m16n8k16_{ab}"
    twin.__doc__ = f"Twin of ``{instruction}``: the warp's fragments through ``fragments.mma_m16n8k16``."
    return twin


mma_m16n8k16_f16 = _make_mma("f16")
mma_m16n8k16_bf16 = _make_mma("bf16")


# --- ldmatrix -------------------------------------------------------------------------------------------------------


def _make_ldmatrix(num: int, trans: bool):
    instruction = f"ldmatrix.sync.aligned.m8n8.x{num}{'.trans' if trans else ''}.shared.b16"

    def compute(lanes):
        rows = np.zeros((WARP, 8), np.uint16)  # lanes past 8 * num supply no row
        for lane in range(8 * num):
            arr, index = lanes[lane]
            raw = raw_bytes(instruction, f"arr of lane {lane}", arr, "shared")
            offset = span(instruction, f"the row of lane {lane}", raw, arr.dtype.itemsize, index, 16)
            rows[lane] = raw[offset : offset + 16].view(np.uint16)
        regs = ldmatrix(rows, np.arange(WARP) * 8, num, trans)
        if num == 1:
            return list(regs[:, 0])
        return [tuple(row) for row in regs]

    def twin(arr, index):
        return collective(instruction, (arr, as_integer(instruction, "index", index)), compute)

    twin.__name__ = twin.__qualname__ = f"ldmatrix_x{num}{'_trans' if trans else ''}"
    twin.__doc__ = f"Twin of ``{instruction}``: the rows the lanes name, through ``fragments.ldmatrix``."
    return twin


ldmatrix_x1 = _make_ldmatrix(1, False)
ldmatrix_x2 = _make_ldmatrix(2, False)
ldmatrix_x4 = _make_ldmatrix(4, False)
ldmatrix_x1_trans = _make_ldmatrix(1, True)
ldmatrix_x2_trans = _make_ldmatrix(2, True)
ldmatrix_x4_trans = _make_ldmatrix(4, True)
