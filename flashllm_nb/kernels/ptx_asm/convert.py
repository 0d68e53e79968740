"""Inline-PTX wrappers that pack and convert registers: two 16-bit halves into one 32-bit register and back
(``mov``), float32 to and from the f16/bf16 bit patterns (``cvt``).

PTX ISA references (https://docs.nvidia.com/cuda/parallel-thread-execution/index.html#...):
``data-movement-and-conversion-instructions-mov``, ``...-cvt``.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.cuda.extending import intrinsic

from .emit import F32, I16, I32, as_int, asm, check_float32, check_integer, unpack


@intrinsic
def pack_u16x2(typingctx, lo, hi):
    """``mov.b32 d, {lo, hi}``: two 16-bit values into one 32-bit register, ``lo`` in bits 0-15.

    PTX ISA: "mov" (vector form). Integers of any width are truncated to their low 16 bits. Returns uint32.
    Why: builds an mma A/B register (two .f16/.bf16, lower index in the low half) without shifts and masks.
    """
    check_integer("mov.b32 (pack)", "lo", lo)
    check_integer("mov.b32 (pack)", "hi", hi)

    def codegen(context, builder, sig, args):
        halves = [(I16, as_int(context, builder, v, ty, 16)) for v, ty in zip(args, sig.args)]
        return asm(builder, I32, halves, "mov.b32 $0, {$1, $2};", "=r,h,h")

    return types.uint32(lo, hi), codegen


@intrinsic
def unpack_u16x2(typingctx, x):
    """``mov.b32 {lo, hi}, x``: one 32-bit register into its two 16-bit halves, returned as ``(lo, hi)`` uint16.

    PTX ISA: "mov" (vector form). Integers wider than 32 bits are truncated to their low 32 bits.
    Why: splits a Tiled-CSL word (value in bits 0-15, position in bits 16-31) or an mma register in one move.
    """
    check_integer("mov.b32 (unpack)", "x", x)
    result = types.UniTuple(types.uint16, 2)

    def codegen(context, builder, sig, args):
        word = as_int(context, builder, args[0], sig.args[0], 32)
        struct = asm(builder, ir.LiteralStructType([I16, I16]), [(I32, word)], "mov.b32 {$0, $1}, $2;", "=h,=h,r")
        return unpack(context, builder, struct, result)

    return result(x), codegen


def _make_f32_to_16(kind: str):
    instruction = f"cvt.rn.{kind}.f32"

    def typer(typingctx, x):
        check_float32(instruction, "x", x)

        def codegen(context, builder, sig, args):
            return asm(builder, I16, [(F32, args[0])], f"{instruction} $0, $1;", "=h,f")

        return types.uint16(x), codegen

    typer.__name__ = typer.__qualname__ = f"f32_to_{kind}_bits"
    typer.__doc__ = f"""``{instruction}``: float32 to the bit pattern of the nearest .{kind} (ties to even), as uint16.

    PTX ISA: "cvt". Overflow gives +-Inf, any NaN the canonical NaN 0x7FFF (seen on an H200; the twin does the
    same), subnormal results are kept. Why: the output tile is rounded to .{kind} exactly
    once, from the fp32 accumulators{"; needs sm_80" if kind == "bf16" else ""}.
    """
    return intrinsic(typer)


f32_to_f16_bits = _make_f32_to_16("f16")
f32_to_bf16_bits = _make_f32_to_16("bf16")


@intrinsic
def f16_bits_to_f32(typingctx, b):
    """``cvt.f32.f16``: the float32 value of an f16 bit pattern (exact; any NaN gives 0x7FFFFFFF, seen on an H200).
    Integers are truncated to 16 bits.

    PTX ISA: "cvt". Why: epilogues and tests that read fp16 bit patterns (e.g. a Tiled-CSL word's low half).
    """
    check_integer("cvt.f32.f16", "b", b)

    def codegen(context, builder, sig, args):
        bits = as_int(context, builder, args[0], sig.args[0], 16)
        return asm(builder, F32, [(I16, bits)], "cvt.f32.f16 $0, $1;", "=f,h")

    return types.float32(b), codegen


@intrinsic
def bf16_bits_to_f32(typingctx, b):
    """The float32 value of a bf16 bit pattern (exact, NaN payload kept): the bits shifted into the high half.

    No PTX instruction: ``cvt.f32.bf16`` exists only from sm_90, and bf16 is by definition the upper 16 bits of a
    float32, so ``zext``, ``shl 16``, ``bitcast`` is the conversion on every architecture. Integers are truncated to
    16 bits.
    """
    check_integer("bf16 to f32 (shl 16)", "b", b)

    def codegen(context, builder, sig, args):
        bits = builder.zext(as_int(context, builder, args[0], sig.args[0], 16), I32)
        return builder.bitcast(builder.shl(bits, ir.Constant(I32, 16)), F32)

    return types.float32(b), codegen
