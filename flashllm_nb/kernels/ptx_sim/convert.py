"""Simulator twins of the packing and conversion instructions of :mod:`flashllm_nb.kernels.ptx_asm.convert`:
element-wise NumPy on the bit patterns, with the hardware's rounding and NaN results.
"""

from __future__ import annotations

import numpy as np

from .operands import as_float32, as_integer


def pack_u16x2(lo, hi):
    """Twin of ``mov.b32 d, {lo, hi}``: ``lo | hi << 16`` of the low 16 bits of each, as uint32."""
    lo = as_integer("mov.b32 (pack)", "lo", lo) & 0xFFFF
    hi = as_integer("mov.b32 (pack)", "hi", hi) & 0xFFFF
    return np.uint32(lo | hi << 16)


def unpack_u16x2(x):
    """Twin of ``mov.b32 {lo, hi}, x``: the two halves of the low 32 bits, as uint16."""
    x = as_integer("mov.b32 (unpack)", "x", x) & 0xFFFFFFFF
    return np.uint16(x & 0xFFFF), np.uint16(x >> 16)


# What the hardware gives for any NaN (seen on an H200, sm_90; the CUDA headers' host conversions agree for f16/bf16).
_CANONICAL_NAN16 = np.uint16(0x7FFF)
_CANONICAL_NAN32 = np.uint32(0x7FFFFFFF).view(np.float32)


def f32_to_f16_bits(x):
    """Twin of ``cvt.rn.f16.f32``: NumPy's round-to-nearest-even cast (overflow to Inf); NaN gives 0x7FFF."""
    x = as_float32("cvt.rn.f16.f32", "x", x)
    if np.isnan(x):
        return _CANONICAL_NAN16
    with np.errstate(over="ignore"):
        return np.float16(x).view(np.uint16)


def f32_to_bf16_bits(x):
    """Twin of ``cvt.rn.bf16.f32``: round to nearest even on the bits (overflow to Inf); NaN gives 0x7FFF."""
    x = as_float32("cvt.rn.bf16.f32", "x", x)
    if np.isnan(x):
        return _CANONICAL_NAN16
    bits = int(x.view(np.uint32))
    # Adding 0x7FFF plus the lowest kept bit rounds the dropped 16 bits half-to-even; a carry into the exponent is
    # the right rounding too, up to Inf for values that round above the largest bf16.
    return np.uint16((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)


def f16_bits_to_f32(b):
    """Twin of ``cvt.f32.f16``: the exact float32 value of the low 16 bits, read as f16; NaN gives 0x7FFFFFFF."""
    value = np.float32(np.uint16(as_integer("cvt.f32.f16", "b", b) & 0xFFFF).view(np.float16))
    return _CANONICAL_NAN32 if np.isnan(value) else value


def bf16_bits_to_f32(b):
    """Twin of the bf16-to-float32 shift: the low 16 bits become the high half of a float32."""
    bits = np.uint32((as_integer("bf16 to f32 (shl 16)", "b", b) & 0xFFFF) << 16)
    return bits.view(np.float32)
