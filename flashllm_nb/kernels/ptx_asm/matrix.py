"""Inline-PTX wrappers of the warp's Tensor-Core instructions: ``mma.sync`` m16n8k16 (f16/bf16 in, fp32
accumulate) and ``ldmatrix``, which loads its operand fragments from shared memory.

PTX ISA references (https://docs.nvidia.com/cuda/parallel-thread-execution/index.html#...):
``warp-level-matrix-instructions-mma``, "Matrix multiply-accumulate operation using mma instruction",
``warp-level-matrix-fragment-mma-16816-float``, "Matrix Fragments for mma.m16n8k16 with floating point type", and
``warp-level-matrix-instructions-ldmatrix``, "Warp-level matrix load instruction: ldmatrix".
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.cuda.extending import intrinsic

from .emit import (
    F32,
    I32,
    WARP_MEMORY,
    WARP_PURE,
    as_int,
    asm,
    check_array,
    check_float32,
    check_integer,
    fail,
    shared_address,
    unpack,
)


# --- mma.sync.aligned.m16n8k16 ---------------------------------------------------------------------------------------


def _make_mma(ab: str):
    instruction = f"mma.sync.aligned.m16n8k16.row.col.f32.{ab}.{ab}.f32"
    result = types.UniTuple(types.float32, 4)

    def typer(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        for name, ty in zip(("a0", "a1", "a2", "a3", "b0", "b1"), (a0, a1, a2, a3, b0, b1)):
            if not isinstance(ty, types.Integer):
                raise fail(instruction, name, f"a 32-bit integer holding two packed .{ab} values", ty)
        for name, ty in zip(("c0", "c1", "c2", "c3"), (c0, c1, c2, c3)):
            check_float32(instruction, name, ty)

        def codegen(context, builder, sig, args):
            ab_regs = [
                (I32, as_int(context, builder, value, ty, 32)) for value, ty in zip(args[:6], sig.args[:6])
            ]
            c_regs = [(F32, value) for value in args[6:]]
            struct = asm(
                builder,
                ir.LiteralStructType([F32] * 4),
                ab_regs + c_regs,
                f"{instruction} {{$0, $1, $2, $3}}, {{$4, $5, $6, $7}}, {{$8, $9}}, {{$10, $11, $12, $13}};",
                "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f",
                attrs=WARP_PURE,
            )
            return unpack(context, builder, struct, result)

        return result(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3), codegen

    typer.__name__ = typer.__qualname__ = f"mma_m16n8k16_{ab}"
    typer.__doc__ = f"""``{instruction}``: D (16 x 8) = A (16 x 16) @ B (16 x 8) + C, fp32 accumulate, one warp.

    PTX ISA: "Matrix multiply-accumulate operation using mma instruction"; fragments: "Matrix Fragments for
    mma.m16n8k16 with floating point type". Call as ``d0, d1, d2, d3 = {typer.__name__}(a0, a1, a2, a3, b0, b1,
    c0, c1, c2, c3)`` from all 32 lanes of a warp (``.sync.aligned``). With ``g = lane // 4``, ``t = lane % 4``:

    - ``a0..a3`` (uint32, two .{ab} each, low half = lower column): A[g, 2t:2t+2], A[g+8, 2t:2t+2],
      A[g, 2t+8:2t+10], A[g+8, 2t+8:2t+10];
    - ``b0, b1`` (uint32, two .{ab} each, low half = lower k): B[2t:2t+2, g], B[2t+8:2t+10, g];
    - ``c0..c3``, ``d0..d3`` (float32): C[g, 2t], C[g, 2t+1], C[g+8, 2t], C[g+8, 2t+1].

    Why: the largest fp16/bf16 Tensor-Core step on sm_80/sm_90 that ``mma.sync`` offers; fp32 accumulation keeps
    long K sums accurate. :mod:`flashllm_nb.reference.fragments` is the executable spec of these layouts.
    """
    return intrinsic(typer)


mma_m16n8k16_f16 = _make_mma("f16")
mma_m16n8k16_bf16 = _make_mma("bf16")


# --- ldmatrix.sync.aligned.m8n8 ------------------------------------------------------------------------------------


def _make_ldmatrix(num: int, trans: bool):
    suffix = ".trans" if trans else ""
    instruction = f"ldmatrix.sync.aligned.m8n8.x{num}{suffix}.shared.b16"
    result = types.uint32 if num == 1 else types.UniTuple(types.uint32, num)
    rows = {1: "0-7", 2: "0-15", 4: "0-31"}[num]
    outputs = ", ".join(f"${i}" for i in range(num))

    def typer(typingctx, arr, index):
        check_array(instruction, "arr", arr)
        check_integer(instruction, "index", index)

        def codegen(context, builder, sig, args):
            address = shared_address(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            ret = I32 if num == 1 else ir.LiteralStructType([I32] * num)
            value = asm(
                builder,
                ret,
                [(I32, address)],
                f"{instruction} {{{outputs}}}, [${num}];",
                ",".join(["=r"] * num + ["r", "~{memory}"]),
                attrs=WARP_MEMORY,
                side_effect=True,
            )
            return value if num == 1 else unpack(context, builder, value, result)

        return result(arr, index), codegen

    if trans:
        received = "M_j[2(l % 4), l // 4] (low half) and M_j[2(l % 4) + 1, l // 4] (high half)"
        why_trans = "; ``.trans`` reads a K x N row-major B as the column-major operand ``mma`` wants"
    else:
        received = "M_j[l // 4, 2(l % 4)] (low half) and M_j[l // 4, 2(l % 4) + 1] (high half)"
        why_trans = ""
    typer.__name__ = typer.__qualname__ = f"ldmatrix_x{num}{'_trans' if trans else ''}"
    typer.__doc__ = f"""``{instruction}``: {num} 8 x 8 matrices of 16-bit elements from shared memory into registers.

    PTX ISA: "Warp-level matrix load instruction: ldmatrix". Every lane of the warp calls it with ``(arr, index)``:
    a ``cuda.shared.array`` and the flat element index of the 16-byte row (8 x 16 bit) that lane supplies. Lanes
    {rows} supply rows: row r of matrix M_j is the row given by lane 8j + r; other lanes' addresses are ignored
    (pass any valid index). Rows must be 16-byte aligned: allocate with ``alignment=SHARED_ALIGN`` (imported from
    ``ptx`` by name). Result j of lane l holds {received}.

    Why: one instruction moves a whole mma operand fragment (x4: all of A; x2: all of B) from shared memory, 16
    bytes per lane, instead of eight 16-bit loads per lane{why_trans}. ``sideeffect`` + ``~{{memory}}``: it reads
    shared memory that other lanes wrote.
    """
    return intrinsic(typer)


ldmatrix_x1 = _make_ldmatrix(1, False)
ldmatrix_x2 = _make_ldmatrix(2, False)
ldmatrix_x4 = _make_ldmatrix(4, False)
ldmatrix_x1_trans = _make_ldmatrix(1, True)
ldmatrix_x2_trans = _make_ldmatrix(2, True)
ldmatrix_x4_trans = _make_ldmatrix(4, True)
